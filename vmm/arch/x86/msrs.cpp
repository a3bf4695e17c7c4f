#include "vmm/arch/x86/msrs.h"

#include <algorithm>

namespace sandlot::vmm::x86 {

std::vector<kvm_msr_entry> boot_msrs(std::span<const uint32_t> kvm_msr_indices) {
    struct Wanted {
        uint32_t index;
        uint64_t value;
    };
    // SYSENTER and SYSCALL targets stay 0 until the kernel installs its entry points; TSC starts at 0.
    const Wanted wanted[] = {
        {kMsrIa32Tsc, 0},
        {kMsrSysenterCs, 0},
        {kMsrSysenterEsp, 0},
        {kMsrSysenterEip, 0},
        {kMsrStar, 0},
        {kMsrLstar, 0},
        {kMsrCstar, 0},
        {kMsrSyscallMask, 0},
        {kMsrKernelGsBase, 0},
        {kMsrMiscEnable, kMiscEnableFastStrings},
        {kMsrMtrrDefType, kMtrrDefTypeEnabledWriteBack},
    };

    auto kvm_knows = [&](uint32_t index) {
        return index == kMsrMtrrDefType ||
               std::find(kvm_msr_indices.begin(), kvm_msr_indices.end(), index) != kvm_msr_indices.end();
    };
    std::vector<kvm_msr_entry> entries;
    for (const Wanted& msr : wanted) {
        if (!kvm_knows(msr.index)) continue;
        kvm_msr_entry entry{};
        entry.index = msr.index;
        entry.data = msr.value;
        entries.push_back(entry);
    }
    return entries;
}

Result<std::vector<uint32_t>> setup_msrs(const Vcpu& vcpu, std::span<const uint32_t> kvm_msr_indices) {
    std::vector<kvm_msr_entry> entries = boot_msrs(kvm_msr_indices);
    std::vector<uint32_t> refused;
    // KVM_SET_MSRS stops at the first MSR it rejects: note that one and carry on with the rest.
    std::span<const kvm_msr_entry> remaining(entries);
    while (!remaining.empty()) {
        size_t set = TRY(vcpu.set_msrs(remaining));
        if (set >= remaining.size()) break;
        refused.push_back(remaining[set].index);
        remaining = remaining.subspan(set + 1);
    }
    return refused;
}

}  // namespace sandlot::vmm::x86
