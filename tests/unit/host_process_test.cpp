// The host library's child-process handle: exit statuses, timeouts, and ownership across moves.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <optional>

#include "host/lib/process.h"

namespace sandlot::host {
namespace {

using namespace std::chrono_literals;

TEST(ChildProcess, ReportsExitStatusLikeAShell) {
    auto ok = ChildProcess::spawn({"/bin/sh", "-c", "exit 3"});
    ASSERT_TRUE(ok) << ok.error().to_string();
    EXPECT_EQ(ok->wait(10s).value(), 3);
    auto killed = ChildProcess::spawn({"/bin/sh", "-c", "kill -9 $$"});
    ASSERT_TRUE(killed);
    EXPECT_EQ(killed->wait(10s).value(), 128 + 9);
}

TEST(ChildProcess, RunsInAProcessGroupOfItsOwn) {
    // A terminal's Ctrl-C reaches the caller's process group; the VMM must not be in it.
    auto child = ChildProcess::spawn({"/bin/sleep", "100"});
    ASSERT_TRUE(child);
    EXPECT_EQ(getpgid(child->pid()), child->pid());
    EXPECT_NE(getpgid(child->pid()), getpgrp());
    child->kill(SIGKILL);
    EXPECT_EQ(child->wait(10s).value(), 128 + SIGKILL);
}

TEST(ChildProcess, WaitTimesOutWhileRunningAndKillEndsIt) {
    auto child = ChildProcess::spawn({"/bin/sleep", "100"});
    ASSERT_TRUE(child);
    EXPECT_FALSE(child->wait(50ms).has_value());
    EXPECT_TRUE(child->running());
    child->kill(SIGTERM);
    EXPECT_EQ(child->wait(10s).value(), 128 + SIGTERM);
    EXPECT_FALSE(child->running());
}

TEST(ChildProcess, MovingTheHandleNeitherKillsNorStallsTheChild) {
    auto start = std::chrono::steady_clock::now();
    std::optional<ChildProcess> held;
    {
        auto child = ChildProcess::spawn({"/bin/sleep", "100"});
        ASSERT_TRUE(child);
        held = std::move(*child);  // the moved-from handle is destroyed here and must let go
    }
    EXPECT_LT(std::chrono::steady_clock::now() - start, 2s) << "a moved-from handle waited on the child";
    EXPECT_TRUE(held->running()) << "a moved-from handle killed the child";
    held.reset();  // the last owner kills and reaps it
}

TEST(ChildProcess, MissingProgramIsAnError) {
    auto child = ChildProcess::spawn({"/no/such/program"});
    EXPECT_FALSE(child.has_value());
}

}  // namespace
}  // namespace sandlot::host
