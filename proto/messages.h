// Message types and their payloads. Each message is one frame (proto/frame.h) whose payload is encoded with
// proto/codec.h; decoders ignore trailing bytes (fields are only ever appended, see codec.h).
//
// Conversation on every connection (vsock, or a Unix socket in host mode):
//   agent -> host   HELLO, first and unprompted
//   host  -> agent  PING{nonce}            agent -> host  PONG{same nonce}
//   host  -> agent  SHUTDOWN               agent -> host  SHUTDOWN_ACK, then the agent syncs and powers off
//   host  -> agent  STATS_REQUEST          agent -> host  STATS{memory, uptime, load, processes}
//   either way      ERROR{code, errno, message} for a frame the receiver could not handle
// Replies travel on the stream id of the frame they answer.
//
// Type numbering leaves room per feature:
//   0x0001-0x00ff  control (this file)
//   0x0100-0x01ff  exec / PTY sessions (proto/exec.h)
//   0x0200-0x02ff  guest filesystem operations (proto/fs.h)
//
// Stream 0 is the control stream. Other stream ids are picked by the host when it opens a session
// (EXEC_START, FS_REQUEST) and stay bound to it until the session's terminal frame (EXIT or FS_DONE, or ERROR
// on that stream).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "proto/base/error.h"
#include "proto/frame.h"
#include "proto/version.h"

namespace sandlot::proto {

enum class MessageType : uint16_t {
    Hello = 0x0001,
    Ping = 0x0002,
    Pong = 0x0003,
    Shutdown = 0x0004,
    ShutdownAck = 0x0005,
    Error = 0x0006,
    StatsRequest = 0x0007,  // 1.2
    Stats = 0x0008,         // 1.2

    ExecStart = 0x0101,
    ExecStarted = 0x0102,
    Stdin = 0x0103,
    StdinClose = 0x0104,
    Stdout = 0x0105,
    Stderr = 0x0106,
    OutputEof = 0x0107,
    Window = 0x0108,
    Signal = 0x0109,
    Resize = 0x010a,
    Exit = 0x010b,

    FsRequest = 0x0201,  // 1.3, proto/fs.h
    FsEntry = 0x0202,
    FsData = 0x0203,
    FsWindow = 0x0204,
    FsCommit = 0x0205,
    FsCancel = 0x0206,
    FsDone = 0x0207,
};

// "HELLO", "PING", ... or "0x1234" for a type this build does not know. For logs.
std::string message_type_name(uint16_t type);

// Feature bits advertised in Hello::features. A peer must ignore bits it does not know; the host refuses an
// operation whose bit the agent lacks, before sending anything.
inline constexpr uint64_t kFeatureExec = 1u << 0;         // EXEC_START with pipes, signals, WINDOW, EXIT
inline constexpr uint64_t kFeaturePty = 1u << 1;          // kExecPty and RESIZE
inline constexpr uint64_t kFeatureExecUser = 1u << 2;     // ExecStart::user
inline constexpr uint64_t kFeatureExecRlimits = 1u << 3;  // ExecStart::rlimits
inline constexpr uint64_t kFeatureExecTimeout = 1u << 4;  // ExecStart::timeout_ms
inline constexpr uint64_t kFeatureStats = 1u << 5;        // STATS_REQUEST / STATS (1.2)
inline constexpr uint64_t kFeatureFs = 1u << 6;           // FS_* streams (1.3, proto/fs.h)

// "exec", "pty", ... for one bit; for error messages.
std::string feature_name(uint64_t bit);

// Sent by the agent as the first frame of every connection.
struct Hello {
    static constexpr MessageType kType = MessageType::Hello;

    uint16_t protocol_major = 0;
    uint16_t protocol_minor = 0;
    uint64_t features = 0;        // bitmap of kFeature* bits
    std::string agent_version;    // e.g. "0.1.0"
    uint64_t agent_start_ns = 0;  // CLOCK_BOOTTIME when agentd's main() began (about kernel boot time)
    uint64_t agent_ready_ns = 0;  // CLOCK_BOOTTIME when it started listening
    uint64_t hello_ns = 0;        // CLOCK_BOOTTIME when this HELLO was built
    uint32_t cpus_online = 0;
    uint64_t mem_total_kib = 0;
    std::string kernel_release;  // uname -r
    // Appended in protocol 1.1 (0 from a 1.0 agent):
    uint32_t max_frame_payload = 0;  // largest payload the agent accepts (kMaxFramePayload)
    uint32_t max_streams = 0;        // sessions that may be open at once on one connection
    uint32_t stdin_window = 0;       // credit each stream's STDIN starts with (also in EXEC_STARTED)

    bool operator==(const Hello&) const = default;
};

struct Ping {
    static constexpr MessageType kType = MessageType::Ping;
    uint64_t nonce = 0;
    bool operator==(const Ping&) const = default;
};

struct Pong {
    static constexpr MessageType kType = MessageType::Pong;
    uint64_t nonce = 0;  // copied from the PING
    bool operator==(const Pong&) const = default;
};

// Host asks the agent to power the VM off cleanly. Empty payload.
struct Shutdown {
    static constexpr MessageType kType = MessageType::Shutdown;
    bool operator==(const Shutdown&) const = default;
};

// Agent confirms SHUTDOWN before it syncs and powers off. Empty payload.
struct ShutdownAck {
    static constexpr MessageType kType = MessageType::ShutdownAck;
    bool operator==(const ShutdownAck&) const = default;
};

// Host asks for the guest's vital signs (for `sandlot metrics`). Empty payload. Since 1.2 (kFeatureStats).
struct StatsRequest {
    static constexpr MessageType kType = MessageType::StatsRequest;
    bool operator==(const StatsRequest&) const = default;
};

// The agent's answer to STATS_REQUEST, on the same stream. Values the guest could not read are 0.
struct Stats {
    static constexpr MessageType kType = MessageType::Stats;

    uint64_t mem_total_kib = 0;      // /proc/meminfo MemTotal
    uint64_t mem_available_kib = 0;  // /proc/meminfo MemAvailable
    uint64_t uptime_ns = 0;          // CLOCK_BOOTTIME in the guest
    uint32_t processes = 0;          // pid entries in /proc
    uint32_t exec_sessions = 0;      // exec sessions the agent is running, over all connections
    uint32_t load1_centi = 0;        // 1-minute load average * 100 (/proc/loadavg)

    bool operator==(const Stats&) const = default;
};

enum class ErrorCode : uint32_t {
    Unsupported = 1,  // message type unknown to the receiver; the connection stays usable
    Malformed = 2,    // payload could not be decoded; the connection stays usable
    Protocol = 3,     // framing violated (e.g. oversized length); the sender closes the connection
    Failed = 4,       // the request was understood but failed; errno_value says why where it can
    SpawnFailed = 5,  // EXEC_START could not start the process; ErrorMessage::kind says why
};

// Why a process could not be started (ErrorMessage::kind with ErrorCode::SpawnFailed).
enum class SpawnErrorKind : uint32_t {
    None = 0,
    NotFound = 1,          // argv[0] not in PATH / no such file (shell convention: exit 127)
    PermissionDenied = 2,  // EACCES on the program (126)
    NotExecutable = 3,     // ENOEXEC, a directory, bad ELF (126)
    BadCwd = 4,            // cwd missing or not a directory
    BadUser = 5,           // user not in /etc/passwd, bad uid:gid
    ResourceLimit = 6,     // fork/pipe failed (EAGAIN, EMFILE, ENOMEM) or an rlimit could not be set
    PtySetup = 7,          // openpt/TIOCSCTTY failed
    BadRequest = 8,        // argv empty, a NUL in a string, a limit broken
};

// "not found", "permission denied", ...
std::string spawn_error_kind_name(uint32_t kind);

// A frame could not be handled. Carries the stream id of the offending frame.
struct ErrorMessage {
    static constexpr MessageType kType = MessageType::Error;

    uint32_t code = 0;        // an ErrorCode; unknown codes must be accepted
    int32_t errno_value = 0;  // errno behind the failure, 0 if none
    std::string message;      // one line for humans
    uint32_t kind = 0;        // appended in 1.1: a SpawnErrorKind for SpawnFailed, else 0

    bool operator==(const ErrorMessage&) const = default;
};

// Strings longer than these are cut when encoding so a message always fits a frame.
inline constexpr size_t kMaxShortString = 1024;  // versions, kernel release
inline constexpr size_t kMaxErrorMessage = 4096;

std::vector<uint8_t> encode(const Hello& msg);
std::vector<uint8_t> encode(const Ping& msg);
std::vector<uint8_t> encode(const Pong& msg);
std::vector<uint8_t> encode(const Shutdown& msg);
std::vector<uint8_t> encode(const ShutdownAck& msg);
std::vector<uint8_t> encode(const ErrorMessage& msg);
std::vector<uint8_t> encode(const StatsRequest& msg);
std::vector<uint8_t> encode(const Stats& msg);

Result<Hello> decode_hello(std::span<const uint8_t> payload);
Result<Ping> decode_ping(std::span<const uint8_t> payload);
Result<Pong> decode_pong(std::span<const uint8_t> payload);
Result<Shutdown> decode_shutdown(std::span<const uint8_t> payload);
Result<ShutdownAck> decode_shutdown_ack(std::span<const uint8_t> payload);
Result<ErrorMessage> decode_error(std::span<const uint8_t> payload);
Result<StatsRequest> decode_stats_request(std::span<const uint8_t> payload);
Result<Stats> decode_stats(std::span<const uint8_t> payload);

Frame make_frame(MessageType type, uint32_t stream_id, std::vector<uint8_t> payload);

// make_frame(Ping{42}) == make_frame(MessageType::Ping, kControlStream, encode(Ping{42})).
template <class Message>
Frame make_frame(const Message& msg, uint32_t stream_id = kControlStream) {
    return make_frame(Message::kType, stream_id, encode(msg));
}

}  // namespace sandlot::proto
