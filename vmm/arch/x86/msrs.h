// Model-specific registers at reset, as firmware would leave them for a kernel.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <span>
#include <vector>

#include "proto/base/error.h"
#include "vmm/kvm/vcpu.h"

namespace sandlot::vmm::x86 {

inline constexpr uint32_t kMsrIa32Tsc = 0x10;
inline constexpr uint32_t kMsrSysenterCs = 0x174;
inline constexpr uint32_t kMsrSysenterEsp = 0x175;
inline constexpr uint32_t kMsrSysenterEip = 0x176;
inline constexpr uint32_t kMsrMiscEnable = 0x1a0;
inline constexpr uint32_t kMsrMtrrDefType = 0x2ff;
inline constexpr uint32_t kMsrStar = 0xc000'0081;
inline constexpr uint32_t kMsrLstar = 0xc000'0082;
inline constexpr uint32_t kMsrCstar = 0xc000'0083;
inline constexpr uint32_t kMsrSyscallMask = 0xc000'0084;
inline constexpr uint32_t kMsrKernelGsBase = 0xc000'0102;

inline constexpr uint64_t kMiscEnableFastStrings = 1 << 0;
// MTRRs enabled (bit 11), default memory type write-back (6): all RAM is cacheable.
inline constexpr uint64_t kMtrrDefTypeEnabledWriteBack = (1 << 11) | 6;

// The reset values sandlot sets, limited to MSRs this KVM handles: those in `kvm_msr_indices`
// (KVM_GET_MSR_INDEX_LIST), plus MTRRdefType, which KVM's MTRR emulation always accepts though the list
// does not name it.
std::vector<kvm_msr_entry> boot_msrs(std::span<const uint32_t> kvm_msr_indices);

// Sets boot_msrs() on `vcpu`. Returns the indices KVM refused (the caller warns; a guest boots without them).
Result<std::vector<uint32_t>> setup_msrs(const Vcpu& vcpu, std::span<const uint32_t> kvm_msr_indices);

}  // namespace sandlot::vmm::x86
