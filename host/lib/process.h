// A child process we own: spawned with posix_spawn, watched through a pidfd, killed if still running when the
// handle goes away. Used for sandlot-vmm.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "proto/base/error.h"
#include "proto/base/unique_fd.h"

namespace sandlot::host {

class ChildProcess {
  public:
    // stdout/stderr go to `log_path` when given (created/truncated), else are inherited.
    static Result<ChildProcess> spawn(const std::vector<std::string>& argv,
                                      const std::optional<std::string>& log_path = std::nullopt);

    ChildProcess(ChildProcess&& other) noexcept
        : pid_(std::exchange(other.pid_, -1)), pidfd_(std::move(other.pidfd_)), status_(other.status_) {}
    ChildProcess& operator=(ChildProcess&& other) noexcept {
        if (this != &other) {
            reap_or_kill();
            pid_ = std::exchange(other.pid_, -1);
            pidfd_ = std::move(other.pidfd_);
            status_ = other.status_;
        }
        return *this;
    }
    ~ChildProcess();

    pid_t pid() const { return pid_; }
    int pidfd() const { return pidfd_.get(); }  // readable once the process has exited
    bool running();

    // Waits up to `timeout` for the exit. Returns the status as a shell would (128+N for signal N), or an
    // error on timeout. The result is remembered: calling again returns it at once.
    Result<int> wait(std::chrono::milliseconds timeout);
    void kill(int signal);

  private:
    ChildProcess() = default;
    void reap_or_kill();  // a child still running when its handle goes away is killed and reaped
    pid_t pid_ = -1;
    UniqueFd pidfd_;
    std::optional<int> status_;
};

}  // namespace sandlot::host
