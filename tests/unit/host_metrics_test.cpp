// host/lib/metrics: the VMM counters file (written by vmm/stats_file, read by the host), vCPU thread times
// and resident memory from /proc, and the JSON form.
#include "host/lib/metrics.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "proto/vmm_stats.h"
#include "tests/support/temp_dir.h"
#include "vmm/stats_file.h"

extern char** environ;

namespace sandlot::host {
namespace {

using namespace std::chrono_literals;
using test::TempDir;

void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

TEST(HostMetrics, CountersFileRoundTrip) {
    TempDir dir;
    std::string path = dir / "stats";
    auto file = vmm::StatsFile::create(path);
    ASSERT_TRUE(file) << file.error().to_string();
    struct stat st {};
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    EXPECT_EQ(static_cast<size_t>(st.st_size), sizeof(proto::VmmStats));

    auto fresh = read_vmm_counters(path);
    ASSERT_TRUE(fresh) << fresh.error().to_string();
    EXPECT_EQ(fresh->blk_read_bytes, 0u);
    EXPECT_EQ(fresh->fs_write_bytes, 0u);

    proto::VmmStats& stats = file->stats();
    proto::count(stats.blk_read_bytes, 4096);
    proto::count(stats.blk_read_bytes, 512);
    proto::count(stats.blk_write_bytes, 1ull << 40);
    proto::count(stats.blk_read_ops, 2);
    proto::count(stats.blk_write_ops, 1);
    proto::count(stats.blk_flush_ops, 3);
    proto::count(stats.net_rx_bytes, 5);
    proto::count(stats.net_tx_bytes, 6);
    proto::count(stats.fs_read_bytes, 7);
    proto::count(stats.fs_write_bytes, 8);
    auto counters = read_vmm_counters(path);
    ASSERT_TRUE(counters) << counters.error().to_string();
    EXPECT_EQ(counters->blk_read_bytes, 4608u);
    EXPECT_EQ(counters->blk_write_bytes, 1ull << 40);
    EXPECT_EQ(counters->blk_read_ops, 2u);
    EXPECT_EQ(counters->blk_write_ops, 1u);
    EXPECT_EQ(counters->blk_flush_ops, 3u);
    EXPECT_EQ(counters->net_rx_bytes, 5u);
    EXPECT_EQ(counters->net_tx_bytes, 6u);
    EXPECT_EQ(counters->fs_read_bytes, 7u);
    EXPECT_EQ(counters->fs_write_bytes, 8u);

    // A new VMM replaces the file with a fresh one; the old one's mapping stays valid (nothing truncated).
    auto next = vmm::StatsFile::create(path);
    ASSERT_TRUE(next) << next.error().to_string();
    proto::count(file->stats().blk_read_ops, 1);
    EXPECT_EQ(read_vmm_counters(path).value().blk_read_ops, 0u);
    proto::count(next->stats().blk_read_ops, 9);
    EXPECT_EQ(read_vmm_counters(path).value().blk_read_ops, 9u);

    // The last values survive the writer.
    next = std::move(file);
    EXPECT_EQ(read_vmm_counters(path).value().blk_read_ops, 9u);
}

TEST(HostMetrics, CountersFileErrors) {
    TempDir dir;
    auto missing = read_vmm_counters(dir / "nope");
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.error().code, ENOENT);
    EXPECT_NE(missing.error().message.find(dir / "nope"), std::string::npos);

    std::string good_header("SLST\x01\0\0\0", 8);
    write_bytes(dir / "empty", "");
    write_bytes(dir / "short", good_header + std::string(16, '\0'));
    write_bytes(dir / "magic", "XLST" + good_header.substr(4) + std::string(72, '\0'));
    write_bytes(dir / "version", std::string("SLST\0\0\0\0", 8) + std::string(72, '\0'));
    write_bytes(dir / "ok", good_header + std::string(72, '\0'));
    std::filesystem::create_directory(dir / "dir");
    for (auto [name, phrase] :
         {std::pair{"empty", "too short"}, std::pair{"short", "too short"}, std::pair{"magic", "bad magic"},
          std::pair{"version", "version 0"}, std::pair{"dir", "not a regular file"}}) {
        auto result = read_vmm_counters(dir / name);
        ASSERT_FALSE(result) << name;
        EXPECT_NE(result.error().message.find(phrase), std::string::npos) << result.error().message;
    }
    EXPECT_TRUE(read_vmm_counters(dir / "ok"));  // hand-made to the documented layout
    // A newer version with appended counters is still readable.
    write_bytes(dir / "newer", "SLST" + std::string("\x02\0\0\0", 4) + std::string(200, '\0'));
    EXPECT_TRUE(read_vmm_counters(dir / "newer"));
}

TEST(HostMetrics, VcpuTimeGrowsWhileAVcpuThreadRuns) {
    std::atomic<bool> stop{false};
    std::thread busy([&] {
        pthread_setname_np(pthread_self(), "vcpu0");
        while (!stop.load(std::memory_order_relaxed)) {
        }
    });
    // Other tests' threads may carry the name too: measure growth, not the absolute value.
    auto before = vcpu_time_ns(getpid());
    ASSERT_TRUE(before) << before.error().to_string();
    uint64_t now = *before;
    auto deadline = std::chrono::steady_clock::now() + 20s;
    while (now < *before + 50'000'000 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(10ms);  // polling a clock, not synchronising
        now = vcpu_time_ns(getpid()).value_or(0);
    }
    stop = true;
    busy.join();
    EXPECT_GE(now, *before + 50'000'000) << "a busy vcpu0 thread gained less than 50 ms of CPU in 20 s";
}

TEST(HostMetrics, VcpuTimeIsZeroWithoutVcpuThreadsAndFailsForNoProcess) {
    pid_t child = -1;
    const char* argv[] = {"sleep", "30", nullptr};
    ASSERT_EQ(posix_spawnp(&child, "sleep", nullptr, nullptr, const_cast<char**>(argv), environ), 0);
    auto time = vcpu_time_ns(child);
    auto rss = process_rss_bytes(child);
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    ASSERT_TRUE(time) << time.error().to_string();
    EXPECT_EQ(*time, 0u);
    ASSERT_TRUE(rss) << rss.error().to_string();
    EXPECT_GT(*rss, 0u);

    EXPECT_FALSE(vcpu_time_ns(INT_MAX));  // above any pid_max
    EXPECT_FALSE(process_rss_bytes(INT_MAX));
}

TEST(HostMetrics, RssOfSelf) {
    auto rss = process_rss_bytes(getpid());
    ASSERT_TRUE(rss) << rss.error().to_string();
    EXPECT_GT(*rss, 1u << 20);
    EXPECT_EQ(*rss % 1024, 0u);
}

TEST(HostMetrics, JsonHasEveryField) {
    SandboxMetrics m;
    m.name = "web \"1\"";
    m.time_ns = 1'700'000'000'000'000'000;
    m.cpu_percent = 12.3456;
    m.vcpu_time_ns = 5;
    m.memory_used_bytes = 100;
    m.memory_limit_bytes = 256ull << 20;
    m.host_rss_bytes = 7;
    m.disk_read_bytes = 8;
    m.disk_write_bytes = 9;
    m.net_rx_bytes = 10;
    m.net_tx_bytes = 11;
    m.uptime_ns = 12;
    m.guest_answered = true;
    auto j = nlohmann::json::parse(metrics_to_json(m));
    EXPECT_EQ(j["name"], "web \"1\"");
    EXPECT_EQ(j["time_ns"], m.time_ns);
    EXPECT_DOUBLE_EQ(j["cpu_percent"].get<double>(), 12.35);
    EXPECT_EQ(j["vcpu_time_ns"], 5u);
    EXPECT_EQ(j["memory_used_bytes"], 100u);
    EXPECT_EQ(j["memory_limit_bytes"], 256ull << 20);
    EXPECT_EQ(j["host_rss_bytes"], 7u);
    EXPECT_EQ(j["disk_read_bytes"], 8u);
    EXPECT_EQ(j["disk_write_bytes"], 9u);
    EXPECT_EQ(j["net_rx_bytes"], 10u);
    EXPECT_EQ(j["net_tx_bytes"], 11u);
    EXPECT_EQ(j["uptime_ns"], 12u);
    EXPECT_EQ(j["guest_answered"], true);
    EXPECT_EQ(j.size(), 13u);
    EXPECT_EQ(metrics_to_json(m).find('\n'), std::string::npos);
}

}  // namespace
}  // namespace sandlot::host
