// Resource figures of a running sandbox, from three sources: the VMM's I/O counters (a file it maps, see
// proto/vmm_stats.h and sandlot-vmm --stats-file), the VMM process in /proc (vCPU thread times, resident
// memory), and the guest agent's STATS (AgentConnection::stats()). Assembling a SandboxMetrics for a named
// sandbox is lifecycle.cpp's job; this file only reads and formats.
//
// All functions are stateless and thread-safe. /proc files are read with read(2) into bounded buffers.
#pragma once

#include <cstdint>
#include <string>

#include "proto/base/error.h"

namespace sandlot::host {

struct VmmCounters {
    uint64_t blk_read_bytes = 0, blk_write_bytes = 0, blk_read_ops = 0, blk_write_ops = 0, blk_flush_ops = 0;
    uint64_t net_rx_bytes = 0, net_tx_bytes = 0;
    uint64_t fs_read_bytes = 0, fs_write_bytes = 0;
};

// Loads the counters from a VMM's stats file. Fails, naming the file, if it is missing, shorter than the
// layout, or not a stats file (magic) of a version we can read. Works after the VMM exited (last values).
Result<VmmCounters> read_vmm_counters(const std::string& stats_path);

// CPU time (utime + stime, clock-tick resolution) of the process's threads named "vcpuN", from
// /proc/PID/task/*/stat. 0 when it has no such thread. Fails if the process does not exist.
Result<uint64_t> vcpu_time_ns(int vmm_pid);

// VmRSS of a process, from /proc/PID/status. Fails if the process does not exist or has no memory (a
// zombie).
Result<uint64_t> process_rss_bytes(int pid);

struct SandboxMetrics {
    std::string name;
    int64_t time_ns = 0;              // when sampled (unix ns)
    double cpu_percent = 0;           // vCPU time over wall time between two samples (100 = one vCPU busy)
    uint64_t vcpu_time_ns = 0;        // cumulative
    uint64_t memory_used_bytes = 0;   // guest: MemTotal - MemAvailable (agent); 0 if the agent did not answer
    uint64_t memory_limit_bytes = 0;  // configured guest memory
    uint64_t host_rss_bytes = 0;      // the VMM process
    uint64_t disk_read_bytes = 0, disk_write_bytes = 0, net_rx_bytes = 0, net_tx_bytes = 0;
    uint64_t uptime_ns = 0;  // since the sandbox started (host clock)
    bool guest_answered = false;
};

// One JSON object, keys named like the fields: {"name":"web","time_ns":...,"cpu_percent":12.5,...}.
// cpu_percent is rounded to two decimals.
std::string metrics_to_json(const SandboxMetrics& metrics);

}  // namespace sandlot::host
