// The CPUID a vCPU sees: KVM_GET_SUPPORTED_CPUID (what this host and KVM can offer), adjusted per vCPU.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <span>
#include <vector>

namespace sandlot::vmm::x86 {

// Returns `supported` with these changes for the vCPU whose APIC id is `apic_id`:
//   leaf 0x1:        EBX[31:24] = APIC id; ECX bit 31 ("running under a hypervisor") set; ECX bit 24 (TSC
//                    deadline timer) set when `tsc_deadline_timer`: KVM_GET_SUPPORTED_CPUID never reports it,
//                    because the in-kernel LAPIC provides it (KVM_CAP_TSC_DEADLINE_TIMER). Without it Linux
//                    calibrates the LAPIC timer against the PIT at boot, which costs time.
//   leaves 0xB/0x1F: EDX = APIC id (the x2APIC id, every subleaf)
//   leaf 0xA:        zeroed: no performance monitoring unit is offered
// Everything else, including KVM's own 0x40000000 leaves (kvmclock, PV features), is kept as KVM reports it.
std::vector<kvm_cpuid_entry2> vcpu_cpuid(std::span<const kvm_cpuid_entry2> supported, uint32_t apic_id,
                                         bool tsc_deadline_timer);

}  // namespace sandlot::vmm::x86
