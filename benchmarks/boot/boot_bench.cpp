// sandlot-boot-bench: times how long sandlot-vmm and QEMU microvm take from process start to the guest's
// init running, booting the same kernel and initramfs, alternately, N times each; and measures how much
// memory sandlot-vmm itself uses besides guest RAM. See benchmarks/README.md.
//
//   sandlot-boot-bench --sandlot-vmm PATH --qemu PATH --kernel PATH --initrd PATH [--runs N] [--warmup N]
//                      [--memory MiB] [--qemu-kernel PATH] [--qemu-machine SPEC] [--only sandlot|qemu]
//
// The report ends with the two lines that `make bench-boot` collects:
//   boot_ms sandlot=<median> qemu=<median> ratio=<sandlot/qemu>
//   vmm_overhead_kib=<median KiB>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "benchmarks/boot/marker.h"
#include "proto/base/error.h"
#include "proto/base/unique_fd.h"

namespace sandlot::bench {
namespace {

// The kernel command line for QEMU: the one sandlot-vmm builds by default (vmm/machine.h, kDefaultCmdline)
// plus the "quiet" we pass it, so that both VMMs boot the same kernel the same way.
constexpr const char* kGuestCmdline =
    "console=ttyS0 reboot=t,c,panic_w panic=-1 io_delay=none 8250.nr_uarts=1 quiet";

// QEMU's fastest measured microvm for this guest: no option ROMs (QEMU loads the kernel itself), no RTC, no
// legacy PIC/PIT (the guest uses the LAPIC and kvm-clock). ACPI stays on: this guest has no ACPI, and with
// acpi=off QEMU lists its empty virtio-mmio slots on the command line, which the guest then probes (slower).
// See benchmarks/README.md for the measurements.
constexpr const char* kDefaultQemuMachine = "microvm,x-option-roms=off,rtc=off,pit=off,pic=off";

struct Options {
    std::string sandlot_vmm;
    std::string qemu;
    std::string kernel;
    std::string qemu_kernel;  // empty: the same as kernel
    std::string initrd;
    std::string qemu_machine = kDefaultQemuMachine;
    std::string only;  // empty: both
    int runs = 10;
    int warmup = 1;
    uint64_t memory_mib = 256;
    int timeout_s = 120;
};

enum class Vmm { sandlot, qemu };

const char* name_of(Vmm vmm) {
    return vmm == Vmm::sandlot ? "sandlot" : "qemu";
}

std::vector<std::string> command_for(Vmm vmm, const Options& o) {
    std::string memory = std::to_string(o.memory_mib);
    std::vector<std::string> argv;
    auto add = [&](std::initializer_list<std::string> words) { argv.insert(argv.end(), words); };
    if (vmm == Vmm::sandlot) {
        add({o.sandlot_vmm, "--kernel", o.kernel, "--initrd", o.initrd});
        add({"--memory", memory, "--cpus", "1", "--console", "stdout", "--cmdline", "quiet"});
        return argv;
    }
    add({o.qemu, "-M", o.qemu_machine, "-enable-kvm", "-cpu", "host", "-m", memory, "-smp", "1"});
    add({"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio"});
    add({"-kernel", o.qemu_kernel.empty() ? o.kernel : o.qemu_kernel, "-initrd", o.initrd});
    add({"-append", kGuestCmdline});
    return argv;
}

std::string join(const std::vector<std::string>& words) {
    std::string line;
    for (const auto& w : words)
        line += (line.empty() ? "" : " ") + (w.find(' ') == std::string::npos ? w : "'" + w + "'");
    return line;
}

double now_ms() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

// ---- the child process ------------------------------------------------------------------------------------

struct Child {
    pid_t pid = -1;
    UniqueFd output;  // the child's stdout and stderr
};

// Starts argv with stdin on /dev/null and stdout + stderr on a pipe.
Result<Child> spawn(const std::vector<std::string>& argv) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return errno_error("pipe2");
    UniqueFd read_end(fds[0]), write_end(fds[1]);
    UniqueFd null(open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!null) return errno_error("open /dev/null");

    std::vector<char*> args;
    for (const auto& a : argv)
        args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);

    pid_t pid = fork();
    if (pid < 0) return errno_error("fork");
    if (pid == 0) {  // only async-signal-safe calls from here on
        if (dup2(null.get(), STDIN_FILENO) < 0 || dup2(write_end.get(), STDOUT_FILENO) < 0 ||
            dup2(write_end.get(), STDERR_FILENO) < 0) {
            _exit(126);
        }
        execvp(args[0], args.data());
        static constexpr char kExecFailed[] = "sandlot-boot-bench: exec failed\n";
        [[maybe_unused]] auto n = write(STDERR_FILENO, kExecFailed, sizeof kExecFailed - 1);
        _exit(127);
    }
    return Child{pid, std::move(read_end)};
}

// Reaps the child if it exits within timeout_ms. Returns its wait status, or nullopt.
std::optional<int> reap_within(pid_t pid, double timeout_ms) {
    double deadline = now_ms() + timeout_ms;
    for (;;) {
        int status = 0;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) return status;
        if ((r < 0 && errno != EINTR) || now_ms() > deadline) return std::nullopt;
        usleep(2000);
    }
}

// Kills the child and reaps it, but never waits forever: a VMM stuck in the kernel may not die at once.
void kill_child(pid_t pid) {
    kill(pid, SIGKILL);
    reap_within(pid, 10000);
}

// Waits up to timeout_ms for the child to exit; kills it past that. Returns its wait status.
Result<int> wait_for_exit(pid_t pid, double timeout_ms) {
    if (auto status = reap_within(pid, timeout_ms)) return *status;
    kill_child(pid);
    return make_error("did not exit within " + std::to_string(int(timeout_ms / 1000)) + " s; killed");
}

// ---- memory of the VMM process ----------------------------------------------------------------------------

struct MemoryUse {
    uint64_t rss_kib = 0;            // every mapping
    uint64_t guest_ram_rss_kib = 0;  // the guest RAM mappings
    int guest_ram_mappings = 0;
};

// Sums Rss over /proc/<pid>/smaps. Guest RAM is the anonymous (or memfd) mapping whose Size equals the guest
// memory size: sandlot-vmm maps guest RAM below 3 GiB as one such mapping, and so does QEMU for its RAM
// block.
Result<MemoryUse> measure_memory(pid_t pid, uint64_t guest_ram_kib) {
    std::string path = "/proc/" + std::to_string(pid) + "/smaps";
    std::ifstream smaps(path);
    if (!smaps) return make_error("cannot read " + path + " (did the VMM exit already?)");

    MemoryUse use;
    bool anonymous = false;  // of the mapping whose fields follow
    uint64_t size_kib = 0;
    std::string line;
    while (std::getline(smaps, line)) {
        std::istringstream fields(line);
        std::string first;
        fields >> first;
        if (first.empty()) continue;
        if (first.back() != ':') {  // a mapping header: "start-end perms offset dev inode [pathname]"
            std::string perms, offset, dev, inode, pathname;
            fields >> perms >> offset >> dev >> inode;
            std::getline(fields >> std::ws, pathname);
            anonymous = pathname.empty() || pathname.starts_with("[anon") || pathname.starts_with("/memfd:");
            size_kib = 0;
            continue;
        }
        uint64_t kib = 0;
        fields >> kib;
        if (first == "Size:") size_kib = kib;
        if (first != "Rss:") continue;
        use.rss_kib += kib;
        if (anonymous && size_kib == guest_ram_kib) {
            use.guest_ram_rss_kib += kib;
            use.guest_ram_mappings++;
        }
    }
    return use;
}

// ---- one boot ---------------------------------------------------------------------------------------------

struct BootResult {
    double boot_ms = 0;
    std::optional<MemoryUse> memory;
};

// Runs the VMM once: the clock starts just before fork and stops when the marker line arrives.
Result<BootResult> boot_once(Vmm vmm, const Options& o) {
    // The marker alone: the serial console may end the line with "\r\n" or "\n".
    const std::string marker = kInitMarker;
    const std::vector<std::string> argv = command_for(vmm, o);

    double start = now_ms();
    Child child = TRY(spawn(argv));
    double deadline = start + o.timeout_s * 1000.0;

    BootResult result;
    std::optional<Error> memory_error;
    std::string output;  // kept for diagnostics, bounded
    bool marker_seen = false;
    char buf[4096];
    for (;;) {
        int wait_ms = std::max(0, int(deadline - now_ms()));
        pollfd pfd{child.output.get(), POLLIN, 0};
        int ready = poll(&pfd, 1, wait_ms);
        if (ready < 0 && errno == EINTR) continue;
        if (ready <= 0) {
            kill_child(child.pid);
            return make_error(std::string(marker_seen ? "VM did not exit" : "no init marker") + " within " +
                              std::to_string(o.timeout_s) + " s; output:\n" + output);
        }
        ssize_t n = read(child.output.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;  // EOF: the VMM is exiting
        double t = now_ms();
        size_t search_from = output.size() >= marker.size() ? output.size() - marker.size() : 0;
        output.append(buf, size_t(n));
        if (!marker_seen && output.find(marker, search_from) != std::string::npos) {
            marker_seen = true;
            result.boot_ms = t - start;
            // The guest sleeps briefly after the marker, so the VMM is still running while we look.
            auto memory = measure_memory(child.pid, o.memory_mib * 1024);
            if (memory)
                result.memory = *memory;
            else
                memory_error = memory.error();
        }
        if (output.size() > (1 << 20)) output.erase(0, output.size() - (1 << 16));  // a chatty guest
    }

    auto status = wait_for_exit(child.pid, std::max(1000.0, deadline - now_ms()));
    if (!status) return make_error(std::string(name_of(vmm)) + ": " + status.error().message);
    if (!marker_seen) return make_error("the VM exited without the init marker; output:\n" + output);
    if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
        return make_error("the VMM exited with " +
                          (WIFEXITED(*status) ? "status " + std::to_string(WEXITSTATUS(*status))
                                              : "signal " + std::to_string(WTERMSIG(*status))) +
                          "; output:\n" + output);
    }
    if (vmm == Vmm::sandlot) {  // the overhead figure is sandlot's; it must be measured
        if (memory_error) return make_error("measuring memory: " + memory_error->to_string());
        if (result.memory->guest_ram_mappings == 0) {
            return make_error("no anonymous mapping of exactly " + std::to_string(o.memory_mib) +
                              " MiB (guest RAM) in the VMM's smaps; cannot tell its overhead");
        }
    }
    return result;
}

// ---- statistics and report --------------------------------------------------------------------------------

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct Samples {
    std::vector<double> boot_ms;
    std::vector<double> overhead_kib;
};

void print_summary(Vmm vmm, const Samples& s) {
    auto [lo, hi] = std::minmax_element(s.boot_ms.begin(), s.boot_ms.end());
    std::printf("%-7s boot to init: median %.1f ms, min %.1f, max %.1f over %zu runs", name_of(vmm),
                median(s.boot_ms), *lo, *hi, s.boot_ms.size());
    if (!s.overhead_kib.empty())
        std::printf("; memory besides guest RAM: median %.0f KiB", median(s.overhead_kib));
    std::printf("\n");
}

int run(const Options& o) {
    std::vector<Vmm> vmms;
    if (o.only.empty() || o.only == "sandlot") vmms.push_back(Vmm::sandlot);
    if (o.only.empty() || o.only == "qemu") vmms.push_back(Vmm::qemu);
    for (Vmm vmm : vmms)
        std::printf("%-7s command: %s\n", name_of(vmm), join(command_for(vmm, o)).c_str());
    std::printf("runs: %d each after %d warm-up, alternating\n", o.runs, o.warmup);
    std::fflush(stdout);

    Samples samples[2];
    for (int i = 0; i < o.warmup + o.runs; i++) {
        bool warm_up = i < o.warmup;
        // Alternate who goes first too, so neither VMM always follows the other.
        std::vector<Vmm> order = vmms;
        if (i % 2) std::reverse(order.begin(), order.end());
        for (Vmm vmm : order) {
            auto boot = boot_once(vmm, o);
            if (!boot) {
                std::printf("%s run %d FAILED: %s\n", name_of(vmm), i + 1 - o.warmup,
                            boot.error().to_string().c_str());
                return 1;
            }
            std::printf("%-7s %s %2d: %8.1f ms to init", name_of(vmm), warm_up ? "warm-up" : "run    ",
                        warm_up ? i + 1 : i + 1 - o.warmup, boot->boot_ms);
            if (boot->memory) {
                const MemoryUse& m = *boot->memory;
                std::printf(", VMM rss %llu KiB (guest RAM %llu KiB, other %llu KiB)",
                            (unsigned long long)m.rss_kib, (unsigned long long)m.guest_ram_rss_kib,
                            (unsigned long long)(m.rss_kib - m.guest_ram_rss_kib));
            }
            std::printf("\n");
            std::fflush(stdout);
            if (warm_up) continue;
            Samples& s = samples[int(vmm)];
            s.boot_ms.push_back(boot->boot_ms);
            if (boot->memory && boot->memory->guest_ram_mappings > 0) {
                s.overhead_kib.push_back(double(boot->memory->rss_kib - boot->memory->guest_ram_rss_kib));
            }
        }
    }

    for (Vmm vmm : vmms)
        print_summary(vmm, samples[int(vmm)]);
    if (vmms.size() < 2) {
        std::printf("(--only %s: no comparison lines)\n", o.only.c_str());
        return 0;
    }
    double sandlot = median(samples[int(Vmm::sandlot)].boot_ms);
    double qemu = median(samples[int(Vmm::qemu)].boot_ms);
    std::printf("boot_ms sandlot=%.1f qemu=%.1f ratio=%.3f\n", sandlot, qemu, sandlot / qemu);
    std::printf("vmm_overhead_kib=%.0f\n", median(samples[int(Vmm::sandlot)].overhead_kib));
    return 0;
}

}  // namespace
}  // namespace sandlot::bench

int main(int argc, char** argv) {
    sandlot::bench::Options o;
    CLI::App app{"Times sandlot-vmm and QEMU microvm booting the same guest to init.", "sandlot-boot-bench"};
    app.add_option("--sandlot-vmm", o.sandlot_vmm, "sandlot-vmm binary");
    app.add_option("--qemu", o.qemu, "qemu-system-x86_64 binary");
    app.add_option("--kernel", o.kernel, "guest kernel (PVH vmlinux) for both VMMs")->required();
    app.add_option("--qemu-kernel", o.qemu_kernel, "a different kernel image for QEMU (e.g. bzImage)");
    app.add_option("--initrd", o.initrd, "initramfs whose /init writes the marker and restarts")->required();
    app.add_option("--qemu-machine", o.qemu_machine, "QEMU -M value")->capture_default_str();
    app.add_option("--runs", o.runs, "measured boots per VMM")
        ->capture_default_str()
        ->check(CLI::Range(1, 10000));
    app.add_option("--warmup", o.warmup, "unmeasured boots per VMM first")
        ->capture_default_str()
        ->check(CLI::Range(0, 100));
    app.add_option("--memory", o.memory_mib, "guest memory, MiB")
        ->capture_default_str()
        ->check(CLI::Range(64, 65536));
    app.add_option("--timeout", o.timeout_s, "seconds allowed per boot")
        ->capture_default_str()
        ->check(CLI::Range(1, 3600));
    app.add_option("--only", o.only, "run one VMM only (no comparison lines)")
        ->check(CLI::IsMember({"sandlot", "qemu"}));
    CLI11_PARSE(app, argc, argv);
    if (o.only != "qemu" && o.sandlot_vmm.empty()) {
        std::fprintf(stderr, "sandlot-boot-bench: --sandlot-vmm is required\n");
        return 2;
    }
    if (o.only != "sandlot" && o.qemu.empty()) {
        std::fprintf(stderr, "sandlot-boot-bench: --qemu is required\n");
        return 2;
    }
    return sandlot::bench::run(o);
}
