#include "agentd/exec_spawn.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/close_range.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sandlot::agent {

namespace {

constexpr int kOutputPipeSize = 1 << 20;
constexpr size_t kChildStackSize = 64 * 1024;

// What a failed child writes to the error pipe before _exit(127).
struct ChildError {
    uint32_t kind;
    int32_t errno_value;
};

// struct sigaction as the rt_sigaction system call takes it (x86-64 and arm64 layout).
struct KernelSigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)();
    uint64_t mask;
};

[[noreturn]] void child_fail(int error_fd, proto::SpawnErrorKind kind, int err) {
    ChildError report{static_cast<uint32_t>(kind), err};
    while (write(error_fd, &report, sizeof report) < 0 && errno == EINTR) {
    }
    _exit(127);
}

bool is_resource_errno(int err) {
    return err == EAGAIN || err == EMFILE || err == ENFILE || err == ENOMEM || err == ENOSPC;
}

SpawnFailure resource_failure(const std::string& what, int err) {
    return {proto::SpawnErrorKind::ResourceLimit, err, what + ": " + std::strerror(err)};
}

bool set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    return flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
}

// Both ends close-on-exec; the agent's end non-blocking (O_NONBLOCK is per end, so the child's stays
// blocking).
struct Pipe {
    UniqueFd read;
    UniqueFd write;
};

std::expected<Pipe, SpawnFailure> make_pipe(bool agent_reads) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return std::unexpected(resource_failure("pipe", errno));
    Pipe p{UniqueFd(fds[0]), UniqueFd(fds[1])};
    if (!set_nonblocking(agent_reads ? p.read.get() : p.write.get()))
        return std::unexpected(resource_failure("fcntl", errno));
    // Big output pipes mean fewer wakeups per MB; best effort (limited by pipe-max-size and per-user quotas).
    if (agent_reads) fcntl(p.read.get(), F_SETPIPE_SZ, kOutputPipeSize);
    return p;
}

struct Pty {
    UniqueFd master;
    UniqueFd slave;
};

std::expected<Pty, SpawnFailure> make_pty(uint16_t rows, uint16_t cols) {
    auto fail = [](const char* what) {
        int err = errno;
        return std::unexpected(SpawnFailure{
            is_resource_errno(err) ? proto::SpawnErrorKind::ResourceLimit : proto::SpawnErrorKind::PtySetup,
            err, std::string("PTY setup: ") + what + ": " + std::strerror(err)});
    };
    Pty pty;
    pty.master = UniqueFd(posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!pty.master) return fail("open /dev/ptmx");
    if (unlockpt(pty.master.get()) != 0) return fail("unlockpt");
    // TIOCGPTPEER opens the slave of exactly this master, whatever is mounted on /dev/pts.
    pty.slave = UniqueFd(ioctl(pty.master.get(), TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!pty.slave) {
        char name[64];
        if (ptsname_r(pty.master.get(), name, sizeof name) != 0) return fail("ptsname");
        pty.slave = UniqueFd(open(name, O_RDWR | O_NOCTTY | O_CLOEXEC));
        if (!pty.slave) return fail("open slave");
    }
    winsize size{};
    size.ws_row = rows;
    size.ws_col = cols;
    if (ioctl(pty.master.get(), TIOCSWINSZ, &size) != 0) return fail("TIOCSWINSZ");
    if (!set_nonblocking(pty.master.get())) return fail("fcntl");
    return pty;
}

std::string env_value(const std::vector<std::string>& env, std::string_view key) {
    for (const std::string& entry : env) {
        if (entry.size() > key.size() && entry.compare(0, key.size(), key) == 0 && entry[key.size()] == '=')
            return entry.substr(key.size() + 1);
    }
    return "";
}

// The files execve is tried on, in order (like execvp: an empty PATH element is the current directory).
std::vector<std::string> exec_candidates(const std::string& program, const std::vector<std::string>& env) {
    if (program.find('/') != std::string::npos) return {program};
    std::string path = env_value(env, "PATH");
    if (path.empty()) path = kDefaultPath;
    std::vector<std::string> candidates;
    size_t start = 0;
    for (;;) {
        size_t end = path.find(':', start);
        std::string dir = path.substr(start, end == std::string::npos ? std::string::npos : end - start);
        candidates.push_back(dir.empty() ? program : dir + "/" + program);
        if (end == std::string::npos) break;
        start = end + 1;
    }
    return candidates;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
    std::vector<char*> out;
    out.reserve(strings.size() + 1);
    for (std::string& s : strings)
        out.push_back(s.data());
    out.push_back(nullptr);
    return out;
}

// Runs in the child between fork and exec. Everything it needs was prepared by the parent.
struct ChildPlan {
    int error_fd = -1;
    int stdio[3] = {-1, -1, -1};
    bool pty = false;
    const SpawnSpec* spec = nullptr;
    const char* cwd = nullptr;  // nullptr: home, then /
    const char* home = "/";
    std::vector<char*> argv;
    std::vector<char*> envp;
    std::vector<std::string> candidates;
};

[[noreturn]] void run_child(const ChildPlan& plan) {
    const SpawnSpec& spec = *plan.spec;
    int efd = plan.error_fd;

    // Own session and process group: signals and the timeout go to -pid, and a PTY can become ours.
    if (setsid() < 0) child_fail(efd, proto::SpawnErrorKind::None, errno);
    if (plan.pty && ioctl(plan.stdio[0], TIOCSCTTY, 0) != 0)
        child_fail(efd, proto::SpawnErrorKind::PtySetup, errno);
    for (int target = 0; target < 3; ++target) {
        if (dup2(plan.stdio[target], target) < 0)
            child_fail(efd, proto::SpawnErrorKind::ResourceLimit, errno);
    }
    // The agent's own fds are all close-on-exec, but fds it inherited (host mode) may not be: the process
    // gets 0, 1 and 2 only. The error pipe stays usable until exec.
    syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC);

    // The agent ignores SIGPIPE and blocks the signals it reads through its signalfd; neither may leak, and
    // neither may anything the agent itself inherited. The raw system call also reaches the two real-time
    // signals libc reserves (and refuses to touch through sigaction()).
    for (int sig = 1; sig <= 64; ++sig) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        KernelSigaction dfl{};  // SIG_DFL, no flags, empty mask
        syscall(SYS_rt_sigaction, sig, &dfl, nullptr, sizeof dfl.mask);
    }
    sigset_t empty;
    sigemptyset(&empty);
    sigprocmask(SIG_SETMASK, &empty, nullptr);

    if (spec.base_nofile && setrlimit(RLIMIT_NOFILE, &*spec.base_nofile) != 0)
        child_fail(efd, proto::SpawnErrorKind::ResourceLimit, errno);
    for (const proto::Rlimit& limit : spec.rlimits) {
        rlimit value{limit.soft == proto::kRlimInfinity ? RLIM_INFINITY : limit.soft,
                     limit.hard == proto::kRlimInfinity ? RLIM_INFINITY : limit.hard};
        if (setrlimit(static_cast<__rlimit_resource>(limit.resource), &value) != 0)
            child_fail(efd, proto::SpawnErrorKind::ResourceLimit, errno);
    }

    if (plan.cwd) {
        if (chdir(plan.cwd) != 0) child_fail(efd, proto::SpawnErrorKind::BadCwd, errno);
    } else if (chdir(plan.home) != 0 && chdir("/") != 0) {
        child_fail(efd, proto::SpawnErrorKind::BadCwd, errno);
    }

    if (spec.identity) {
        const ExecUser& user = *spec.identity;
        // Raw system calls: the child shares the agent's memory (CLONE_VM), so no libc bookkeeping may run.
        if (syscall(SYS_setgroups, user.groups.size(), user.groups.data()) != 0)
            child_fail(efd, proto::SpawnErrorKind::BadUser, errno);
        if (syscall(SYS_setresgid, user.gid, user.gid, user.gid) != 0)
            child_fail(efd, proto::SpawnErrorKind::BadUser, errno);
        if (syscall(SYS_setresuid, user.uid, user.uid, user.uid) != 0)
            child_fail(efd, proto::SpawnErrorKind::BadUser, errno);
    }

    // The PATH search of execvp, with the request's PATH rather than the agent's.
    bool path_search = plan.candidates.size() > 1 || spec.argv[0].find('/') == std::string::npos;
    bool saw_eacces = false;
    int err = ENOENT;
    for (const std::string& file : plan.candidates) {
        execve(file.c_str(), plan.argv.data(), plan.envp.data());
        err = errno;
        if (!path_search) break;
        if (err == EACCES) {
            saw_eacces = true;
        } else if (err != ENOENT && err != ENOTDIR && err != ESTALE && err != ENODEV && err != ETIMEDOUT) {
            break;  // found it but it cannot run: report that, do not look further
        }
    }
    if (path_search &&
        (err == ENOENT || err == ENOTDIR || err == ESTALE || err == ENODEV || err == ETIMEDOUT))
        err = saw_eacces ? EACCES : ENOENT;
    child_fail(efd, exec_errno_kind(err), err);
}

int child_entry(void* plan) {
    run_child(*static_cast<const ChildPlan*>(plan));
}

std::string describe_failure(const SpawnSpec& spec, proto::SpawnErrorKind kind, int err) {
    const std::string& program = spec.argv[0];
    std::string reason = err ? std::string(": ") + std::strerror(err) : "";
    switch (kind) {
        case proto::SpawnErrorKind::NotFound:
            return "command not found: " + program;
        case proto::SpawnErrorKind::PermissionDenied:
            return "permission denied: " + program;
        case proto::SpawnErrorKind::NotExecutable:
            return "cannot execute " + program + reason;
        case proto::SpawnErrorKind::BadCwd:
            return "cannot change directory to " + (spec.cwd.empty() ? std::string("/") : spec.cwd) + reason;
        case proto::SpawnErrorKind::BadUser:
            return "cannot switch to user '" + spec.user_label + "'" + reason;
        case proto::SpawnErrorKind::ResourceLimit:
            return "cannot start " + program + ": resource limit" + reason;
        case proto::SpawnErrorKind::PtySetup:
            return "cannot set up the terminal for " + program + reason;
        default:
            return "cannot start " + program + reason;
    }
}

}  // namespace

proto::SpawnErrorKind exec_errno_kind(int err) {
    switch (err) {
        case ENOENT:
        case ENOTDIR:
            return proto::SpawnErrorKind::NotFound;
        case EACCES:
        case EPERM:
            return proto::SpawnErrorKind::PermissionDenied;
        case ENOEXEC:
        case EISDIR:
        case ELIBBAD:
        case ETXTBSY:
            return proto::SpawnErrorKind::NotExecutable;
        case E2BIG:
        case ENOMEM:
        case EMFILE:
        case ENFILE:
        case EAGAIN:
            return proto::SpawnErrorKind::ResourceLimit;
        default:
            return proto::SpawnErrorKind::None;
    }
}

Result<std::vector<std::string>> merge_environment(const std::vector<std::string>& request,
                                                   const ExecUser& user, bool pty) {
    std::vector<std::string> env = {std::string("PATH=") + kDefaultPath, "HOME=" + user.home};
    if (!user.name.empty()) {
        env.push_back("USER=" + user.name);
        env.push_back("LOGNAME=" + user.name);
    }
    env.push_back("SHELL=" + user.shell);
    if (pty) env.push_back("TERM=xterm-256color");
    for (const std::string& entry : request) {
        size_t eq = entry.find('=');
        if (eq == std::string::npos || eq == 0) return make_error("bad environment entry '" + entry + "'");
        if (entry.find('\0') != std::string::npos) return make_error("environment entry contains a NUL byte");
        bool replaced = false;
        for (std::string& existing : env) {
            if (existing.compare(0, eq + 1, entry, 0, eq + 1) == 0) {
                existing = entry;
                replaced = true;
                break;
            }
        }
        if (!replaced) env.push_back(entry);
    }
    return env;
}

std::expected<SpawnedProcess, SpawnFailure> spawn_process(const SpawnSpec& spec) {
    if (spec.argv.empty())
        return std::unexpected(SpawnFailure{proto::SpawnErrorKind::BadRequest, 0, "empty argv"});
    SpawnedProcess result;
    UniqueFd child_ends[3];
    if (spec.pty) {
        Pty pty = TRY(make_pty(spec.rows, spec.cols));
        result.pty_master = std::move(pty.master);
        child_ends[0] = std::move(pty.slave);
        for (int fd = 1; fd < 3; ++fd) {
            child_ends[fd] = UniqueFd(fcntl(child_ends[0].get(), F_DUPFD_CLOEXEC, 3));
            if (!child_ends[fd]) return std::unexpected(resource_failure("dup", errno));
        }
    } else {
        if (spec.pipe_stdin) {
            Pipe in = TRY(make_pipe(false));
            result.stdin_fd = std::move(in.write);
            child_ends[0] = std::move(in.read);
        } else {
            child_ends[0] = UniqueFd(open("/dev/null", O_RDONLY | O_CLOEXEC));
            if (!child_ends[0]) return std::unexpected(resource_failure("open /dev/null", errno));
        }
        Pipe out = TRY(make_pipe(true));
        Pipe err = TRY(make_pipe(true));
        result.stdout_fd = std::move(out.read);
        result.stderr_fd = std::move(err.read);
        child_ends[1] = std::move(out.write);
        child_ends[2] = std::move(err.write);
    }

    int error_pipe[2];
    if (pipe2(error_pipe, O_CLOEXEC) != 0) return std::unexpected(resource_failure("pipe", errno));
    UniqueFd error_read(error_pipe[0]);
    UniqueFd error_write(error_pipe[1]);

    // Everything the child needs is built here: after fork it only makes system calls.
    std::vector<std::string> argv = spec.argv;
    std::vector<std::string> env = spec.env;
    ChildPlan plan;
    plan.error_fd = error_write.get();
    for (int fd = 0; fd < 3; ++fd)
        plan.stdio[fd] = child_ends[fd].get();
    plan.pty = spec.pty;
    plan.spec = &spec;
    plan.cwd = spec.cwd.empty() ? nullptr : spec.cwd.c_str();
    if (spec.identity) plan.home = spec.identity->home.c_str();
    plan.argv = c_strings(argv);
    plan.envp = c_strings(env);
    plan.candidates = exec_candidates(spec.argv[0], spec.env);
    if (spec.argv[0].empty()) plan.candidates.clear();  // execve("") is ENOENT anyway; skip the PATH walk

    // Like posix_spawn: the child borrows the agent's memory (no page tables to copy) and the agent sleeps
    // until it has exec'd or exited. The child runs on its own stack and only makes system calls.
    std::vector<uint8_t> child_stack(kChildStackSize);
    pid_t pid =
        clone(child_entry, child_stack.data() + child_stack.size(), CLONE_VM | CLONE_VFORK | SIGCHLD, &plan);
    if (pid < 0) return std::unexpected(resource_failure("fork", errno));

    error_write.reset();
    for (UniqueFd& fd : child_ends)
        fd.reset();
    ChildError report{};
    ssize_t n;
    do {
        n = read(error_read.get(), &report, sizeof report);
    } while (n < 0 && errno == EINTR);
    if (n == 0) {
        result.pid = pid;
        return result;
    }
    // The child failed (it _exits(127) and is reaped by the central loop), or the pipe broke.
    if (n != static_cast<ssize_t>(sizeof report)) {
        kill(pid, SIGKILL);
        return std::unexpected(
            SpawnFailure{proto::SpawnErrorKind::None, n < 0 ? errno : 0,
                         "cannot start " + spec.argv[0] + ": lost contact with the child"});
    }
    auto kind = static_cast<proto::SpawnErrorKind>(report.kind);
    return std::unexpected(
        SpawnFailure{kind, report.errno_value, describe_failure(spec, kind, report.errno_value)});
}

}  // namespace sandlot::agent
