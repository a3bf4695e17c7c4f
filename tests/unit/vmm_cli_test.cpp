// sandlot-vmm's answer to bad input from the user: one clear line, a non-zero status, never a crash.
// These cases are all decided before a VM exists, so they run on any host.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "host/lib/metrics.h"
#include "tests/support/run_command.h"
#include "tests/support/temp_dir.h"
#include "vmm/kvm/host_kvm.h"

namespace sandlot {
namespace {

using testing::run_command;

const std::string kVmm = std::string(SANDLOT_BIN_DIR) + "/sandlot-vmm";

struct BadInvocation {
    std::vector<std::string> args;
    std::string expected;  // a phrase the one-line error must contain
};

class VmmCliTest : public ::testing::TestWithParam<BadInvocation> {
  protected:
    static void SetUpTestSuite() {
        // A readable file to stand in for a kernel; the checks under test come before it is parsed.
        std::ofstream(kernel_) << "not a kernel";
    }
    static void TearDownTestSuite() { std::filesystem::remove(kernel_); }
    // One file per process: ctest runs each test case as its own process, in parallel.
    static inline const std::string kernel_ =
        ::testing::TempDir() + "/vmm_cli_kernel." + std::to_string(getpid());
};

TEST_P(VmmCliTest, PrintsOneErrorLineAndFails) {
    std::vector<std::string> argv = {kVmm};
    for (auto arg : GetParam().args) {
        if (arg == "@kernel") arg = kernel_;
        argv.push_back(arg);
    }
    auto result = run_command(argv);
    EXPECT_NE(result.status, 0) << result.output;
    EXPECT_LT(result.status, 128) << "killed by a signal: " << result.output;
    EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 1) << result.output;
    EXPECT_TRUE(result.output.starts_with("sandlot-vmm: error: ")) << result.output;
    EXPECT_NE(result.output.find(GetParam().expected), std::string::npos) << result.output;
}

INSTANTIATE_TEST_SUITE_P(
    BadInput, VmmCliTest,
    ::testing::Values(
        BadInvocation{{}, "--kernel"}, BadInvocation{{"--kernel", "/no/such/vmlinux"}, "/no/such/vmlinux"},
        BadInvocation{{"--kernel", "/"}, "--kernel"},
        BadInvocation{{"--kernel", "@kernel", "--initrd", "/no/such/initrd"}, "/no/such/initrd"},
        BadInvocation{{"--kernel", "@kernel", "--memory", "0"}, "--memory"},
        BadInvocation{{"--kernel", "@kernel", "--memory", "99999999999"}, "--memory"},
        BadInvocation{{"--kernel", "@kernel", "--memory", "lots"}, "--memory"},
        BadInvocation{{"--kernel", "@kernel", "--cpus", "0"}, "--cpus"},
        BadInvocation{{"--kernel", "@kernel", "--cpus", "100000"}, "--cpus"},
        BadInvocation{{"--kernel", "@kernel", "--vsock-cid", "2", "--vsock-uds", "/tmp/x"}, "--vsock-cid"},
        BadInvocation{{"--kernel", "@kernel", "--vsock-uds", std::string(200, 'x')}, "too long"},
        BadInvocation{{"--kernel", "@kernel", "--console", "printer"}, "console"},
        BadInvocation{{"--kernel", "@kernel", "--no-such-flag"}, "no-such-flag"},
        BadInvocation{{"--kernel", "@kernel", "--stats-file", "/no/such/dir/stats"}, "/no/such/dir/stats"}));

TEST(VmmCli, StatsFileIsCreatedBeforeTheMachine) {
    // Written before KVM is touched, so even a VMM that cannot boot this "kernel" leaves a valid, zeroed
    // file.
    test::TempDir temp("sandlot-vmm-stats");
    const std::string& dir = temp.path();
    std::ofstream(dir + "/kernel") << "not a kernel";
    std::ofstream(dir + "/stats") << "an old file to replace";
    auto result = run_command({kVmm, "--kernel", dir + "/kernel", "--stats-file", dir + "/stats"});
    EXPECT_NE(result.status, 0) << result.output;
    EXPECT_LT(result.status, 128) << "killed by a signal: " << result.output;
    auto counters = host::read_vmm_counters(dir + "/stats");
    ASSERT_TRUE(counters) << counters.error().to_string();
    EXPECT_EQ(counters->blk_read_bytes, 0u);
    EXPECT_EQ(std::filesystem::status(dir + "/stats").permissions() & std::filesystem::perms::all,
              std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir), {}), 2) << "a temporary file was left";
}

TEST(VmmCli, RefusesPvmHostsWithAnExplanation) {
    if (vmm::detect_host_kvm() != vmm::HostKvmKind::Pvm) GTEST_SKIP() << "this host's /dev/kvm is not PVM";
    std::string kernel = ::testing::TempDir() + "/vmm_cli_pvm_kernel." + std::to_string(getpid());
    std::ofstream(kernel) << "any";
    auto result = run_command({kVmm, "--kernel", kernel});
    std::filesystem::remove(kernel);
    EXPECT_EQ(result.status, 1) << result.output;
    EXPECT_NE(result.output.find("PVM"), std::string::npos) << result.output;
    EXPECT_NE(result.output.find("stock Linux kernels will not boot"), std::string::npos) << result.output;
    EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 1) << result.output;
}

}  // namespace
}  // namespace sandlot
