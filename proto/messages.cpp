#include "proto/messages.h"

#include <cstdio>

#include "proto/codec.h"

namespace sandlot::proto {

namespace {

std::string_view clamp(std::string_view s, size_t max) {
    return s.substr(0, std::min(s.size(), max));
}

// Every encoder here writes a bounded amount (strings are clamped), far below the frame limit.
std::vector<uint8_t> finish_small(Writer&& writer) {
    return std::move(writer).finish().value();
}

template <class T>
Result<T> with_name(Result<T> result, const char* name) {
    if (!result) return std::unexpected(with_context(result.error(), std::string("decode ") + name));
    return result;
}

}  // namespace

std::string message_type_name(uint16_t type) {
    switch (static_cast<MessageType>(type)) {
        case MessageType::Hello:
            return "HELLO";
        case MessageType::Ping:
            return "PING";
        case MessageType::Pong:
            return "PONG";
        case MessageType::Shutdown:
            return "SHUTDOWN";
        case MessageType::ShutdownAck:
            return "SHUTDOWN_ACK";
        case MessageType::Error:
            return "ERROR";
    }
    char buf[8];
    std::snprintf(buf, sizeof buf, "0x%04x", type);
    return buf;
}

std::vector<uint8_t> encode(const Hello& msg) {
    Writer w;
    w.u16(msg.protocol_major);
    w.u16(msg.protocol_minor);
    w.u64(msg.features);
    w.string(clamp(msg.agent_version, kMaxShortString));
    w.u64(msg.agent_start_ns);
    w.u64(msg.agent_ready_ns);
    w.u64(msg.hello_ns);
    w.u32(msg.cpus_online);
    w.u64(msg.mem_total_kib);
    w.string(clamp(msg.kernel_release, kMaxShortString));
    return finish_small(std::move(w));
}

static Result<Hello> decode_hello_fields(std::span<const uint8_t> payload) {
    Reader r(payload);
    Hello msg;
    msg.protocol_major = TRY(r.u16());
    msg.protocol_minor = TRY(r.u16());
    msg.features = TRY(r.u64());
    msg.agent_version = TRY(r.string());
    msg.agent_start_ns = TRY(r.u64());
    msg.agent_ready_ns = TRY(r.u64());
    msg.hello_ns = TRY(r.u64());
    msg.cpus_online = TRY(r.u32());
    msg.mem_total_kib = TRY(r.u64());
    msg.kernel_release = TRY(r.string());
    return msg;
}

Result<Hello> decode_hello(std::span<const uint8_t> payload) {
    return with_name(decode_hello_fields(payload), "HELLO");
}

std::vector<uint8_t> encode(const Ping& msg) {
    Writer w;
    w.u64(msg.nonce);
    return finish_small(std::move(w));
}

Result<Ping> decode_ping(std::span<const uint8_t> payload) {
    Reader r(payload);
    auto nonce = with_name(r.u64(), "PING");
    if (!nonce) return std::unexpected(nonce.error());
    return Ping{*nonce};
}

std::vector<uint8_t> encode(const Pong& msg) {
    Writer w;
    w.u64(msg.nonce);
    return finish_small(std::move(w));
}

Result<Pong> decode_pong(std::span<const uint8_t> payload) {
    Reader r(payload);
    auto nonce = with_name(r.u64(), "PONG");
    if (!nonce) return std::unexpected(nonce.error());
    return Pong{*nonce};
}

std::vector<uint8_t> encode(const Shutdown&) {
    return {};
}
std::vector<uint8_t> encode(const ShutdownAck&) {
    return {};
}
Result<Shutdown> decode_shutdown(std::span<const uint8_t>) {
    return Shutdown{};
}
Result<ShutdownAck> decode_shutdown_ack(std::span<const uint8_t>) {
    return ShutdownAck{};
}

std::vector<uint8_t> encode(const ErrorMessage& msg) {
    Writer w;
    w.u32(msg.code);
    w.i32(msg.errno_value);
    w.string(clamp(msg.message, kMaxErrorMessage));
    return finish_small(std::move(w));
}

static Result<ErrorMessage> decode_error_fields(std::span<const uint8_t> payload) {
    Reader r(payload);
    ErrorMessage msg;
    msg.code = TRY(r.u32());
    msg.errno_value = TRY(r.i32());
    msg.message = TRY(r.string());
    return msg;
}

Result<ErrorMessage> decode_error(std::span<const uint8_t> payload) {
    return with_name(decode_error_fields(payload), "ERROR");
}

Frame make_frame(MessageType type, uint32_t stream_id, std::vector<uint8_t> payload) {
    Frame frame;
    frame.type = static_cast<uint16_t>(type);
    frame.stream_id = stream_id;
    frame.payload = std::move(payload);
    return frame;
}

}  // namespace sandlot::proto
