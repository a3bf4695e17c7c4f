#include "host/lib/metrics.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <vector>

#include "proto/base/unique_fd.h"
#include "proto/vmm_stats.h"

namespace sandlot::host {

namespace {

constexpr size_t kMaxProcFile = 64 * 1024;  // /proc/PID/status is ~1.5 KiB, a task's stat ~300 bytes

// Up to kMaxProcFile bytes of a file; an error (with errno) if it cannot be opened or read.
Result<std::string> read_bounded(const std::string& path) {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return errno_error("open " + path);
    std::string data(kMaxProcFile, '\0');
    size_t used = 0;
    while (used < data.size()) {
        ssize_t n = read(fd.get(), data.data() + used, data.size() - used);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("read " + path);
        if (n == 0) break;
        used += static_cast<size_t>(n);
    }
    data.resize(used);
    return data;
}

// "vcpu0", "vcpu12": what vmm/machine.cpp names its vCPU threads.
bool is_vcpu_name(std::string_view comm) {
    if (!comm.starts_with("vcpu") || comm.size() == 4) return false;
    for (char c : comm.substr(4))
        if (c < '0' || c > '9') return false;
    return true;
}

// utime + stime in clock ticks from a task's stat line, if the thread is a vCPU. The command name sits in
// parentheses and may itself hold ") ", so the fields are counted from the last ')'.
std::optional<uint64_t> vcpu_ticks(std::string_view stat) {
    size_t open = stat.find('(');
    size_t close = stat.rfind(')');
    if (open == std::string_view::npos || close == std::string_view::npos || close < open)
        return std::nullopt;
    if (!is_vcpu_name(stat.substr(open + 1, close - open - 1))) return std::nullopt;
    std::string_view rest = stat.substr(close + 1);
    // Fields after ')': state (3), ppid (4), ... utime (14), stime (15).
    uint64_t ticks = 0;
    for (int field = 3; field <= 15; ++field) {
        while (!rest.empty() && rest.front() == ' ')
            rest.remove_prefix(1);
        size_t end = std::min(rest.find(' '), rest.size());
        std::string_view token = rest.substr(0, end);
        rest.remove_prefix(end);
        if (token.empty()) return std::nullopt;
        if (field >= 14) {
            uint64_t value = 0;
            auto [ptr, ec] = std::from_chars(token.data(), token.data() + token.size(), value);
            if (ec != std::errc() || ptr != token.data() + token.size()) return std::nullopt;
            ticks += value;
        }
    }
    return ticks;
}

}  // namespace

Result<VmmCounters> read_vmm_counters(const std::string& stats_path) {
    auto fail = [&](const std::string& why, int code = 0) {
        return make_error("VMM stats file " + stats_path + ": " + why, code);
    };
    UniqueFd fd(open(stats_path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!fd) return fail("cannot open", errno);
    struct stat st {};
    if (fstat(fd.get(), &st) != 0) return fail("cannot stat", errno);
    if (!S_ISREG(st.st_mode)) return fail("not a regular file");
    constexpr size_t kHeader = 2 * sizeof(uint32_t);
    auto size = static_cast<uint64_t>(st.st_size);
    if (size < kHeader) return fail("too short (" + std::to_string(size) + " bytes)");
    uint32_t header[2] = {};
    if (pread(fd.get(), header, sizeof header, 0) != static_cast<ssize_t>(sizeof header))
        return fail("cannot read", errno);
    if (header[0] != proto::kVmmStatsMagic) return fail("not a sandlot-vmm stats file (bad magic)");
    if (header[1] < proto::kVmmStatsVersion) return fail("unsupported version " + std::to_string(header[1]));
    if (size < sizeof(proto::VmmStats)) return fail("too short (" + std::to_string(size) + " bytes)");

    // Mapped, not read: the VMM updates the counters in place, and an 8-byte atomic load cannot tear.
    void* memory = mmap(nullptr, sizeof(proto::VmmStats), PROT_READ, MAP_SHARED, fd.get(), 0);
    if (memory == MAP_FAILED) return fail("cannot map", errno);
    const auto* stats = static_cast<const proto::VmmStats*>(memory);
    auto load = [](const std::atomic<uint64_t>& counter) { return counter.load(std::memory_order_relaxed); };
    VmmCounters counters;
    counters.blk_read_bytes = load(stats->blk_read_bytes);
    counters.blk_write_bytes = load(stats->blk_write_bytes);
    counters.blk_read_ops = load(stats->blk_read_ops);
    counters.blk_write_ops = load(stats->blk_write_ops);
    counters.blk_flush_ops = load(stats->blk_flush_ops);
    counters.net_rx_bytes = load(stats->net_rx_bytes);
    counters.net_tx_bytes = load(stats->net_tx_bytes);
    counters.fs_read_bytes = load(stats->fs_read_bytes);
    counters.fs_write_bytes = load(stats->fs_write_bytes);
    munmap(memory, sizeof(proto::VmmStats));
    return counters;
}

Result<uint64_t> vcpu_time_ns(int vmm_pid) {
    std::string task_dir = "/proc/" + std::to_string(vmm_pid) + "/task";
    DIR* dir = opendir(task_dir.c_str());
    if (!dir) return errno_error("process " + std::to_string(vmm_pid));
    std::vector<std::string> tids;
    while (dirent* entry = readdir(dir)) {
        if (entry->d_name[0] != '.') tids.emplace_back(entry->d_name);
    }
    closedir(dir);
    uint64_t ticks = 0;
    for (const auto& tid : tids) {
        auto stat = read_bounded(task_dir + "/" + tid + "/stat");
        if (!stat) continue;  // the thread ended meanwhile
        ticks += vcpu_ticks(*stat).value_or(0);
    }
    long hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0) hz = 100;
    return ticks * (1'000'000'000u / static_cast<uint64_t>(hz));
}

Result<uint64_t> process_rss_bytes(int pid) {
    std::string path = "/proc/" + std::to_string(pid) + "/status";
    auto status = read_bounded(path);
    if (!status) return make_error("process " + std::to_string(pid), status.error().code);
    std::string_view text = *status;
    for (size_t at = 0; at < text.size();) {
        size_t end = std::min(text.find('\n', at), text.size());
        std::string_view line = text.substr(at, end - at);
        at = end + 1;
        if (!line.starts_with("VmRSS:")) continue;
        line.remove_prefix(6);
        while (!line.empty() && (line.front() == ' ' || line.front() == '\t'))
            line.remove_prefix(1);
        uint64_t kib = 0;
        auto [ptr, ec] = std::from_chars(line.data(), line.data() + line.size(), kib);
        if (ec != std::errc() || std::string_view(ptr, line.data() + line.size()) != " kB") break;
        return kib * 1024;
    }
    return make_error("process " + std::to_string(pid) + " has no resident memory figure (" + path + ")");
}

std::string metrics_to_json(const SandboxMetrics& m) {
    nlohmann::ordered_json j = {
        {"name", m.name},
        {"time_ns", m.time_ns},
        {"cpu_percent", std::round(m.cpu_percent * 100) / 100},
        {"vcpu_time_ns", m.vcpu_time_ns},
        {"memory_used_bytes", m.memory_used_bytes},
        {"memory_limit_bytes", m.memory_limit_bytes},
        {"host_rss_bytes", m.host_rss_bytes},
        {"disk_read_bytes", m.disk_read_bytes},
        {"disk_write_bytes", m.disk_write_bytes},
        {"net_rx_bytes", m.net_rx_bytes},
        {"net_tx_bytes", m.net_tx_bytes},
        {"uptime_ns", m.uptime_ns},
        {"guest_answered", m.guest_answered},
    };
    return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

}  // namespace sandlot::host
