// Exec sessions: running a process in the guest, each on its own stream of one connection.
//
// The host opens a stream by sending EXEC_START with a stream id it picked (non-zero, not in use on this
// connection). Everything about that process then travels on that stream id; many streams run at once.
//
//   host  -> agent  EXEC_START{argv, env, cwd, user, flags, rlimits, timeout, pty size, output window}
//   agent -> host   EXEC_STARTED{pid, stdin window}        or  ERROR{kind=spawn failure}  (terminal)
//   host  -> agent  STDIN{bytes}* STDIN_CLOSE               (only with kExecStdin; else stdin is /dev/null)
//   host  -> agent  SIGNAL{signo}  RESIZE{rows, cols}  WINDOW{n}   at any time while the stream is open
//   agent -> host   STDOUT{bytes}* STDERR{bytes}*  OUTPUT_EOF{channel}  WINDOW{n}
//   agent -> host   EXIT{status}                           (terminal: the stream id is free again)
//
// Flow control: each direction of a stream has a credit window. The host grants the agent
// ExecStart::output_window bytes of STDOUT+STDERR payload, and more with WINDOW{n} as it consumes them; the
// agent stops reading the process's pipes while it has no credit, so a flooding process blocks in the guest.
// The agent grants ExecStarted::stdin_window bytes of STDIN payload, and more with WINDOW{n} once it has
// written them to the process. Sending beyond the window is a protocol error on that stream (it is ended
// with ERROR and its process group killed).
//
// Exit is not tied to output EOF: when the process exits, the agent forwards what its pipes still hold, and
// once they are empty for a short linger (background children may keep them open) it closes them, sends
// OUTPUT_EOF for each channel not yet at EOF and then EXIT. So `sh -c 'sleep 100 & echo hi'` ends promptly.
// What the pipes held at exit is always delivered; background writers get at most about a second more.
//
// An ERROR on a non-zero stream ends that stream; for a failed spawn ErrorMessage::kind says why. If the
// connection closes, the agent kills the process groups of all streams still open on it.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "proto/base/error.h"
#include "proto/frame.h"
#include "proto/messages.h"

namespace sandlot::proto {

// ExecStart::flags
inline constexpr uint32_t kExecPty = 1u << 0;    // run on a new PTY (controlling terminal); output is STDOUT
inline constexpr uint32_t kExecStdin = 1u << 1;  // the host sends STDIN; otherwise stdin is /dev/null

// OutputEof::channel
inline constexpr uint8_t kChannelStdout = 1;
inline constexpr uint8_t kChannelStderr = 2;

// Limits a request must respect (checked by the decoder).
inline constexpr size_t kMaxExecArgs = 4096;
inline constexpr size_t kMaxExecEnv = 4096;
inline constexpr size_t kMaxExecRlimits = 32;
inline constexpr size_t kMaxPath = 4096;

// RLIM_INFINITY on the wire.
inline constexpr uint64_t kRlimInfinity = ~uint64_t{0};

struct Rlimit {
    uint32_t resource = 0;  // RLIMIT_* number as Linux defines it
    uint64_t soft = 0;
    uint64_t hard = 0;
    bool operator==(const Rlimit&) const = default;
};

struct ExecStart {
    static constexpr MessageType kType = MessageType::ExecStart;

    uint32_t flags = 0;             // kExec* bits
    std::vector<std::string> argv;  // argv[0] is looked up in PATH (from env) unless it contains '/'
    std::vector<std::string> env;   // "KEY=VALUE", merged over the agent's default environment
    std::string cwd;                // "" = the user's home directory (or / if it has none)
    std::string user;               // "" = root; else a name, "uid" or "uid:gid" from /etc/passwd,group
    std::vector<Rlimit> rlimits;    // applied in the child before exec
    uint64_t timeout_ms = 0;        // 0 = none; else the process group is killed (SIGKILL) after this
    uint16_t pty_rows = 24;         // initial window size (kExecPty only)
    uint16_t pty_cols = 80;         //
    uint32_t output_window = 0;     // initial credit for STDOUT+STDERR payload bytes

    bool operator==(const ExecStart&) const = default;
};

struct ExecStarted {
    static constexpr MessageType kType = MessageType::ExecStarted;
    uint32_t pid = 0;           // in the guest's PID namespace; also the process group id
    uint32_t stdin_window = 0;  // initial credit for STDIN payload bytes (0 without kExecStdin)
    bool operator==(const ExecStarted&) const = default;
};

// STDIN / STDOUT / STDERR: the payload is the raw bytes, nothing else (at most kMaxFramePayload).

// STDIN_CLOSE: empty payload; the process's stdin reaches EOF once the queued bytes are written.

struct OutputEof {
    static constexpr MessageType kType = MessageType::OutputEof;
    uint8_t channel = 0;  // kChannelStdout or kChannelStderr
    bool operator==(const OutputEof&) const = default;
};

// Credit for the receiver of the stream's data in the other direction: "I consumed `bytes` more".
struct Window {
    static constexpr MessageType kType = MessageType::Window;
    uint32_t bytes = 0;
    bool operator==(const Window&) const = default;
};

// Delivered to the process group (kill(-pgid, signo)). Any signal number 1..64.
struct Signal {
    static constexpr MessageType kType = MessageType::Signal;
    int32_t signo = 0;
    bool operator==(const Signal&) const = default;
};

struct Resize {
    static constexpr MessageType kType = MessageType::Resize;
    uint16_t rows = 0;
    uint16_t cols = 0;
    bool operator==(const Resize&) const = default;
};

struct Exit {
    static constexpr MessageType kType = MessageType::Exit;
    int32_t exit_code = -1;        // WEXITSTATUS, or -1 when killed by a signal
    int32_t signal = 0;            // WTERMSIG, or 0 when it exited
    uint8_t core_dumped = 0;       // WCOREDUMP
    uint8_t timed_out = 0;         // killed because ExecStart::timeout_ms passed
    uint8_t output_abandoned = 0;  // pipes were closed while other processes still held them open
    bool operator==(const Exit&) const = default;
};

std::vector<uint8_t> encode(const ExecStarted& msg);
std::vector<uint8_t> encode(const OutputEof& msg);
std::vector<uint8_t> encode(const Window& msg);
std::vector<uint8_t> encode(const Signal& msg);
std::vector<uint8_t> encode(const Resize& msg);
std::vector<uint8_t> encode(const Exit& msg);
// ExecStart can be large (argv/env); it fails if the request does not fit one frame or breaks a limit above.
Result<std::vector<uint8_t>> encode_exec_start(const ExecStart& msg);

Result<ExecStart> decode_exec_start(std::span<const uint8_t> payload);
Result<ExecStarted> decode_exec_started(std::span<const uint8_t> payload);
Result<OutputEof> decode_output_eof(std::span<const uint8_t> payload);
Result<Window> decode_window(std::span<const uint8_t> payload);
Result<Signal> decode_signal(std::span<const uint8_t> payload);
Result<Resize> decode_resize(std::span<const uint8_t> payload);
Result<Exit> decode_exit(std::span<const uint8_t> payload);

}  // namespace sandlot::proto
