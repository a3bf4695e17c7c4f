#include "vmm/arch/x86/reset_flag.h"

namespace sandlot::vmm::x86 {

Result<void> arm_reset_flag(const GuestMemory& memory) {
    return memory.write_obj(kResetFlagGpa, kResetFlagSentinel);
}

ResetCause classify_reset_flag(uint16_t flag) {
    switch (flag) {
        case kResetFlagCold:
            return ResetCause::OrderlyRestart;
        case kResetFlagWarm:
            return ResetCause::Panic;
        default:
            return ResetCause::Unexplained;
    }
}

ResetCause read_reset_cause(const GuestMemory& memory) {
    auto flag = memory.read_obj<uint16_t>(kResetFlagGpa);
    return flag ? classify_reset_flag(*flag) : ResetCause::Unexplained;
}

}  // namespace sandlot::vmm::x86
