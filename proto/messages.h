// Message types and their payloads. Each message is one frame (proto/frame.h) whose payload is encoded with
// proto/codec.h; decoders ignore trailing bytes (fields are only ever appended, see codec.h).
//
// Conversation on every connection (vsock, or a Unix socket in host mode):
//   agent -> host   HELLO, first and unprompted
//   host  -> agent  PING{nonce}            agent -> host  PONG{same nonce}
//   host  -> agent  SHUTDOWN               agent -> host  SHUTDOWN_ACK, then the agent syncs and powers off
//   either way      ERROR{code, errno, message} for a frame the receiver could not handle
// Replies travel on the stream id of the frame they answer.
//
// Type numbering leaves room per feature:
//   0x0001-0x00ff  control (this file)
//   0x0100-0x01ff  exec / PTY sessions (reserved)
//   0x0200-0x02ff  file transfer (reserved)
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
};

// "HELLO", "PING", ... or "0x1234" for a type this build does not know. For logs.
std::string message_type_name(uint16_t type);

// Feature bits advertised in Hello::features (none are defined yet; later features add kFeature* constants
// here). A peer must ignore bits it does not know.

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

enum class ErrorCode : uint32_t {
    Unsupported = 1,  // message type unknown to the receiver; the connection stays usable
    Malformed = 2,    // payload could not be decoded; the connection stays usable
    Protocol = 3,     // framing violated (e.g. oversized length); the sender closes the connection
    Failed = 4,       // the request was understood but failed; errno_value says why where it can
};

// A frame could not be handled. Carries the stream id of the offending frame.
struct ErrorMessage {
    static constexpr MessageType kType = MessageType::Error;

    uint32_t code = 0;        // an ErrorCode; unknown codes must be accepted
    int32_t errno_value = 0;  // errno behind the failure, 0 if none
    std::string message;      // one line for humans

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

Result<Hello> decode_hello(std::span<const uint8_t> payload);
Result<Ping> decode_ping(std::span<const uint8_t> payload);
Result<Pong> decode_pong(std::span<const uint8_t> payload);
Result<Shutdown> decode_shutdown(std::span<const uint8_t> payload);
Result<ShutdownAck> decode_shutdown_ack(std::span<const uint8_t> payload);
Result<ErrorMessage> decode_error(std::span<const uint8_t> payload);

Frame make_frame(MessageType type, uint32_t stream_id, std::vector<uint8_t> payload);

// make_frame(Ping{42}) == make_frame(MessageType::Ping, kControlStream, encode(Ping{42})).
template <class Message>
Frame make_frame(const Message& msg, uint32_t stream_id = kControlStream) {
    return make_frame(Message::kType, stream_id, encode(msg));
}

}  // namespace sandlot::proto
