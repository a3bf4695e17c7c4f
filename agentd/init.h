// PID-1 duties: the mounts, console and settings a bare initramfs lacks, and the agent's boot options.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sandlot::agent {

inline constexpr uint32_t kDefaultVsockPort = 1024;

// Options the host passes on the kernel command line.
struct BootOptions {
    uint32_t port = kDefaultVsockPort;    // sandlot.port=N: vsock port to listen on
    std::optional<uint32_t> notify_port;  // sandlot.notify=P: also connect to the host (CID 2) on port P
};

// Parses /proc/cmdline text. Unknown words are ignored; a malformed sandlot.* value is logged and ignored.
BootOptions parse_kernel_cmdline(std::string_view cmdline);

// The contents of /proc/cmdline ("" if it cannot be read).
std::string read_kernel_cmdline();

// Prepares the guest for the agent when it is PID 1: stdio on /dev/console, /proc, /sys, /dev (devtmpfs),
// /dev/pts, /dev/shm, /tmp, /run, and oom_score_adj -1000. Every step is best effort: a failure is logged on
// the console and setup goes on, since PID 1 must keep running.
void setup_pid1();

}  // namespace sandlot::agent
