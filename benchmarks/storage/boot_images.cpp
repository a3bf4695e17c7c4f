// sandlot-boot-images-bench: how long a sandbox with a root image takes to boot to a ready agent, against the
// same sandbox with the initramfs as its root (no disk, no root switch). See benchmarks/README.md.
//
//   sandlot-boot-images-bench [--images base,debian] [--runs N] [--warmup N] [--memory MiB]
//                             [--boot-timeout S] [--tmpfs-upper]
//
// Each run is host::Sandbox::boot() exactly as `sandlot run --image NAME` calls it (a fresh sparse ext4 upper
// image per sandbox, made with mkfs.ext4, unless --tmpfs-upper), timed from the call until it returns with
// the agent's HELLO, then an orderly shutdown (not timed). The configurations alternate run by run, and which
// goes first rotates each round, so a drifting machine affects all of them alike. The guest artifacts are
// found as the CLI finds them (bin/../guest, SANDLOT_GUEST_DIR, SANDLOT_IMAGE_DIR).
//
// The report ends with one line per image:
//   boot_<image>_ms sandlot=<median ms with the image> host=<median ms, initramfs root>
//   ratio=<image/initramfs>
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "host/lib/exec.h"
#include "host/lib/sandbox.h"
#include "proto/base/error.h"

namespace sandlot::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct Options {
    std::vector<std::string> images = {"base", "debian"};
    int runs = 5;
    int warmup = 1;
    uint64_t memory_mib = 256;
    int boot_timeout_s = 300;
    bool tmpfs_upper = false;
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct Samples {
    std::string name;                      // "" = the initramfs root
    std::vector<double> total_ms = {};     // Sandbox::boot() call to return
    std::vector<double> to_agent_ms = {};  // VMM spawned to HELLO (Sandbox::boot_to_agent)
};

std::string label(const Samples& s) {
    return s.name.empty() ? "initramfs" : s.name;
}

// After the clock stopped: the sandbox's "/" is what was asked for (an overlayfs over the image, or the
// initramfs), so a misconfigured run cannot pass for a fast one.
Result<void> check_root(host::Sandbox& sandbox, const Samples& samples) {
    host::ExecRequest request;
    request.argv = {"cat", "/proc/mounts"};
    request.timeout = std::chrono::seconds(60);
    host::ExecOutput out = TRY(sandbox.agent().exec(request));
    if (out.status.spawn_failure || out.status.exit_code != 0) return make_error("cat /proc/mounts failed");
    std::string root_type;
    size_t start = 0;
    while (start < out.stdout_data.size()) {  // the last mount on "/" is the one in use
        size_t end = out.stdout_data.find('\n', start);
        if (end == std::string::npos) end = out.stdout_data.size();
        std::string line = out.stdout_data.substr(start, end - start);
        size_t a = line.find(' ');
        size_t b = a == std::string::npos ? a : line.find(' ', a + 1);
        if (b != std::string::npos && line.substr(a + 1, b - a - 1) == "/") {
            size_t c = line.find(' ', b + 1);
            root_type = line.substr(b + 1, c == std::string::npos ? c : c - b - 1);
        }
        start = end + 1;
    }
    bool image_root = root_type == "overlay";
    if (image_root == samples.name.empty())
        return make_error(label(samples) + ": the sandbox's / is \"" + root_type +
                          "\", not what was asked for");
    return {};
}

// One boot to a ready agent and an orderly shutdown; records the timings unless `record` is false.
Result<void> boot_once(const Options& o, Samples& samples, bool record) {
    host::SandboxOptions options;
    options.memory_mib = o.memory_mib;
    options.ready_timeout = std::chrono::seconds(o.boot_timeout_s);
    options.storage.root.image = samples.name;
    if (!samples.name.empty() && o.tmpfs_upper)
        options.storage.root.writable = host::RootOptions::Writable::Tmpfs;
    auto start = Clock::now();
    auto sandbox = host::Sandbox::boot(options);
    double total = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    if (!sandbox) return std::unexpected(with_context(sandbox.error(), "boot " + label(samples)));
    double to_agent = std::chrono::duration<double, std::milli>((*sandbox)->boot_to_agent()).count();
    TRY(check_root(**sandbox, samples));
    auto status = (*sandbox)->shutdown();
    if (!status) return std::unexpected(with_context(status.error(), "shutdown " + label(samples)));
    if (*status != 0)
        return make_error("shutdown " + label(samples) + ": the VMM exited with status " +
                          std::to_string(*status));
    std::printf("  %-10s %s %8.1f ms to a ready agent (VMM start to HELLO %.1f ms)\n", label(samples).c_str(),
                record ? "run   " : "warmup", total, to_agent);
    std::fflush(stdout);
    if (record) {
        samples.total_ms.push_back(total);
        samples.to_agent_ms.push_back(to_agent);
    }
    return {};
}

void summarize(const Samples& s) {
    auto [lo, hi] = std::minmax_element(s.total_ms.begin(), s.total_ms.end());
    std::printf(
        "%-10s boot to agent: median %8.1f ms, min %.1f, max %.1f over %zu runs (VMM start to HELLO: "
        "median %.1f ms)\n",
        label(s).c_str(), median(s.total_ms), *lo, *hi, s.total_ms.size(), median(s.to_agent_ms));
}

Result<void> run(const Options& o) {
    std::vector<Samples> all;
    all.push_back({""});
    for (const auto& image : o.images)
        all.push_back({image});
    std::printf(
        "boot to a ready agent: %d runs each after %d warm-up, %llu MiB, 1 vCPU, upper %s, rotating\n",
        o.runs, o.warmup, static_cast<unsigned long long>(o.memory_mib),
        o.tmpfs_upper ? "tmpfs" : "a fresh ext4 image");
    for (int round = 0; round < o.warmup + o.runs; ++round) {
        for (size_t i = 0; i < all.size(); ++i)
            TRY(boot_once(o, all[(i + static_cast<size_t>(round)) % all.size()], round >= o.warmup));
    }
    for (const auto& s : all)
        summarize(s);
    double base = median(all[0].total_ms);
    for (size_t i = 1; i < all.size(); ++i) {
        double m = median(all[i].total_ms);
        std::printf("boot_%s_ms sandlot=%.1f host=%.1f ratio=%.3f\n", all[i].name.c_str(), m, base, m / base);
    }
    return {};
}

}  // namespace
}  // namespace sandlot::bench

int main(int argc, char** argv) {
    sandlot::bench::Options o;
    CLI::App app{"Times sandboxes with root images booting to a ready agent, against the initramfs root.",
                 "sandlot-boot-images-bench"};
    app.add_option("--images", o.images, "root images to time (built-in names, directories or disk images)")
        ->delimiter(',')
        ->capture_default_str();
    app.add_option("--runs", o.runs, "measured boots per configuration")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    app.add_option("--warmup", o.warmup, "unmeasured boots per configuration first")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    app.add_option("--memory", o.memory_mib, "guest memory (MiB)")->capture_default_str();
    app.add_option("--boot-timeout", o.boot_timeout_s, "seconds allowed per boot")->capture_default_str();
    app.add_flag("--tmpfs-upper", o.tmpfs_upper, "writable layer on tmpfs instead of a fresh ext4 image");
    CLI11_PARSE(app, argc, argv);
    auto result = sandlot::bench::run(o);
    if (!result) {
        std::fprintf(stderr, "sandlot-boot-images-bench: error: %s\n", result.error().to_string().c_str());
        return 1;
    }
    return 0;
}
