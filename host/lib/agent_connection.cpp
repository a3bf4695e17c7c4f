#include "host/lib/agent_connection.h"

#include "proto/frame.h"

namespace sandlot::host {

Result<AgentConnection> AgentConnection::open(UniqueFd stream) {
    auto frame = TRY(proto::read_frame(stream.get()));
    if (frame.type != static_cast<uint16_t>(proto::MessageType::Hello))
        return make_error("agent did not start with HELLO (got message type " + std::to_string(frame.type) +
                          ")");
    auto hello = TRY(proto::decode_hello(frame.payload));
    if (hello.protocol_major != proto::kProtocolMajor)
        return make_error("agent speaks protocol " + std::to_string(hello.protocol_major) + "." +
                          std::to_string(hello.protocol_minor) + ", this host speaks " +
                          std::to_string(proto::kProtocolMajor) + ".x");
    return AgentConnection(std::move(stream), std::move(hello));
}

Result<proto::Frame> AgentConnection::read_reply(proto::MessageType expected) {
    auto frame = TRY(proto::read_frame(fd_.get()));
    if (frame.type == static_cast<uint16_t>(proto::MessageType::Error)) {
        auto err = TRY(proto::decode_error(frame.payload));
        return make_error("agent error: " + err.message, err.errno_value);
    }
    if (frame.type != static_cast<uint16_t>(expected))
        return make_error("unexpected reply type " + std::to_string(frame.type) + " from agent");
    return frame;
}

Result<std::chrono::nanoseconds> AgentConnection::ping() {
    uint64_t nonce = next_nonce_++;
    auto start = std::chrono::steady_clock::now();
    TRY(proto::write_frame(fd_.get(), proto::make_frame(proto::Ping{nonce})));
    auto frame = TRY(read_reply(proto::MessageType::Pong));
    auto pong = TRY(proto::decode_pong(frame.payload));
    if (pong.nonce != nonce) return make_error("PONG carried the wrong nonce");
    return std::chrono::steady_clock::now() - start;
}

Result<void> AgentConnection::shutdown() {
    TRY(proto::write_frame(fd_.get(), proto::make_frame(proto::Shutdown{})));
    TRY(read_reply(proto::MessageType::ShutdownAck));
    fd_.reset();  // the agent powers off as soon as it sees us hang up (or after a short grace period)
    return {};
}

}  // namespace sandlot::host
