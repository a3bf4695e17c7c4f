// Thin RAII wrappers over the KVM API: the /dev/kvm system fd (Kvm) and one VM (Vm). vCPUs are in vcpu.h.
// They issue ioctls and turn failures into Result errors; policy (which CPUID, which registers) lives in
// vmm/arch/x86 and vmm/machine.cpp.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "proto/base/error.h"
#include "proto/base/unique_fd.h"
#include "vmm/kvm/vcpu.h"
#include "vmm/memory/guest_memory.h"

namespace sandlot::vmm {

class Kvm {
  public:
    // Opens /dev/kvm and checks the API version (12) and every capability sandlot relies on.
    static Result<Kvm> open();

    int fd() const { return fd_.get(); }
    uint32_t max_vcpus() const { return max_vcpus_; }
    size_t vcpu_mmap_size() const { return vcpu_mmap_size_; }
    // KVM_CHECK_EXTENSION: whether (or how much of) an optional capability this KVM has.
    int check_extension(long capability) const;

    // KVM_GET_SUPPORTED_CPUID: what KVM can present to a guest on this host.
    Result<std::vector<kvm_cpuid_entry2>> supported_cpuid() const;
    // KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores for a vCPU.
    Result<std::vector<uint32_t>> msr_index_list() const;

  private:
    Kvm() = default;
    UniqueFd fd_;
    uint32_t max_vcpus_ = 0;
    size_t vcpu_mmap_size_ = 0;
};

class Vm {
  public:
    // Creates a VM with the in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT, and KVM's private pages
    // (TSS, identity map) placed under the APICs (layout.h).
    static Result<Vm> create(const Kvm& kvm);

    int fd() const { return fd_.get(); }

    // One memory slot per guest RAM region.
    Result<void> set_memory_regions(const GuestMemory& memory);

    // A guest write of `len` bytes to `mmio_addr` (equal to `datamatch`, if given) signals `eventfd` inside
    // KVM, without an exit to userspace.
    Result<void> add_ioeventfd(uint64_t mmio_addr, uint32_t len, std::optional<uint64_t> datamatch,
                               int eventfd);
    // A write to `eventfd` raises an edge on interrupt line `gsi` (an IOAPIC pin).
    Result<void> add_irqfd(int eventfd, uint32_t gsi);

    // vCPU `index` (also its APIC id). Create them after the irqchip, i.e. any time after create().
    Result<Vcpu> create_vcpu(uint32_t index) const;

  private:
    Vm() = default;
    UniqueFd fd_;
    size_t vcpu_mmap_size_ = 0;
};

}  // namespace sandlot::vmm
