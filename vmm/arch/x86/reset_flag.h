// Telling an orderly guest restart from a kernel panic, after the fact.
//
// With reboot=t, Linux restarts by triple-faulting on purpose, and with panic=-1 a panic ends the same way
// (emergency_restart). The vCPU state cannot tell them apart: on AMD, KVM even INITs the vCPU on a triple
// fault, so registers and local APIC are reset by the time we look. What survives is guest memory, and just
// before it resets, Linux (arch/x86/kernel/reboot.c, native_machine_emergency_restart) writes the BIOS
// data area's reset flag at physical 0x472: 0x1234 for a warm reboot, 0 for a cold one. The kernel command
// line picks the mode per path: `reboot=t,c,panic_w` makes an orderly restart cold and a panic warm.
// The VMM stores a sentinel there before boot, so a triple fault that did not come through that code (a
// kernel bug, a fault before Linux ran) leaves the sentinel.
#pragma once

#include <cstdint>

#include "proto/base/error.h"
#include "vmm/memory/guest_memory.h"

namespace sandlot::vmm::x86 {

inline constexpr uint64_t kResetFlagGpa = 0x472;
inline constexpr uint16_t kResetFlagCold = 0x0000;      // reboot_mode=cold: the orderly restart path
inline constexpr uint16_t kResetFlagWarm = 0x1234;      // panic_reboot_mode=warm: the panic path
inline constexpr uint16_t kResetFlagSentinel = 0x5a1d;  // written by the VMM; Linux never writes it

// The command-line option that sets those modes (and triple-fault restarts).
inline constexpr const char* kRebootCmdline = "reboot=t,c,panic_w";

enum class ResetCause {
    OrderlyRestart,  // Linux's reboot path (reboot(2), or a clean kernel_restart)
    Panic,           // Linux's panic path
    Unexplained,     // the flag was not written: a fault that did not come from Linux's restart code
};

// Stores the sentinel; call before the guest runs.
Result<void> arm_reset_flag(const GuestMemory& memory);
ResetCause classify_reset_flag(uint16_t flag);
// Reads and classifies the flag (Unexplained if it cannot be read).
ResetCause read_reset_cause(const GuestMemory& memory);

}  // namespace sandlot::vmm::x86
