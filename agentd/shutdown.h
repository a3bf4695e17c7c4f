// Ending the guest. The kernel runs with reboot=t and the VMM treats an orderly restart as "the VM is done",
// so power-off is sync() + reboot(RB_AUTOBOOT). RB_POWER_OFF would need ACPI, which the guest does not have.
#pragma once

#include <string>
#include <string_view>

namespace sandlot::agent {

// Logs `reason`, flushes filesystems and restarts the machine. Never returns: if reboot() fails (it cannot
// as PID 1 with CAP_SYS_BOOT) it parks forever, because PID 1 exiting would panic the kernel.
// As PID 1, it first kills every other process and freezes the writable disk filesystems registered below
// (FIFREEZE commits the journal and marks the filesystem clean on disk), so the next boot can mount them
// read-only too, without a journal to replay.
[[noreturn]] void power_off(std::string_view reason);

// Registers the filesystem mounted from block device `device` at `path` for power_off() to freeze. Checked by
// device number, so a path that is not (or no longer) that mount is ignored.
void freeze_at_power_off(const std::string& path, const std::string& device);

}  // namespace sandlot::agent
