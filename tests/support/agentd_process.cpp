#include "tests/support/agentd_process.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <thread>

#include "proto/base/unique_fd.h"
#include "proto/base/unix_address.h"

extern char** environ;

namespace sandlot::test {

namespace {
const std::string kAgentdPath = std::string(SANDLOT_BIN_DIR) + "/agentd";
}

void set_socket_timeout(int fd, int seconds) {
    timeval tv{seconds, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

Agentd::Agentd(std::vector<std::string> extra_args) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "sandlot-agentd-XXXXXX").string();
    dir_ = mkdtemp(tmpl.data());
    socket_path_ = dir_ + "/a.sock";
    std::vector<std::string> args = {kAgentdPath, "--listen-unix", socket_path_};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    std::vector<char*> argv;
    for (auto& a : args)
        argv.push_back(a.data());
    argv.push_back(nullptr);
    int rc = posix_spawn(&pid_, kAgentdPath.c_str(), nullptr, nullptr, argv.data(), environ);
    EXPECT_EQ(rc, 0) << "spawn " << kAgentdPath << ": " << std::strerror(rc);
    if (rc != 0) pid_ = -1;
}

Agentd::~Agentd() {
    kill_now();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
}

void Agentd::kill_now() {
    if (pid_ > 0) {
        ::kill(pid_, SIGKILL);
        waitpid(pid_, nullptr, 0);
        pid_ = -1;
    }
}

std::unique_ptr<host::AgentConnection> Agentd::connect() {
    using namespace std::chrono_literals;
    auto addr = unix_address(socket_path_);
    if (!addr) return nullptr;
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline) {
        UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr) == 0) {
            set_socket_timeout(fd.get());
            auto conn = host::AgentConnection::open(std::move(fd));
            EXPECT_TRUE(conn) << conn.error().to_string();
            return conn ? std::move(*conn) : nullptr;
        }
        std::this_thread::sleep_for(5ms);
    }
    ADD_FAILURE() << "agentd never accepted on " << socket_path_;
    return nullptr;
}

}  // namespace sandlot::test
