// Pieces the agent benchmarks (exec/, fs/) share: timing and medians, exit-status checks, and agentd as a
// host process on a Unix socket.
#pragma once

#include <stdlib.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "host/lib/agent_connection.h"
#include "host/lib/exec.h"
#include "host/lib/process.h"
#include "proto/base/error.h"
#include "proto/base/unique_fd.h"
#include "proto/base/unix_address.h"

namespace sandlot::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

inline double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// A process run through the agent ended with status 0, or an error naming `what`.
inline Result<void> expect_success(const host::ExitStatus& status, const std::string& what) {
    if (status.spawn_failure) return make_error(what + ": " + status.spawn_failure->message);
    if (status.exit_code != 0)
        return make_error(what + " ended with status " + std::to_string(status.shell_code()));
    return {};
}

// agentd as a host process on a Unix socket in a private directory; stopped (SHUTDOWN) when done.
class HostAgent {
  public:
    static Result<std::unique_ptr<HostAgent>> start(const std::string& agentd) {
        auto self = std::unique_ptr<HostAgent>(new HostAgent);
        std::string tmpl = (std::filesystem::temp_directory_path() / "sandlot-bench-XXXXXX").string();
        if (!mkdtemp(tmpl.data())) return errno_error("mkdtemp");
        self->dir_ = tmpl;
        std::string socket_path = self->dir_ + "/agent.sock";
        self->process_ = TRY(host::ChildProcess::spawn({agentd, "--listen-unix", socket_path}));
        // agentd listens right after it starts; retry the connect for a while.
        auto deadline = Clock::now() + std::chrono::seconds(10);
        for (;;) {
            auto fd = connect_unix(socket_path);
            if (fd) {
                self->agent_ = TRY(host::AgentConnection::open(std::move(*fd)));
                return self;
            }
            if (Clock::now() > deadline || !self->process_->running())
                return make_error("agentd never accepted on " + socket_path + ": " + fd.error().to_string());
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }
    ~HostAgent() {
        if (agent_) (void)agent_->shutdown();
        agent_.reset();
        if (process_) (void)process_->wait(std::chrono::seconds(5));
        process_.reset();
        if (!dir_.empty()) std::filesystem::remove_all(dir_);
    }
    host::AgentConnection& agent() { return *agent_; }
    pid_t pid() const { return process_->pid(); }

  private:
    HostAgent() = default;
    static Result<UniqueFd> connect_unix(const std::string& path) {
        UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (!fd) return errno_error("socket");
        sockaddr_un addr = TRY(unix_address(path));
        if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0)
            return errno_error("connect");
        return fd;
    }

    std::string dir_;
    std::optional<host::ChildProcess> process_;
    std::unique_ptr<host::AgentConnection> agent_;
};

}  // namespace sandlot::bench
