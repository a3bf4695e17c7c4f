#include "proto/messages.h"

#include <cstdio>

#include "proto/codec.h"

namespace sandlot::proto {

namespace {

std::string_view clamp(std::string_view s, size_t max) {
    return s.substr(0, std::min(s.size(), max));
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
        case MessageType::StatsRequest:
            return "STATS_REQUEST";
        case MessageType::Stats:
            return "STATS";
        case MessageType::ExecStart:
            return "EXEC_START";
        case MessageType::ExecStarted:
            return "EXEC_STARTED";
        case MessageType::Stdin:
            return "STDIN";
        case MessageType::StdinClose:
            return "STDIN_CLOSE";
        case MessageType::Stdout:
            return "STDOUT";
        case MessageType::Stderr:
            return "STDERR";
        case MessageType::OutputEof:
            return "OUTPUT_EOF";
        case MessageType::Window:
            return "WINDOW";
        case MessageType::Signal:
            return "SIGNAL";
        case MessageType::Resize:
            return "RESIZE";
        case MessageType::Exit:
            return "EXIT";
        case MessageType::FsRequest:
            return "FS_REQUEST";
        case MessageType::FsEntry:
            return "FS_ENTRY";
        case MessageType::FsData:
            return "FS_DATA";
        case MessageType::FsWindow:
            return "FS_WINDOW";
        case MessageType::FsCommit:
            return "FS_COMMIT";
        case MessageType::FsCancel:
            return "FS_CANCEL";
        case MessageType::FsDone:
            return "FS_DONE";
    }
    char buf[8];
    std::snprintf(buf, sizeof buf, "0x%04x", type);
    return buf;
}

std::string feature_name(uint64_t bit) {
    switch (bit) {
        case kFeatureExec:
            return "exec";
        case kFeaturePty:
            return "pty";
        case kFeatureExecUser:
            return "exec as another user";
        case kFeatureExecRlimits:
            return "exec rlimits";
        case kFeatureExecTimeout:
            return "exec timeout";
        case kFeatureStats:
            return "stats";
        case kFeatureFs:
            return "filesystem";
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, "feature 0x%llx", static_cast<unsigned long long>(bit));
    return buf;
}

std::string spawn_error_kind_name(uint32_t kind) {
    switch (static_cast<SpawnErrorKind>(kind)) {
        case SpawnErrorKind::None:
            return "failed";
        case SpawnErrorKind::NotFound:
            return "not found";
        case SpawnErrorKind::PermissionDenied:
            return "permission denied";
        case SpawnErrorKind::NotExecutable:
            return "not executable";
        case SpawnErrorKind::BadCwd:
            return "bad working directory";
        case SpawnErrorKind::BadUser:
            return "bad user";
        case SpawnErrorKind::ResourceLimit:
            return "resource limit";
        case SpawnErrorKind::PtySetup:
            return "PTY setup failed";
        case SpawnErrorKind::BadRequest:
            return "bad request";
    }
    return "error kind " + std::to_string(kind);
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
    w.u32(msg.max_frame_payload);
    w.u32(msg.max_streams);
    w.u32(msg.stdin_window);
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
    if (r.remaining() == 0) return msg;  // a protocol 1.0 agent
    msg.max_frame_payload = TRY(r.u32());
    msg.max_streams = TRY(r.u32());
    msg.stdin_window = TRY(r.u32());
    return msg;
}

Result<Hello> decode_hello(std::span<const uint8_t> payload) {
    return decoding("HELLO", decode_hello_fields(payload));
}

std::vector<uint8_t> encode(const Ping& msg) {
    Writer w;
    w.u64(msg.nonce);
    return finish_small(std::move(w));
}

Result<Ping> decode_ping(std::span<const uint8_t> payload) {
    Reader r(payload);
    auto nonce = decoding("PING", r.u64());
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
    auto nonce = decoding("PONG", r.u64());
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
    w.u32(msg.kind);
    return finish_small(std::move(w));
}

static Result<ErrorMessage> decode_error_fields(std::span<const uint8_t> payload) {
    Reader r(payload);
    ErrorMessage msg;
    msg.code = TRY(r.u32());
    msg.errno_value = TRY(r.i32());
    msg.message = TRY(r.string());
    if (r.remaining() == 0) return msg;  // a protocol 1.0 peer
    msg.kind = TRY(r.u32());
    return msg;
}

Result<ErrorMessage> decode_error(std::span<const uint8_t> payload) {
    return decoding("ERROR", decode_error_fields(payload));
}

std::vector<uint8_t> encode(const StatsRequest&) {
    return {};
}
Result<StatsRequest> decode_stats_request(std::span<const uint8_t>) {
    return StatsRequest{};
}

std::vector<uint8_t> encode(const Stats& msg) {
    Writer w;
    w.u64(msg.mem_total_kib);
    w.u64(msg.mem_available_kib);
    w.u64(msg.uptime_ns);
    w.u32(msg.processes);
    w.u32(msg.exec_sessions);
    w.u32(msg.load1_centi);
    return finish_small(std::move(w));
}

static Result<Stats> decode_stats_fields(std::span<const uint8_t> payload) {
    Reader r(payload);
    Stats msg;
    msg.mem_total_kib = TRY(r.u64());
    msg.mem_available_kib = TRY(r.u64());
    msg.uptime_ns = TRY(r.u64());
    msg.processes = TRY(r.u32());
    msg.exec_sessions = TRY(r.u32());
    msg.load1_centi = TRY(r.u32());
    return msg;
}

Result<Stats> decode_stats(std::span<const uint8_t> payload) {
    return decoding("STATS", decode_stats_fields(payload));
}

Frame make_frame(MessageType type, uint32_t stream_id, std::vector<uint8_t> payload) {
    Frame frame;
    frame.type = static_cast<uint16_t>(type);
    frame.stream_id = stream_id;
    frame.payload = std::move(payload);
    return frame;
}

}  // namespace sandlot::proto
