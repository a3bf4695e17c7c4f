// Exec sessions on the agent's event loop (the conversation is specified in proto/exec.h).
//
// One ExecService serves every connection of a Server: it registers the EXEC_START, STDIN, STDIN_CLOSE,
// WINDOW, SIGNAL and RESIZE handlers, the child-exit handler and the connection hooks. Each session is one
// stream of one connection: a process group, its pipes or PTY master, and timers, all on the server's epoll
// loop (single-threaded).
//
// Memory stays bounded whatever the process or the host does: output is read only while the host has
// granted credit and the connection's send queue is below its high-water mark; stdin is queued only up to the
// window the agent granted. A session ends with EXIT (after OUTPUT_EOFs) or, on a protocol violation, with
// ERROR and SIGKILL to its process group. A closed connection kills the groups of all its open sessions.
#pragma once

#include <sys/resource.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "agentd/exec_limits.h"
#include "agentd/exec_user.h"
#include "agentd/server.h"

namespace sandlot::agent {

struct ExecConfig {
    UserDbPaths user_db;
    // RLIMIT_NOFILE the agent started with: children get it back (the agent raises its own soft limit).
    std::optional<rlimit> child_nofile;
    // Defaults from the boot configuration. default_env ("K=V") is laid over the built-in environment and
    // the request's env over it, key by key. default_cwd is used when the request has no cwd ("" = the
    // user's home, or /); default_user when the request has no user ("" = root, or the agent's own user
    // when it is not root).
    std::vector<std::string> default_env;
    std::string default_cwd;
    std::string default_user;
};

class ExecService {
  public:
    // Installs the handlers and hooks on `server`, which must outlive the service.
    static std::unique_ptr<ExecService> install(Server& server, ExecConfig config);
    // Kills the process groups of every session still running.
    ~ExecService();

    ExecService(const ExecService&) = delete;
    ExecService& operator=(const ExecService&) = delete;

    size_t session_count() const;

  private:
    struct Session;
    struct ConnectionState {
        Connection* conn = nullptr;
        std::unordered_map<uint32_t, std::unique_ptr<Session>> sessions;
        // Streams that ended recently: late frames for them (WINDOW, SIGNAL racing EXIT) are dropped quietly.
        std::deque<uint32_t> recently_ended;
    };

    ExecService(Server& server, ExecConfig config);

    Result<void> on_exec_start(Connection& conn, const proto::Frame& frame);
    Result<void> on_stdin(Connection& conn, const proto::Frame& frame);
    Result<void> on_stdin_close(Connection& conn, const proto::Frame& frame);
    Result<void> on_window(Connection& conn, const proto::Frame& frame);
    Result<void> on_signal(Connection& conn, const proto::Frame& frame);
    Result<void> on_resize(Connection& conn, const proto::Frame& frame);
    void on_child_exit(pid_t pid, int status);
    void on_connection_closed(Connection& conn);
    void on_output_drained(Connection& conn);

    // Event handlers of a session's fds; each looks the session up again, so they are safe after it ended.
    void on_output_event(uint64_t conn_id, uint32_t stream, int channel, uint32_t events);
    void on_stdin_event(uint64_t conn_id, uint32_t stream, uint32_t events);
    void on_timeout(uint64_t conn_id, uint32_t stream);
    void on_linger_tick(uint64_t conn_id, uint32_t stream);

    Session* find(uint64_t conn_id, uint32_t stream);
    // The session of a frame, or nullptr after answering an unknown stream with ERROR (or dropping a late
    // frame for a stream that just ended).
    Session* session_for_frame(Connection& conn, const proto::Frame& frame);
    ConnectionState& state_of(Connection& conn);

    void read_output(Session& s, int channel);
    void write_stdin(Session& s);
    void grant_stdin(Session& s);
    void output_eof(Session& s, int channel);
    void close_stdin_side(Session& s);
    void update_interest(Session& s);
    bool all_output_done(const Session& s) const;
    void start_linger(Session& s);
    // Sends OUTPUT_EOFs still due and EXIT, then forgets the session.
    void finish(Session& s, bool abandoned);
    // Ends the stream with ERROR and SIGKILLs its group if still running.
    void fail_stream(Session& s, proto::ErrorCode code, std::string message);
    void destroy(Session& s);
    void release_fds(Session& s);

    Server& server_;
    ExecConfig config_;
    std::unordered_map<uint64_t, ConnectionState> connections_;
    std::unordered_map<pid_t, std::pair<uint64_t, uint32_t>> pids_;  // running main process → (conn, stream)
    std::vector<uint8_t> read_buffer_;
};

}  // namespace sandlot::agent
