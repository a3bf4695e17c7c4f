// One connection to a guest's agentd: it starts with the agent's HELLO, then carries requests.
#pragma once

#include <chrono>
#include <cstdint>

#include "proto/base/error.h"
#include "proto/base/unique_fd.h"
#include "proto/messages.h"
#include "proto/version.h"

namespace sandlot::host {

class AgentConnection {
  public:
    // Takes a connected stream and reads the agent's HELLO from it.
    static Result<AgentConnection> open(UniqueFd stream);

    const proto::Hello& hello() const { return hello_; }
    int fd() const { return fd_.get(); }

    // Round trip of a PING; returns its latency.
    Result<std::chrono::nanoseconds> ping();
    // Asks the agent to sync and power the guest off; returns once the agent acknowledged, and closes this
    // connection, which tells the agent its reply arrived.
    Result<void> shutdown();

  private:
    AgentConnection(UniqueFd fd, proto::Hello hello) : fd_(std::move(fd)), hello_(std::move(hello)) {}
    // Reads the next frame, turning an ERROR frame from the agent into an Error.
    Result<proto::Frame> read_reply(proto::MessageType expected);

    UniqueFd fd_;
    proto::Hello hello_;
    uint64_t next_nonce_ = 1;
};

}  // namespace sandlot::host
