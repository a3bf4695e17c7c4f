// The agent's single-threaded event loop: one epoll set holding the listening sockets, every connection and
// a signalfd. Frames are routed through a dispatch table keyed by message type, so later features (exec,
// PTYs, files) plug in with set_handler() without touching the loop.
//
// Every connection is greeted with HELLO. The control handlers installed by default answer PING with PONG,
// STATS_REQUEST with STATS (agentd/stats.h), SHUTDOWN with SHUTDOWN_ACK (then run() returns), log an ERROR
// from the host, and any other type gets an ERROR{unsupported} reply while the connection goes on. A framing
// violation (oversized length) gets an ERROR{protocol} reply and that connection is closed; the agent keeps
// serving the others.
//
// Bounded resources: each connection buffers at most one incoming frame plus one read, and stops reading
// while more than kOutputHighWater bytes of replies wait for a slow peer.
//
// Features with fds of their own (process pipes, PTYs, timers) put them on the same loop with watch_fd();
// they learn about closed connections and drained output queues through hooks, so everything stays one
// thread.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "agentd/hello.h"
#include "proto/base/error.h"
#include "proto/base/unique_fd.h"
#include "proto/frame.h"
#include "proto/messages.h"

namespace sandlot::agent {

class Server;

// One peer. Handlers use it to reply; it is owned by the Server and stays valid for the handler's duration.
class Connection {
  public:
    uint64_t id() const { return id_; }
    const std::string& name() const { return name_; }  // for logs, e.g. "vsock:2:1234 #3"

    // Queues a frame; never blocks. Bytes go out as the socket accepts them, starting once the server has
    // finished handling the current event (so the replies to one read leave in one write).
    void send(const proto::Frame& frame);
    void send_error(uint32_t stream_id, proto::ErrorCode code, int errno_value, std::string message,
                    uint32_t kind = 0);
    // Queues a frame whose payload is copied straight from `payload` (no intermediate Frame); for bulk data.
    void send_data(proto::MessageType type, uint32_t stream_id, std::span<const uint8_t> payload);
    // Bytes queued but not yet written to the peer.
    size_t pending_output() const { return output_.size() - output_sent_; }
    // True while at least kOutputHighWater bytes wait for the peer: producers should pause. The server then
    // calls the output-drained hook once the queue falls below that again.
    bool congested();
    // Stop reading; close once everything queued has been written.
    void close_after_flush();

  private:
    friend class Server;
    Connection(Server& server, uint64_t id, UniqueFd fd, std::string name);

    void flush();
    void update_interest();
    void queue_flush();

    Server& server_;
    uint64_t id_;
    UniqueFd fd_;
    std::string name_;
    proto::FrameDecoder decoder_;
    std::vector<uint8_t> output_;
    size_t output_sent_ = 0;   // bytes at the front of output_ already written
    bool connecting_ = false;  // outgoing connect() still in progress
    bool closing_ = false;     // close once output_ drains; read nothing more
    bool dead_ = false;        // the socket failed; drop without flushing
    // Asked for SHUTDOWN: before power-off, wait (bounded) until the peer has read our reply and closed.
    bool await_peer_close_ = false;
    bool drain_wanted_ = false;  // a producer paused on congested(): tell it when the queue drains
    bool flush_queued_ = false;  // listed in Server::to_flush_
    uint32_t interest_ = 0;      // events currently registered with epoll
};

enum class StopReason {
    ShutdownRequest,  // a peer sent SHUTDOWN (and was sent SHUTDOWN_ACK)
    Signal,           // SIGTERM/SIGINT/SIGUSR1/SIGUSR2: the init-style power-off request
};

class Server {
  public:
    // Handles one frame of a given type. An Error it returns is sent back as ERROR{failed} on the frame's
    // stream; the connection stays open.
    using Handler = std::function<Result<void>(Server&, Connection&, const proto::Frame&)>;
    // Called for every reaped child (pid, wait status). Later features track their processes through it.
    using ChildExitHandler = std::function<void(pid_t, int)>;
    // Called with the epoll events of a watched fd.
    using FdHandler = std::function<void(uint32_t events)>;
    // Called just before a connection is dropped (peer gone, protocol error) or when its output drains.
    using ConnectionHook = std::function<void(Connection&)>;

    static constexpr size_t kOutputHighWater = 1 << 20;
    static constexpr size_t kMaxConnections = 256;

    // Blocks SIGCHLD, SIGTERM, SIGINT, SIGUSR1, SIGUSR2 (delivered through the signalfd instead) and ignores
    // SIGPIPE. Processes started later must restore the signal mask.
    static Result<std::unique_ptr<Server>> create(uint64_t start_ns);
    ~Server();

    Result<void> listen_unix(const std::string& path);
    Result<void> listen_vsock(uint32_t port);
    // Connects out and serves that connection like an accepted one (greeting with HELLO). The connect may
    // complete later inside run(); a failure then is logged and the connection dropped.
    Result<void> connect_vsock(uint32_t cid, uint32_t port);
    Result<void> connect_unix(const std::string& path);

    void set_handler(proto::MessageType type, Handler handler);
    // The type is answered with ERROR{unsupported} again.
    void remove_handler(proto::MessageType type) { handlers_.erase(static_cast<uint16_t>(type)); }
    void set_child_exit_handler(ChildExitHandler handler) { child_exit_ = std::move(handler); }
    // Each service (exec, files) installs its own pair of hooks under an owner key and removes them by it;
    // every installed hook runs, in installation order.
    void add_connection_hooks(const void* owner, ConnectionHook closed, ConnectionHook drained);
    void remove_connection_hooks(const void* owner);
    // Where STATS takes exec_sessions from (the exec service's session count); 0 without a counter.
    void set_session_counter(std::function<size_t()> counter) { session_counter_ = std::move(counter); }

    // Puts an fd the caller owns on the loop; on_event runs with the ready events. `events` may be 0 (not
    // watched for now). Level-triggered. The caller must unwatch_fd() before closing the fd.
    Result<uint64_t> watch_fd(int fd, uint32_t events, FdHandler on_event);
    // Changes the events of a watched fd. 0 takes the fd out of the epoll set (so EPOLLHUP/EPOLLERR, which
    // epoll reports regardless of the mask, cannot spin the loop while the owner is not interested).
    Result<void> modify_fd(uint64_t id, uint32_t events);
    // Safe to call from the fd's own handler; unknown ids are ignored.
    void unwatch_fd(uint64_t id);

    // Serves until a SHUTDOWN or a stop signal, then gives queued replies (the SHUTDOWN_ACK) up to a second
    // to drain; the connection that sent SHUTDOWN is half-closed and waited on until its peer closes it, so
    // the ACK has really left the guest before power-off. Fails only if epoll itself fails.
    Result<StopReason> run();
    void request_stop(StopReason reason);

    const AgentTimes& times() const { return times_; }
    size_t connection_count() const { return connections_.size(); }

  private:
    friend class Connection;
    Server() = default;

    Result<void> add_listener(UniqueFd fd);
    Result<void> start_connect(UniqueFd fd, const sockaddr* addr, socklen_t len, std::string name);
    Connection& add_connection(UniqueFd fd, std::string name, bool connecting);
    void greet(Connection& conn);
    void accept_all(int listen_fd);
    void handle_connection_event(Connection& conn, uint32_t events);
    void read_from(Connection& conn);
    void dispatch(Connection& conn, const proto::Frame& frame);
    void handle_signals();
    void reap_children();
    void drop_connection(uint64_t id);
    void drain_before_exit();
    void install_control_handlers();
    Result<uint64_t> watch(int fd, uint32_t events);  // registers fd with epoll under a fresh id
    void flush_queued_connections();

    struct FdWatch {
        int fd = -1;
        uint32_t events = 0;
        bool registered = false;  // in the epoll set (events != 0)
        std::shared_ptr<FdHandler> handler;
    };

    UniqueFd epoll_;
    UniqueFd signal_fd_;
    uint64_t signal_id_ = 0;
    uint64_t next_id_ = 1;
    AgentTimes times_;
    std::unordered_map<uint64_t, UniqueFd> listeners_;
    std::vector<std::string> unix_paths_;  // socket files we created, removed again on destruction
    std::unordered_map<uint64_t, std::unique_ptr<Connection>> connections_;
    std::unordered_map<uint16_t, Handler> handlers_;
    ChildExitHandler child_exit_;
    struct ConnectionHooks {
        const void* owner = nullptr;
        ConnectionHook closed;
        ConnectionHook drained;
    };
    void run_drained_hooks(Connection& conn);
    std::vector<ConnectionHooks> hooks_;
    std::function<size_t()> session_counter_;
    std::unordered_map<uint64_t, FdWatch> watches_;
    std::vector<uint64_t> to_flush_;  // connections that queued output during the current batch
    std::optional<StopReason> stop_;
};

}  // namespace sandlot::agent
