#include "host/lib/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>

extern char** environ;

namespace sandlot::host {

Result<ChildProcess> ChildProcess::spawn(const std::vector<std::string>& argv,
                                         const std::optional<std::string>& log_path) {
    if (argv.empty()) return make_error("spawn: empty command");
    std::vector<char*> cargv;
    for (const auto& a : argv)
        cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    if (log_path) {
        posix_spawn_file_actions_addopen(&actions, 1, log_path->c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        posix_spawn_file_actions_adddup2(&actions, 1, 2);
    }
    // The child starts with default signal handling and an empty mask, whatever the caller set up, in a
    // process group of its own: a Ctrl-C at the caller's terminal is the caller's to handle (sandlot run
    // forwards it to the guest command), not a signal that should kill the VMM behind its back.
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP);

    pid_t pid = -1;
    int rc = posix_spawn(&pid, cargv[0], &actions, &attr, cargv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) return make_error("spawn " + argv[0], rc);

    ChildProcess child;
    child.pid_ = pid;
    child.pidfd_ = UniqueFd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
    if (!child.pidfd_) return errno_error("pidfd_open");
    return child;
}

ChildProcess::~ChildProcess() {
    reap_or_kill();
}

void ChildProcess::reap_or_kill() {
    if (pid_ > 0 && !status_) {
        kill(SIGKILL);
        (void)wait(std::chrono::seconds(5));
    }
}

bool ChildProcess::running() {
    if (status_) return false;
    return !wait(std::chrono::milliseconds(0)).has_value();
}

Result<int> ChildProcess::wait(std::chrono::milliseconds timeout) {
    if (status_) return *status_;
    pollfd pfd{pidfd_.get(), POLLIN, 0};
    int n;
    do {
        n = poll(&pfd, 1, static_cast<int>(timeout.count()));
    } while (n < 0 && errno == EINTR);
    if (n < 0) return errno_error("poll pidfd");
    if (n == 0) return make_error("process " + std::to_string(pid_) + " still running", ETIMEDOUT);
    int status = 0;
    if (waitpid(pid_, &status, 0) < 0) return errno_error("waitpid");
    status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return *status_;
}

void ChildProcess::kill(int signal) {
    if (pid_ > 0 && !status_) syscall(SYS_pidfd_send_signal, pidfd_.get(), signal, nullptr, 0);
}

}  // namespace sandlot::host
