// The host library's exec API (AgentConnection, ExecStream, attach) against the real agentd in host mode
// (agentd --listen-unix), and against a scripted fake agent for what a real one never does.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <latch>
#include <thread>

#include "host/lib/agent_connection.h"
#include "host/lib/attach.h"
#include "host/lib/exec.h"
#include "proto/base/unique_fd.h"
#include "proto/base/unix_address.h"
#include "proto/exec.h"
#include "proto/frame.h"
#include "proto/messages.h"
#include "proto/version.h"
#include "tests/support/agentd_process.h"

extern char** environ;

namespace sandlot::host {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using test::Agentd;
using test::set_socket_timeout;

// One agentd and one connection to it.
class HostExec : public ::testing::Test {
  protected:
    void SetUp() override {
        agent_ = agentd_.connect();
        ASSERT_TRUE(agent_);
        ASSERT_TRUE(agent_->hello().features & proto::kFeatureExec) << "agentd does not advertise exec";
    }

    ExecOutput run(const ExecRequest& request, const ExecOptions& options = {}) {
        auto out = agent_->exec(request, options);
        EXPECT_TRUE(out) << out.error().to_string();
        return out.value_or(ExecOutput{});
    }
    ExecOutput sh(const std::string& script) { return run({.argv = {"/bin/sh", "-c", script}}); }

    Agentd agentd_;
    std::unique_ptr<AgentConnection> agent_;
};

std::string text(const std::vector<uint8_t>& data) {
    return std::string(data.begin(), data.end());
}

// Reads events until `want` shows up in the collected stdout (or the stream ends / fails).
bool read_stdout_until(ExecStream& stream, std::string& collected, const std::string& want) {
    while (collected.find(want) == std::string::npos) {
        auto event = stream.recv();
        if (!event || !*event) return false;
        if ((*event)->kind == ExecEvent::Kind::Stdout) collected += text((*event)->data);
        if ((*event)->kind == ExecEvent::Kind::Exit) return collected.find(want) != std::string::npos;
    }
    return true;
}

// "/dev/pts/N\n", the line ending possibly translated to "\r\n" by the terminal.
bool is_pts_line(const std::string& line) {
    const std::string prefix = "/dev/pts/";
    if (!line.starts_with(prefix)) return false;
    size_t digits_end = line.find_first_not_of("0123456789", prefix.size());
    if (digits_end == prefix.size() || digits_end == std::string::npos) return false;
    std::string rest = line.substr(digits_end);
    return rest == "\n" || rest == "\r\n";
}

// A field of /proc/self/status in KiB ("VmHWM", "VmRSS").
long proc_status_kib(const std::string& field) {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.starts_with(field + ":")) return std::stol(line.substr(field.size() + 1));
    }
    return -1;
}

// ---------------------------------------------------------------------------------------------------------
// Exit status mapping (no agent needed).

TEST(ExitStatusShellCode, LikeAShell) {
    EXPECT_EQ((ExitStatus{.exit_code = 0}).shell_code(), 0);
    EXPECT_EQ((ExitStatus{.exit_code = 255}).shell_code(), 255);
    EXPECT_EQ((ExitStatus{.exit_code = -1, .signal = 9}).shell_code(), 137);
    EXPECT_EQ((ExitStatus{.exit_code = -1, .signal = 15, .core_dumped = true}).shell_code(), 143);
    auto spawn = [](proto::SpawnErrorKind kind) {
        ExitStatus status;
        status.spawn_failure = SpawnFailure{.kind = kind};
        return status.shell_code();
    };
    EXPECT_EQ(spawn(proto::SpawnErrorKind::NotFound), 127);
    EXPECT_EQ(spawn(proto::SpawnErrorKind::PermissionDenied), 126);
    EXPECT_EQ(spawn(proto::SpawnErrorKind::NotExecutable), 126);
    EXPECT_EQ(spawn(proto::SpawnErrorKind::BadCwd), 125);
    EXPECT_EQ(spawn(proto::SpawnErrorKind::BadUser), 125);
    EXPECT_EQ(spawn(proto::SpawnErrorKind::ResourceLimit), 125);
}

// ---------------------------------------------------------------------------------------------------------
// Against the real agentd.

TEST_F(HostExec, ExitCodes) {
    for (int code : {0, 1, 3, 255}) {
        ExecOutput out = sh("exit " + std::to_string(code));
        EXPECT_EQ(out.status.exit_code, code);
        EXPECT_EQ(out.status.signal, 0);
        EXPECT_FALSE(out.status.spawn_failure);
        EXPECT_EQ(out.status.shell_code(), code);
    }
}

TEST_F(HostExec, KilledBySignal) {
    ExecOutput out = sh("kill -9 $$");
    EXPECT_EQ(out.status.signal, 9);
    EXPECT_EQ(out.status.shell_code(), 137);
}

TEST_F(HostExec, StdoutAndStderrStaySeparate) {
    ExecOutput out = sh("echo out1; echo err1 >&2; echo out2; echo err2 >&2");
    EXPECT_EQ(out.stdout_data, "out1\nout2\n");
    EXPECT_EQ(out.stderr_data, "err1\nerr2\n");
    EXPECT_EQ(out.status.exit_code, 0);
}

TEST_F(HostExec, ShellRunsAScript) {
    auto out = agent_->shell("echo $((6 * 7)) | tr 4 X; pwd", {.cwd = "/tmp"});
    ASSERT_TRUE(out) << out.error().to_string();
    EXPECT_EQ(out->stdout_data, "X2\n/tmp\n");
}

TEST_F(HostExec, RequestFieldsReachTheProcess) {
    ExecOutput out = run({.argv = {"sh", "-c", "echo $GREETING; pwd; id -u; ulimit -n"},
                          .env = {"GREETING=hi there"},
                          .cwd = "/tmp",
                          .user = "nobody",
                          .rlimits = {proto::Rlimit{.resource = RLIMIT_NOFILE, .soft = 64, .hard = 64}}});
    EXPECT_EQ(out.stdout_data, "hi there\n/tmp\n65534\n64\n") << out.stderr_data;
    EXPECT_EQ(out.status.exit_code, 0);
}

TEST_F(HostExec, TimeoutKillsTheProcessGroup) {
    auto start = Clock::now();
    ExecOutput out = run({.argv = {"sleep", "30"}, .timeout = 200ms});
    EXPECT_TRUE(out.status.timed_out);
    EXPECT_EQ(out.status.signal, SIGKILL);
    EXPECT_LT(Clock::now() - start, 5s);
}

TEST_F(HostExec, StdinIsPipedThroughExec) {
    // More than the agent's stdin window, with bytes of every value, so credit and binary data both matter.
    std::string input;
    for (int i = 0; i < 3 * 1024 * 1024; ++i)
        input.push_back(static_cast<char>((i * 7 + i / 251) & 0xff));
    ExecOutput out = run({.argv = {"cat"}}, {.stdin_data = input});
    EXPECT_EQ(out.status.exit_code, 0);
    EXPECT_TRUE(out.stdout_data == input) << "got " << out.stdout_data.size() << " bytes";
}

TEST_F(HostExec, StdinThroughAStream) {
    auto proc = agent_->exec_stream({.argv = {"sh", "-c", "wc -c; echo done >&2"}, .stdin_open = true});
    ASSERT_TRUE(proc) << proc.error().to_string();
    std::vector<uint8_t> chunk(100'000, 'x');
    for (int i = 0; i < 5; ++i)
        ASSERT_TRUE((*proc)->write_stdin(chunk));
    ASSERT_TRUE((*proc)->close_stdin());
    EXPECT_FALSE((*proc)->write_stdin(chunk)) << "writing after close_stdin must fail";
    std::string out, err;
    bool stdout_eof = false, stderr_eof = false;
    std::optional<ExitStatus> status;
    while (auto event = (*proc)->recv().value_or(std::nullopt)) {
        switch (event->kind) {
            case ExecEvent::Kind::Stdout:
                out += text(event->data);
                break;
            case ExecEvent::Kind::Stderr:
                err += text(event->data);
                break;
            case ExecEvent::Kind::StdoutEof:
                stdout_eof = true;
                break;
            case ExecEvent::Kind::StderrEof:
                stderr_eof = true;
                break;
            case ExecEvent::Kind::Exit:
                EXPECT_TRUE(stdout_eof && stderr_eof) << "OUTPUT_EOF must come before EXIT";
                status = event->status;
                break;
        }
    }
    ASSERT_TRUE(status);
    EXPECT_EQ(status->exit_code, 0);
    EXPECT_EQ(out, "500000\n");
    EXPECT_EQ(err, "done\n");
    EXPECT_GT((*proc)->pid(), 0u);
    auto again = (*proc)->recv();
    ASSERT_TRUE(again);
    EXPECT_FALSE(*again) << "recv() after EXIT returns nullopt";
    auto waited = (*proc)->wait();
    ASSERT_TRUE(waited) << waited.error().to_string();
    EXPECT_EQ(waited->exit_code, 0);
}

TEST_F(HostExec, StdinOfAProcessWithoutIt) {
    auto proc = agent_->exec_stream({.argv = {"true"}});
    ASSERT_TRUE(proc);
    EXPECT_FALSE((*proc)->write_stdin(std::vector<uint8_t>{1, 2, 3}));
    EXPECT_FALSE((*proc)->close_stdin());
    EXPECT_FALSE((*proc)->resize(10, 10)) << "no PTY";
    EXPECT_EQ((*proc)->wait().value().exit_code, 0);
}

// Allowed peak RSS growth while streaming 1 GiB. AddressSanitizer keeps freed blocks resident in its
// quarantine (256 MiB by default), so its builds get that much more; either bound is far below 1 GiB.
#if defined(__SANITIZE_ADDRESS__)
constexpr long kStreamRssLimitKib = (64 + 384) * 1024;
#else
constexpr long kStreamRssLimitKib = 64 * 1024;
#endif

// 1 GiB through one stream: every byte arrives, and this process's memory stays bounded by the window.
TEST_F(HostExec, LargeOutputIsExactAndMemoryBounded) {
    constexpr uint64_t kTotal = uint64_t{1} << 30;
    // Reset the peak RSS so the high-water mark below belongs to this test alone.
    { std::ofstream("/proc/self/clear_refs") << "5"; }
    long hwm_before = proc_status_kib("VmHWM");
    long rss_before = proc_status_kib("VmRSS");
    ASSERT_GT(hwm_before, 0);

    auto proc = agent_->exec_stream({.argv = {"head", "-c", std::to_string(kTotal), "/dev/zero"}});
    ASSERT_TRUE(proc) << proc.error().to_string();
    uint64_t bytes = 0;
    bool all_zero = true;
    std::optional<ExitStatus> status;
    auto start = Clock::now();
    for (;;) {
        auto event = (*proc)->recv();
        ASSERT_TRUE(event) << event.error().to_string();
        if (!*event) break;
        if ((*event)->kind == ExecEvent::Kind::Stdout) {
            bytes += (*event)->data.size();
            all_zero = all_zero && std::all_of((*event)->data.begin(), (*event)->data.end(),
                                               [](uint8_t b) { return b == 0; });
        } else if ((*event)->kind == ExecEvent::Kind::Exit) {
            status = (*event)->status;
        }
    }
    double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    ASSERT_TRUE(status);
    EXPECT_EQ(status->exit_code, 0);
    EXPECT_EQ(bytes, kTotal);
    EXPECT_TRUE(all_zero);
    long hwm_after = proc_status_kib("VmHWM");
    long growth_kib = hwm_after - std::min(hwm_before, rss_before);
    EXPECT_LT(growth_kib, kStreamRssLimitKib)
        << "peak RSS grew by " << growth_kib << " KiB while streaming 1 GiB";
    std::printf("[ info ] 1 GiB in %.2f s (%.0f MB/s), peak RSS growth %ld KiB\n", seconds,
                static_cast<double>(kTotal) / seconds / 1e6, growth_kib);
}

// A caller that stops calling recv() stops the process: output queued in the host stays within the window.
TEST_F(HostExec, SlowReaderBlocksTheProducer) {
    { std::ofstream("/proc/self/clear_refs") << "5"; }
    long rss_before = proc_status_kib("VmRSS");
    auto proc = agent_->exec_stream({.argv = {"head", "-c", "1073741824", "/dev/zero"}});
    ASSERT_TRUE(proc);
    std::this_thread::sleep_for(1500ms);  // at pipe speed, GBs would have arrived by now without credit
    long growth_kib = proc_status_kib("VmHWM") - rss_before;
    EXPECT_LT(growth_kib, 16 * 1024) << "RSS grew " << growth_kib << " KiB with nobody reading";
    // Take a little, then drop the handle: that kills the process and the agent ends the stream.
    auto event = (*proc)->recv();
    ASSERT_TRUE(event && *event);
    EXPECT_EQ((*event)->kind, ExecEvent::Kind::Stdout);
    proc->reset();
    auto deadline = Clock::now() + 10s;
    while (agent_->open_streams() > 0 && Clock::now() < deadline)
        std::this_thread::sleep_for(10ms);
    EXPECT_EQ(agent_->open_streams(), 0u) << "the dropped stream never ended";
    EXPECT_TRUE(agent_->ping());
}

TEST_F(HostExec, HundredConcurrentStreamsFromSeveralThreads) {
    constexpr int kThreads = 4, kPerThread = 25;
    std::atomic<int> failures = 0;
    std::atomic<int> open_at_once = 0, max_open = 0;
    std::latch all_opened(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            // Open all of this thread's streams first, so all 100 run at the same time.
            std::vector<std::unique_ptr<ExecStream>> procs;
            for (int i = 0; i < kPerThread; ++i) {
                int n = t * kPerThread + i;
                auto proc = agent_->exec_stream(
                    {.argv = {"sh", "-c", "read x; echo \"$x $0\"; echo e$0 >&2", std::to_string(n)},
                     .stdin_open = true});
                if (!proc) {
                    ++failures;
                    continue;
                }
                procs.push_back(std::move(*proc));
                int now = ++open_at_once;
                int seen = max_open.load();
                while (now > seen && !max_open.compare_exchange_weak(seen, now)) {
                }
            }
            all_opened.arrive_and_wait();  // none finishes before all 100 are running
            for (size_t i = 0; i < procs.size(); ++i) {
                int n = t * kPerThread + static_cast<int>(i);
                std::string line = "hello\n";
                if (!procs[i]->write_stdin(
                        std::span(reinterpret_cast<const uint8_t*>(line.data()), line.size())) ||
                    !procs[i]->close_stdin()) {
                    ++failures;
                    continue;
                }
                std::string out, err;
                std::optional<ExitStatus> status;
                while (auto event = procs[i]->recv().value_or(std::nullopt)) {
                    if (event->kind == ExecEvent::Kind::Stdout) out += text(event->data);
                    if (event->kind == ExecEvent::Kind::Stderr) err += text(event->data);
                    if (event->kind == ExecEvent::Kind::Exit) status = event->status;
                }
                --open_at_once;
                if (!status || status->exit_code != 0 || out != "hello " + std::to_string(n) + "\n" ||
                    err != "e" + std::to_string(n) + "\n")
                    ++failures;
            }
        });
    }
    for (auto& thread : threads)
        thread.join();
    EXPECT_EQ(failures.load(), 0);
    EXPECT_EQ(max_open.load(), kThreads * kPerThread);
    EXPECT_EQ(agent_->open_streams(), 0u);
}

TEST_F(HostExec, PtyNamesAPseudoTerminal) {
    ExecOutput out = run({.argv = {"tty"}, .pty = true});
    EXPECT_EQ(out.status.exit_code, 0);
    EXPECT_TRUE(is_pts_line(out.stdout_data)) << out.stdout_data;
    EXPECT_EQ(out.stderr_data, "");
}

TEST_F(HostExec, PtySizeFollowsResize) {
    auto proc = agent_->exec_stream({.argv = {"sh", "-c", "stty size; read x; stty size"},
                                     .pty = true,
                                     .stdin_open = true,
                                     .rows = 24,
                                     .cols = 80});
    ASSERT_TRUE(proc) << proc.error().to_string();
    EXPECT_TRUE((*proc)->pty());
    std::string out;
    ASSERT_TRUE(read_stdout_until(**proc, out, "24 80")) << out;
    ASSERT_TRUE((*proc)->resize(50, 132));
    std::string enter = "\r";
    ASSERT_TRUE((*proc)->write_stdin(std::span(reinterpret_cast<const uint8_t*>(enter.data()), 1)));
    ASSERT_TRUE(read_stdout_until(**proc, out, "50 132")) << out;
    auto status = (*proc)->wait();
    ASSERT_TRUE(status) << status.error().to_string();
    EXPECT_EQ(status->exit_code, 0);
}

TEST_F(HostExec, DaemonizingCommandReturnsPromptly) {
    auto start = Clock::now();
    // The background sleep keeps stdout open; the exec must end anyway, soon after the shell exits.
    ExecOutput out = sh("sleep 30 & echo $!");
    auto took = Clock::now() - start;
    EXPECT_EQ(out.status.exit_code, 0);
    EXPECT_LT(took, 5s);
    EXPECT_TRUE(out.status.output_abandoned);
    if (int pid = std::atoi(out.stdout_data.c_str()); pid > 0) ::kill(pid, SIGKILL);  // agentd runs here
}

TEST_F(HostExec, SpawnFailuresHaveKinds) {
    ExecOutput missing = run({.argv = {"sandlot-no-such-command"}});
    ASSERT_TRUE(missing.status.spawn_failure);
    EXPECT_EQ(missing.status.spawn_failure->kind, proto::SpawnErrorKind::NotFound);
    EXPECT_NE(missing.status.spawn_failure->message.find("sandlot-no-such-command"), std::string::npos)
        << missing.status.spawn_failure->message;
    EXPECT_EQ(missing.status.shell_code(), 127);

    // agentd runs on this host, so files made here are what it executes.
    std::string dir = agentd_.dir();
    std::ofstream(dir + "/no-x-bit") << "#!/bin/sh\necho hi\n";
    chmod((dir + "/no-x-bit").c_str(), 0644);
    ExecOutput denied = run({.argv = {dir + "/no-x-bit"}});
    ASSERT_TRUE(denied.status.spawn_failure);
    EXPECT_EQ(denied.status.spawn_failure->kind, proto::SpawnErrorKind::PermissionDenied);
    EXPECT_EQ(denied.status.shell_code(), 126);

    std::ofstream(dir + "/garbage") << "\x01\x02 not a program\n";
    chmod((dir + "/garbage").c_str(), 0755);
    ExecOutput not_exec = run({.argv = {dir + "/garbage"}});
    ASSERT_TRUE(not_exec.status.spawn_failure);
    EXPECT_EQ(not_exec.status.spawn_failure->kind, proto::SpawnErrorKind::NotExecutable);
    EXPECT_EQ(not_exec.status.shell_code(), 126);

    ExecOutput bad_cwd = run({.argv = {"true"}, .cwd = "/sandlot/no/such/dir"});
    ASSERT_TRUE(bad_cwd.status.spawn_failure);
    EXPECT_EQ(bad_cwd.status.spawn_failure->kind, proto::SpawnErrorKind::BadCwd);
    EXPECT_EQ(bad_cwd.status.shell_code(), 125);

    ExecOutput bad_user = run({.argv = {"true"}, .user = "sandlot-no-such-user"});
    ASSERT_TRUE(bad_user.status.spawn_failure);
    EXPECT_EQ(bad_user.status.spawn_failure->kind, proto::SpawnErrorKind::BadUser);
    EXPECT_EQ(bad_user.status.shell_code(), 125);

    // The connection is fine afterwards.
    EXPECT_EQ(sh("echo ok").stdout_data, "ok\n");
}

TEST_F(HostExec, OutputCapKillsTheProcess) {
    auto out = agent_->exec({.argv = {"head", "-c", "10000000", "/dev/zero"}}, {.max_output = 100'000});
    ASSERT_FALSE(out);
    EXPECT_NE(out.error().message.find("output exceeded"), std::string::npos) << out.error().to_string();
    EXPECT_EQ(agent_->open_streams(), 0u);
    EXPECT_EQ(sh("echo still").stdout_data, "still\n");
}

TEST_F(HostExec, SignalReachesTheProcessGroup) {
    auto proc = agent_->exec_stream({.argv = {"sh", "-c", "sleep 30; echo not reached"}});
    ASSERT_TRUE(proc);
    std::this_thread::sleep_for(100ms);
    ASSERT_TRUE((*proc)->signal(SIGTERM));
    auto status = (*proc)->wait();
    ASSERT_TRUE(status) << status.error().to_string();
    EXPECT_EQ(status->signal, SIGTERM);
    EXPECT_EQ(status->shell_code(), 143);
    EXPECT_FALSE((*proc)->signal(0)) << "signal numbers are checked";
}

TEST_F(HostExec, BrokenConnectionWakesEveryWaiter) {
    auto reader = agent_->exec_stream({.argv = {"sleep", "30"}});
    auto writer = agent_->exec_stream({.argv = {"sleep", "30"}, .stdin_open = true});
    ASSERT_TRUE(reader && writer);
    // Fill the writer's stdin window (sleep never reads), so write_stdin blocks on credit.
    std::atomic<bool> write_returned = false;
    std::thread blocked_writer([&] {
        std::vector<uint8_t> big(8 << 20, 'x');
        auto written = (*writer)->write_stdin(big);
        EXPECT_FALSE(written) << "a write into a dead connection cannot succeed";
        write_returned = true;
    });
    std::this_thread::sleep_for(300ms);
    auto start = Clock::now();
    agentd_.kill_now();
    auto event = (*reader)->recv();
    EXPECT_FALSE(event) << "recv() must report the broken connection";
    blocked_writer.join();
    EXPECT_TRUE(write_returned);
    EXPECT_LT(Clock::now() - start, 5s);
    EXPECT_FALSE(agent_->ping());
    EXPECT_FALSE(agent_->exec_stream({.argv = {"true"}}));
}

TEST_F(HostExec, PingStillWorks) {
    auto rtt = agent_->ping();
    ASSERT_TRUE(rtt) << rtt.error().to_string();
    EXPECT_GT(rtt->count(), 0);
}

TEST_F(HostExec, StatsFromTheAgent) {
    ASSERT_TRUE(agent_->hello().features & proto::kFeatureStats);
    auto idle = agent_->stats();
    ASSERT_TRUE(idle) << idle.error().to_string();
    EXPECT_GT(idle->mem_total_kib, 0u);
    EXPECT_LE(idle->mem_available_kib, idle->mem_total_kib);
    EXPECT_GT(idle->processes, 0u);
    EXPECT_GT(idle->uptime_ns, 0u);
    EXPECT_EQ(idle->exec_sessions, 0u);

    // The agent handles frames in order, so the EXEC_STARTs are in before the STATS_REQUEST.
    auto first = agent_->exec_stream({.argv = {"sleep", "30"}});
    auto second = agent_->exec_stream({.argv = {"sleep", "30"}});
    ASSERT_TRUE(first && second);
    auto busy = agent_->stats();
    ASSERT_TRUE(busy) << busy.error().to_string();
    EXPECT_EQ(busy->exec_sessions, 2u);
    EXPECT_GE(busy->uptime_ns, idle->uptime_ns);
}

// ---------------------------------------------------------------------------------------------------------
// attach(): a real local pseudo-terminal stands in for the user's terminal; the test types into its master.

struct LocalTerminal {
    UniqueFd master, slave;
    LocalTerminal(uint16_t rows, uint16_t cols) {
        int m = -1, s = -1;
        winsize ws{};
        ws.ws_row = rows;
        ws.ws_col = cols;
        EXPECT_EQ(openpty(&m, &s, nullptr, nullptr, &ws), 0);
        master = UniqueFd(m);
        slave = UniqueFd(s);
    }
    void type(const std::string& keys) const {
        ASSERT_EQ(::write(master.get(), keys.data(), keys.size()), static_cast<ssize_t>(keys.size()));
    }
    // Reads what reached the terminal until `want` appears or 10 s pass.
    bool screen_until(std::string& screen, const std::string& want) const {
        auto deadline = Clock::now() + 10s;
        while (screen.find(want) == std::string::npos && Clock::now() < deadline) {
            pollfd p{master.get(), POLLIN, 0};
            if (poll(&p, 1, 100) <= 0) continue;
            char buf[4096];
            ssize_t n = ::read(master.get(), buf, sizeof buf);
            if (n > 0) screen.append(buf, static_cast<size_t>(n));
        }
        return screen.find(want) != std::string::npos;
    }
};

bool same_mode(const termios& a, const termios& b) {
    return a.c_iflag == b.c_iflag && a.c_oflag == b.c_oflag && a.c_cflag == b.c_cflag &&
           a.c_lflag == b.c_lflag;
}

TEST_F(HostExec, AttachBridgesATerminalAndRestoresIt) {
    LocalTerminal term(30, 100);
    termios before{};
    ASSERT_EQ(tcgetattr(term.slave.get(), &before), 0);
    ASSERT_TRUE(before.c_lflag & ICANON);

    auto size = terminal_size(term.slave.get());
    ASSERT_TRUE(size);
    EXPECT_EQ(*size, (std::pair<uint16_t, uint16_t>{30, 100}));
    auto proc =
        agent_->exec_stream({.argv = {"sh", "-c", "stty size; read x; echo \"got:$x\"; stty size; exit 7"},
                             .pty = true,
                             .stdin_open = true,
                             .rows = size->first,
                             .cols = size->second});
    ASSERT_TRUE(proc) << proc.error().to_string();

    Result<ExitStatus> result = make_error("attach did not run");
    std::thread session([&] { result = attach(**proc, term.slave.get(), term.slave.get()); });

    std::string screen;
    EXPECT_TRUE(term.screen_until(screen, "30 100")) << screen;
    termios during{};
    ASSERT_EQ(tcgetattr(term.slave.get(), &during), 0);
    EXPECT_FALSE(during.c_lflag & ICANON) << "the local terminal is raw while attached";
    EXPECT_FALSE(during.c_lflag & ECHO);

    // A new local size, announced by SIGWINCH, reaches the remote PTY.
    winsize ws{};
    ws.ws_row = 40;
    ws.ws_col = 120;
    ASSERT_EQ(ioctl(term.master.get(), TIOCSWINSZ, &ws), 0);
    ::kill(getpid(), SIGWINCH);
    std::this_thread::sleep_for(300ms);

    term.type(
        "hello\r");  // raw mode: the CR goes to the remote terminal, whose line discipline ends the line
    EXPECT_TRUE(term.screen_until(screen, "got:hello")) << screen;
    EXPECT_TRUE(term.screen_until(screen, "40 120")) << screen;
    session.join();
    ASSERT_TRUE(result) << result.error().to_string();
    EXPECT_EQ(result->exit_code, 7);

    termios after{};
    ASSERT_EQ(tcgetattr(term.slave.get(), &after), 0);
    EXPECT_TRUE(same_mode(before, after)) << "terminal mode not restored";
    struct sigaction winch {};
    sigaction(SIGWINCH, nullptr, &winch);
    EXPECT_EQ(winch.sa_handler, SIG_DFL) << "signal handlers not restored";
}

TEST_F(HostExec, AttachRestoresTheTerminalWhenTheConnectionBreaks) {
    LocalTerminal term(24, 80);
    termios before{};
    ASSERT_EQ(tcgetattr(term.slave.get(), &before), 0);
    auto proc = agent_->exec_stream({.argv = {"sleep", "30"}, .pty = true, .stdin_open = true});
    ASSERT_TRUE(proc);
    Result<ExitStatus> result = make_error("attach did not run");
    std::thread session([&] { result = attach(**proc, term.slave.get(), term.slave.get()); });
    auto deadline = Clock::now() + 5s;
    termios during{};
    do {
        std::this_thread::sleep_for(10ms);
        tcgetattr(term.slave.get(), &during);
    } while ((during.c_lflag & ICANON) && Clock::now() < deadline);
    EXPECT_FALSE(during.c_lflag & ICANON);
    agentd_.kill_now();
    session.join();
    EXPECT_FALSE(result) << "attach must report the broken connection";
    termios after{};
    ASSERT_EQ(tcgetattr(term.slave.get(), &after), 0);
    EXPECT_TRUE(same_mode(before, after)) << "terminal mode not restored after an error";
}

// Pipe mode: stdin from a pipe until EOF, stdout and stderr to their own fds, and a signal sent to this
// process is forwarded to the remote process instead of ending us.
TEST_F(HostExec, AttachPipesAndForwardsSignals) {
    int in[2], out[2], err[2];
    ASSERT_EQ(pipe2(in, O_CLOEXEC), 0);
    ASSERT_EQ(pipe2(out, O_CLOEXEC), 0);
    ASSERT_EQ(pipe2(err, O_CLOEXEC), 0);
    UniqueFd in_r(in[0]), in_w(in[1]), out_r(out[0]), out_w(out[1]), err_r(err[0]), err_w(err[1]);
    ASSERT_EQ(::write(in_w.get(), "abc\n", 4), 4);
    in_w.reset();

    auto proc =
        agent_->exec_stream({.argv = {"sh", "-c", "cat; echo to-stderr >&2; sleep 30"}, .stdin_open = true});
    ASSERT_TRUE(proc);
    Result<ExitStatus> result = make_error("attach did not run");
    std::thread session([&] { result = attach(**proc, in_r.get(), out_w.get(), {.err_fd = err_w.get()}); });
    // Once the handler is in place, SIGTERM to us goes to the sandboxed process.
    auto deadline = Clock::now() + 5s;
    struct sigaction term {};
    do {
        std::this_thread::sleep_for(10ms);
        sigaction(SIGTERM, nullptr, &term);
    } while (term.sa_handler == SIG_DFL && Clock::now() < deadline);
    ASSERT_NE(term.sa_handler, SIG_DFL);
    std::this_thread::sleep_for(200ms);  // let cat and echo run first
    ::kill(getpid(), SIGTERM);
    session.join();
    ASSERT_TRUE(result) << result.error().to_string();
    EXPECT_EQ(result->signal, SIGTERM);
    out_w.reset();
    err_w.reset();
    char buf[256];
    ssize_t n = ::read(out_r.get(), buf, sizeof buf);
    EXPECT_EQ(std::string(buf, static_cast<size_t>(std::max<ssize_t>(n, 0))), "abc\n");
    n = ::read(err_r.get(), buf, sizeof buf);
    EXPECT_EQ(std::string(buf, static_cast<size_t>(std::max<ssize_t>(n, 0))), "to-stderr\n");
    sigaction(SIGTERM, nullptr, &term);
    EXPECT_EQ(term.sa_handler, SIG_DFL);
}

// ---------------------------------------------------------------------------------------------------------
// A scripted fake agent: the other end of a socketpair, for behaviour a real agentd never shows.

class FakeAgent {
  public:
    explicit FakeAgent(proto::Hello hello = default_hello()) {
        int fds[2];
        EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
        peer = UniqueFd(fds[1]);
        UniqueFd host_end(fds[0]);
        set_socket_timeout(peer.get(), 10);
        set_socket_timeout(host_end.get(), 10);
        EXPECT_TRUE(proto::write_frame(peer.get(), proto::make_frame(hello)));
        auto opened = AgentConnection::open(std::move(host_end));
        EXPECT_TRUE(opened) << opened.error().to_string();
        if (opened) conn = std::move(*opened);
    }

    static proto::Hello default_hello() {
        proto::Hello hello;
        hello.protocol_major = proto::kProtocolMajor;
        hello.protocol_minor = proto::kProtocolMinor;
        hello.agent_version = "9.8.7";
        hello.features = proto::kFeatureExec;
        hello.max_frame_payload = proto::kMaxFramePayload;
        hello.max_streams = 1024;
        hello.stdin_window = 256 * 1024;
        return hello;
    }

    proto::Frame read() {
        auto frame = proto::read_frame(peer.get());
        EXPECT_TRUE(frame) << frame.error().to_string();
        return frame.value_or(proto::Frame{});
    }
    void send(const proto::Frame& frame) { EXPECT_TRUE(proto::write_frame(peer.get(), frame)); }
    void send(proto::MessageType type, uint32_t stream, std::vector<uint8_t> payload = {}) {
        send(proto::make_frame(type, stream, std::move(payload)));
    }
    bool nothing_sent() {
        uint8_t byte;
        return recv(peer.get(), &byte, 1, MSG_DONTWAIT | MSG_PEEK) < 0 && errno == EAGAIN;
    }

    UniqueFd peer;
    std::unique_ptr<AgentConnection> conn;
};

TEST(HostExecFake, RefusesWhatTheAgentLacksAndSendsNothing) {
    FakeAgent fake;
    ASSERT_TRUE(fake.conn);
    auto pty = fake.conn->exec_stream({.argv = {"sh"}, .pty = true});
    ASSERT_FALSE(pty);
    EXPECT_EQ(pty.error().message, "agent 9.8.7 (protocol " + std::to_string(proto::kProtocolMajor) + "." +
                                       std::to_string(proto::kProtocolMinor) + ") does not support " +
                                       proto::feature_name(proto::kFeaturePty));
    auto user = fake.conn->exec({.argv = {"id"}, .user = "nobody"});
    ASSERT_FALSE(user);
    EXPECT_NE(user.error().message.find(proto::feature_name(proto::kFeatureExecUser)), std::string::npos);
    EXPECT_FALSE(fake.conn->exec_stream({.argv = {"x"}, .rlimits = {proto::Rlimit{.resource = 7}}}));
    EXPECT_FALSE(fake.conn->exec_stream({.argv = {"x"}, .timeout = 5s}));
    EXPECT_TRUE(fake.nothing_sent());

    proto::Hello old = FakeAgent::default_hello();
    old.features = 0;
    FakeAgent no_exec(old);
    auto refused = no_exec.conn->shell("true");
    ASSERT_FALSE(refused);
    EXPECT_NE(refused.error().message.find("does not support " + proto::feature_name(proto::kFeatureExec)),
              std::string::npos)
        << refused.error().message;
    EXPECT_TRUE(no_exec.nothing_sent());
}

TEST(HostExecFake, SilentAgentTimesControlRequestsOut) {
    // A guest that reads requests and never answers must not hang PING or SHUTDOWN (nor sandlot run's
    // teardown).
    FakeAgent fake;
    ASSERT_TRUE(fake.conn);
    auto start = std::chrono::steady_clock::now();
    auto ping = fake.conn->ping(200ms);
    ASSERT_FALSE(ping);
    EXPECT_EQ(ping.error().code, ETIMEDOUT);
    auto shutdown = fake.conn->shutdown(200ms);
    ASSERT_FALSE(shutdown);
    EXPECT_EQ(shutdown.error().code, ETIMEDOUT);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
    EXPECT_EQ(fake.read().type, static_cast<uint16_t>(proto::MessageType::Ping));
    EXPECT_EQ(fake.read().type, static_cast<uint16_t>(proto::MessageType::Shutdown));
    // A late PONG for the abandoned PING does not confuse the next one.
    fake.send(proto::make_frame(proto::Pong{1}));
    std::thread answer([&] {
        proto::Frame next = fake.read();
        auto nonce = proto::decode_ping(next.payload);
        ASSERT_TRUE(nonce);
        fake.send(proto::make_frame(proto::Pong{nonce->nonce}));
    });
    EXPECT_TRUE(fake.conn->ping(10s));
    answer.join();
}

TEST(HostExecFake, StatsNeedsTheFeatureAndTimesOut) {
    FakeAgent old;  // default_hello() has only kFeatureExec
    ASSERT_TRUE(old.conn);
    auto refused = old.conn->stats();
    ASSERT_FALSE(refused);
    EXPECT_NE(refused.error().message.find("does not support stats"), std::string::npos)
        << refused.error().message;
    EXPECT_TRUE(old.nothing_sent());

    proto::Hello hello = FakeAgent::default_hello();
    hello.features |= proto::kFeatureStats;
    FakeAgent fake(hello);
    ASSERT_TRUE(fake.conn);
    auto silent = fake.conn->stats(200ms);
    ASSERT_FALSE(silent);
    EXPECT_EQ(silent.error().code, ETIMEDOUT);
    EXPECT_EQ(fake.read().type, static_cast<uint16_t>(proto::MessageType::StatsRequest));

    // A truncated STATS is an error, not garbage numbers; a good one comes through whole.
    std::thread answer([&] {
        EXPECT_EQ(fake.read().type, static_cast<uint16_t>(proto::MessageType::StatsRequest));
        fake.send(proto::MessageType::Stats, proto::kControlStream, {1, 2, 3});
        EXPECT_EQ(fake.read().type, static_cast<uint16_t>(proto::MessageType::StatsRequest));
        fake.send(
            proto::make_frame(proto::Stats{.mem_total_kib = 100, .mem_available_kib = 40, .processes = 3}));
    });
    auto truncated = fake.conn->stats(10s);
    EXPECT_FALSE(truncated);
    auto good = fake.conn->stats(10s);
    answer.join();
    ASSERT_TRUE(good) << good.error().to_string();
    EXPECT_EQ(*good, (proto::Stats{.mem_total_kib = 100, .mem_available_kib = 40, .processes = 3}));
}

TEST(HostExecFake, SpawnFailureErrorBecomesAnExitStatus) {
    FakeAgent fake;
    auto proc = fake.conn->exec_stream({.argv = {"nope"}});
    ASSERT_TRUE(proc);
    proto::Frame start = fake.read();
    ASSERT_EQ(start.type, static_cast<uint16_t>(proto::MessageType::ExecStart));
    auto decoded = proto::decode_exec_start(start.payload);
    ASSERT_TRUE(decoded);
    EXPECT_EQ(decoded->argv, std::vector<std::string>{"nope"});
    EXPECT_EQ(decoded->output_window, kOutputWindow);
    EXPECT_NE(start.stream_id, proto::kControlStream);
    fake.send(
        proto::make_frame(proto::ErrorMessage{.code = static_cast<uint32_t>(proto::ErrorCode::SpawnFailed),
                                              .errno_value = ENOENT,
                                              .message = "nope: command not found",
                                              .kind = static_cast<uint32_t>(proto::SpawnErrorKind::NotFound)},
                          start.stream_id));
    auto status = (*proc)->wait();
    ASSERT_TRUE(status) << status.error().to_string();
    ASSERT_TRUE(status->spawn_failure);
    EXPECT_EQ(status->spawn_failure->kind, proto::SpawnErrorKind::NotFound);
    EXPECT_EQ(status->spawn_failure->errno_value, ENOENT);
    EXPECT_EQ(status->spawn_failure->message, "nope: command not found");
    EXPECT_EQ(status->shell_code(), 127);
    EXPECT_EQ(fake.conn->open_streams(), 0u);
}

TEST(HostExecFake, IgnoresFramesForUnknownStreamsAndGarbage) {
    FakeAgent fake;
    auto proc = fake.conn->exec_stream({.argv = {"x"}});
    ASSERT_TRUE(proc);
    uint32_t id = fake.read().stream_id;
    fake.send(proto::MessageType::Stdout, id + 1000, {'z'});                // nobody's stream
    fake.send(proto::MessageType::ExecStarted, id, {1, 2});                 // truncated payload
    fake.send(proto::MessageType::Exit, id, {1});                           // truncated payload
    fake.send(static_cast<proto::MessageType>(0x7777), id, {});             // unknown type
    fake.send(proto::MessageType::Pong, proto::kControlStream, {0, 0, 0});  // nobody asked
    fake.send(proto::MessageType::OutputEof, id, {9});                      // bad channel
    fake.send(proto::make_frame(proto::ExecStarted{.pid = 42, .stdin_window = 0}, id));
    fake.send(proto::MessageType::Stdout, id, {'o', 'k'});
    fake.send(proto::make_frame(proto::Exit{.exit_code = 3}, id));
    std::string out;
    std::optional<ExitStatus> status;
    while (auto event = (*proc)->recv().value_or(std::nullopt)) {
        if (event->kind == ExecEvent::Kind::Stdout) out += text(event->data);
        if (event->kind == ExecEvent::Kind::Exit) status = event->status;
    }
    ASSERT_TRUE(status);
    EXPECT_EQ(status->exit_code, 3);
    EXPECT_EQ(out, "ok");
    EXPECT_EQ((*proc)->pid(), 42u);
    EXPECT_EQ(fake.conn->ignored_frames(), 6u);
    // Frames after EXIT for the ended stream are ignored as well.
    fake.send(proto::MessageType::Stdout, id, {'l', 'a', 't', 'e'});
    std::thread ponger([&] {
        proto::Frame ping = fake.read();
        fake.send(proto::MessageType::Pong, proto::kControlStream, ping.payload);
    });
    EXPECT_TRUE(fake.conn->ping());
    ponger.join();
    EXPECT_EQ(fake.conn->ignored_frames(), 7u);
}

TEST(HostExecFake, OutputCreditIsReturnedAsTheCallerConsumes) {
    FakeAgent fake;
    auto proc = fake.conn->exec_stream({.argv = {"x"}});
    ASSERT_TRUE(proc);
    uint32_t id = fake.read().stream_id;
    fake.send(proto::make_frame(proto::ExecStarted{.pid = 1}, id));
    // The whole window in 128 KiB frames; nothing comes back until the caller takes data.
    constexpr size_t kChunk = 128 * 1024;
    for (size_t sent = 0; sent < kOutputWindow; sent += kChunk)
        fake.send(proto::MessageType::Stdout, id, std::vector<uint8_t>(kChunk, 'a'));
    std::this_thread::sleep_for(100ms);
    EXPECT_TRUE(fake.nothing_sent()) << "credit returned before the caller consumed anything";
    size_t taken = 0;
    while (taken < kOutputWindow) {
        auto event = (*proc)->recv();
        ASSERT_TRUE(event && *event);
        taken += (*event)->data.size();
    }
    uint64_t granted = 0;
    while (granted < kOutputWindow) {
        proto::Frame frame = fake.read();
        ASSERT_EQ(frame.type, static_cast<uint16_t>(proto::MessageType::Window));
        ASSERT_EQ(frame.stream_id, id);
        auto window = proto::decode_window(frame.payload);
        ASSERT_TRUE(window);
        EXPECT_GE(window->bytes, kOutputWindow / 4) << "grants are batched";
        granted += window->bytes;
    }
    EXPECT_EQ(granted, kOutputWindow);
    fake.send(proto::make_frame(proto::Exit{.exit_code = 0}, id));
    EXPECT_TRUE((*proc)->wait());
}

TEST(HostExecFake, OutputBeyondTheWindowEndsTheStream) {
    FakeAgent fake;
    auto proc = fake.conn->exec_stream({.argv = {"x"}});
    ASSERT_TRUE(proc);
    uint32_t id = fake.read().stream_id;
    fake.send(proto::make_frame(proto::ExecStarted{.pid = 1}, id));
    for (int i = 0; i < 9; ++i)  // 9 x 128 KiB > 1 MiB window
        fake.send(proto::MessageType::Stdout, id, std::vector<uint8_t>(128 * 1024, 'a'));
    proto::Frame kill = fake.read();
    ASSERT_EQ(kill.type, static_cast<uint16_t>(proto::MessageType::Signal));
    EXPECT_EQ(proto::decode_signal(kill.payload).value().signo, SIGKILL);
    auto event = (*proc)->recv();
    EXPECT_FALSE(event);
    fake.send(proto::make_frame(proto::Exit{.signal = 9}, id));
    auto deadline = Clock::now() + 5s;
    while (fake.conn->open_streams() > 0 && Clock::now() < deadline)
        std::this_thread::sleep_for(5ms);
    EXPECT_EQ(fake.conn->open_streams(), 0u);
}

TEST(HostExecFake, StdinRespectsTheAgentsWindow) {
    FakeAgent fake;
    auto proc = fake.conn->exec_stream({.argv = {"cat"}, .stdin_open = true});
    ASSERT_TRUE(proc);
    uint32_t id = fake.read().stream_id;
    std::atomic<bool> done = false;
    std::thread writer([&] {
        EXPECT_TRUE((*proc)->write_stdin(std::vector<uint8_t>(300'000, 's')));
        done = true;
    });
    std::this_thread::sleep_for(100ms);
    EXPECT_TRUE(fake.nothing_sent()) << "stdin sent before EXEC_STARTED granted a window";
    fake.send(proto::make_frame(proto::ExecStarted{.pid = 5, .stdin_window = 100'000}, id));
    size_t received = 0;
    while (received < 100'000) {
        proto::Frame frame = fake.read();
        ASSERT_EQ(frame.type, static_cast<uint16_t>(proto::MessageType::Stdin));
        received += frame.payload.size();
    }
    EXPECT_EQ(received, 100'000u);
    std::this_thread::sleep_for(100ms);
    EXPECT_TRUE(fake.nothing_sent());
    EXPECT_FALSE(done);
    fake.send(proto::make_frame(proto::Window{.bytes = 200'000}, id));
    while (received < 300'000) {
        proto::Frame frame = fake.read();
        ASSERT_EQ(frame.type, static_cast<uint16_t>(proto::MessageType::Stdin));
        received += frame.payload.size();
    }
    writer.join();
    EXPECT_TRUE(done);
    ASSERT_TRUE((*proc)->close_stdin());
    EXPECT_EQ(fake.read().type, static_cast<uint16_t>(proto::MessageType::StdinClose));
    fake.send(proto::make_frame(proto::Exit{.exit_code = 0}, id));
    EXPECT_TRUE((*proc)->wait());
}

TEST(HostExecFake, StreamLimitBlocksUntilOneEnds) {
    proto::Hello hello = FakeAgent::default_hello();
    hello.max_streams = 2;
    FakeAgent fake(hello);
    auto a = fake.conn->exec_stream({.argv = {"a"}});
    auto b = fake.conn->exec_stream({.argv = {"b"}});
    ASSERT_TRUE(a && b);
    uint32_t id_a = fake.read().stream_id;
    uint32_t id_b = fake.read().stream_id;
    EXPECT_NE(id_a, id_b);
    std::atomic<bool> third_started = false;
    std::unique_ptr<ExecStream> c;
    std::thread opener([&] {
        auto proc = fake.conn->exec_stream({.argv = {"c"}});
        EXPECT_TRUE(proc);
        if (proc) c = std::move(*proc);
        third_started = true;
    });
    std::this_thread::sleep_for(150ms);
    EXPECT_FALSE(third_started) << "a third stream opened beyond max_streams";
    fake.send(proto::make_frame(proto::Exit{.exit_code = 0}, id_a));
    opener.join();
    EXPECT_TRUE(third_started);
    uint32_t id_c = fake.read().stream_id;
    EXPECT_NE(id_c, id_a) << "stream ids are not reused";
    EXPECT_NE(id_c, id_b);
}

TEST(HostExecFake, DroppingAHandleKillsAndDrains) {
    FakeAgent fake;
    auto proc = fake.conn->exec_stream({.argv = {"x"}});
    ASSERT_TRUE(proc);
    uint32_t id = fake.read().stream_id;
    fake.send(proto::make_frame(proto::ExecStarted{.pid = 1}, id));
    fake.send(proto::MessageType::Stdout, id, std::vector<uint8_t>(1000, 'a'));
    std::this_thread::sleep_for(50ms);
    proc->reset();
    proto::Frame kill = fake.read();
    ASSERT_EQ(kill.type, static_cast<uint16_t>(proto::MessageType::Signal));
    EXPECT_EQ(proto::decode_signal(kill.payload).value().signo, SIGKILL);
    proto::Frame grant = fake.read();
    ASSERT_EQ(grant.type, static_cast<uint16_t>(proto::MessageType::Window));
    EXPECT_EQ(proto::decode_window(grant.payload).value().bytes, 1000u);
    // Output that still arrives is credited without anyone reading it.
    for (int i = 0; i < 8; ++i)
        fake.send(proto::MessageType::Stdout, id, std::vector<uint8_t>(128 * 1024, 'b'));
    uint64_t granted = 0;
    while (granted < 1024 * 1024) {
        proto::Frame frame = fake.read();
        ASSERT_EQ(frame.type, static_cast<uint16_t>(proto::MessageType::Window));
        granted += proto::decode_window(frame.payload).value().bytes;
    }
    EXPECT_EQ(fake.conn->open_streams(), 1u);
    fake.send(proto::make_frame(proto::Exit{.signal = 9}, id));
    auto deadline = Clock::now() + 5s;
    while (fake.conn->open_streams() > 0 && Clock::now() < deadline)
        std::this_thread::sleep_for(5ms);
    EXPECT_EQ(fake.conn->open_streams(), 0u);
}

TEST(HostExecFake, PeerClosingMidStreamFailsRecvAndStdin) {
    FakeAgent fake;
    auto proc = fake.conn->exec_stream({.argv = {"x"}, .stdin_open = true});
    ASSERT_TRUE(proc);
    uint32_t id = fake.read().stream_id;
    fake.send(proto::make_frame(proto::ExecStarted{.pid = 1, .stdin_window = 0}, id));
    fake.send(proto::MessageType::Stdout, id, {'p', 'a', 'r', 't'});
    std::thread writer([&] { EXPECT_FALSE((*proc)->write_stdin(std::vector<uint8_t>(10, 'x'))); });
    std::this_thread::sleep_for(100ms);
    fake.peer.reset();
    auto first = (*proc)->recv();
    ASSERT_TRUE(first && *first) << "output that arrived before the break is still delivered";
    EXPECT_EQ(text((*first)->data), "part");
    auto second = (*proc)->recv();
    ASSERT_FALSE(second);
    EXPECT_NE(second.error().message.find("closed"), std::string::npos) << second.error().to_string();
    writer.join();
    EXPECT_FALSE(fake.conn->ping());
}

TEST(HostExecFake, OversizedFrameBreaksTheConnectionCleanly) {
    FakeAgent fake;
    auto proc = fake.conn->exec_stream({.argv = {"x"}});
    ASSERT_TRUE(proc);
    uint32_t id = fake.read().stream_id;
    // A header announcing more than the frame limit.
    uint8_t header[proto::kFrameHeaderSize];
    proto::encode_header({.payload_length = proto::kMaxFramePayload + 1,
                          .stream_id = id,
                          .type = static_cast<uint16_t>(proto::MessageType::Stdout)},
                         header);
    ASSERT_EQ(::write(fake.peer.get(), header, sizeof header), static_cast<ssize_t>(sizeof header));
    auto event = (*proc)->recv();
    ASSERT_FALSE(event);
    EXPECT_FALSE(fake.conn->exec_stream({.argv = {"y"}}));
}

}  // namespace
}  // namespace sandlot::host
