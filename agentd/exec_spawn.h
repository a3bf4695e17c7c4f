// Starting one exec'd process: clone(CLONE_VM | CLONE_VFORK) like posix_spawn, then in the child setsid, the
// PTY or pipes on 0/1/2, default signal handling, rlimits, cwd, identity and a PATH search. Whatever fails in
// the child comes back over a close-on-exec pipe as {kind, errno}, so the caller can answer EXEC_START with
// either EXEC_STARTED or a precise error.
//
// The child gets exactly fds 0, 1 and 2: every fd the agent holds is O_CLOEXEC.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <cstdint>
#include <expected>
#include <optional>
#include <string>
#include <vector>

#include "agentd/exec_user.h"
#include "proto/base/unique_fd.h"
#include "proto/exec.h"
#include "proto/messages.h"

namespace sandlot::agent {

inline constexpr const char* kDefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

struct SpawnSpec {
    std::vector<std::string> argv;     // argv[0] is searched in PATH (from env) unless it contains '/'
    std::vector<std::string> env;      // complete "KEY=VALUE" list (see merge_environment)
    std::string cwd;                   // "" = the user's home, or / if that fails
    std::string user_label;            // the request's user string, for messages
    std::optional<ExecUser> identity;  // switch to this uid/gid/groups; nullopt = keep the agent's own
    std::vector<proto::Rlimit> rlimits;
    std::optional<rlimit> base_nofile;  // RLIMIT_NOFILE applied before `rlimits` (undoes the agent's raise)
    bool pty = false;
    bool pipe_stdin = false;  // else stdin is /dev/null (pipe mode) or the terminal (PTY mode)
    uint16_t rows = 24;
    uint16_t cols = 80;
};

// The agent's ends, all non-blocking and close-on-exec. In PTY mode only `pty_master` is set.
struct SpawnedProcess {
    pid_t pid = -1;  // also the process group id (the child calls setsid)
    UniqueFd stdin_fd;
    UniqueFd stdout_fd;
    UniqueFd stderr_fd;
    UniqueFd pty_master;
};

struct SpawnFailure {
    proto::SpawnErrorKind kind = proto::SpawnErrorKind::None;
    int errno_value = 0;
    std::string message;  // names the program, cwd or user
};

// Starts the child and waits (blocking, briefly) until it has exec'd or reported its failure. A child that
// failed _exits(127) and is left to the central reaper.
std::expected<SpawnedProcess, SpawnFailure> spawn_process(const SpawnSpec& spec);

// The default environment (PATH, HOME, USER, LOGNAME, SHELL; TERM in PTY mode) with `request` entries laid
// over it by key. Fails on an entry without '=' or with an empty key.
Result<std::vector<std::string>> merge_environment(const std::vector<std::string>& request,
                                                   const ExecUser& user, bool pty);

// errno from execve → the kind reported for it.
proto::SpawnErrorKind exec_errno_kind(int err);

}  // namespace sandlot::agent
