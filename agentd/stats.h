// The guest's vital signs for STATS (proto/messages.h): memory from /proc/meminfo, the load average from
// /proc/loadavg, the number of processes (pid directories in /proc) and the uptime (CLOCK_BOOTTIME).
//
// Parsing is bounded: each file is read with read(2) into a fixed buffer (what does not fit is ignored), and
// the /proc walk stops after kMaxProcEntries entries. A missing or garbled file leaves its fields 0; nothing
// here fails. Single-threaded (the server's loop); no state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "proto/messages.h"

namespace sandlot::agent {

inline constexpr size_t kMaxProcFileBytes = 16 * 1024;
inline constexpr size_t kMaxProcEntries = 1 << 20;

// Everything but exec_sessions, which the caller knows. `proc_root` is "/proc" except in tests.
proto::Stats collect_stats(const std::string& proc_root = "/proc");

// "MemTotal:       16318096 kB\n..." -> the value of `key` in KiB; nullopt if absent or malformed.
std::optional<uint64_t> meminfo_kib(std::string_view meminfo, std::string_view key);
// "0.52 0.58 0.59 1/234 5678" -> 52: the first field times 100 (fraction digits past two are dropped).
uint32_t load1_centi(std::string_view loadavg);

}  // namespace sandlot::agent
