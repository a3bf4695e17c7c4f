// One connection to a guest's agentd, multiplexing many sessions over one stream socket.
//
// It starts with the agent's HELLO. After that a reader thread owns the receiving side: it decodes frames and
// hands each to the stream it belongs to (stream 0, the control stream, for PING/STATS/SHUTDOWN replies; one
// stream per exec session otherwise). Writes from any thread are serialized. So one connection serves pings
// and any number of concurrent execs from several threads.
//
//   auto agent = TRY(AgentConnection::open(std::move(socket)));
//   auto out = TRY(agent->exec({.argv = {"uname", "-a"}}));
//
// When the socket breaks, every call waiting on it returns an Error; nothing hangs. Exec handles may outlive
// the connection object (they then fail with "connection closed").
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "host/lib/exec.h"
#include "proto/base/error.h"
#include "proto/base/unique_fd.h"
#include "proto/messages.h"
#include "proto/version.h"

namespace sandlot::host {

class AgentConnection {
  public:
    // Takes a connected stream, reads the agent's HELLO from it and starts the reader thread.
    static Result<std::unique_ptr<AgentConnection>> open(UniqueFd stream);
    // Closes the socket: the agent kills the process groups of sessions still running on it.
    ~AgentConnection();
    AgentConnection(const AgentConnection&) = delete;
    AgentConnection& operator=(const AgentConnection&) = delete;

    const proto::Hello& hello() const;
    int fd() const;

    // Round trip of a PING; returns its latency. Fails (ETIMEDOUT) if no PONG comes within `timeout`.
    Result<std::chrono::nanoseconds> ping(std::chrono::milliseconds timeout = std::chrono::seconds(30));
    // The guest's memory, uptime, load and process counts (STATS_REQUEST). Fails without asking if the agent
    // lacks kFeatureStats, and with ETIMEDOUT if no STATS comes within `timeout`.
    Result<proto::Stats> stats(std::chrono::milliseconds timeout = std::chrono::seconds(5));
    // Asks the agent to sync and power the guest off; returns once the agent acknowledged, and closes this
    // connection, which tells the agent its reply arrived. Fails (ETIMEDOUT) without an ACK within `timeout`.
    Result<void> shutdown(std::chrono::milliseconds timeout = std::chrono::seconds(30));

    // Fails, naming the missing feature and the agent's version, if the agent cannot run this request.
    Result<void> check_supported(const ExecRequest& request) const;

    // Starts a process and returns its handle at once (pid() is known once EXEC_STARTED arrives). Blocks
    // while the agent's limit of concurrent sessions (Hello::max_streams) is reached.
    Result<std::unique_ptr<ExecStream>> exec_stream(const ExecRequest& request);
    // Runs a process to completion and collects its output.
    Result<ExecOutput> exec(const ExecRequest& request, const ExecOptions& options = {});
    // `/bin/sh -c script`, with the rest of the request taken from `base`.
    Result<ExecOutput> shell(std::string script, ExecRequest base = {}, const ExecOptions& options = {});

    // Frames from the agent that were dropped: for a stream not open, undecodable, or of an unexpected type.
    uint64_t ignored_frames() const;
    // Sessions open on this connection (started and not yet ended by EXIT or ERROR).
    size_t open_streams() const;

    struct Core;  // state shared with the reader thread and the exec handles (agent_connection.cpp)

  private:
    explicit AgentConnection(std::shared_ptr<Core> core) : core_(std::move(core)) {}
    std::shared_ptr<Core> core_;
};

}  // namespace sandlot::host
