// Shared helpers for the VM suite: these tests boot real microVMs with sandlot-vmm and talk to agentd.
#pragma once

#include <gtest/gtest.h>

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "host/lib/sandbox.h"
#include "tests/support/run_command.h"

namespace sandlot::vmtest {

// Empty when this host can boot our guest; otherwise why not. Tests GTEST_SKIP with it, loudly.
std::string kvm_unusable_reason();

host::SandboxOptions default_options();

using testing::CommandResult;
using testing::run_command;

// Asks the agent to power off and expects sandlot-vmm to end with status 0 (an orderly restart).
void expect_clean_shutdown(host::Sandbox& sandbox);

// One run of the `sandlot` CLI as a subprocess, with its stdout and stderr kept apart.
struct SandlotRun {
    int status = -1;            // exit status, 128+N for signal N; -1 if it had to be killed (timeout)
    std::string out, err;       // stdout (unless SandlotRunOptions::keep_stdout is false) and stderr
    uint64_t stdout_bytes = 0;  // counted even when not kept
    uint64_t peak_rss_kib = 0;  // sandlot's own VmHWM (its VMM child not included), sampled while it ran
    uint64_t rss_at_first_output_kib = 0;  // its VmRSS when the first stdout bytes arrived
    std::chrono::duration<double> elapsed{0};
};

struct SandlotRunOptions {
    std::string input = "";   // written to sandlot's stdin, which is then closed
    bool keep_stdout = true;  // false: only count stdout (for huge outputs)
    std::chrono::seconds timeout{300};
    // Once the first stdout bytes arrived, stop reading stdout for this long (a slow consumer).
    std::chrono::milliseconds pause_after_first_output{0};
    std::vector<std::string> env{};  // "K=V" set in sandlot's environment
    // Called whenever stdout grew, with sandlot's pid and stdout so far (if kept): to send it signals.
    std::function<void(pid_t, const std::string&)> on_stdout{};
};

// Runs bin_dir()/sandlot with `args`.
// In a forked child: replaces it with `sandlot ARGS...` from this build (exit 127 if that fails).
[[noreturn]] void exec_sandlot(const std::vector<std::string>& args);

SandlotRun run_sandlot(const std::vector<std::string>& args, const SandlotRunOptions& options = {});

std::string read_file(const std::string& path);
std::string temp_dir();

#define SKIP_WITHOUT_KVM()                                                     \
    do {                                                                       \
        if (auto why = ::sandlot::vmtest::kvm_unusable_reason(); !why.empty()) \
            GTEST_SKIP() << "VM TEST SKIPPED: " << why;                        \
    } while (0)

}  // namespace sandlot::vmtest
