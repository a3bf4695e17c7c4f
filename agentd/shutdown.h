// Ending the guest. The kernel runs with reboot=t and the VMM treats an orderly restart as "the VM is done",
// so power-off is sync() + reboot(RB_AUTOBOOT). RB_POWER_OFF would need ACPI, which the guest does not have.
#pragma once

#include <string_view>

namespace sandlot::agent {

// Logs `reason`, flushes filesystems and restarts the machine. Never returns: if reboot() fails (it cannot
// as PID 1 with CAP_SYS_BOOT) it parks forever, because PID 1 exiting would panic the kernel.
[[noreturn]] void power_off(std::string_view reason);

}  // namespace sandlot::agent
