// Running processes in a sandbox: the host side of proto/exec.h.
// (Members carry explicit initializers so designated initializers may leave them out under -Wextra.)
//
//   AgentConnection& agent = sandbox->agent();
//   auto out = TRY(agent.exec({.argv = {"uname", "-a"}}));            // collect everything
//   auto proc = TRY(agent.exec_stream({.argv = {"cat"}, .stdin_open = true}));
//   TRY(proc->write_stdin(bytes)); TRY(proc->close_stdin());
//   while (auto event = TRY(proc->recv())) { ... }                     // std::nullopt after EXIT
//
// A process that cannot be started is not a host-side error: like a shell, it has an ExitStatus whose
// spawn_failure says why (exit code 127 for "not found", 126 for "permission denied"/"not executable").
// Host-side Errors mean the request was refused (a feature the agent lacks, a bad request) or the
// connection broke.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "proto/base/error.h"
#include "proto/exec.h"

namespace sandlot::host {

struct ExecRequest {
    std::vector<std::string> argv{};
    std::vector<std::string> env{};  // "KEY=VALUE", merged over the sandbox's default environment
    std::string cwd{};               // "" = the user's home directory
    std::string user{};              // "" = root; a name, "uid" or "uid:gid"
    bool pty = false;                // a PTY as controlling terminal; stderr is merged into stdout
    bool stdin_open = false;         // the caller writes stdin (write_stdin/close_stdin); else /dev/null
    uint16_t rows = 24, cols = 80;
    std::vector<proto::Rlimit> rlimits{};
    std::chrono::milliseconds timeout{0};  // 0 = none; the process group is killed after it
};

struct SpawnFailure {
    proto::SpawnErrorKind kind = proto::SpawnErrorKind::None;
    int errno_value = 0;
    std::string message{};  // one line, names the program / cwd / user
};

struct ExitStatus {
    int exit_code = -1;  // when the process exited
    int signal = 0;      // when a signal killed it
    bool core_dumped = false;
    bool timed_out = false;
    bool output_abandoned = false;                // background processes still held stdout/stderr at exit
    std::optional<SpawnFailure> spawn_failure{};  // it never started

    // What a shell's $? would be: the exit code, 128+signal, 127 not found, 126 cannot execute, 125 other
    // spawn failures.
    int shell_code() const;
};

// Credit the host grants each stream for STDOUT+STDERR: the most output one stream can have queued in the
// host, since more is granted only as recv() hands data to the caller.
inline constexpr uint32_t kOutputWindow = 1u << 20;

// Extras for AgentConnection::exec(), which collects everything into memory. (A request with stdin_open
// but no stdin_data gets its stdin closed at once.)
struct ExecOptions {
    std::optional<std::string> stdin_data{};  // written to the process, then closed (implies stdin_open)
    size_t max_output = 64u << 20;            // stdout+stderr bytes kept; beyond this the process is killed
                                              // and exec() fails
};

struct ExecOutput {
    std::string stdout_data;
    std::string stderr_data;
    ExitStatus status;
};

struct ExecEvent {
    enum class Kind { Stdout, Stderr, StdoutEof, StderrEof, Exit };
    Kind kind = Kind::Stdout;
    std::vector<uint8_t> data{};  // Stdout / Stderr
    ExitStatus status{};          // Exit
};

// One running process. Thread-safe: one thread may recv() while others write stdin or send signals.
// Destroying a handle whose process still runs kills its process group.
class ExecStream {
  public:
    virtual ~ExecStream() = default;

    // The next event, blocking; std::nullopt once EXIT has been returned. Output is credited back to the
    // agent as it is returned here, so a caller that stops calling recv() stops the process's output.
    virtual Result<std::optional<ExecEvent>> recv() = 0;

    // Blocks while the agent's stdin window is full. Fails if stdin was not opened or is closed.
    virtual Result<void> write_stdin(std::span<const uint8_t> data) = 0;
    virtual Result<void> close_stdin() = 0;
    virtual Result<void> signal(int signo) = 0;
    virtual Result<void> resize(uint16_t rows, uint16_t cols) = 0;
    virtual Result<void> kill() { return signal(9); }

    // Discards remaining output and returns the exit status.
    virtual Result<ExitStatus> wait() = 0;

    virtual uint32_t stream_id() const = 0;
    virtual bool pty() const = 0;         // ExecRequest::pty
    virtual bool stdin_open() const = 0;  // ExecRequest::stdin_open
    // 0 until EXEC_STARTED has arrived (or if the spawn failed).
    virtual uint32_t pid() const = 0;
};

}  // namespace sandlot::host
