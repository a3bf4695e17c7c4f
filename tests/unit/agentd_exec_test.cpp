// Exec sessions of the guest agent, tested against the real agentd binary running as a host process on a Unix
// socket (and once as PID 1 of a PID namespace). The test speaks raw frames through a small poll-driven
// client that honours both credit windows, so flow control is exercised from both sides.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "agentd/exec_user.h"
#include "proto/base/unique_fd.h"
#include "proto/exec.h"
#include "proto/frame.h"
#include "proto/messages.h"
#include "tests/support/temp_dir.h"

extern char** environ;

namespace sandlot::agent::exec_test {
namespace {

using test::TempDir;

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

const std::string kAgentd = std::string(SANDLOT_BIN_DIR) + "/agentd";

// `[prefix...] agentd --listen-unix <tmp>/a.sock`, SIGKILLed on destruction.
class Agent {
  public:
    explicit Agent(std::vector<std::string> prefix = {}) {
        socket_path_ = dir_.path() + "/a.sock";
        chmod(dir_.path().c_str(), 0777);  // an agent started as another user must be able to bind there
        std::vector<std::string> args = prefix;
        args.insert(args.end(), {kAgentd, "--listen-unix", socket_path_});
        std::vector<char*> argv;
        for (auto& a : args)
            argv.push_back(a.data());
        argv.push_back(nullptr);
        int rc = posix_spawnp(&pid_, argv[0], nullptr, nullptr, argv.data(), environ);
        EXPECT_EQ(rc, 0) << "spawn " << args[0] << ": " << std::strerror(rc);
        if (rc != 0) pid_ = -1;
    }
    ~Agent() {
        if (pid_ > 0) {
            kill(pid_, SIGKILL);
            waitpid(pid_, nullptr, 0);
        }
    }
    pid_t pid() const { return pid_; }
    const std::string& dir() const { return dir_.path(); }

    UniqueFd connect() {
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, socket_path_.c_str(), sizeof addr.sun_path - 1);
        auto deadline = Clock::now() + 10s;
        while (Clock::now() < deadline) {
            UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
            if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return fd;
            std::this_thread::sleep_for(5ms);
        }
        ADD_FAILURE() << "agentd never accepted on " << socket_path_;
        return {};
    }

  private:
    TempDir dir_;
    std::string socket_path_;
    pid_t pid_ = -1;
};

// Everything a stream produced.
struct Outcome {
    bool started = false;
    uint32_t pid = 0;
    uint32_t stdin_window = 0;
    std::string out, err;
    uint64_t out_bytes = 0, err_bytes = 0;
    bool out_nonzero = false;  // count_only mode: a byte other than '\0' was seen
    bool out_eof = false, err_eof = false;
    std::optional<proto::Exit> exit;
    std::optional<proto::ErrorMessage> error;
    std::vector<std::string> violations;  // ordering rules of proto/exec.h broken by the agent
    bool ended() const { return exit || error; }
};

struct StreamOptions {
    std::string stdin_data;
    bool close_stdin = true;
    bool count_only = false;  // keep byte counts, not the bytes
    bool auto_grant = true;   // send WINDOW as output is consumed

    static StreamOptions input(std::string data) {
        StreamOptions o;
        o.stdin_data = std::move(data);
        return o;
    }
    static StreamOptions no_stdin() {
        StreamOptions o;
        o.close_stdin = false;
        return o;
    }
    static StreamOptions counting(bool auto_grant) {
        StreamOptions o;
        o.count_only = true;
        o.auto_grant = auto_grant;
        return o;
    }
};

// A poll-driven client: queues frames, writes what the socket takes, reads and demultiplexes what arrives.
class Client {
  public:
    explicit Client(Agent& agent) : fd_(agent.connect()) {
        if (!fd_) return;
        fcntl(fd_.get(), F_SETFL, fcntl(fd_.get(), F_GETFL) | O_NONBLOCK);
        pump_until([&] { return hello_.has_value(); }, 10s);
        EXPECT_TRUE(hello_) << "no HELLO";
    }

    const proto::Hello& hello() const { return *hello_; }
    int fd() const { return fd_.get(); }

    void send(const proto::Frame& frame) {
        auto bytes = proto::encode_frame(frame);
        ASSERT_TRUE(bytes) << bytes.error().to_string();
        out_.insert(out_.end(), bytes->begin(), bytes->end());
        flush();
    }

    uint32_t start(proto::ExecStart request, StreamOptions options = {}) {
        uint32_t stream = next_stream_++;
        if (request.output_window == 0) request.output_window = kWindow;
        Stream& s = streams_[stream];
        s.options = std::move(options);
        s.window = request.output_window;
        if (!s.options.stdin_data.empty() || s.options.close_stdin) request.flags |= proto::kExecStdin;
        auto payload = proto::encode_exec_start(request);
        EXPECT_TRUE(payload) << payload.error().to_string();
        send(proto::make_frame(proto::MessageType::ExecStart, stream,
                               payload.value_or(std::vector<uint8_t>{})));
        return stream;
    }

    Outcome& outcome(uint32_t stream) { return streams_[stream].outcome; }
    void set_auto_grant(uint32_t stream, bool on) {
        Stream& s = streams_[stream];
        s.options.auto_grant = on;
        grant(stream, s, true);
        flush();
    }

    // Pumps until every stream has ended; false on timeout.
    bool wait_all(std::chrono::milliseconds timeout = 30s) {
        return pump_until(
            [&] {
                for (auto& [id, s] : streams_)
                    if (!s.outcome.ended()) return false;
                return true;
            },
            timeout);
    }
    Outcome wait(uint32_t stream, std::chrono::milliseconds timeout = 30s) {
        bool done = pump_until([&] { return streams_[stream].outcome.ended(); }, timeout);
        EXPECT_TRUE(done) << "stream " << stream << " did not end";
        return streams_[stream].outcome;
    }

    bool pump_until(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
        auto deadline = Clock::now() + timeout;
        while (!done()) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            if (left.count() <= 0 || closed_) return false;
            pump(static_cast<int>(std::min<int64_t>(left.count(), 100)));
        }
        return true;
    }

    // Frames that belonged to no started stream (control-stream errors, replies on unknown streams).
    std::vector<proto::Frame>& unsolicited() { return unsolicited_; }
    bool closed() const { return closed_; }

  private:
    static constexpr uint32_t kWindow = 1 << 20;

    struct Stream {
        StreamOptions options;
        Outcome outcome;
        uint32_t window = 0;
        uint64_t consumed_since_grant = 0;
        uint64_t stdin_allowance = 0;
        size_t stdin_sent = 0;
        bool stdin_closed = false;
    };

    void flush() {
        while (out_sent_ < out_.size()) {
            ssize_t n = ::send(fd_.get(), out_.data() + out_sent_, out_.size() - out_sent_, MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) break;
            out_sent_ += static_cast<size_t>(n);
        }
        if (out_sent_ == out_.size()) {
            out_.clear();
            out_sent_ = 0;
        }
    }

    void grant(uint32_t id, Stream& s, bool force) {
        if (!s.options.auto_grant || s.outcome.ended()) return;
        if (s.consumed_since_grant == 0 || (!force && s.consumed_since_grant < s.window / 4)) return;
        auto frame = proto::make_frame(proto::Window{static_cast<uint32_t>(s.consumed_since_grant)}, id);
        auto bytes = proto::encode_frame(frame).value();
        out_.insert(out_.end(), bytes.begin(), bytes.end());
        s.consumed_since_grant = 0;
    }

    void feed_stdin() {
        for (auto& [id, s] : streams_) {
            if (!s.outcome.started || s.outcome.ended() || s.stdin_closed) continue;
            while (s.stdin_sent < s.options.stdin_data.size() && s.stdin_allowance > 0 &&
                   out_.size() < (256 << 10)) {
                size_t n =
                    std::min<size_t>({s.options.stdin_data.size() - s.stdin_sent, s.stdin_allowance, 60000});
                const uint8_t* p =
                    reinterpret_cast<const uint8_t*>(s.options.stdin_data.data()) + s.stdin_sent;
                auto bytes = proto::encode_frame(proto::make_frame(proto::MessageType::Stdin, id,
                                                                   std::vector<uint8_t>(p, p + n)))
                                 .value();
                out_.insert(out_.end(), bytes.begin(), bytes.end());
                s.stdin_sent += n;
                s.stdin_allowance -= n;
            }
            if (s.stdin_sent == s.options.stdin_data.size() && s.options.close_stdin) {
                auto bytes =
                    proto::encode_frame(proto::make_frame(proto::MessageType::StdinClose, id, {})).value();
                out_.insert(out_.end(), bytes.begin(), bytes.end());
                s.stdin_closed = true;
            }
        }
    }

    void pump(int timeout_ms) {
        feed_stdin();
        flush();
        pollfd pfd{fd_.get(), static_cast<short>(POLLIN | (out_.empty() ? 0 : POLLOUT)), 0};
        if (poll(&pfd, 1, timeout_ms) <= 0) return;
        if (pfd.revents & POLLOUT) flush();
        if (!(pfd.revents & (POLLIN | POLLHUP | POLLERR))) return;
        uint8_t buffer[256 * 1024];
        for (int round = 0; round < 16; ++round) {
            ssize_t n = recv(fd_.get(), buffer, sizeof buffer, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) break;
            if (n == 0) {
                closed_ = true;
                break;
            }
            ASSERT_TRUE(decoder_.feed(std::span<const uint8_t>(buffer, static_cast<size_t>(n))));
            for (;;) {
                auto frame = decoder_.next();
                ASSERT_TRUE(frame) << frame.error().to_string();
                if (!*frame) break;
                handle(std::move(**frame));
            }
        }
        flush();
    }

    void handle(proto::Frame frame) {
        using T = proto::MessageType;
        auto type = static_cast<T>(frame.type);
        if (type == T::Hello) {
            hello_ = proto::decode_hello(frame.payload).value();
            return;
        }
        auto it = streams_.find(frame.stream_id);
        if (it == streams_.end() || it->second.outcome.ended()) {
            unsolicited_.push_back(std::move(frame));
            return;
        }
        Stream& s = it->second;
        Outcome& o = s.outcome;
        auto violation = [&](std::string what) { o.violations.push_back(std::move(what)); };
        switch (type) {
            case T::ExecStarted: {
                auto started = proto::decode_exec_started(frame.payload).value();
                if (o.started) violation("second EXEC_STARTED");
                o.started = true;
                o.pid = started.pid;
                o.stdin_window = started.stdin_window;
                s.stdin_allowance = started.stdin_window;
                break;
            }
            case T::Stdout:
            case T::Stderr: {
                bool is_out = type == T::Stdout;
                if (!o.started) violation("output before EXEC_STARTED");
                if (is_out ? o.out_eof : o.err_eof) violation("output after OUTPUT_EOF");
                if (frame.payload.empty()) violation("empty output frame");
                (is_out ? o.out_bytes : o.err_bytes) += frame.payload.size();
                s.consumed_since_grant += frame.payload.size();
                if (s.consumed_since_grant > s.window) violation("more output than the window allows");
                if (s.options.count_only) {
                    for (uint8_t b : frame.payload)
                        if (b != 0) o.out_nonzero = true;
                } else {
                    (is_out ? o.out : o.err).append(frame.payload.begin(), frame.payload.end());
                }
                grant(frame.stream_id, s, false);
                break;
            }
            case T::OutputEof: {
                auto eof = proto::decode_output_eof(frame.payload).value();
                bool& flag = eof.channel == proto::kChannelStdout ? o.out_eof : o.err_eof;
                if (flag) violation("second OUTPUT_EOF");
                flag = true;
                break;
            }
            case T::Window:
                s.stdin_allowance += proto::decode_window(frame.payload).value().bytes;
                break;
            case T::Exit:
                if (!o.out_eof || !o.err_eof) violation("EXIT before both OUTPUT_EOFs");
                o.exit = proto::decode_exit(frame.payload).value();
                break;
            case T::Error:
                o.error = proto::decode_error(frame.payload).value();
                break;
            default:
                violation("unexpected frame type " + proto::message_type_name(frame.type));
        }
    }

    UniqueFd fd_;
    std::vector<uint8_t> out_;
    size_t out_sent_ = 0;
    proto::FrameDecoder decoder_;
    std::optional<proto::Hello> hello_;
    std::map<uint32_t, Stream> streams_;
    std::vector<proto::Frame> unsolicited_;
    uint32_t next_stream_ = 1;
    bool closed_ = false;
};

proto::ExecStart command(std::vector<std::string> argv) {
    proto::ExecStart request;
    request.argv = std::move(argv);
    return request;
}

proto::ExecStart shell(const std::string& script) {
    return command({"/bin/sh", "-c", script});
}

// Starts one command and waits for its end.
Outcome run(Client& client, proto::ExecStart request, StreamOptions options = {}) {
    uint32_t stream = client.start(std::move(request), std::move(options));
    Outcome outcome = client.wait(stream);
    EXPECT_TRUE(outcome.violations.empty()) << outcome.violations.front();
    return outcome;
}

void expect_exit(const Outcome& o, int code) {
    ASSERT_TRUE(o.exit) << (o.error ? "ERROR: " + o.error->message : "no EXIT");
    EXPECT_EQ(o.exit->exit_code, code);
    EXPECT_EQ(o.exit->signal, 0);
}

void expect_spawn_failure(const Outcome& o, proto::SpawnErrorKind kind) {
    ASSERT_TRUE(o.error) << "expected a spawn failure, got exit " << (o.exit ? o.exit->exit_code : -2);
    EXPECT_EQ(o.error->code, static_cast<uint32_t>(proto::ErrorCode::SpawnFailed)) << o.error->message;
    EXPECT_EQ(o.error->kind, static_cast<uint32_t>(kind)) << o.error->message;
    EXPECT_FALSE(o.started);
}

// A /proc file of a process that may exit while we read it ("" then). Not through std::ifstream: libstdc++
// throws when read() fails with ESRCH halfway through.
std::string read_proc_file(const std::string& path) {
    std::string text;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return text;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0)
        text.append(buf, static_cast<size_t>(n));
    ::close(fd);
    return n < 0 ? std::string() : text;
}

// A field of /proc/<pid>/status in kB, or -1.
long status_kib(pid_t pid, const std::string& field) {
    std::istringstream in(read_proc_file("/proc/" + std::to_string(pid) + "/status"));
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
    }
    return -1;
}

// The pids whose parent is `parent`, with their state letter (R, S, Z...).
std::vector<std::pair<pid_t, char>> children_of(pid_t parent) {
    std::vector<std::pair<pid_t, char>> children;
    DIR* dir = opendir("/proc");
    if (!dir) return children;
    while (dirent* entry = readdir(dir)) {
        pid_t pid = std::atoi(entry->d_name);
        if (pid <= 0) continue;
        std::string text = read_proc_file("/proc/" + std::to_string(pid) + "/stat");
        size_t paren = text.rfind(')');
        if (paren == std::string::npos) continue;
        std::istringstream fields(text.substr(paren + 1));
        char state = 0;
        pid_t ppid = 0;
        fields >> state >> ppid;
        if (ppid == parent) children.emplace_back(pid, state);
    }
    closedir(dir);
    return children;
}

bool process_gone(pid_t pid, std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
        std::string text = read_proc_file("/proc/" + std::to_string(pid) + "/stat");
        size_t paren = text.rfind(')');
        // Gone, or a zombie of someone else (the kill worked; reaping it is not the agent's job here).
        if (paren == std::string::npos || paren + 2 >= text.size() || text[paren + 2] == 'Z') return true;
        std::this_thread::sleep_for(10ms);
    }
    return false;
}

// ---- user database ----

class UserDb : public ::testing::Test {
  protected:
    void SetUp() override {
        paths_.passwd = dir_.path() + "/passwd";
        paths_.group = dir_.path() + "/group";
        std::ofstream(paths_.passwd) << "root:x:0:0:root:/root:/bin/ash\n"
                                        "# comment line\n"
                                        "broken line without fields\n"
                                        "alice:x:1000:1000:Alice:/home/alice:/bin/sh\n"
                                        "bob:x:1001:100::/home/bob:\n"
                                        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
        std::ofstream(paths_.group) << "root:x:0:\n"
                                       "users:x:100:alice,bob\n"
                                       "wheel:x:10:alice\n"
                                       "alice:x:1000:\n"
                                       "audio:x:29:carol,alice\n"
                                       "nogroup:x:65534:\n";
    }
    TempDir dir_;
    UserDbPaths paths_;
};

TEST_F(UserDb, RootByDefaultAndByName) {
    for (std::string spec : {"", "root", "0"}) {
        auto user = resolve_user(spec, paths_);
        ASSERT_TRUE(user) << spec;
        EXPECT_EQ(user->uid, 0u);
        EXPECT_EQ(user->gid, 0u);
        EXPECT_EQ(user->name, "root");
        EXPECT_EQ(user->home, "/root");
        EXPECT_EQ(user->shell, "/bin/ash");
        EXPECT_EQ(user->groups, std::vector<gid_t>{0});
    }
}

TEST_F(UserDb, NameGivesIdsHomeAndSupplementaryGroups) {
    auto alice = resolve_user("alice", paths_);
    ASSERT_TRUE(alice);
    EXPECT_EQ(alice->uid, 1000u);
    EXPECT_EQ(alice->gid, 1000u);
    EXPECT_EQ(alice->home, "/home/alice");
    EXPECT_EQ(alice->groups, (std::vector<gid_t>{1000, 100, 10, 29}));

    auto bob = resolve_user("bob", paths_);
    ASSERT_TRUE(bob);
    EXPECT_EQ(bob->gid, 100u);
    EXPECT_EQ(bob->shell, "/bin/sh");                   // empty shell field
    EXPECT_EQ(bob->groups, (std::vector<gid_t>{100}));  // primary gid not repeated
}

TEST_F(UserDb, NumericForms) {
    auto by_uid = resolve_user("1000", paths_);
    ASSERT_TRUE(by_uid);
    EXPECT_EQ(by_uid->name, "alice");
    EXPECT_EQ(by_uid->gid, 1000u);

    auto pair = resolve_user("65534:65534", paths_);
    ASSERT_TRUE(pair);
    EXPECT_EQ(pair->uid, 65534u);
    EXPECT_EQ(pair->gid, 65534u);
    EXPECT_EQ(pair->name, "nobody");

    auto unknown = resolve_user("4242", paths_);  // not in passwd: allowed
    ASSERT_TRUE(unknown);
    EXPECT_EQ(unknown->uid, 4242u);
    EXPECT_EQ(unknown->gid, 0u);
    EXPECT_EQ(unknown->home, "/");
    EXPECT_EQ(unknown->name, "");
    EXPECT_EQ(unknown->groups, std::vector<gid_t>{0});

    auto named_group = resolve_user("alice:wheel", paths_);
    ASSERT_TRUE(named_group);
    EXPECT_EQ(named_group->gid, 10u);
    // The group replaces the primary one; supplementary groups still come from the user's name.
    EXPECT_EQ(named_group->groups, (std::vector<gid_t>{10, 100, 29}));
}

TEST_F(UserDb, BadSpecsFail) {
    for (const std::string& spec : std::vector<std::string>{"mallory", "alice:nosuchgroup", ":100", "alice:",
                                                            "4294967295", "12x", std::string("ali\0ce", 6)}) {
        EXPECT_FALSE(resolve_user(spec, paths_)) << spec;
    }
}

TEST_F(UserDb, MissingFilesStillKnowRoot) {
    UserDbPaths none{dir_.path() + "/no-passwd", dir_.path() + "/no-group"};
    auto root = resolve_user("", none);
    ASSERT_TRUE(root);
    EXPECT_EQ(root->uid, 0u);
    EXPECT_EQ(root->home, "/root");
    EXPECT_FALSE(resolve_user("alice", none));
    EXPECT_TRUE(resolve_user("123:456", none));
}

// ---- the agent ----

class AgentExec : public ::testing::Test {
  protected:
    Agent agent_;
};

TEST_F(AgentExec, HelloAdvertisesExecAndLimits) {
    Client client(agent_);
    const proto::Hello& hello = client.hello();
    for (uint64_t bit : {proto::kFeatureExec, proto::kFeaturePty, proto::kFeatureExecUser,
                         proto::kFeatureExecRlimits, proto::kFeatureExecTimeout})
        EXPECT_TRUE(hello.features & bit) << proto::feature_name(bit);
    EXPECT_EQ(hello.max_frame_payload, proto::kMaxFramePayload);
    EXPECT_EQ(hello.max_streams, 1024u);
    EXPECT_EQ(hello.stdin_window, 256u * 1024);
}

TEST_F(AgentExec, ExitCodes) {
    Client client(agent_);
    for (int code : {0, 1, 3, 255}) {
        Outcome o = run(client, shell("exit " + std::to_string(code)));
        expect_exit(o, code);
        EXPECT_TRUE(o.started);
        EXPECT_GT(o.pid, 0u);
        EXPECT_EQ(o.exit->output_abandoned, 0);
    }
}

TEST_F(AgentExec, KilledBySignalReportsTheSignal) {
    Client client(agent_);
    Outcome o = run(client, shell("kill -9 $$"));
    ASSERT_TRUE(o.exit);
    EXPECT_EQ(o.exit->exit_code, -1);
    EXPECT_EQ(o.exit->signal, 9);
    EXPECT_EQ(o.exit->core_dumped, 0);
}

TEST_F(AgentExec, SignalGoesToTheWholeProcessGroup) {
    Client client(agent_);
    // sh waits for a background sleep; both hold stdout. Only if both die do the pipes reach EOF promptly.
    uint32_t stream = client.start(shell("sleep 30 & echo ready; wait"));
    ASSERT_TRUE(client.pump_until([&] { return client.outcome(stream).out == "ready\n"; }, 10s));
    auto started = Clock::now();
    client.send(proto::make_frame(proto::Signal{SIGTERM}, stream));
    Outcome o = client.wait(stream);
    ASSERT_TRUE(o.exit);
    EXPECT_EQ(o.exit->signal, SIGTERM);
    EXPECT_EQ(o.exit->output_abandoned, 0) << "the background sleep survived the group signal";
    EXPECT_LT(Clock::now() - started, 5s);
}

TEST_F(AgentExec, StdoutAndStderrStaySeparate) {
    Client client(agent_);
    Outcome o = run(client, shell("echo out1; echo err1 >&2; echo out2; echo err2 >&2"));
    expect_exit(o, 0);
    EXPECT_EQ(o.out, "out1\nout2\n");
    EXPECT_EQ(o.err, "err1\nerr2\n");
    EXPECT_TRUE(o.out_eof && o.err_eof);
}

TEST_F(AgentExec, StdinIsPipedExactlyBeyondTheWindow) {
    Client client(agent_);
    // 1 MiB of every byte value, four stdin windows' worth: only flows if the client waits for WINDOW credit.
    std::string data(1 << 20, '\0');
    std::mt19937 rng(42);
    for (char& c : data)
        c = static_cast<char>(rng());
    Outcome o = run(client, command({"cat"}), StreamOptions::input(data));
    expect_exit(o, 0);
    EXPECT_EQ(o.stdin_window, 256u * 1024);
    EXPECT_EQ(o.out.size(), data.size());
    EXPECT_TRUE(o.out == data) << "echoed bytes differ";

    Outcome empty = run(client, command({"cat"}), StreamOptions::input(""));
    expect_exit(empty, 0);
    EXPECT_EQ(empty.out, "");
}

TEST_F(AgentExec, WithoutStdinFlagStdinIsDevNull) {
    Client client(agent_);
    Outcome o = run(client, command({"cat"}), StreamOptions::no_stdin());
    expect_exit(o, 0);
    EXPECT_EQ(o.stdin_window, 0u);
    EXPECT_EQ(o.out, "");
}

TEST_F(AgentExec, StdinBeyondTheWindowEndsTheStream) {
    Client client(agent_);
    // Without kExecStdin there is no stdin credit at all.
    uint32_t stream = client.start(command({"sleep", "30"}), StreamOptions::no_stdin());
    ASSERT_TRUE(client.pump_until([&] { return client.outcome(stream).started; }, 10s));
    ASSERT_EQ(client.outcome(stream).stdin_window, 0u);
    client.send(proto::make_frame(proto::MessageType::Stdin, stream, {'x'}));
    Outcome done = client.wait(stream);
    ASSERT_TRUE(done.error);
    EXPECT_EQ(done.error->code, static_cast<uint32_t>(proto::ErrorCode::Protocol));
    EXPECT_TRUE(process_gone(static_cast<pid_t>(done.pid), 5s)) << "process group not killed";

    // With it, one frame one byte larger than the window (by hand: the client's pump respects the window).
    proto::ExecStart request = command({"sleep", "30"});
    request.flags = proto::kExecStdin;
    stream = client.start(request, StreamOptions::no_stdin());
    ASSERT_TRUE(client.pump_until([&] { return client.outcome(stream).started; }, 10s));
    uint32_t window = client.outcome(stream).stdin_window;
    ASSERT_GT(window, 0u);
    client.send(proto::make_frame(proto::MessageType::Stdin, stream, std::vector<uint8_t>(window + 1, 'a')));
    done = client.wait(stream);
    ASSERT_TRUE(done.error);
    EXPECT_EQ(done.error->code, static_cast<uint32_t>(proto::ErrorCode::Protocol));
    EXPECT_TRUE(process_gone(static_cast<pid_t>(done.pid), 5s)) << "process group not killed";

    expect_exit(run(client, shell("exit 0")), 0);
}

TEST_F(AgentExec, LargeOutputIsExactAndAgentMemoryStaysBounded) {
    Client client(agent_);
    constexpr uint64_t kBytes = 256ull << 20;
    Outcome o = run(client, command({"head", "-c", std::to_string(kBytes), "/dev/zero"}),
                    StreamOptions::counting(true));
    expect_exit(o, 0);
    EXPECT_EQ(o.out_bytes, kBytes);
    EXPECT_FALSE(o.out_nonzero);
    long hwm = status_kib(agent_.pid(), "VmHWM");
    ASSERT_GT(hwm, 0);
    EXPECT_LT(hwm, 64 * 1024) << "agent peak RSS " << hwm << " kB";
}

TEST_F(AgentExec, SlowReaderBlocksTheProcessNotTheAgent) {
    Client client(agent_);
    constexpr uint64_t kBytes = 64ull << 20;
    proto::ExecStart request = command({"head", "-c", std::to_string(kBytes), "/dev/zero"});
    request.output_window = 64 * 1024;
    uint32_t stream = client.start(request, StreamOptions::counting(false));
    // With no further credit the agent forwards one window and stops reading; head blocks on a full pipe.
    client.pump_until([] { return false; }, 1500ms);
    Outcome& o = client.outcome(stream);
    ASSERT_TRUE(o.started);
    EXPECT_EQ(o.out_bytes, 64u * 1024);
    EXPECT_FALSE(o.exit) << "the process finished although nobody read its output";
    long rss = status_kib(agent_.pid(), "VmRSS");
    EXPECT_GT(rss, 0);
    EXPECT_LT(rss, 32 * 1024) << "agent RSS " << rss << " kB while the reader stalls";
    // Reading again lets everything through, exactly.
    client.set_auto_grant(stream, true);
    Outcome done = client.wait(stream, 60s);
    expect_exit(done, 0);
    EXPECT_EQ(done.out_bytes, kBytes);
}

TEST_F(AgentExec, HostNotReadingTheSocketStopsTheAgentReadingPipes) {
    Client client(agent_);
    constexpr uint64_t kBytes = 64ull << 20;
    proto::ExecStart request = command({"head", "-c", std::to_string(kBytes), "/dev/zero"});
    request.output_window = 1u << 30;  // plenty of credit: only the socket can hold the agent back
    uint32_t stream = client.start(request, StreamOptions::counting(true));
    ASSERT_TRUE(client.pump_until([&] { return client.outcome(stream).started; }, 10s));
    std::this_thread::sleep_for(
        1500ms);  // not reading: the agent's send queue must stop at its high-water mark
    long rss = status_kib(agent_.pid(), "VmRSS");
    EXPECT_GT(rss, 0);
    EXPECT_LT(rss, 32 * 1024) << "agent RSS " << rss << " kB while the host does not read";
    Outcome done = client.wait(stream, 60s);
    expect_exit(done, 0);
    EXPECT_EQ(done.out_bytes, kBytes);
}

TEST_F(AgentExec, HundredConcurrentExecsOnOneConnection) {
    Client client(agent_);
    std::map<uint32_t, int> streams;
    for (int i = 0; i < 100; ++i) {
        proto::ExecStart request =
            command({"/bin/sh", "-c", "sleep 0.2; echo $0; exit $(($0 % 7))", std::to_string(i)});
        streams[client.start(request)] = i;
    }
    ASSERT_TRUE(client.wait_all(60s));
    std::set<uint32_t> pids;
    for (auto [stream, i] : streams) {
        Outcome& o = client.outcome(stream);
        expect_exit(o, i % 7);
        EXPECT_EQ(o.out, std::to_string(i) + "\n");
        EXPECT_TRUE(o.violations.empty());
        pids.insert(o.pid);
    }
    EXPECT_EQ(pids.size(), 100u);
}

TEST_F(AgentExec, PtyIsTheControllingTerminalAndFollowsResize) {
    Client client(agent_);
    proto::ExecStart request = command({"tty"});
    request.flags = proto::kExecPty;
    Outcome tty = run(client, request, StreamOptions::no_stdin());
    expect_exit(tty, 0);
    EXPECT_TRUE(std::regex_match(tty.out, std::regex("/dev/pts/[0-9]+\r\n"))) << tty.out;
    EXPECT_EQ(tty.err, "");  // a PTY merges everything into STDOUT
    EXPECT_TRUE(tty.err_eof);

    request = shell("stty size; read line; stty size; echo \"$TERM\"; test -t 0 && test -t 2 && echo tty");
    request.flags = proto::kExecPty | proto::kExecStdin;
    request.pty_rows = 30;
    request.pty_cols = 100;
    uint32_t stream = client.start(request, StreamOptions::no_stdin());
    ASSERT_TRUE(client.pump_until(
        [&] { return client.outcome(stream).out.find("30 100\r\n") != std::string::npos; }, 10s))
        << client.outcome(stream).out;
    client.send(proto::make_frame(proto::Resize{50, 132}, stream));
    client.send(proto::make_frame(proto::MessageType::Stdin, stream, {'g', 'o', '\n'}));
    Outcome o = client.wait(stream);
    expect_exit(o, 0);
    EXPECT_NE(o.out.find("50 132\r\n"), std::string::npos) << o.out;
    EXPECT_NE(o.out.find("xterm-256color\r\n"), std::string::npos) << o.out;
    EXPECT_NE(o.out.find("tty\r\n"), std::string::npos) << o.out;
}

TEST_F(AgentExec, PtyStdinCloseSendsEndOfFile) {
    Client client(agent_);
    proto::ExecStart request = command({"cat"});
    request.flags = proto::kExecPty;
    Outcome o = run(client, request, StreamOptions::input("hello\npartial"));
    expect_exit(o, 0);
    // The terminal echoes the input and cat prints it again; cat ends only if the close reached it as EOF
    // (the partial line needs two EOF characters: one to send it, one for the EOF).
    auto count = [&](const std::string& needle) {
        size_t n = 0;
        for (size_t pos = o.out.find(needle); pos != std::string::npos; pos = o.out.find(needle, pos + 1))
            ++n;
        return n;
    };
    EXPECT_EQ(count("hello\r\n"), 2u) << o.out;
    EXPECT_EQ(count("partial"), 2u) << o.out;
}

TEST_F(AgentExec, DaemonizingCommandReturnsPromptly) {
    Client client(agent_);
    auto started = Clock::now();
    Outcome o = run(client, shell("sleep 100 & echo hi"));
    auto elapsed = Clock::now() - started;
    kill(-static_cast<pid_t>(o.pid), SIGKILL);  // the background sleep
    expect_exit(o, 0);
    EXPECT_EQ(o.out, "hi\n");
    EXPECT_EQ(o.exit->output_abandoned, 1);
    EXPECT_LT(elapsed, 2s);
}

TEST_F(AgentExec, EndlessBackgroundWriterDoesNotHoldTheExitBack) {
    Client client(agent_);
    auto started = Clock::now();
    // The output from before the exit arrives in full; the writer left behind gets a bounded grace period.
    Outcome o = run(client, shell("head -c 300000 /dev/zero; yes & exit 5"));
    auto elapsed = Clock::now() - started;
    kill(-static_cast<pid_t>(o.pid), SIGKILL);  // the background yes
    expect_exit(o, 5);
    EXPECT_GE(o.out.size(), 300000u);
    EXPECT_EQ(o.out.find_first_not_of('\0'), o.out.find('y'));  // zeros first, then yes's output
    EXPECT_EQ(o.exit->output_abandoned, 1);
    EXPECT_LT(elapsed, 4s);
}

TEST_F(AgentExec, ProcessClosingItsStdoutEarlyStillReportsItsExit) {
    Client client(agent_);
    Outcome o = run(client, shell("echo before; exec >&-; sleep 0.2; echo err >&2; exit 4"));
    expect_exit(o, 4);
    EXPECT_EQ(o.out, "before\n");
    EXPECT_EQ(o.err, "err\n");
    EXPECT_EQ(o.exit->output_abandoned, 0);
}

TEST_F(AgentExec, SpawnFailuresCarryTheirKind) {
    Client client(agent_);
    Outcome missing = run(client, command({"sandlot-no-such-command"}));
    expect_spawn_failure(missing, proto::SpawnErrorKind::NotFound);
    EXPECT_NE(missing.error->message.find("sandlot-no-such-command"), std::string::npos)
        << missing.error->message;
    expect_spawn_failure(run(client, command({"/nonexistent/bin/x"})), proto::SpawnErrorKind::NotFound);
    expect_spawn_failure(run(client, command({""})), proto::SpawnErrorKind::NotFound);

    proto::ExecStart bad_cwd = command({"true"});
    bad_cwd.cwd = "/nonexistent-sandlot-dir";
    Outcome cwd = run(client, bad_cwd);
    expect_spawn_failure(cwd, proto::SpawnErrorKind::BadCwd);
    EXPECT_NE(cwd.error->message.find("/nonexistent-sandlot-dir"), std::string::npos) << cwd.error->message;
    EXPECT_EQ(cwd.error->errno_value, ENOENT);

    proto::ExecStart bad_user = command({"true"});
    bad_user.user = "sandlot-no-such-user";
    expect_spawn_failure(run(client, bad_user), proto::SpawnErrorKind::BadUser);

    std::string plain = agent_.dir() + "/plain-file";
    std::ofstream(plain) << "not a program\n";
    chmod(plain.c_str(), 0644);
    Outcome denied = run(client, command({plain}));
    expect_spawn_failure(denied, proto::SpawnErrorKind::PermissionDenied);
    EXPECT_EQ(denied.error->errno_value, EACCES);

    std::string garbage = agent_.dir() + "/garbage";
    std::ofstream(garbage) << "\x7f"
                              "ELF garbage";
    chmod(garbage.c_str(), 0755);
    expect_spawn_failure(run(client, command({garbage})), proto::SpawnErrorKind::NotExecutable);

    expect_exit(run(client, shell("exit 7")), 7);  // and the connection still works
}

TEST_F(AgentExec, TimeoutKillsTheGroup) {
    Client client(agent_);
    proto::ExecStart request = shell("sleep 30 & sleep 30");
    request.timeout_ms = 300;
    auto started = Clock::now();
    Outcome o = run(client, request);
    ASSERT_TRUE(o.exit);
    EXPECT_EQ(o.exit->signal, SIGKILL);
    EXPECT_EQ(o.exit->timed_out, 1);
    EXPECT_EQ(o.exit->output_abandoned, 0) << "the background sleep survived";
    EXPECT_GE(Clock::now() - started, 250ms);
    EXPECT_LT(Clock::now() - started, 5s);

    request = shell("exit 0");
    request.timeout_ms = 10'000;
    Outcome quick = run(client, request);
    expect_exit(quick, 0);
    EXPECT_EQ(quick.exit->timed_out, 0);
}

TEST_F(AgentExec, BadFramesGetErrorsAndTheNextRequestWorks) {
    Client client(agent_);
    // A malformed EXEC_START.
    client.send(proto::make_frame(proto::MessageType::ExecStart, 500, {1, 2, 3}));
    // An unknown type in the exec range.
    client.send(proto::make_frame(static_cast<proto::MessageType>(0x01ff), 501, {}));
    // Frames on a stream that was never opened.
    client.send(proto::make_frame(proto::Signal{SIGTERM}, 502));
    client.send(proto::make_frame(proto::Window{100}, 503));
    client.send(proto::make_frame(proto::MessageType::Stdin, 504, {'x'}));
    // EXEC_START on the control stream.
    client.send(proto::make_frame(proto::MessageType::ExecStart, 0,
                                  proto::encode_exec_start(command({"true"})).value()));
    ASSERT_TRUE(client.pump_until([&] { return client.unsolicited().size() >= 6; }, 10s));
    std::map<uint32_t, uint32_t> codes;
    for (const proto::Frame& frame : client.unsolicited()) {
        ASSERT_EQ(frame.type, static_cast<uint16_t>(proto::MessageType::Error));
        codes[frame.stream_id] = proto::decode_error(frame.payload).value().code;
    }
    EXPECT_EQ(codes[500], static_cast<uint32_t>(proto::ErrorCode::Malformed));
    EXPECT_EQ(codes[501], static_cast<uint32_t>(proto::ErrorCode::Unsupported));
    EXPECT_EQ(codes[502], static_cast<uint32_t>(proto::ErrorCode::Failed));
    EXPECT_EQ(codes[503], static_cast<uint32_t>(proto::ErrorCode::Failed));
    EXPECT_EQ(codes[504], static_cast<uint32_t>(proto::ErrorCode::Failed));
    EXPECT_EQ(codes[0], static_cast<uint32_t>(proto::ErrorCode::Failed));

    // A bad signal number ends that stream (and kills it).
    uint32_t stream = client.start(command({"sleep", "30"}));
    ASSERT_TRUE(client.pump_until([&] { return client.outcome(stream).started; }, 10s));
    client.send(proto::make_frame(proto::Signal{65}, stream));
    Outcome o = client.wait(stream);
    ASSERT_TRUE(o.error);
    EXPECT_EQ(o.error->code, static_cast<uint32_t>(proto::ErrorCode::Malformed));
    EXPECT_TRUE(process_gone(static_cast<pid_t>(o.pid), 5s));

    Outcome next = run(client, shell("echo still here"));
    expect_exit(next, 0);
    EXPECT_EQ(next.out, "still here\n");
    EXPECT_FALSE(client.closed());
}

TEST_F(AgentExec, LateFramesForAnEndedStreamAreDroppedQuietly) {
    Client client(agent_);
    uint32_t stream = client.start(shell("exit 0"));
    client.wait(stream);
    client.send(proto::make_frame(proto::Window{1000}, stream));
    client.send(proto::make_frame(proto::Signal{SIGTERM}, stream));
    expect_exit(run(client, shell("exit 2")), 2);
    EXPECT_TRUE(client.unsolicited().empty());
}

TEST_F(AgentExec, ChildrenStartWithDefaultSignalsAndOnlyStdio) {
    Client client(agent_);
    Outcome sig = run(client, command({"grep", "^Sig[BI]", "/proc/self/status"}));
    expect_exit(sig, 0);
    EXPECT_EQ(sig.out, "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n");
    // ls opens the directory as fd 3; anything beyond that leaked from the agent.
    Outcome fds = run(client, command({"ls", "/proc/self/fd"}));
    expect_exit(fds, 0);
    EXPECT_EQ(fds.out, "0\n1\n2\n3\n");
}

TEST_F(AgentExec, EnvironmentCwdAndRlimits) {
    Client client(agent_);
    proto::ExecStart request = shell("echo \"$FOO|$HOME|$PATH\"; pwd; ulimit -n");
    request.env = {"FOO=bar", "PATH=/usr/bin:/bin", "FOO=baz"};
    request.cwd = "/tmp";
    request.rlimits = {{RLIMIT_NOFILE, 100, 200}};
    Outcome o = run(client, request);
    expect_exit(o, 0);
    auto me = resolve_user(std::to_string(geteuid()));  // "" is root, or the agent's own user when not root
    ASSERT_TRUE(me);
    EXPECT_EQ(o.out, "baz|" + me->home + "|/usr/bin:/bin\n/tmp\n100\n");

    // Without rlimits in the request a child gets the fd limit the agent itself started with.
    rlimit mine{};
    getrlimit(RLIMIT_NOFILE, &mine);
    Outcome dflt = run(client, shell("ulimit -n"));
    expect_exit(dflt, 0);
    EXPECT_EQ(dflt.out, std::to_string(mine.rlim_cur) + "\n");

    proto::ExecStart bad = shell("true");
    bad.rlimits = {{RLIMIT_NOFILE, 300, 200}};
    expect_spawn_failure(run(client, bad), proto::SpawnErrorKind::BadRequest);
}

TEST_F(AgentExec, RunsAsAnotherUser) {
    if (geteuid() != 0) GTEST_SKIP() << "switching users needs root";
    Client client(agent_);
    proto::ExecStart request = command({"id", "-u"});
    request.user = "65534:65534";
    Outcome o = run(client, request);
    expect_exit(o, 0);
    EXPECT_EQ(o.out, "65534\n");

    request = shell("id -g; id -G; echo \"$HOME\"; pwd");
    request.user = "65534:65534";
    o = run(client, request);
    expect_exit(o, 0);
    std::istringstream lines(o.out);
    std::string gid, groups, home, cwd;
    std::getline(lines, gid);
    std::getline(lines, groups);
    std::getline(lines, home);
    std::getline(lines, cwd);
    EXPECT_EQ(gid, "65534");
    EXPECT_EQ(groups.substr(0, 5), "65534");
    EXPECT_EQ(groups.find(" 0"), std::string::npos) << "root's groups kept: " << groups;
    // HOME from passwd (Debian's nobody has /nonexistent); cwd falls back to / when HOME does not exist.
    EXPECT_EQ(cwd, std::filesystem::exists(home) ? home : "/") << home;

    request = command({"id", "-u"});
    request.user = "4242";  // not in passwd: allowed
    o = run(client, request);
    expect_exit(o, 0);
    EXPECT_EQ(o.out, "4242\n");
}

TEST_F(AgentExec, ClosingTheConnectionKillsItsProcesses) {
    uint32_t pid = 0;
    {
        Client client(agent_);
        uint32_t stream = client.start(shell("sleep 30 & sleep 30"));
        ASSERT_TRUE(client.pump_until([&] { return client.outcome(stream).started; }, 10s));
        pid = client.outcome(stream).pid;
        std::this_thread::sleep_for(100ms);  // let sh start both sleeps
    }
    EXPECT_TRUE(process_gone(static_cast<pid_t>(pid), 5s));
    // The whole group went: nothing of it is left as the agent's child either.
    auto deadline = Clock::now() + 5s;
    while (!children_of(agent_.pid()).empty() && Clock::now() < deadline)
        std::this_thread::sleep_for(20ms);
    EXPECT_TRUE(children_of(agent_.pid()).empty());
    Client again(agent_);
    expect_exit(run(again, shell("exit 0")), 0);
}

TEST_F(AgentExec, OrphansAreReapedBySubreaperAgent) {
    Client client(agent_);
    Outcome o = run(client, shell("sleep 0.5 & echo $!"));
    expect_exit(o, 0);
    pid_t orphan = std::atoi(o.out.c_str());
    ASSERT_GT(orphan, 0);
    // The orphan was re-parented to the agent (a child subreaper in host mode)...
    auto children = children_of(agent_.pid());
    EXPECT_TRUE(std::any_of(children.begin(), children.end(), [&](auto& c) { return c.first == orphan; }))
        << "orphan " << orphan << " is not the agent's child";
    // ...and reaped once it exits: no zombie stays behind.
    auto deadline = Clock::now() + 5s;
    while (!children_of(agent_.pid()).empty() && Clock::now() < deadline)
        std::this_thread::sleep_for(20ms);
    EXPECT_TRUE(children_of(agent_.pid()).empty());
}

// A fork bomb's signature: fork fails with EAGAIN. The request gets ResourceLimit and the agent carries on.
TEST(AgentExecLimits, ForkFailureIsAResourceLimitError) {
    if (geteuid() != 0) GTEST_SKIP() << "needs root to run the agent as an unprivileged uid";
    // RLIMIT_NPROC counts the uid's processes: the agent plus two sleeps fill it.
    Agent agent({"/usr/bin/prlimit", "--nproc=3", "/usr/bin/setpriv", "--reuid=54321", "--regid=54321",
                 "--clear-groups"});
    Client client(agent);
    std::vector<uint32_t> streams;
    for (int i = 0; i < 4; ++i)
        streams.push_back(client.start(command({"sleep", "30"})));
    ASSERT_TRUE(client.pump_until(
        [&] {
            return std::all_of(streams.begin(), streams.end(), [&](uint32_t s) {
                return client.outcome(s).started || client.outcome(s).ended();
            });
        },
        10s));
    int refused = 0;
    for (uint32_t stream : streams) {
        Outcome& o = client.outcome(stream);
        if (o.started) {
            client.send(proto::make_frame(proto::Signal{SIGKILL}, stream));
            continue;
        }
        ++refused;
        expect_spawn_failure(o, proto::SpawnErrorKind::ResourceLimit);
        EXPECT_EQ(o.error->errno_value, EAGAIN);
    }
    EXPECT_EQ(refused, 2);
    ASSERT_TRUE(client.wait_all(10s));
    // Once the processes are gone there is room again.
    expect_exit(run(client, shell("exit 5")), 5);
}

TEST(AgentExecPidNamespace, AgentAsPid1ReapsOrphans) {
    if (geteuid() != 0) GTEST_SKIP() << "unshare --pid needs root";
    if (access("/usr/bin/unshare", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/unshare";
    Agent ns({"/usr/bin/unshare", "--pid", "--fork", "--kill-child"});
    Client client(ns);
    ASSERT_TRUE(client.fd() >= 0 && !client.closed());

    Outcome who = run(client, shell("echo $$ $PPID"));
    expect_exit(who, 0);
    EXPECT_EQ(who.out.substr(who.out.find(' ') + 1), "1\n") << "agentd is not PID 1: " << who.out;

    // agentd's host pid: the child of unshare.
    auto unshare_children = children_of(ns.pid());
    ASSERT_EQ(unshare_children.size(), 1u);
    pid_t agent = unshare_children[0].first;

    Outcome o = run(client, shell("sleep 0.3 & exit 0"));
    expect_exit(o, 0);
    auto kids = children_of(agent);
    EXPECT_EQ(kids.size(), 1u) << "the orphaned sleep should now be PID 1's child";
    auto deadline = Clock::now() + 5s;
    while (!children_of(agent).empty() && Clock::now() < deadline)
        std::this_thread::sleep_for(20ms);
    for (auto [pid, state] : children_of(agent))
        ADD_FAILURE() << "child " << pid << " of PID 1 left in state " << state;

    // Many short-lived orphans at once.
    Outcome many = run(client, shell("for i in 1 2 3 4 5 6 7 8 9 10; do (sleep 0.1 &) ; done; exit 0"));
    expect_exit(many, 0);
    deadline = Clock::now() + 5s;
    while (!children_of(agent).empty() && Clock::now() < deadline)
        std::this_thread::sleep_for(20ms);
    EXPECT_TRUE(children_of(agent).empty());
}

}  // namespace
}  // namespace sandlot::agent::exec_test
