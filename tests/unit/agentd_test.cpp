// The guest agent in host mode (agentd --listen-unix): the same protocol it serves over vsock as PID 1.
#include <elf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "agentd/init.h"
#include "agentd/stats.h"
#include "proto/base/unique_fd.h"
#include "proto/frame.h"
#include "proto/messages.h"
#include "proto/version.h"
#include "tests/support/temp_dir.h"

extern char** environ;

namespace sandlot::agent {
namespace {

using test::TempDir;

using namespace std::chrono_literals;

const std::string kAgentd = std::string(SANDLOT_BIN_DIR) + "/agentd";

TEST(AgentCmdline, DefaultsWithoutSandlotOptions) {
    BootOptions options = parse_kernel_cmdline("console=ttyS0 reboot=t quiet\n");
    EXPECT_EQ(options.port, kDefaultVsockPort);
    EXPECT_FALSE(options.notify_port);
}

TEST(AgentCmdline, ReadsPortAndNotify) {
    BootOptions options =
        parse_kernel_cmdline("console=ttyS0 sandlot.port=5000  sandlot.notify=7001 panic=-1\n");
    EXPECT_EQ(options.port, 5000u);
    ASSERT_TRUE(options.notify_port);
    EXPECT_EQ(*options.notify_port, 7001u);
}

TEST(AgentCmdline, BadValuesAreIgnored) {
    BootOptions options = parse_kernel_cmdline(
        "sandlot.port=12x sandlot.notify= sandlot.port=4294967295 xsandlot.port=9 sandlot.notify=-1 "
        "sandlot.ports=3");
    EXPECT_EQ(options.port, kDefaultVsockPort);
    EXPECT_FALSE(options.notify_port);
    EXPECT_EQ(parse_kernel_cmdline("sandlot.port=1 sandlot.port=2").port,
              2u);  // last one wins, like the kernel
}

UniqueFd unix_socket() {
    return UniqueFd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
}

sockaddr_un unix_address(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    return addr;
}

// Reads block for at most 10 s so a broken agent fails the test instead of hanging it.
void set_timeout(int fd) {
    timeval tv{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

// A running `agentd --listen-unix <tmp>/a.sock [extra args]`, killed on destruction if still alive.
class AgentProcess {
  public:
    explicit AgentProcess(std::vector<std::string> extra = {}) {
        socket_path_ = dir_.path() + "/a.sock";
        std::vector<std::string> args = {kAgentd, "--listen-unix", socket_path_};
        args.insert(args.end(), extra.begin(), extra.end());
        std::vector<char*> argv;
        for (auto& a : args)
            argv.push_back(a.data());
        argv.push_back(nullptr);
        int rc = posix_spawn(&pid_, kAgentd.c_str(), nullptr, nullptr, argv.data(), environ);
        EXPECT_EQ(rc, 0) << "spawn " << kAgentd << ": " << std::strerror(rc);
        if (rc != 0) pid_ = -1;
    }
    ~AgentProcess() {
        if (pid_ > 0) {
            kill(pid_, SIGKILL);
            waitpid(pid_, nullptr, 0);
        }
    }

    const TempDir& dir() const { return dir_; }
    pid_t pid() const { return pid_; }
    const std::string& socket_path() const { return socket_path_; }

    // Connects, retrying while the agent starts up.
    UniqueFd connect() {
        auto addr = unix_address(socket_path_);
        auto deadline = std::chrono::steady_clock::now() + 10s;
        while (std::chrono::steady_clock::now() < deadline) {
            UniqueFd fd = unix_socket();
            if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
                set_timeout(fd.get());
                return fd;
            }
            std::this_thread::sleep_for(5ms);
        }
        ADD_FAILURE() << "agentd never accepted on " << socket_path_;
        return {};
    }

    // Waits up to 10 s for the process to exit; returns its wait status, or -1 if it is still running.
    int wait_exit() {
        auto deadline = std::chrono::steady_clock::now() + 10s;
        while (std::chrono::steady_clock::now() < deadline) {
            int status = 0;
            pid_t r = waitpid(pid_, &status, WNOHANG);
            if (r == pid_) {
                pid_ = -1;
                return status;
            }
            std::this_thread::sleep_for(5ms);
        }
        return -1;
    }

  private:
    TempDir dir_;
    std::string socket_path_;
    pid_t pid_ = -1;
};

proto::Frame read_ok(int fd) {
    auto frame = proto::read_frame(fd);
    EXPECT_TRUE(frame) << frame.error().to_string();
    return frame ? std::move(*frame) : proto::Frame{};
}

proto::Hello read_hello(int fd) {
    proto::Frame frame = read_ok(fd);
    EXPECT_EQ(frame.type, static_cast<uint16_t>(proto::MessageType::Hello));
    auto hello = proto::decode_hello(frame.payload);
    EXPECT_TRUE(hello) << hello.error().to_string();
    return hello.value_or(proto::Hello{});
}

void expect_ping_pong(int fd, uint64_t nonce, uint32_t stream = proto::kControlStream) {
    ASSERT_TRUE(proto::write_frame(fd, proto::make_frame(proto::Ping{nonce}, stream)));
    proto::Frame frame = read_ok(fd);
    ASSERT_EQ(frame.type, static_cast<uint16_t>(proto::MessageType::Pong));
    EXPECT_EQ(frame.stream_id, stream);
    EXPECT_EQ(proto::decode_pong(frame.payload).value().nonce, nonce);
}

proto::ErrorMessage read_error(int fd) {
    proto::Frame frame = read_ok(fd);
    EXPECT_EQ(frame.type, static_cast<uint16_t>(proto::MessageType::Error));
    auto error = proto::decode_error(frame.payload);
    EXPECT_TRUE(error);
    return error.value_or(proto::ErrorMessage{});
}

TEST(Agentd, GreetsWithHello) {
    AgentProcess agent;
    UniqueFd conn = agent.connect();
    ASSERT_TRUE(conn);
    proto::Hello hello = read_hello(conn.get());
    EXPECT_EQ(hello.protocol_major, proto::kProtocolMajor);
    EXPECT_EQ(hello.protocol_minor, proto::kProtocolMinor);
    EXPECT_EQ(hello.agent_version, proto::kAgentVersion);
    EXPECT_TRUE(hello.features & proto::kFeatureExec);  // exec details: agentd_exec_test.cpp
    EXPECT_GT(hello.cpus_online, 0u);
    EXPECT_GT(hello.mem_total_kib, 0u);
    EXPECT_FALSE(hello.kernel_release.empty());
    EXPECT_GT(hello.agent_start_ns, 0u);
    EXPECT_GE(hello.agent_ready_ns, hello.agent_start_ns);
    EXPECT_GE(hello.hello_ns, hello.agent_ready_ns);
}

TEST(Agentd, PingPongEchoesNonceAndStream) {
    AgentProcess agent;
    UniqueFd conn = agent.connect();
    ASSERT_TRUE(conn);
    read_hello(conn.get());
    expect_ping_pong(conn.get(), 0x1234567890abcdef);
    expect_ping_pong(conn.get(), 0, 77);
    expect_ping_pong(conn.get(), UINT64_MAX);
}

TEST(Agentd, StatsRequestIsAnsweredFromProc) {
    AgentProcess agent;
    UniqueFd conn = agent.connect();
    ASSERT_TRUE(conn);
    proto::Hello hello = read_hello(conn.get());
    EXPECT_TRUE(hello.features & proto::kFeatureStats);
    ASSERT_TRUE(proto::write_frame(conn.get(), proto::make_frame(proto::StatsRequest{}, 4)));
    proto::Frame frame = read_ok(conn.get());
    ASSERT_EQ(frame.type, static_cast<uint16_t>(proto::MessageType::Stats));
    EXPECT_EQ(frame.stream_id, 4u);
    auto stats = proto::decode_stats(frame.payload);
    ASSERT_TRUE(stats) << stats.error().to_string();
    EXPECT_GT(stats->mem_total_kib, 0u);
    EXPECT_GT(stats->mem_available_kib, 0u);
    EXPECT_LE(stats->mem_available_kib, stats->mem_total_kib);
    EXPECT_GE(stats->uptime_ns, hello.hello_ns);  // the same clock, later
    EXPECT_GE(stats->processes, 2u);              // at least agentd and this test
    EXPECT_EQ(stats->exec_sessions, 0u);
    expect_ping_pong(conn.get(), 8);  // the connection goes on
}

// A fake /proc: the parsers take what they know and ignore the rest.
TEST(AgentStats, ReadsAFakeProc) {
    TempDir proc;
    std::ofstream(proc / "meminfo") << "MemTotal:        2048000 kB\nMemFree:          100 kB\n"
                                       "MemAvailable:    1024000 kB\nHugePages_Total:       0\n";
    std::ofstream(proc / "loadavg") << "3.07 0.58 0.59 1/234 5678\n";
    for (const char* name : {"1", "42", "31337", "self", "1a", "sys", "x1"})
        std::filesystem::create_directory(proc / name);
    proto::Stats stats = collect_stats(proc.path());
    EXPECT_EQ(stats.mem_total_kib, 2048000u);
    EXPECT_EQ(stats.mem_available_kib, 1024000u);
    EXPECT_EQ(stats.load1_centi, 307u);
    EXPECT_EQ(stats.processes, 3u);
    EXPECT_GT(stats.uptime_ns, 0u);
}

TEST(AgentStats, GarbageAndMissingFilesGiveZeros) {
    TempDir proc;
    proto::Stats empty = collect_stats(proc.path());
    EXPECT_EQ(empty.mem_total_kib, 0u);
    EXPECT_EQ(empty.load1_centi, 0u);
    EXPECT_EQ(empty.processes, 0u);

    // Longer than the read limit, no newlines, values without units or digits.
    std::ofstream(proc / "meminfo") << std::string(kMaxProcFileBytes * 2, 'M');
    std::ofstream(proc / "loadavg") << "-1.5";
    EXPECT_EQ(collect_stats(proc.path()).mem_total_kib, 0u);
    EXPECT_EQ(collect_stats(proc.path()).load1_centi, 0u);

    EXPECT_FALSE(meminfo_kib("MemTotal: 12 MB\n", "MemTotal"));
    EXPECT_FALSE(meminfo_kib("MemTotal: kB\n", "MemTotal"));
    EXPECT_FALSE(meminfo_kib("MemTotalX: 5 kB\n", "MemTotal"));
    EXPECT_EQ(meminfo_kib("MemTotal: 99999999999999999999999 kB", "MemTotal"), UINT64_MAX);  // saturates
    // No MemAvailable (before Linux 3.14): MemFree stands in.
    std::ofstream(proc / "meminfo", std::ios::trunc) << "MemTotal: 10 kB\nMemFree: 4 kB\n";
    EXPECT_EQ(collect_stats(proc.path()).mem_available_kib, 4u);

    EXPECT_EQ(load1_centi("0.5"), 50u);
    EXPECT_EQ(load1_centi("12"), 1200u);
    EXPECT_EQ(load1_centi("1.999 x"), 199u);
    EXPECT_EQ(load1_centi("99999999999.00"), UINT32_MAX);
    EXPECT_EQ(load1_centi(""), 0u);
}

TEST(Agentd, UnknownTypeGetsUnsupportedErrorAndConnectionGoesOn) {
    AgentProcess agent;
    UniqueFd conn = agent.connect();
    ASSERT_TRUE(conn);
    read_hello(conn.get());
    proto::Frame unknown;
    unknown.type = 0x7abc;
    unknown.stream_id = 9;
    unknown.payload = {1, 2, 3};
    ASSERT_TRUE(proto::write_frame(conn.get(), unknown));
    auto error = read_error(conn.get());
    EXPECT_EQ(error.code, static_cast<uint32_t>(proto::ErrorCode::Unsupported));
    EXPECT_NE(error.message.find("0x7abc"), std::string::npos) << error.message;
    expect_ping_pong(conn.get(), 5);
}

TEST(Agentd, MalformedPayloadGetsMalformedErrorAndConnectionGoesOn) {
    AgentProcess agent;
    UniqueFd conn = agent.connect();
    ASSERT_TRUE(conn);
    read_hello(conn.get());
    ASSERT_TRUE(proto::write_frame(conn.get(), proto::make_frame(proto::MessageType::Ping, 3, {1, 2, 3})));
    auto error = read_error(conn.get());
    EXPECT_EQ(error.code, static_cast<uint32_t>(proto::ErrorCode::Malformed));
    expect_ping_pong(conn.get(), 6);
}

TEST(Agentd, OversizedFrameClosesThatConnectionOnly) {
    AgentProcess agent;
    UniqueFd other = agent.connect();
    ASSERT_TRUE(other);
    read_hello(other.get());

    UniqueFd bad = agent.connect();
    ASSERT_TRUE(bad);
    read_hello(bad.get());
    std::array<uint8_t, proto::kFrameHeaderSize> header{};
    proto::encode_header({proto::kMaxFramePayload + 1, 0, 0x0002, 0}, header);
    ASSERT_TRUE(proto::write_all(bad.get(), header));
    auto error = read_error(bad.get());
    EXPECT_EQ(error.code, static_cast<uint32_t>(proto::ErrorCode::Protocol));
    auto closed = proto::read_frame(bad.get());
    ASSERT_FALSE(closed);
    EXPECT_TRUE(proto::is_connection_closed(closed.error())) << closed.error().to_string();

    expect_ping_pong(other.get(), 1);  // the agent survived...
    UniqueFd fresh = agent.connect();  // ...and still accepts
    ASSERT_TRUE(fresh);
    read_hello(fresh.get());
    expect_ping_pong(fresh.get(), 2);
}

TEST(Agentd, TwoConcurrentConnections) {
    AgentProcess agent;
    UniqueFd a = agent.connect();
    UniqueFd b = agent.connect();
    ASSERT_TRUE(a && b);
    read_hello(a.get());
    read_hello(b.get());
    // Requests queued on both before either reply is read.
    ASSERT_TRUE(proto::write_frame(a.get(), proto::make_frame(proto::Ping{100})));
    ASSERT_TRUE(proto::write_frame(b.get(), proto::make_frame(proto::Ping{200})));
    EXPECT_EQ(proto::decode_pong(read_ok(b.get()).payload).value().nonce, 200u);
    EXPECT_EQ(proto::decode_pong(read_ok(a.get()).payload).value().nonce, 100u);
    a.reset();
    expect_ping_pong(b.get(), 300);
}

TEST(Agentd, FloodOfPingsIsAnsweredInOrderUnderBackpressure) {
    AgentProcess agent;
    UniqueFd conn = agent.connect();
    ASSERT_TRUE(conn);
    read_hello(conn.get());
    // ~3 MB of PONGs, more than the agent queues: it must stop reading, not buffer without bound or drop.
    constexpr uint64_t kCount = 150'000;
    std::atomic<uint64_t> written{0};
    std::thread writer([&] {
        std::vector<uint8_t> batch;
        for (uint64_t i = 0; i < kCount; ++i) {
            auto bytes = proto::encode_frame(proto::make_frame(proto::Ping{i})).value();
            batch.insert(batch.end(), bytes.begin(), bytes.end());
            if (batch.size() > 64 * 1024 || i + 1 == kCount) {
                ASSERT_TRUE(proto::write_all(conn.get(), batch));
                batch.clear();
                written = i + 1;
            }
        }
    });
    // Before reading anything, wait for the writer to stall. An agent that kept reading while its replies
    // piled up would let it finish; one that applies backpressure stops it well short of the end (socket
    // buffers hold a few hundred KB, not megabytes).
    uint64_t last = 0;
    auto last_change = std::chrono::steady_clock::now();
    auto give_up = last_change + 20s;
    while (written.load() < kCount && std::chrono::steady_clock::now() < give_up &&
           std::chrono::steady_clock::now() - last_change < 500ms) {
        std::this_thread::sleep_for(20ms);
        if (written.load() != last) {
            last = written.load();
            last_change = std::chrono::steady_clock::now();
        }
    }
    EXPECT_LT(written.load(), kCount) << "agentd kept reading while its replies piled up";
    for (uint64_t i = 0; i < kCount; ++i) {
        auto frame = proto::read_frame(conn.get());
        ASSERT_TRUE(frame) << i << ": " << frame.error().to_string();
        ASSERT_EQ(proto::decode_pong(frame->payload).value().nonce, i);
    }
    writer.join();
}

TEST(Agentd, ShutdownIsAcknowledgedThenTheProcessExitsZero) {
    AgentProcess agent;
    UniqueFd conn = agent.connect();
    ASSERT_TRUE(conn);
    read_hello(conn.get());
    ASSERT_TRUE(proto::write_frame(conn.get(), proto::make_frame(proto::Shutdown{}, 4)));
    proto::Frame ack = read_ok(conn.get());
    EXPECT_EQ(ack.type, static_cast<uint16_t>(proto::MessageType::ShutdownAck));
    EXPECT_EQ(ack.stream_id, 4u);
    int status = agent.wait_exit();
    ASSERT_NE(status, -1) << "agentd still running after SHUTDOWN";
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
    EXPECT_FALSE(std::filesystem::exists(agent.socket_path())) << "socket file left behind";
}

TEST(Agentd, SigtermExitsZero) {
    AgentProcess agent;
    UniqueFd conn = agent.connect();  // make sure it is up and has its signal handling in place
    ASSERT_TRUE(conn);
    read_hello(conn.get());
    ASSERT_EQ(kill(agent.pid(), SIGTERM), 0);
    int status = agent.wait_exit();
    ASSERT_NE(status, -1);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(Agentd, NotifyConnectsOutAndGreets) {
    TempDir host_dir;
    std::string host_path = host_dir.path() + "/host.sock";
    UniqueFd listener = unix_socket();
    auto addr = unix_address(host_path);
    ASSERT_EQ(bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(listen(listener.get(), 1), 0);

    AgentProcess agent({"--notify-unix", host_path});
    pollfd pfd{listener.get(), POLLIN, 0};
    ASSERT_EQ(poll(&pfd, 1, 10'000), 1) << "agentd did not connect out";
    UniqueFd conn(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    ASSERT_TRUE(conn);
    set_timeout(conn.get());
    proto::Hello hello = read_hello(conn.get());
    EXPECT_EQ(hello.protocol_major, proto::kProtocolMajor);
    EXPECT_GE(hello.agent_ready_ns, hello.agent_start_ns);
    expect_ping_pong(conn.get(), 42);
}

TEST(Agentd, RejectsBadArguments) {
    for (std::vector<std::string> args :
         {std::vector<std::string>{}, {"--listen-unix"}, {"--bogus", "x"}, {"--listen-vsock", "12ab"}}) {
        args.insert(args.begin(), kAgentd);
        std::vector<char*> argv;
        for (auto& a : args)
            argv.push_back(a.data());
        argv.push_back(nullptr);
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
        pid_t pid;
        ASSERT_EQ(posix_spawn(&pid, kAgentd.c_str(), &actions, nullptr, argv.data(), environ), 0);
        posix_spawn_file_actions_destroy(&actions);
        int status = 0;
        ASSERT_EQ(waitpid(pid, &status, 0), pid);
        ASSERT_TRUE(WIFEXITED(status));
        EXPECT_EQ(WEXITSTATUS(status), 2) << args.size();
    }
}

// agentd is the guest's /init: there is no dynamic loader or libc in the initramfs.
TEST(Agentd, BinaryIsStaticallyLinked) {
    UniqueFd fd(open(kAgentd.c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(fd) << kAgentd;
    Elf64_Ehdr ehdr{};
    ASSERT_EQ(pread(fd.get(), &ehdr, sizeof ehdr, 0), static_cast<ssize_t>(sizeof ehdr));
    ASSERT_EQ(std::memcmp(ehdr.e_ident, ELFMAG, SELFMAG), 0);
    ASSERT_EQ(ehdr.e_ident[EI_CLASS], ELFCLASS64);
    ASSERT_EQ(ehdr.e_phentsize, sizeof(Elf64_Phdr));
    ASSERT_GT(ehdr.e_phnum, 0);
    for (int i = 0; i < ehdr.e_phnum; ++i) {
        Elf64_Phdr phdr{};
        off_t at = static_cast<off_t>(ehdr.e_phoff + static_cast<uint64_t>(i) * sizeof phdr);
        ASSERT_EQ(pread(fd.get(), &phdr, sizeof phdr, at), static_cast<ssize_t>(sizeof phdr));
        EXPECT_NE(phdr.p_type, static_cast<uint32_t>(PT_INTERP)) << "agentd asks for a dynamic loader";
        EXPECT_NE(phdr.p_type, static_cast<uint32_t>(PT_DYNAMIC)) << "agentd has dynamic linking info";
    }
}

}  // namespace
}  // namespace sandlot::agent
