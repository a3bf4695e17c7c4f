// End-to-end: boot real microVMs with sandlot-vmm and talk to agentd over vsock.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "host/lib/paths.h"
#include "host/lib/sandbox.h"
#include "proto/frame.h"
#include "proto/messages.h"
#include "tests/vm/vm_test_support.h"

namespace sandlot::vmtest {
namespace {

TEST(Boot, PvhKernelGreetsOverVsock) {
    SKIP_WITHOUT_KVM();
    auto sandbox = host::Sandbox::boot(default_options());
    ASSERT_TRUE(sandbox) << sandbox.error().to_string();
    const auto& hello = (*sandbox)->hello();
    EXPECT_EQ(hello.protocol_major, proto::kProtocolMajor);
    EXPECT_EQ(hello.agent_version, SANDLOT_VERSION);
    EXPECT_EQ(hello.cpus_online, 1u);
    EXPECT_TRUE(hello.kernel_release.starts_with("6.1")) << hello.kernel_release;
    // The guest sees (almost) all of its 256 MiB: the kernel keeps a little for itself.
    EXPECT_GT(hello.mem_total_kib, 200u * 1024);
    EXPECT_LE(hello.mem_total_kib, 256u * 1024);
    EXPECT_GT(hello.agent_start_ns, 0u);
    EXPECT_GE(hello.agent_ready_ns, hello.agent_start_ns);
    EXPECT_GT((*sandbox)->boot_to_agent().count(), 0);

    auto rtt = (*sandbox)->agent().ping();
    ASSERT_TRUE(rtt) << rtt.error().to_string();

    expect_clean_shutdown(**sandbox);
}

TEST(Boot, TwoVcpusAreOnlineInTheGuest) {
    SKIP_WITHOUT_KVM();
    auto options = default_options();
    options.cpus = 2;
    auto sandbox = host::Sandbox::boot(options);
    ASSERT_TRUE(sandbox) << sandbox.error().to_string();
    EXPECT_EQ((*sandbox)->hello().cpus_online, 2u);
    expect_clean_shutdown(**sandbox);
}

TEST(Boot, BzImageBootsThroughTheLinux64Protocol) {
    SKIP_WITHOUT_KVM();
    auto options = default_options();
    options.kernel = host::guest_dir() + "/bzImage";
    auto sandbox = host::Sandbox::boot(options);
    ASSERT_TRUE(sandbox) << sandbox.error().to_string();
    EXPECT_TRUE((*sandbox)->hello().kernel_release.starts_with("6.1"));
    expect_clean_shutdown(**sandbox);
}

TEST(Boot, HostCanWaitForTheAgentByRetryingConnect) {
    SKIP_WITHOUT_KVM();
    auto options = default_options();
    options.wait_by_polling = true;
    auto sandbox = host::Sandbox::boot(options);
    ASSERT_TRUE(sandbox) << sandbox.error().to_string();
    EXPECT_EQ((*sandbox)->hello().protocol_major, proto::kProtocolMajor);
    expect_clean_shutdown(**sandbox);
}

TEST(Vsock, ManyConnectionsThroughTheConnectHandshake) {
    SKIP_WITHOUT_KVM();
    auto sandbox = host::Sandbox::boot(default_options());
    ASSERT_TRUE(sandbox) << sandbox.error().to_string();
    std::vector<std::unique_ptr<host::AgentConnection>> connections;
    for (int i = 0; i < 8; ++i) {
        auto conn = (*sandbox)->connect();
        ASSERT_TRUE(conn) << conn.error().to_string();
        connections.push_back(std::move(*conn));
    }
    for (int round = 0; round < 3; ++round) {
        for (auto& conn : connections) {
            auto rtt = conn->ping();
            ASSERT_TRUE(rtt) << rtt.error().to_string();
        }
    }
    expect_clean_shutdown(**sandbox);
}

TEST(Vsock, StockSocatSpeaksTheConnectProtocol) {
    SKIP_WITHOUT_KVM();
    auto sandbox = host::Sandbox::boot(default_options());
    ASSERT_TRUE(sandbox) << sandbox.error().to_string();
    // socat sends our CONNECT line, then prints the VMM's "OK <port>" and the agent's HELLO frame.
    auto result = run_command({"socat", "-t", "2", "-", "UNIX-CONNECT:" + (*sandbox)->vsock_uds()},
                              "CONNECT " + std::to_string(host::kAgentPort) + "\n");
    ASSERT_EQ(result.status, 0) << result.output;
    ASSERT_TRUE(result.output.starts_with("OK ")) << result.output;
    auto newline = result.output.find('\n');
    ASSERT_NE(newline, std::string::npos);
    std::string frame = result.output.substr(newline + 1);
    ASSERT_GE(frame.size(), proto::kFrameHeaderSize);
    auto header = proto::decode_header(std::span<const uint8_t, proto::kFrameHeaderSize>(
        reinterpret_cast<const uint8_t*>(frame.data()), proto::kFrameHeaderSize));
    ASSERT_TRUE(header) << header.error().to_string();
    EXPECT_EQ(header->type, static_cast<uint16_t>(proto::MessageType::Hello));
    EXPECT_EQ(frame.size(), proto::kFrameHeaderSize + header->payload_length);

    // The connection socat used is gone; the agent still answers on the boot connection.
    auto rtt = (*sandbox)->agent().ping();
    ASSERT_TRUE(rtt) << rtt.error().to_string();
    expect_clean_shutdown(**sandbox);
}

TEST(Crash, GuestKernelPanicEndsTheVmmWithNonZeroStatus) {
    SKIP_WITHOUT_KVM();
    auto dir = temp_dir();
    auto options = default_options();
    // No such init: the kernel panics ("Requested init ... failed"), and with panic=-1 it resets at once.
    options.cmdline = "rdinit=/no-such-init";
    options.console = "stdout";
    options.vmm_log = dir + "/vmm.log";
    options.ready_timeout = std::chrono::seconds(120);
    auto start = std::chrono::steady_clock::now();
    auto sandbox = host::Sandbox::boot(options);
    ASSERT_FALSE(sandbox) << "a guest whose kernel panics must not come up";
    EXPECT_NE(sandbox.error().message.find("sandlot-vmm exited with status 1"), std::string::npos)
        << sandbox.error().to_string();
    auto log = read_file(dir + "/vmm.log");
    EXPECT_NE(log.find("Kernel panic"), std::string::npos) << log;
    EXPECT_NE(log.find("guest crashed"), std::string::npos) << log;
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(110))
        << "the panic must not hang";
    std::filesystem::remove_all(dir);
}

TEST(BadInput, BusyVsockSocketPathIsRefused) {
    SKIP_WITHOUT_KVM();
    auto sandbox = host::Sandbox::boot(default_options());
    ASSERT_TRUE(sandbox) << sandbox.error().to_string();
    auto result = run_command({host::bin_dir() + "/sandlot-vmm", "--kernel", host::guest_dir() + "/vmlinux",
                               "--initrd", host::guest_dir() + "/initramfs.cpio.gz", "--vsock-uds",
                               (*sandbox)->vsock_uds(), "--console", "none"});
    EXPECT_NE(result.status, 0);
    EXPECT_NE(result.output.find("in use"), std::string::npos) << result.output;
    EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 1) << result.output;
    // The running sandbox is unharmed.
    auto rtt = (*sandbox)->agent().ping();
    ASSERT_TRUE(rtt) << rtt.error().to_string();
    expect_clean_shutdown(**sandbox);
}

TEST(Cli, SandlotBootReportsTheAgentAndExitsCleanly) {
    SKIP_WITHOUT_KVM();
    auto result = run_command({host::bin_dir() + "/sandlot", "boot", "--cpus", "2", "--timeout", "120"});
    EXPECT_EQ(result.status, 0) << result.output;
    EXPECT_NE(result.output.find("agent ready: protocol=1."), std::string::npos) << result.output;
    EXPECT_NE(result.output.find("cpus=2"), std::string::npos) << result.output;
    EXPECT_NE(result.output.find("boot_to_agent_ms="), std::string::npos) << result.output;
}

}  // namespace
}  // namespace sandlot::vmtest

namespace sandlot::vmtest {
namespace {

// Kernels that pass the command-line checks but are not bootable: one error line, status 1, no crash.
TEST(BadInput, CorruptOrTruncatedKernelsAreRefused) {
    SKIP_WITHOUT_KVM();
    auto dir = temp_dir();
    std::string vmlinux = read_file(host::guest_dir() + "/vmlinux");
    ASSERT_GT(vmlinux.size(), 1u << 20);
    struct Case {
        std::string name;
        std::string bytes;
    };
    std::string flipped = vmlinux;
    flipped[0x20] ^= 0x7f;  // e_phoff: program headers now point into nowhere
    std::vector<Case> cases = {{"random", std::string(64 * 1024, '\xa5')},
                               {"truncated", vmlinux.substr(0, 4096)},
                               {"bad-phoff", flipped},
                               {"empty", ""}};
    for (const auto& c : cases) {
        std::string path = dir + "/" + c.name;
        std::ofstream(path, std::ios::binary) << c.bytes;
        auto result = run_command({host::bin_dir() + "/sandlot-vmm", "--kernel", path, "--console", "none"});
        EXPECT_EQ(result.status, 1) << c.name << ": " << result.output;
        EXPECT_TRUE(result.output.starts_with("sandlot-vmm: error: ")) << c.name << ": " << result.output;
        EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 1)
            << c.name << ": " << result.output;
    }
    std::filesystem::remove_all(dir);
}

TEST(BadInput, MoreMemoryThanTheHostHasIsRefused) {
    SKIP_WITHOUT_KVM();
    auto result = run_command({host::bin_dir() + "/sandlot-vmm", "--kernel", host::guest_dir() + "/vmlinux",
                               "--memory", "1000000", "--console", "none"});
    EXPECT_NE(result.status, 0) << result.output;
    EXPECT_NE(result.output.find("--memory"), std::string::npos) << result.output;
    EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 1) << result.output;
}

}  // namespace
}  // namespace sandlot::vmtest
