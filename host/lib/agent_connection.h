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
#include <optional>
#include <span>
#include <string>

#include "host/lib/exec.h"
#include "proto/base/error.h"
#include "proto/base/unique_fd.h"
#include "proto/messages.h"
#include "proto/version.h"

namespace sandlot::host {

// A raw stream for protocols layered on the connection (the file streams of host/lib/guest_fs.h): frames
// both ways on one stream id, with the agent's sending bounded by credit the holder grants.
struct ChannelOptions {
    proto::MessageType terminal =
        proto::MessageType::Error;                          // the agent's success end (ERROR always ends it)
    proto::MessageType window = proto::MessageType::Error;  // credit frames; the agent's are not counted
    proto::MessageType cancel = proto::MessageType::Error;  // sent for a handle dropped before the end
    uint32_t credit = 0;  // payload bytes the agent may send before the first grant
};

class AgentChannel {
  public:
    virtual ~AgentChannel() = default;  // cancels a channel not yet ended; later frames are dropped
    virtual uint32_t id() const = 0;
    // Sends a frame now (after anything queued).
    virtual Result<void> send(proto::MessageType type, std::span<const uint8_t> payload) = 0;
    // Queues a small frame to go out with the next send() or flush(), so runs of small frames (a tree's
    // entries and small files) leave in few writes. Flushes by itself once enough is queued.
    virtual Result<void> queue(proto::MessageType type, std::span<const uint8_t> payload) = 0;
    virtual Result<void> flush() = 0;
    // The next frame from the agent, blocking. The terminal frame and ERROR are returned like any other and
    // end the channel; a recv() after that fails. A frame over the granted credit fails the channel (EPROTO).
    virtual Result<proto::Frame> recv() = 0;
    // Like recv(), but nullopt at once when nothing is queued.
    virtual Result<std::optional<proto::Frame>> try_recv() = 0;
    // Sends a credit frame for `bytes` and lets the agent send that much more.
    virtual Result<void> grant(uint32_t bytes) = 0;
};

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

    // Opens a channel with its first frame (FS_REQUEST). Blocks while Hello::max_streams streams are open.
    Result<std::unique_ptr<AgentChannel>> open_channel(proto::MessageType type,
                                                       std::span<const uint8_t> payload,
                                                       const ChannelOptions& options);

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
