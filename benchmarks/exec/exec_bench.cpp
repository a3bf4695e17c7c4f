// sandlot-exec-bench: what running a process through agentd costs, against doing the same natively in this
// process on the same machine. See benchmarks/README.md.
//
//   sandlot-exec-bench [--agentd PATH | --vm] [--runs N] [--warmup N] [--stream-runs N] [--stream-bytes N]
//
// Two figures, each as sandlot against native, alternating the two sides run by run:
//   - exec round trip: AgentConnection::exec of `true` (request to exit status, output collected) against
//     posix_spawn + waitpid of /bin/true;
//   - output throughput: `head -c N /dev/zero` streamed through exec_stream, every byte counted, against the
//     same head writing into a pipe that this process reads.
// With --agentd (the default) agentd runs as a host process serving a Unix socket; with --vm it is a booted
// sandbox's agent (Sandbox::boot). The report ends with the two result lines:
//   exec_us agent=<median> native=<median> ratio=<agent/native>          (--vm: vm_exec_us sandlot=...)
//   stream_mb_s sandlot=<median> native=<median> ratio=<sandlot/native>  (--vm: vm_stream_mb_s sandlot=...)
#include <fcntl.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "benchmarks/support/bench_agent.h"
#include "host/lib/agent_connection.h"
#include "host/lib/exec.h"
#include "host/lib/paths.h"
#include "host/lib/process.h"
#include "host/lib/sandbox.h"
#include "proto/base/error.h"
#include "proto/base/unique_fd.h"
#include "proto/base/unix_address.h"

extern char** environ;

namespace sandlot::bench {
namespace {

struct Options {
    std::string agentd;  // host mode: this agentd binary (default bin_dir()/agentd)
    bool vm = false;     // boot a sandbox instead
    int runs = 200;
    int warmup = 20;
    int stream_runs = 5;
    uint64_t stream_bytes = uint64_t{1} << 30;
    uint64_t memory_mib = 256;
    uint32_t cpus = 1;
    int boot_timeout_s = 300;
};

void summarize(const char* what, const char* unit, const std::vector<double>& v) {
    auto [lo, hi] = std::minmax_element(v.begin(), v.end());
    std::printf("%-32s median %10.1f %s, min %.1f, max %.1f over %zu runs\n", what, median(v), unit, *lo, *hi,
                v.size());
}

// ---------------------------------------------------------------------------------------------------------
// Native baselines

// posix_spawn(argv[0]) with stdout to `stdout_fd` (or inherited when -1); returns the pid.
Result<pid_t> spawn_native(const std::vector<std::string>& args, int stdout_fd) {
    std::vector<char*> argv;
    for (const auto& a : args)
        argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    if (stdout_fd >= 0) posix_spawn_file_actions_adddup2(&actions, stdout_fd, STDOUT_FILENO);
    pid_t pid = -1;
    int err = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (err != 0) return make_error("posix_spawn " + args[0], err);
    return pid;
}

Result<int> wait_exit(pid_t pid) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return errno_error("waitpid");
    }
    return status;
}

// One posix_spawn + waitpid of /bin/true; microseconds.
Result<double> native_exec_us() {
    auto start = Clock::now();
    pid_t pid = TRY(spawn_native({"/bin/true"}, -1));
    int status = TRY(wait_exit(pid));
    double us = seconds_since(start) * 1e6;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return make_error("/bin/true failed natively");
    return us;
}

// The size of agentd's output pipes (F_SETPIPE_SZ, exec design) and of its largest output frame.
constexpr int kPipeSize = 1 << 20;
constexpr size_t kReadSize = 128 * 1024;

// head writing into a pipe that this process drains, like `head | cat`; MB/s (10^6 bytes per second).
Result<double> native_stream_mb_s(const std::vector<std::string>& head, uint64_t expected) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0) return errno_error("pipe2");
    UniqueFd read_end(fds[0]), write_end(fds[1]);
    (void)fcntl(write_end.get(), F_SETPIPE_SZ, kPipeSize);  // best effort, as agentd does
    std::vector<uint8_t> buffer(kReadSize);
    auto start = Clock::now();
    pid_t pid = TRY(spawn_native(head, write_end.get()));
    write_end.reset();
    uint64_t total = 0;
    for (;;) {
        ssize_t n = read(read_end.get(), buffer.data(), buffer.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("read");
        if (n == 0) break;
        total += static_cast<uint64_t>(n);
    }
    int status = TRY(wait_exit(pid));
    double s = seconds_since(start);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return make_error("head failed natively");
    if (total != expected)
        return make_error("native: got " + std::to_string(total) + " bytes, expected " +
                          std::to_string(expected));
    return static_cast<double>(total) / 1e6 / s;
}

// ---------------------------------------------------------------------------------------------------------
// Through the agent

Result<double> agent_exec_us(host::AgentConnection& agent) {
    host::ExecRequest request;
    request.argv = {"true"};
    auto start = Clock::now();
    host::ExecOutput out = TRY(agent.exec(request));
    double us = seconds_since(start) * 1e6;
    TRY(expect_success(out.status, "exec true"));
    return us;
}

Result<double> agent_stream_mb_s(host::AgentConnection& agent, const std::vector<std::string>& head,
                                 uint64_t expected) {
    host::ExecRequest request;
    request.argv = head;
    auto start = Clock::now();
    std::unique_ptr<host::ExecStream> proc = TRY(agent.exec_stream(request));
    uint64_t total = 0;
    std::string errors;
    std::optional<host::ExitStatus> status;
    while (auto event = TRY(proc->recv())) {
        switch (event->kind) {
            case host::ExecEvent::Kind::Stdout:
                total += event->data.size();
                break;
            case host::ExecEvent::Kind::Stderr:
                errors.append(event->data.begin(), event->data.end());
                break;
            case host::ExecEvent::Kind::Exit:
                status = event->status;
                break;
            default:
                break;
        }
    }
    double s = seconds_since(start);
    if (!status) return make_error("exec_stream ended without an exit status");
    TRY(expect_success(*status, "head (stderr: " + errors + ")"));
    if (total != expected)
        return make_error("agent: got " + std::to_string(total) + " bytes, expected " +
                          std::to_string(expected));
    return static_cast<double>(total) / 1e6 / s;
}

// ---------------------------------------------------------------------------------------------------------
// Where the agent runs

// ---------------------------------------------------------------------------------------------------------

Result<void> measure(host::AgentConnection& agent, const Options& o, const char* label) {
    const proto::Hello& hello = agent.hello();
    std::printf("agent %s (protocol %u.%u), kernel %s, %u cpus\n", hello.agent_version.c_str(),
                hello.protocol_major, hello.protocol_minor, hello.kernel_release.c_str(), hello.cpus_online);

    // Exec round trip, alternating which side goes first in each round.
    std::printf("exec round trip: %d runs each after %d warm-up, alternating\n", o.runs, o.warmup);
    std::vector<double> agent_us, native_us;
    for (int i = 0; i < o.warmup + o.runs; ++i) {
        double a = 0, n = 0;
        if (i % 2 == 0) {
            a = TRY(agent_exec_us(agent));
            n = TRY(native_exec_us());
        } else {
            n = TRY(native_exec_us());
            a = TRY(agent_exec_us(agent));
        }
        if (i < o.warmup) continue;
        agent_us.push_back(a);
        native_us.push_back(n);
    }
    summarize("agent exec true:", "us", agent_us);
    summarize("native posix_spawn /bin/true:", "us", native_us);

    // Output throughput: one unmeasured round first (page cache, pipe buffers, the agent's first stream).
    const std::string count = std::to_string(o.stream_bytes);
    const std::vector<std::string> head = {"head", "-c", count, "/dev/zero"};
    std::printf("output throughput: %s, %d runs each after 1 warm-up, alternating\n",
                ("head -c " + count + " /dev/zero").c_str(), o.stream_runs);
    std::vector<double> agent_mb_s, native_mb_s;
    // head's path for posix_spawn, which does not search PATH.
    std::string head_path = std::filesystem::exists("/usr/bin/head") ? "/usr/bin/head" : "/bin/head";
    std::vector<std::string> native_head = head;
    native_head[0] = head_path;
    for (int i = 0; i < 1 + o.stream_runs; ++i) {
        double a = 0, n = 0;
        if (i % 2 == 0) {
            a = TRY(agent_stream_mb_s(agent, head, o.stream_bytes));
            n = TRY(native_stream_mb_s(native_head, o.stream_bytes));
        } else {
            n = TRY(native_stream_mb_s(native_head, o.stream_bytes));
            a = TRY(agent_stream_mb_s(agent, head, o.stream_bytes));
        }
        std::printf("  %s %d: sandlot %.1f MB/s, native %.1f MB/s\n", i == 0 ? "warm-up" : "run    ", i, a,
                    n);
        if (i == 0) continue;
        agent_mb_s.push_back(a);
        native_mb_s.push_back(n);
    }
    summarize("sandlot stream:", "MB/s", agent_mb_s);
    summarize("native pipe:", "MB/s", native_mb_s);

    double ea = median(agent_us), en = median(native_us);
    double sa = median(agent_mb_s), sn = median(native_mb_s);
    if (o.vm) {
        std::printf("%sexec_us sandlot=%.1f native=%.1f ratio=%.2f\n", label, ea, en, ea / en);
    } else {
        std::printf("%sexec_us agent=%.1f native=%.1f ratio=%.2f\n", label, ea, en, ea / en);
    }
    std::printf("%sstream_mb_s sandlot=%.1f native=%.1f ratio=%.3f\n", label, sa, sn, sa / sn);
    return {};
}

Result<void> run(const Options& o) {
    if (o.vm) {
        host::SandboxOptions options;
        options.memory_mib = o.memory_mib;
        options.cpus = o.cpus;
        options.ready_timeout = std::chrono::seconds(o.boot_timeout_s);
        std::printf("booting a sandbox (%llu MiB, %u cpus)\n", static_cast<unsigned long long>(o.memory_mib),
                    o.cpus);
        auto start = Clock::now();
        std::unique_ptr<host::Sandbox> sandbox = TRY(host::Sandbox::boot(options));
        std::printf("sandbox ready in %.0f ms\n", seconds_since(start) * 1e3);
        auto measured = measure(sandbox->agent(), o, "vm_");
        auto stopped = sandbox->shutdown();
        TRY(std::move(measured));
        if (!stopped) return std::unexpected(with_context(stopped.error(), "sandbox shutdown"));
        return {};
    }
    std::string agentd = o.agentd.empty() ? host::bin_dir() + "/agentd" : o.agentd;
    std::printf("agentd as a host process: %s --listen-unix\n", agentd.c_str());
    std::unique_ptr<HostAgent> agent = TRY(HostAgent::start(agentd));
    return measure(agent->agent(), o, "");
}

}  // namespace
}  // namespace sandlot::bench

int main(int argc, char** argv) {
    sandlot::bench::Options o;
    CLI::App app{"Times exec round trips and output throughput through agentd against native.",
                 "sandlot-exec-bench"};
    auto* agentd = app.add_option("--agentd", o.agentd,
                                  "agentd binary to run on a Unix socket (default: next to "
                                  "this binary)");
    app.add_flag("--vm", o.vm, "boot a sandbox and measure its agent over vsock instead")->excludes(agentd);
    app.add_option("--runs", o.runs, "measured exec round trips per side")
        ->capture_default_str()
        ->check(CLI::Range(1, 1000000));
    app.add_option("--warmup", o.warmup, "unmeasured exec round trips per side first")
        ->capture_default_str()
        ->check(CLI::Range(0, 100000));
    app.add_option("--stream-runs", o.stream_runs, "measured streams per side (after one warm-up)")
        ->capture_default_str()
        ->check(CLI::Range(1, 1000));
    app.add_option("--stream-bytes", o.stream_bytes, "bytes each stream carries")
        ->capture_default_str()
        ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 40));
    app.add_option("--memory", o.memory_mib, "--vm: guest memory, MiB")
        ->capture_default_str()
        ->check(CLI::Range(64, 65536));
    app.add_option("--cpus", o.cpus, "--vm: guest vCPUs")->capture_default_str()->check(CLI::Range(1, 64));
    app.add_option("--boot-timeout", o.boot_timeout_s,
                   "--vm: seconds allowed for the sandbox to become ready")
        ->capture_default_str()
        ->check(CLI::Range(1, 3600));
    CLI11_PARSE(app, argc, argv);
    // Line-buffered even into a pipe (the rig's console, tee): progress shows as it happens.
    std::setvbuf(stdout, nullptr, _IOLBF, 0);

    if (auto ok = sandlot::bench::run(o); !ok) {
        std::fprintf(stderr, "sandlot-exec-bench: error: %s\n", ok.error().to_string().c_str());
        return 1;
    }
    return 0;
}
