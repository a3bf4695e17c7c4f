// CPU state at the kernel's entry point: FPU defaults, and the segment/control/general registers each boot
// protocol expects. The kernel loader has already written the GDT these selectors index (layout.h) and, for
// the 64-bit protocol, the identity page tables at layout::kPml4. Only the boot vCPU gets entry registers;
// the others stay in wait-for-SIPI in the in-kernel LAPIC until the guest starts them.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <string>

#include "proto/base/error.h"
#include "vmm/kvm/vcpu.h"

namespace sandlot::vmm::x86 {

inline constexpr uint64_t kCr0Pe = 1ull << 0;   // protected mode
inline constexpr uint64_t kCr0Et = 1ull << 4;   // extension type (always 1 on modern CPUs)
inline constexpr uint64_t kCr0Pg = 1ull << 31;  // paging
inline constexpr uint64_t kCr4Pae = 1ull << 5;
inline constexpr uint64_t kEferLme = 1ull << 8;         // long mode enable
inline constexpr uint64_t kEferLma = 1ull << 10;        // long mode active
inline constexpr uint64_t kRflagsReserved = 1ull << 1;  // bit 1 always reads as 1

// x87 control word 0x37f (all exceptions masked) and MXCSR 0x1f80 (all SSE exceptions masked).
Result<void> setup_fpu(const Vcpu& vcpu);

// PVH entry (Xen's hvm_start_info protocol): 32-bit protected mode, paging off, flat 4 GiB segments,
// TR loaded (VMX refuses to enter without a usable TSS). `reset` is the vCPU's state from KVM_GET_SREGS.
kvm_sregs pvh_entry_sregs(const kvm_sregs& reset);
// Linux 64-bit boot protocol: long mode, paging on with the loader's identity map, 64-bit code segment.
kvm_sregs linux64_entry_sregs(const kvm_sregs& reset);

// PVH: RIP = entry, RBX = guest-physical address of hvm_start_info.
Result<void> setup_pvh_entry(const Vcpu& vcpu, uint64_t entry, uint64_t start_info);
// Linux 64-bit: RIP = entry (startup_64), RSI = guest-physical address of boot_params.
Result<void> setup_linux64_entry(const Vcpu& vcpu, uint64_t entry, uint64_t boot_params);

// Multi-line dump of the general, control and segment registers, for crash reports.
std::string format_registers(const kvm_regs& regs, const kvm_sregs& sregs);

}  // namespace sandlot::vmm::x86
