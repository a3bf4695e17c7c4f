// End to end in real microVMs: `sandlot run` as a user runs it (one boot per run), and the host library's
// exec API against one shared sandbox where the CLI is not the subject.
#include <gtest/gtest.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "host/lib/exec.h"
#include "host/lib/paths.h"
#include "host/lib/sandbox.h"
#include "host/lib/vsock_uds.h"
#include "proto/base/unique_fd.h"
#include "proto/exec.h"
#include "proto/frame.h"
#include "proto/messages.h"
#include "tests/vm/vm_test_support.h"

namespace sandlot::vmtest {
namespace {

using namespace std::chrono_literals;

size_t count_lines(const std::string& text) {
    return static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
}

// ---------------------------------------------------------------------------------------------------------
// `sandlot run`: each run boots and tears down its own sandbox.

TEST(RunCli, ExitStatusSeparateStreamsAndABackgroundChild) {
    SKIP_WITHOUT_KVM();
    // The background sleep keeps the output pipes open: the run must still end once sh exits.
    auto run = run_sandlot({"run", "--", "sh", "-c", "sleep 300 & echo out; echo err >&2; exit 3"});
    EXPECT_EQ(run.status, 3) << run.err;
    EXPECT_EQ(run.out, "out\n");
    EXPECT_EQ(run.err, "err\n");
    EXPECT_LT(run.elapsed, 120s) << "a daemonized child must not hold the run open";
}

TEST(RunCli, ExitCodesFollowTheShell) {
    SKIP_WITHOUT_KVM();
    struct Case {
        std::vector<std::string> command;
        int status;
    };
    // Exit status 0 is what the other runs below end with; each run here costs a boot.
    std::vector<Case> cases = {
        {{"false"}, 1}, {{"sh", "-c", "exit 255"}, 255}, {{"sh", "-c", "kill -9 $$"}, 128 + 9}};
    for (const auto& c : cases) {
        std::vector<std::string> args = {"run", "--"};
        args.insert(args.end(), c.command.begin(), c.command.end());
        auto run = run_sandlot(args);
        EXPECT_EQ(run.status, c.status) << c.command.back() << ": " << run.err;
        EXPECT_EQ(run.err, "") << c.command.back();
    }
}

TEST(RunCli, StdinIsForwardedWithDashI) {
    SKIP_WITHOUT_KVM();
    auto run = run_sandlot({"run", "-i", "--", "cat"}, {.input = "data"});
    EXPECT_EQ(run.status, 0) << run.err;
    EXPECT_EQ(run.out, "data");
}

// Up to 1 GiB in 1 MiB pieces, as many as the guest writes in 15 s (1 GiB on hardware; far less in the nested
// rig, where every virtqueue kick is emulated). The guest reports the count, so the byte count is exact
// either way. The test also stops reading for a while: without flow control sandlot would buffer the output
// meanwhile.
TEST(RunCli, LargeOutputArrivesExactlyWithBoundedMemory) {
    SKIP_WITHOUT_KVM();
    constexpr uint64_t kMiB = 1 << 20;
    std::vector<std::string> env;
#if defined(__SANITIZE_ADDRESS__)
    // ASan keeps freed memory in a quarantine (256 MiB by default), which would hide what sandlot really
    // holds.
    env.push_back("ASAN_OPTIONS=quarantine_size_mb=0");
#endif
    auto run =
        run_sandlot({"run", "--", "sh", "-c",
                     "end=$(($(date +%s) + 15)); n=0; "
                     "while [ $n -lt 1024 ] && [ $(date +%s) -lt $end ]; do "
                     "head -c 1048576 /dev/zero || exit 1; n=$((n + 1)); done; echo $n >&2"},
                    {.keep_stdout = false, .timeout = 300s, .pause_after_first_output = 5s, .env = env});
    EXPECT_EQ(run.status, 0) << run.err;
    uint64_t pieces = std::strtoull(run.err.c_str(), nullptr, 10);
    EXPECT_GE(pieces, 4u) << run.err;
    EXPECT_EQ(run.stdout_bytes, pieces * kMiB) << run.err;
    // What sandlot holds beyond its working set is one credit window (1 MiB) plus a frame or two in flight.
    ASSERT_GT(run.rss_at_first_output_kib, 0u);
    uint64_t growth_kib = run.peak_rss_kib - std::min(run.peak_rss_kib, run.rss_at_first_output_kib);
#if defined(__SANITIZE_ADDRESS__)
    // ASan's allocator keeps per-thread caches and shadow pages on top; the tight bound is the normal
    // build's.
    constexpr uint64_t kGrowthLimitKib = 24u * 1024;
#else
    constexpr uint64_t kGrowthLimitKib = 8u * 1024;
#endif
    EXPECT_LT(growth_kib, kGrowthLimitKib) << "sandlot's memory must not grow with the output";
    EXPECT_LT(run.peak_rss_kib, 100u * 1024);
    std::printf(
        "[ info     ] %llu MiB through sandlot run in %.1f s (boot, a 5 s pause and shutdown included); "
        "RSS %llu KiB at first output, peak %llu KiB\n",
        static_cast<unsigned long long>(pieces), run.elapsed.count(),
        static_cast<unsigned long long>(run.rss_at_first_output_kib),
        static_cast<unsigned long long>(run.peak_rss_kib));
}

TEST(RunCli, UserWorkdirAndEnvironment) {
    SKIP_WITHOUT_KVM();
    setenv("SANDLOT_TEST_FROM_HOST", "from-host", 1);
    unsetenv("SANDLOT_TEST_UNSET");
    auto run = run_sandlot({"run", "-u", "sandlot", "-w", "/tmp", "-e", "FOO=bar baz", "-e",
                            "SANDLOT_TEST_FROM_HOST", "-e", "SANDLOT_TEST_UNSET", "--", "sh", "-c",
                            "id -u; id -g; pwd; echo \"$HOME|$USER|$FOO|$SANDLOT_TEST_FROM_HOST|"
                            "${SANDLOT_TEST_UNSET-unset}\""});
    EXPECT_EQ(run.status, 0) << run.err;
    EXPECT_EQ(run.out, "1000\n1000\n/tmp\n/home/sandlot|sandlot|bar baz|from-host|unset\n") << run.err;
}

TEST(RunCli, SignalsAreForwardedToTheCommand) {
    SKIP_WITHOUT_KVM();
    bool sent = false;
    auto run = run_sandlot(
        {"run", "--", "sh", "-c", "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 1; done"},
        {.on_stdout = [&](pid_t pid, const std::string& out) {
            if (!sent && out.find("ready\n") != std::string::npos) {
                kill(pid, SIGTERM);
                sent = true;
            }
        }});
    EXPECT_TRUE(sent);
    EXPECT_EQ(run.status, 7) << run.err;
    EXPECT_EQ(run.out, "ready\ngot-term\n") << run.err;
}

TEST(RunCli, FailuresAreOneClearLine) {
    SKIP_WITHOUT_KVM();
    auto not_found = run_sandlot({"run", "--", "no-such-command", "arg"});
    EXPECT_EQ(not_found.status, 127);
    EXPECT_EQ(not_found.err, "sandlot: error: command not found in sandbox: no-such-command\n");
    EXPECT_EQ(not_found.out, "");

    auto bad_user = run_sandlot({"run", "-u", "no-such-user", "--", "true"});
    EXPECT_EQ(bad_user.status, 125);
    EXPECT_TRUE(bad_user.err.starts_with("sandlot: error: ")) << bad_user.err;
    EXPECT_NE(bad_user.err.find("no-such-user"), std::string::npos) << bad_user.err;
    EXPECT_EQ(count_lines(bad_user.err), 1u) << bad_user.err;

    auto bad_cwd = run_sandlot({"run", "-w", "/no/such/dir", "--", "true"});
    EXPECT_EQ(bad_cwd.status, 125);
    EXPECT_TRUE(bad_cwd.err.starts_with("sandlot: error: ")) << bad_cwd.err;
    EXPECT_NE(bad_cwd.err.find("/no/such/dir"), std::string::npos) << bad_cwd.err;
    EXPECT_EQ(count_lines(bad_cwd.err), 1u) << bad_cwd.err;

    // Refused before anything boots.
    for (const auto& args : std::vector<std::vector<std::string>>{
             {"run"}, {"run", "--memory", "lots", "--", "true"}, {"run", "-e", "=x", "--", "true"}}) {
        auto run = run_sandlot(args);
        EXPECT_EQ(run.status, 125) << args.back() << ": " << run.err;
        EXPECT_TRUE(run.err.starts_with("sandlot: error: ")) << run.err;
        EXPECT_EQ(count_lines(run.err), 1u) << run.err;
        EXPECT_LT(run.elapsed, 5s);
    }
}

TEST(RunCli, GuestThatNeverBecomesReadyIsATimeout) {
    SKIP_WITHOUT_KVM();
    // No guest can boot in 1 ms.
    auto run = run_sandlot({"run", "--boot-timeout", "0.001", "--", "true"});
    EXPECT_EQ(run.status, 125);
    EXPECT_TRUE(run.err.starts_with("sandlot: error: the sandbox did not become ready within")) << run.err;
    EXPECT_EQ(count_lines(run.err), 1u) << run.err;
}

// The test is the terminal: sandlot runs on the slave side of a PTY (its controlling terminal), the test
// reads and writes the master side and resizes it, which makes the kernel send sandlot SIGWINCH.
class TerminalHarness {
  public:
    bool start(const std::vector<std::string>& args, winsize size) {
        int master = -1, slave = -1;
        if (openpty(&master, &slave, nullptr, nullptr, &size) != 0) return false;
        master_ = UniqueFd(master);
        slave_ = UniqueFd(slave);
        tcgetattr(slave, &initial_mode_);
        pid_ = fork();
        if (pid_ == 0) {
            setsid();
            ioctl(slave, TIOCSCTTY, 0);
            dup2(slave, 0);
            dup2(slave, 1);
            dup2(slave, 2);
            exec_sandlot(args);
        }
        return pid_ > 0;
    }

    // Reads the screen until `pattern` matches what arrived after the previous match (false on timeout).
    bool wait_for(const std::regex& pattern, std::chrono::seconds timeout) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            std::smatch match;
            if (std::regex_search(unread_, match, pattern)) {
                unread_ = match.suffix().str();
                return true;
            }
            if (std::chrono::steady_clock::now() > deadline) return false;
            pollfd pfd{master_.get(), POLLIN, 0};
            if (poll(&pfd, 1, 100) <= 0) continue;
            char buf[4096];
            ssize_t n = read(master_.get(), buf, sizeof buf);
            if (n > 0) {
                unread_.append(buf, static_cast<size_t>(n));
                screen_.append(buf, static_cast<size_t>(n));
            }
        }
    }

    void type(const std::string& text) { (void)!write(master_.get(), text.data(), text.size()); }
    void resize(winsize size) { ioctl(master_.get(), TIOCSWINSZ, &size); }

    // Exit status, or -1 if it did not end in time (then it is killed).
    int wait(std::chrono::seconds timeout) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        int status = 0;
        for (;;) {
            char buf[4096];
            pollfd pfd{master_.get(), POLLIN, 0};
            while (poll(&pfd, 1, 0) > 0) {
                ssize_t n = read(master_.get(), buf, sizeof buf);
                if (n <= 0) break;
                screen_.append(buf, static_cast<size_t>(n));
            }
            if (waitpid(pid_, &status, WNOHANG) == pid_) break;
            if (std::chrono::steady_clock::now() > deadline) {
                kill(pid_, SIGKILL);
                waitpid(pid_, &status, 0);
                return -1;
            }
            usleep(20'000);
        }
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }

    // Whether sandlot left the terminal in the mode it found it in.
    bool mode_restored() const {
        termios now{};
        tcgetattr(slave_.get(), &now);
        return now.c_lflag == initial_mode_.c_lflag && now.c_iflag == initial_mode_.c_iflag &&
               now.c_oflag == initial_mode_.c_oflag;
    }
    const std::string& screen() const { return screen_; }

    ~TerminalHarness() {
        if (pid_ > 0) {
            kill(pid_, SIGKILL);
            waitpid(pid_, nullptr, 0);
        }
    }

  private:
    UniqueFd master_, slave_;  // the slave stays open here too, to read the mode sandlot leaves behind
    termios initial_mode_{};
    pid_t pid_ = -1;
    std::string screen_, unread_;
};

TEST(RunCli, PtyIsTheControllingTerminalAndFollowsResizes) {
    SKIP_WITHOUT_KVM();
    TerminalHarness terminal;
    ASSERT_TRUE(
        terminal.start({"run", "-t", "-i", "--", "sh", "-c", "tty; stty size; read line; stty size; exit 5"},
                       winsize{.ws_row = 30, .ws_col = 100, .ws_xpixel = 0, .ws_ypixel = 0}));
    ASSERT_TRUE(terminal.wait_for(std::regex(R"(/dev/pts/[0-9]+\r?\n)"), 120s)) << terminal.screen();
    ASSERT_TRUE(terminal.wait_for(std::regex(R"(30 100\r?\n)"), 60s)) << terminal.screen();

    terminal.resize(winsize{.ws_row = 40, .ws_col = 120, .ws_xpixel = 0, .ws_ypixel = 0});
    // The resize travels as SIGWINCH -> RESIZE; give it a moment before the line that makes sh look again.
    std::this_thread::sleep_for(500ms);
    terminal.type("\n");
    EXPECT_TRUE(terminal.wait_for(std::regex(R"(40 120\r?\n)"), 60s)) << terminal.screen();
    EXPECT_EQ(terminal.wait(60s), 5) << terminal.screen();
    EXPECT_TRUE(terminal.mode_restored()) << "sandlot must restore the terminal's mode";
}

// ---------------------------------------------------------------------------------------------------------
// The host library against one sandbox shared by the tests below.

class ExecVm : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        if (!kvm_unusable_reason().empty()) return;
        auto sandbox = host::Sandbox::boot(default_options());
        if (sandbox) {
            sandbox_ = std::move(*sandbox);
        } else {
            boot_error_ = sandbox.error().to_string();
        }
    }
    static void TearDownTestSuite() {
        if (sandbox_) expect_clean_shutdown(*sandbox_);
        sandbox_.reset();
    }
    void SetUp() override {
        SKIP_WITHOUT_KVM();
        ASSERT_TRUE(sandbox_) << "boot failed: " << boot_error_;
    }

    static host::AgentConnection& agent() { return sandbox_->agent(); }
    static host::ExecOutput exec_ok(const host::ExecRequest& request) {
        auto out = agent().exec(request);
        EXPECT_TRUE(out) << out.error().to_string();
        return out ? *out : host::ExecOutput{};
    }

    static inline std::unique_ptr<host::Sandbox> sandbox_;
    static inline std::string boot_error_;
};

TEST_F(ExecVm, ExitCodesAndSignals) {
    for (int code : {0, 1, 3, 255}) {
        auto out = exec_ok({.argv = {"sh", "-c", "exit " + std::to_string(code)}});
        EXPECT_EQ(out.status.exit_code, code);
        EXPECT_EQ(out.status.signal, 0);
        EXPECT_EQ(out.status.shell_code(), code);
    }
    auto killed = exec_ok({.argv = {"sh", "-c", "kill -9 $$"}});
    EXPECT_EQ(killed.status.signal, 9);
    EXPECT_EQ(killed.status.shell_code(), 137);
}

TEST_F(ExecVm, GuestIsNamedAndHasAUserland) {
    auto out = exec_ok({.argv = {"sh", "-c", "uname -n; echo $PATH; ls /bin/busybox /etc/passwd"}});
    EXPECT_EQ(out.stdout_data,
              "sandlot\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/run/sandlot/bin\n/bin/"
              "busybox\n/"
              "etc/passwd\n");
    EXPECT_EQ(out.status.exit_code, 0);
    // The agent runs real-time (so a fork bomb cannot starve it); what it starts runs as normal processes.
    auto policy = exec_ok({.argv = {"sh", "-c", "cut -d' ' -f41 /proc/1/stat /proc/self/stat"}});
    EXPECT_EQ(policy.stdout_data, "2\n0\n");  // SCHED_RR, SCHED_OTHER
}

TEST_F(ExecVm, HundredConcurrentExecsOnOneConnection) {
    // All 100 run at once: each `cat` waits for its stdin, which is written only once every one has started.
    std::vector<std::unique_ptr<host::ExecStream>> streams;
    for (int i = 0; i < 100; ++i) {
        auto stream = agent().exec_stream(host::ExecRequest{.argv = {"cat"}, .stdin_open = true});
        ASSERT_TRUE(stream) << i << ": " << stream.error().to_string();
        streams.push_back(std::move(*stream));
    }
    for (size_t i = 0; i < streams.size(); ++i) {
        std::string line = "stream " + std::to_string(i) + "\n";
        ASSERT_TRUE(
            streams[i]->write_stdin(std::span(reinterpret_cast<const uint8_t*>(line.data()), line.size())));
        ASSERT_TRUE(streams[i]->close_stdin());
    }
    for (size_t i = 0; i < streams.size(); ++i) {
        std::string out;
        std::optional<host::ExitStatus> status;
        for (;;) {
            auto event = streams[i]->recv();
            ASSERT_TRUE(event) << i << ": " << event.error().to_string();
            if (!*event) break;
            if ((*event)->kind == host::ExecEvent::Kind::Stdout)
                out.append((*event)->data.begin(), (*event)->data.end());
            if ((*event)->kind == host::ExecEvent::Kind::Exit) status = (*event)->status;
        }
        EXPECT_EQ(out, "stream " + std::to_string(i) + "\n");
        ASSERT_TRUE(status) << i;
        EXPECT_EQ(status->exit_code, 0) << i;
    }
    // The same agent still answers on the control stream.
    EXPECT_TRUE(agent().ping());
}

TEST_F(ExecVm, SpawnFailuresHaveTheRightKind) {
    using Kind = proto::SpawnErrorKind;
    struct Case {
        host::ExecRequest request;
        Kind kind;
        int shell_code;
        std::string named;  // the message must name this
    };
    // A file that is executable but no program: the kernel refuses it with ENOEXEC.
    exec_ok({.argv = {"sh", "-c", "printf '\\177ELF junk' > /tmp/junk && chmod 755 /tmp/junk"}});
    std::vector<Case> cases = {
        {{.argv = {"no-such-command"}}, Kind::NotFound, 127, "no-such-command"},
        {{.argv = {"/no/such/path"}}, Kind::NotFound, 127, "/no/such/path"},
        {{.argv = {"/etc/passwd"}}, Kind::PermissionDenied, 126, "/etc/passwd"},
        {{.argv = {"/tmp/junk"}}, Kind::NotExecutable, 126, "/tmp/junk"},
        {{.argv = {"true"}, .cwd = "/no/such/dir"}, Kind::BadCwd, 125, "/no/such/dir"},
        {{.argv = {"true"}, .cwd = "/etc/passwd"}, Kind::BadCwd, 125, "/etc/passwd"},
        {{.argv = {"true"}, .user = "no-such-user"}, Kind::BadUser, 125, "no-such-user"},
    };
    for (const auto& c : cases) {
        auto out = exec_ok(c.request);
        ASSERT_TRUE(out.status.spawn_failure) << c.named;
        EXPECT_EQ(out.status.spawn_failure->kind, c.kind)
            << c.named << ": " << out.status.spawn_failure->message;
        EXPECT_EQ(out.status.shell_code(), c.shell_code) << c.named;
        EXPECT_NE(out.status.spawn_failure->message.find(c.named), std::string::npos)
            << out.status.spawn_failure->message;
    }
    // None of that hurt the agent.
    EXPECT_EQ(exec_ok({.argv = {"echo", "still here"}}).stdout_data, "still here\n");
}

TEST_F(ExecVm, UsersComeFromTheGuestsPasswdAndGroup) {
    auto sandlot =
        exec_ok({.argv = {"sh", "-c", "id -u; id -g; id -G; echo $HOME $USER; pwd"}, .user = "sandlot"});
    EXPECT_EQ(sandlot.stdout_data, "1000\n1000\n1000 100\n/home/sandlot sandlot\n/home/sandlot\n")
        << sandlot.stderr_data;

    auto numeric = exec_ok({.argv = {"sh", "-c", "id -u; id -g"}, .user = "1000:100"});
    EXPECT_EQ(numeric.stdout_data, "1000\n100\n") << numeric.stderr_data;

    // A uid without a passwd entry is allowed; its home is /.
    auto unknown = exec_ok({.argv = {"sh", "-c", "id -u; echo $HOME"}, .user = "4242"});
    EXPECT_EQ(unknown.stdout_data, "4242\n/\n") << unknown.stderr_data;

    auto nobody = exec_ok({.argv = {"id", "-u"}, .cwd = "/", .user = "nobody"});
    EXPECT_EQ(nobody.stdout_data, "65534\n") << nobody.stderr_data;

    auto root = exec_ok({.argv = {"sh", "-c", "id -u; echo $HOME; pwd"}});
    EXPECT_EQ(root.stdout_data, "0\n/root\n/root\n") << root.stderr_data;
}

TEST_F(ExecVm, DaemonizingCommandAndTimeoutEndPromptly) {
    auto start = std::chrono::steady_clock::now();
    auto daemon = exec_ok({.argv = {"sh", "-c", "sleep 300 & echo hi"}});
    EXPECT_EQ(daemon.stdout_data, "hi\n");
    EXPECT_EQ(daemon.status.exit_code, 0);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 30s);

    start = std::chrono::steady_clock::now();
    auto slow = exec_ok({.argv = {"sleep", "300"}, .timeout = 500ms});
    EXPECT_TRUE(slow.status.timed_out);
    EXPECT_EQ(slow.status.signal, 9);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 30s);
}

// A connection of our own speaks raw frames; the agent must answer bad ones without dying.
TEST_F(ExecVm, MalformedFramesLeaveTheAgentAlive) {
    auto raw = host::vsock_uds_connect(sandbox_->vsock_uds(), host::kAgentPort);
    ASSERT_TRUE(raw) << raw.error().to_string();
    timeval patience{.tv_sec = 60, .tv_usec = 0};  // never hang the suite on a silent agent
    setsockopt(raw->get(), SOL_SOCKET, SO_RCVTIMEO, &patience, sizeof patience);
    auto hello = proto::read_frame(raw->get());
    ASSERT_TRUE(hello) << hello.error().to_string();
    ASSERT_EQ(hello->type, static_cast<uint16_t>(proto::MessageType::Hello));

    // An EXEC_START whose payload is garbage: an ERROR on that stream, and the connection stays usable.
    proto::Frame garbage{.type = static_cast<uint16_t>(proto::MessageType::ExecStart),
                         .stream_id = 7,
                         .payload = {0xff, 0xff, 0xff, 0xff, 0x01, 0x02}};
    ASSERT_TRUE(proto::write_frame(raw->get(), garbage));
    auto reply = proto::read_frame(raw->get());
    ASSERT_TRUE(reply) << reply.error().to_string();
    EXPECT_EQ(reply->type, static_cast<uint16_t>(proto::MessageType::Error));
    EXPECT_EQ(reply->stream_id, 7u);

    // A PING still works on that connection.
    proto::Frame ping{.type = static_cast<uint16_t>(proto::MessageType::Ping),
                      .stream_id = proto::kControlStream,
                      .payload = proto::encode(proto::Ping{.nonce = 42})};
    ASSERT_TRUE(proto::write_frame(raw->get(), ping));
    auto pong = proto::read_frame(raw->get());
    ASSERT_TRUE(pong) << pong.error().to_string();
    EXPECT_EQ(pong->type, static_cast<uint16_t>(proto::MessageType::Pong));

    // A header that breaks the framing (length over the cap): the agent drops this connection.
    uint8_t header[proto::kFrameHeaderSize];
    proto::encode_header({.payload_length = 0xffffffff, .stream_id = 1, .type = 0x0103, .flags = 0},
                         std::span<uint8_t, proto::kFrameHeaderSize>(header));
    ASSERT_TRUE(proto::write_all(raw->get(), header));
    for (;;) {  // it may say why first
        auto frame = proto::read_frame(raw->get());
        if (!frame) {
            EXPECT_TRUE(proto::is_connection_closed(frame.error())) << frame.error().to_string();
            break;
        }
        EXPECT_EQ(frame->type, static_cast<uint16_t>(proto::MessageType::Error));
    }

    // The agent lives on: the boot connection and a new one both run commands.
    EXPECT_EQ(exec_ok({.argv = {"echo", "alive"}}).stdout_data, "alive\n");
    auto fresh = sandbox_->connect();
    ASSERT_TRUE(fresh) << fresh.error().to_string();
    auto out = (*fresh)->exec(host::ExecRequest{.argv = {"echo", "fresh"}});
    ASSERT_TRUE(out) << out.error().to_string();
    EXPECT_EQ(out->stdout_data, "fresh\n");
}

// A fork bomb as root fills the guest's process table and memory; the agent (oom_score_adj -1000, forks that
// fail become errors) must come out of it serving requests. Its own VM, so nothing else shares the damage.
TEST(ExecHostile, ForkBombIsContainedAndTheAgentSurvives) {
    SKIP_WITHOUT_KVM();
    auto sandbox = host::Sandbox::boot(default_options());
    ASSERT_TRUE(sandbox) << sandbox.error().to_string();
    host::AgentConnection& agent = (*sandbox)->agent();
    auto start = std::chrono::steady_clock::now();
    auto bomb = agent.exec({.argv = {"sh", "-c", "b() { b | b & }; b; sleep 100"}, .timeout = 3s});
    ASSERT_TRUE(bomb) << bomb.error().to_string();
    EXPECT_TRUE(bomb->status.timed_out);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 90s);
    // The whole group was killed: soon nothing of it is left, and the agent runs new commands.
    host::ExecOutput after;
    for (int attempt = 0; attempt < 30; ++attempt) {
        auto count = agent.exec({.argv = {"sh", "-c", "ls -d /proc/[0-9]* | wc -l"}});
        ASSERT_TRUE(count) << count.error().to_string();
        after = *count;
        if (after.status.exit_code == 0 && std::atoi(after.stdout_data.c_str()) < 50) break;
        std::this_thread::sleep_for(1s);
    }
    EXPECT_EQ(after.status.exit_code, 0);
    EXPECT_LT(std::atoi(after.stdout_data.c_str()), 50) << "processes left after the bomb";
    auto alive = agent.exec({.argv = {"echo", "alive"}});
    ASSERT_TRUE(alive) << alive.error().to_string();
    EXPECT_EQ(alive->stdout_data, "alive\n");
    expect_clean_shutdown(**sandbox);
}

}  // namespace
}  // namespace sandlot::vmtest
