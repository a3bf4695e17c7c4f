#include "agentd/stats.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <limits>

#include "agentd/hello.h"
#include "proto/base/unique_fd.h"

namespace sandlot::agent {

namespace {

// Reads up to kMaxProcFileBytes of a file; "" when it cannot be read.
std::string read_small_file(const std::string& path) {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return {};
    std::string data(kMaxProcFileBytes, '\0');
    size_t used = 0;
    while (used < data.size()) {
        ssize_t n = read(fd.get(), data.data() + used, data.size() - used);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        used += static_cast<size_t>(n);
    }
    data.resize(used);
    return data;
}

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

// Leading decimal digits of `text` (saturating); `text` is advanced past them.
uint64_t take_number(std::string_view& text, size_t* digits = nullptr) {
    uint64_t value = 0;
    size_t n = 0;
    while (n < text.size() && is_digit(text[n])) {
        uint64_t digit = static_cast<uint64_t>(text[n] - '0');
        value = value > (std::numeric_limits<uint64_t>::max() - digit) / 10
                    ? std::numeric_limits<uint64_t>::max()
                    : value * 10 + digit;
        ++n;
    }
    text.remove_prefix(n);
    if (digits) *digits = n;
    return value;
}

uint32_t count_pids(const std::string& proc_root) {
    DIR* dir = opendir(proc_root.c_str());
    if (!dir) return 0;
    uint32_t count = 0;
    size_t seen = 0;
    while (dirent* entry = readdir(dir)) {
        if (++seen > kMaxProcEntries) break;
        std::string_view name = entry->d_name;
        size_t digits = 0;
        take_number(name, &digits);
        if (digits > 0 && name.empty() && count < std::numeric_limits<uint32_t>::max()) ++count;
    }
    closedir(dir);
    return count;
}

}  // namespace

std::optional<uint64_t> meminfo_kib(std::string_view meminfo, std::string_view key) {
    while (!meminfo.empty()) {
        size_t end = meminfo.find('\n');
        std::string_view line = meminfo.substr(0, end);
        meminfo.remove_prefix(end == std::string_view::npos ? meminfo.size() : end + 1);
        if (!line.starts_with(key) || line.size() == key.size() || line[key.size()] != ':') continue;
        line.remove_prefix(key.size() + 1);
        while (!line.empty() && line.front() == ' ')
            line.remove_prefix(1);
        size_t digits = 0;
        uint64_t value = take_number(line, &digits);
        if (digits == 0 || line != " kB") return std::nullopt;  // every size we read is in kB
        return value;
    }
    return std::nullopt;
}

uint32_t load1_centi(std::string_view loadavg) {
    size_t digits = 0;
    uint64_t whole = take_number(loadavg, &digits);
    if (digits == 0) return 0;
    uint64_t centi = 0;
    if (!loadavg.empty() && loadavg.front() == '.') {
        loadavg.remove_prefix(1);
        for (int i = 0; i < 2; ++i) {
            centi *= 10;
            if (!loadavg.empty() && is_digit(loadavg.front())) {
                centi += static_cast<uint64_t>(loadavg.front() - '0');
                loadavg.remove_prefix(1);
            }
        }
    }
    uint64_t value = whole > std::numeric_limits<uint32_t>::max() / 100 ? std::numeric_limits<uint32_t>::max()
                                                                        : whole * 100 + centi;
    return static_cast<uint32_t>(std::min<uint64_t>(value, std::numeric_limits<uint32_t>::max()));
}

proto::Stats collect_stats(const std::string& proc_root) {
    proto::Stats stats;
    std::string meminfo = read_small_file(proc_root + "/meminfo");
    stats.mem_total_kib = meminfo_kib(meminfo, "MemTotal").value_or(0);
    // Kernels before 3.14 have no MemAvailable; MemFree is the closest they offer.
    stats.mem_available_kib = meminfo_kib(meminfo, "MemAvailable")
                                  .or_else([&] { return meminfo_kib(meminfo, "MemFree"); })
                                  .value_or(0);
    stats.load1_centi = load1_centi(read_small_file(proc_root + "/loadavg"));
    stats.processes = count_pids(proc_root);
    stats.uptime_ns = boottime_ns();
    return stats;
}

}  // namespace sandlot::agent
