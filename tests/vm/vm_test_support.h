// Shared helpers for the VM suite: these tests boot real microVMs with sandlot-vmm and talk to agentd.
#pragma once

#include <gtest/gtest.h>

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

std::string read_file(const std::string& path);
std::string temp_dir();

#define SKIP_WITHOUT_KVM()                                                     \
    do {                                                                       \
        if (auto why = ::sandlot::vmtest::kvm_unusable_reason(); !why.empty()) \
            GTEST_SKIP() << "VM TEST SKIPPED: " << why;                        \
    } while (0)

}  // namespace sandlot::vmtest
