#include "agentd/exec_service.h"

#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "agentd/exec_spawn.h"
#include "agentd/log.h"
#include "proto/exec.h"

namespace sandlot::agent {

namespace {

constexpr int kStdout = 0;
constexpr int kStderr = 1;
constexpr size_t kRecentlyEndedMax = 4096;
constexpr uint64_t kMaxCredit = uint64_t{1} << 40;  // WINDOWs add up; cap so nothing can overflow
constexpr int kReadsPerEvent = 8;                   // bounds one stream's turn, for fairness

uint64_t monotonic_ms() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1'000'000;
}

proto::MessageType data_type(int channel) {
    return channel == kStdout ? proto::MessageType::Stdout : proto::MessageType::Stderr;
}

uint8_t wire_channel(int channel) {
    return channel == kStdout ? proto::kChannelStdout : proto::kChannelStderr;
}

bool has_nul(const std::string& s) {
    return s.find('\0') != std::string::npos;
}

UniqueFd make_timer(uint64_t first_ms, uint64_t interval_ms) {
    UniqueFd fd(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!fd) return fd;
    itimerspec spec{};
    spec.it_value.tv_sec = static_cast<time_t>(first_ms / 1000);
    spec.it_value.tv_nsec = static_cast<long>(first_ms % 1000) * 1'000'000;
    spec.it_interval.tv_sec = static_cast<time_t>(interval_ms / 1000);
    spec.it_interval.tv_nsec = static_cast<long>(interval_ms % 1000) * 1'000'000;
    if (timerfd_settime(fd.get(), 0, &spec, nullptr) != 0) fd.reset();
    return fd;
}

void drain_timer(int fd) {
    uint64_t expirations;
    while (read(fd, &expirations, sizeof expirations) < 0 && errno == EINTR) {
    }
}

}  // namespace

// One exec stream. In PTY mode the master is out[kStdout]; it carries stdout and stdin, and stderr is a
// virtual channel that ends together with stdout.
struct ExecService::Session {
    Connection* conn = nullptr;
    uint64_t conn_id = 0;
    uint32_t stream = 0;
    pid_t pid = -1;  // also the process group
    bool pty = false;

    UniqueFd out[2];
    uint64_t out_watch[2] = {0, 0};
    bool out_open[2] = {true, true};  // no OUTPUT_EOF sent yet
    uint64_t credit = 0;              // STDOUT+STDERR bytes the host lets us send
    uint64_t last_output_ms = 0;

    bool stdin_enabled = false;
    UniqueFd in;  // pipe mode only
    uint64_t in_watch = 0;
    uint64_t stdin_allowance = 0;  // bytes the host may still send
    uint64_t stdin_unacked = 0;    // bytes written (or dropped) but not yet granted back
    std::vector<uint8_t> stdin_queue;
    size_t stdin_queue_off = 0;
    bool stdin_close_requested = false;
    bool stdin_done = false;  // nothing more can be written: closed, broken, or the process is gone
    int veof_left = -1;       // PTY: EOF characters still to write after STDIN_CLOSE (-1: not computed)
    uint8_t last_written = '\n';

    bool reaped = false;
    int wait_status = 0;
    bool timed_out = false;
    UniqueFd timeout_fd;
    uint64_t timeout_watch = 0;
    UniqueFd linger_fd;
    uint64_t linger_watch = 0;
    // After exit: bytes the pipes held when the process was reaped (always delivered), and when they were.
    uint64_t owed[2] = {0, 0};
    uint64_t owed_done_ms = 0;

    int output_fd(int channel) const { return out[pty ? kStdout : channel].get(); }
    bool stdin_pending() const {
        return !stdin_done &&
               (stdin_queue_off < stdin_queue.size() || (stdin_close_requested && veof_left != 0));
    }
};

std::unique_ptr<ExecService> ExecService::install(Server& server, ExecConfig config) {
    std::unique_ptr<ExecService> service(new ExecService(server, std::move(config)));
    ExecService* self = service.get();
    auto bind = [self](Result<void> (ExecService::*method)(Connection&, const proto::Frame&)) {
        return [self, method](Server&, Connection& conn, const proto::Frame& frame) {
            return (self->*method)(conn, frame);
        };
    };
    server.set_handler(proto::MessageType::ExecStart, bind(&ExecService::on_exec_start));
    server.set_handler(proto::MessageType::Stdin, bind(&ExecService::on_stdin));
    server.set_handler(proto::MessageType::StdinClose, bind(&ExecService::on_stdin_close));
    server.set_handler(proto::MessageType::Window, bind(&ExecService::on_window));
    server.set_handler(proto::MessageType::Signal, bind(&ExecService::on_signal));
    server.set_handler(proto::MessageType::Resize, bind(&ExecService::on_resize));
    server.set_child_exit_handler([self](pid_t pid, int status) { self->on_child_exit(pid, status); });
    server.add_connection_hooks(
        self, [self](Connection& conn) { self->on_connection_closed(conn); },
        [self](Connection& conn) { self->on_output_drained(conn); });
    return service;
}

ExecService::ExecService(Server& server, ExecConfig config)
    : server_(server), config_(std::move(config)), read_buffer_(kMaxOutputChunk) {}

ExecService::~ExecService() {
    for (auto type :
         {proto::MessageType::ExecStart, proto::MessageType::Stdin, proto::MessageType::StdinClose,
          proto::MessageType::Window, proto::MessageType::Signal, proto::MessageType::Resize})
        server_.remove_handler(type);
    server_.set_child_exit_handler(nullptr);
    server_.remove_connection_hooks(this);
    for (auto& [id, state] : connections_) {
        for (auto& [stream, session] : state.sessions) {
            if (!session->reaped) kill(-session->pid, SIGKILL);
            release_fds(*session);
        }
    }
}

size_t ExecService::session_count() const {
    size_t n = 0;
    for (const auto& [id, state] : connections_)
        n += state.sessions.size();
    return n;
}

ExecService::ConnectionState& ExecService::state_of(Connection& conn) {
    ConnectionState& state = connections_[conn.id()];
    state.conn = &conn;
    return state;
}

ExecService::Session* ExecService::find(uint64_t conn_id, uint32_t stream) {
    auto conn = connections_.find(conn_id);
    if (conn == connections_.end()) return nullptr;
    auto it = conn->second.sessions.find(stream);
    return it == conn->second.sessions.end() ? nullptr : it->second.get();
}

ExecService::Session* ExecService::session_for_frame(Connection& conn, const proto::Frame& frame) {
    ConnectionState& state = state_of(conn);
    if (auto it = state.sessions.find(frame.stream_id); it != state.sessions.end()) return it->second.get();
    // A WINDOW or SIGNAL may cross the EXIT on the wire; that is not the host's fault.
    if (std::find(state.recently_ended.begin(), state.recently_ended.end(), frame.stream_id) !=
        state.recently_ended.end())
        return nullptr;
    conn.send_error(frame.stream_id, proto::ErrorCode::Failed, 0,
                    proto::message_type_name(frame.type) + " for stream " + std::to_string(frame.stream_id) +
                        ", which has no session");
    return nullptr;
}

// ---- EXEC_START ----

Result<void> ExecService::on_exec_start(Connection& conn, const proto::Frame& frame) {
    ConnectionState& state = state_of(conn);
    uint32_t stream = frame.stream_id;
    auto refuse = [&](proto::SpawnErrorKind kind, int err, std::string message) {
        conn.send_error(stream, proto::ErrorCode::SpawnFailed, err, std::move(message),
                        static_cast<uint32_t>(kind));
        return Result<void>{};
    };
    if (stream == proto::kControlStream) {
        conn.send_error(stream, proto::ErrorCode::Failed, 0, "EXEC_START needs a non-zero stream id");
        return {};
    }
    if (auto it = state.sessions.find(stream); it != state.sessions.end()) {
        // The host lost track of this stream; ending it is the only state both sides can agree on.
        fail_stream(*it->second, proto::ErrorCode::Failed,
                    "EXEC_START on stream " + std::to_string(stream) + ", which is in use");
        return {};
    }
    auto request = proto::decode_exec_start(frame.payload);
    if (!request) {
        conn.send_error(stream, proto::ErrorCode::Malformed, 0, "EXEC_START: " + request.error().to_string());
        return {};
    }
    // The boot configuration's defaults stand in for what the request leaves empty.
    if (request->cwd.empty()) request->cwd = config_.default_cwd;
    if (request->user.empty()) request->user = config_.default_user;
    if (state.sessions.size() >= kMaxStreams) {
        return refuse(proto::SpawnErrorKind::ResourceLimit, EAGAIN,
                      "too many exec streams on this connection (limit " + std::to_string(kMaxStreams) + ")");
    }
    if (request->argv.empty()) return refuse(proto::SpawnErrorKind::BadRequest, 0, "empty argv");
    if (std::any_of(request->argv.begin(), request->argv.end(), has_nul) || has_nul(request->cwd))
        return refuse(proto::SpawnErrorKind::BadRequest, 0, "NUL byte in argv or cwd");
    for (const proto::Rlimit& limit : request->rlimits) {
        if (limit.resource >= RLIM_NLIMITS || limit.soft > limit.hard)
            return refuse(proto::SpawnErrorKind::BadRequest, EINVAL,
                          "bad rlimit for resource " + std::to_string(limit.resource));
    }

    SpawnSpec spec;
    spec.argv = std::move(request->argv);
    spec.cwd = std::move(request->cwd);
    spec.user_label = request->user;
    spec.rlimits = std::move(request->rlimits);
    spec.base_nofile = config_.child_nofile;
    spec.pty = (request->flags & proto::kExecPty) != 0;
    spec.pipe_stdin = (request->flags & proto::kExecStdin) != 0;
    spec.rows = request->pty_rows;
    spec.cols = request->pty_cols;

    // "" is root; an agent that is not root (host mode in tests) cannot switch, so "" means "as the agent".
    ExecUser user;
    if (request->user.empty() && geteuid() != 0) {
        auto self = resolve_user(std::to_string(geteuid()), config_.user_db);
        if (self) user = std::move(*self);
        user.uid = geteuid();
        user.gid = getegid();
    } else {
        auto resolved = resolve_user(request->user, config_.user_db);
        if (!resolved) return refuse(proto::SpawnErrorKind::BadUser, 0, resolved.error().to_string());
        user = std::move(*resolved);
        spec.identity = user;
    }
    std::vector<std::string> requested_env = config_.default_env;  // the request's entries win, by key
    requested_env.insert(requested_env.end(), request->env.begin(), request->env.end());
    auto env = merge_environment(requested_env, user, spec.pty);
    if (!env) return refuse(proto::SpawnErrorKind::BadRequest, 0, env.error().to_string());
    spec.env = std::move(*env);

    auto spawned = spawn_process(spec);
    if (!spawned) return refuse(spawned.error().kind, spawned.error().errno_value, spawned.error().message);

    auto owned = std::make_unique<Session>();
    Session& s = *owned;
    s.conn = &conn;
    s.conn_id = conn.id();
    s.stream = stream;
    s.pid = spawned->pid;
    s.pty = spec.pty;
    s.credit = std::min<uint64_t>(request->output_window, kMaxCredit);
    s.stdin_enabled = spec.pipe_stdin;
    s.stdin_allowance = spec.pipe_stdin ? kStdinWindow : 0;
    s.stdin_done = !spec.pipe_stdin;
    if (s.pty) {
        s.out[kStdout] = std::move(spawned->pty_master);
    } else {
        s.out[kStdout] = std::move(spawned->stdout_fd);
        s.out[kStderr] = std::move(spawned->stderr_fd);
        s.in = std::move(spawned->stdin_fd);
    }
    state.sessions.emplace(stream, std::move(owned));
    pids_[s.pid] = {s.conn_id, stream};
    std::erase(state.recently_ended, stream);

    uint64_t conn_id = s.conn_id;
    auto watched = [&]() -> Result<void> {
        for (int channel : {kStdout, kStderr}) {
            if (!s.out[channel]) continue;
            s.out_watch[channel] = TRY(server_.watch_fd(s.out[channel].get(), 0, [=, this](uint32_t events) {
                on_output_event(conn_id, stream, channel, events);
            }));
        }
        if (s.in) {
            s.in_watch = TRY(server_.watch_fd(
                s.in.get(), 0, [=, this](uint32_t events) { on_stdin_event(conn_id, stream, events); }));
        }
        if (request->timeout_ms > 0) {
            s.timeout_fd = make_timer(request->timeout_ms, 0);
            if (!s.timeout_fd) return errno_error("timerfd");
            s.timeout_watch = TRY(server_.watch_fd(s.timeout_fd.get(), EPOLLIN,
                                                   [=, this](uint32_t) { on_timeout(conn_id, stream); }));
        }
        return {};
    }();
    if (!watched) {
        kill(-s.pid, SIGKILL);
        pids_.erase(s.pid);
        release_fds(s);
        state.sessions.erase(stream);
        return refuse(proto::SpawnErrorKind::ResourceLimit, watched.error().code,
                      "cannot watch the process: " + watched.error().to_string());
    }

    proto::ExecStarted started{static_cast<uint32_t>(s.pid), s.stdin_allowance > 0 ? kStdinWindow : 0};
    conn.send(proto::make_frame(started, stream));
    update_interest(s);
    return {};
}

// ---- frames on an open stream ----

Result<void> ExecService::on_stdin(Connection& conn, const proto::Frame& frame) {
    Session* s = session_for_frame(conn, frame);
    if (!s) return {};
    if (!s->stdin_enabled || s->stdin_close_requested) {
        fail_stream(*s, proto::ErrorCode::Protocol,
                    s->stdin_enabled ? "STDIN after STDIN_CLOSE" : "STDIN on a stream started without stdin");
        return {};
    }
    size_t n = frame.payload.size();
    if (n > s->stdin_allowance) {
        fail_stream(*s, proto::ErrorCode::Protocol,
                    "STDIN of " + std::to_string(n) + " bytes exceeds the window (" +
                        std::to_string(s->stdin_allowance) + " left)");
        return {};
    }
    s->stdin_allowance -= n;
    if (s->stdin_done) {
        // Nobody reads any more: drop the bytes but hand the credit back so the host never stalls.
        s->stdin_unacked += n;
        grant_stdin(*s);
        return {};
    }
    s->stdin_queue.insert(s->stdin_queue.end(), frame.payload.begin(), frame.payload.end());
    write_stdin(*s);
    update_interest(*s);
    return {};
}

Result<void> ExecService::on_stdin_close(Connection& conn, const proto::Frame& frame) {
    Session* s = session_for_frame(conn, frame);
    if (!s) return {};
    if (!s->stdin_enabled || s->stdin_close_requested) {
        fail_stream(
            *s, proto::ErrorCode::Protocol,
            s->stdin_enabled ? "second STDIN_CLOSE" : "STDIN_CLOSE on a stream started without stdin");
        return {};
    }
    s->stdin_close_requested = true;
    write_stdin(*s);
    update_interest(*s);
    return {};
}

Result<void> ExecService::on_window(Connection& conn, const proto::Frame& frame) {
    Session* s = session_for_frame(conn, frame);
    if (!s) return {};
    auto window = proto::decode_window(frame.payload);
    if (!window) {
        fail_stream(*s, proto::ErrorCode::Malformed, "WINDOW: " + window.error().to_string());
        return {};
    }
    s->credit = std::min(s->credit + window->bytes, kMaxCredit);
    update_interest(*s);
    return {};
}

Result<void> ExecService::on_signal(Connection& conn, const proto::Frame& frame) {
    Session* s = session_for_frame(conn, frame);
    if (!s) return {};
    auto signal = proto::decode_signal(frame.payload);
    if (!signal || signal->signo < 1 || signal->signo > 64) {
        fail_stream(*s, proto::ErrorCode::Malformed,
                    signal ? "SIGNAL: no signal number " + std::to_string(signal->signo)
                           : "SIGNAL: " + signal.error().to_string());
        return {};
    }
    // The group may already be gone (ESRCH): the process is exiting and EXIT will tell.
    if (kill(-s->pid, signal->signo) != 0 && errno != ESRCH)
        log_line("kill " + std::to_string(-s->pid) + ": " + std::strerror(errno));
    return {};
}

Result<void> ExecService::on_resize(Connection& conn, const proto::Frame& frame) {
    Session* s = session_for_frame(conn, frame);
    if (!s) return {};
    auto resize = proto::decode_resize(frame.payload);
    if (!resize) {
        fail_stream(*s, proto::ErrorCode::Malformed, "RESIZE: " + resize.error().to_string());
        return {};
    }
    // A pipe stream has no terminal to resize: nothing to do.
    if (!s->pty) return {};
    winsize size{};
    size.ws_row = resize->rows;
    size.ws_col = resize->cols;
    if (ioctl(s->out[kStdout].get(), TIOCSWINSZ, &size) != 0)  // the kernel sends SIGWINCH to the foreground
        log_line("TIOCSWINSZ: " + std::string(std::strerror(errno)));
    return {};
}

// ---- the process's fds ----

void ExecService::on_output_event(uint64_t conn_id, uint32_t stream, int channel, uint32_t events) {
    Session* s = find(conn_id, stream);
    if (!s) return;
    if (s->pty && (events & (EPOLLOUT | EPOLLERR))) write_stdin(*s);
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) read_output(*s, channel);
    if (s->reaped && all_output_done(*s)) {
        finish(*s, false);
        return;
    }
    update_interest(*s);
}

void ExecService::on_stdin_event(uint64_t conn_id, uint32_t stream, uint32_t) {
    Session* s = find(conn_id, stream);
    if (!s) return;
    write_stdin(*s);
    update_interest(*s);
}

void ExecService::read_output(Session& s, int channel) {
    if (s.pty) channel = kStdout;
    for (int round = 0; round < kReadsPerEvent && s.out_open[channel]; ++round) {
        if (s.credit == 0 || s.conn->congested()) return;
        size_t want = static_cast<size_t>(std::min<uint64_t>(s.credit, read_buffer_.size()));
        ssize_t n = read(s.output_fd(channel), read_buffer_.data(), want);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n <= 0) {
            // 0: every writer closed the pipe. EIO on a PTY master: every slave fd is closed. Anything else
            // cannot be read past either.
            if (n < 0 && !(s.pty && errno == EIO))
                log_line("read output: " + std::string(std::strerror(errno)));
            output_eof(s, channel);
            return;
        }
        s.credit -= static_cast<uint64_t>(n);
        s.last_output_ms = monotonic_ms();
        s.owed[channel] -= std::min<uint64_t>(s.owed[channel], static_cast<uint64_t>(n));
        s.conn->send_data(data_type(channel), s.stream,
                          std::span<const uint8_t>(read_buffer_.data(), static_cast<size_t>(n)));
        if (static_cast<size_t>(n) < want) return;  // the pipe is (momentarily) empty
    }
}

void ExecService::output_eof(Session& s, int channel) {
    if (s.pty) {
        // One master for everything: output ends for both channels and stdin can no longer be written. The
        // master stays open until the session ends: closing it hangs the terminal up, and SIGHUP would kill a
        // process that closed its stdio but has not exited yet.
        server_.unwatch_fd(s.out_watch[kStdout]);
        s.out_watch[kStdout] = 0;
        for (int ch : {kStdout, kStderr}) {
            if (!s.out_open[ch]) continue;
            s.out_open[ch] = false;
            s.conn->send(proto::make_frame(proto::OutputEof{wire_channel(ch)}, s.stream));
        }
        s.stdin_unacked += s.stdin_queue.size() - s.stdin_queue_off;
        s.stdin_queue.clear();
        s.stdin_queue_off = 0;
        s.stdin_done = true;
        return;
    }
    server_.unwatch_fd(s.out_watch[channel]);
    s.out_watch[channel] = 0;
    s.out[channel].reset();
    if (s.out_open[channel]) {
        s.out_open[channel] = false;
        s.conn->send(proto::make_frame(proto::OutputEof{wire_channel(channel)}, s.stream));
    }
}

void ExecService::write_stdin(Session& s) {
    int fd = s.pty ? s.out[kStdout].get() : s.in.get();
    if (s.stdin_done || fd < 0) return;
    while (s.stdin_queue_off < s.stdin_queue.size()) {
        ssize_t n =
            write(fd, s.stdin_queue.data() + s.stdin_queue_off, s.stdin_queue.size() - s.stdin_queue_off);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n < 0) {
            // EPIPE: the process closed its stdin (EIO: the PTY is gone). What is queued or still comes is
            // dropped.
            s.stdin_unacked += s.stdin_queue.size() - s.stdin_queue_off;
            s.stdin_queue.clear();
            s.stdin_queue_off = 0;
            close_stdin_side(s);
            grant_stdin(s);
            return;
        }
        s.stdin_queue_off += static_cast<size_t>(n);
        s.stdin_unacked += static_cast<uint64_t>(n);
        s.last_written = s.stdin_queue[s.stdin_queue_off - 1];
    }
    if (s.stdin_queue_off == s.stdin_queue.size()) {
        s.stdin_queue.clear();
        s.stdin_queue_off = 0;
        if (s.stdin_close_requested) {
            if (!s.pty) {
                close_stdin_side(s);
            } else {
                // A terminal has no EOF of its own: type the EOF character (twice after a partial line, once
                // to send the line and once for the EOF itself), as a user would.
                termios tio{};
                if (s.veof_left < 0)
                    s.veof_left = tcgetattr(fd, &tio) == 0 && (tio.c_lflag & ICANON)
                                      ? (s.last_written == '\n' ? 1 : 2)
                                      : 0;
                while (s.veof_left > 0) {
                    char eof_char = static_cast<char>(tio.c_cc[VEOF] ? tio.c_cc[VEOF] : 4);
                    ssize_t n = write(fd, &eof_char, 1);
                    if (n < 0 && errno == EINTR) continue;
                    if (n <= 0) break;  // EAGAIN: retried on EPOLLOUT; an error: output EOF comes soon
                    s.last_written = '\n';
                    --s.veof_left;
                }
                if (s.veof_left == 0) s.stdin_done = true;
            }
        }
    }
    grant_stdin(s);
}

void ExecService::close_stdin_side(Session& s) {
    s.stdin_done = true;
    if (s.pty) return;  // the master stays: it carries the output
    server_.unwatch_fd(s.in_watch);
    s.in_watch = 0;
    s.in.reset();
}

void ExecService::grant_stdin(Session& s) {
    // Batched like the host's output grants: once a quarter of the window has been consumed.
    if (s.stdin_unacked < kStdinWindow / 4 || s.stdin_close_requested) return;
    auto bytes = static_cast<uint32_t>(s.stdin_unacked);
    s.conn->send(proto::make_frame(proto::Window{bytes}, s.stream));
    s.stdin_allowance += bytes;
    s.stdin_unacked = 0;
}

void ExecService::update_interest(Session& s) {
    bool can_read = s.credit > 0 && !s.conn->congested();
    for (int channel : {kStdout, kStderr}) {
        if (!s.out_watch[channel]) continue;
        uint32_t events = s.out_open[channel] && can_read ? uint32_t{EPOLLIN} : 0u;
        if (s.pty && s.stdin_pending()) events |= EPOLLOUT;
        if (auto ok = server_.modify_fd(s.out_watch[channel], events); !ok) log_line(ok.error().to_string());
    }
    if (s.in_watch) {
        if (auto ok = server_.modify_fd(s.in_watch, s.stdin_pending() ? uint32_t{EPOLLOUT} : 0u); !ok)
            log_line(ok.error().to_string());
    }
}

bool ExecService::all_output_done(const Session& s) const {
    return !s.out_open[kStdout] && !s.out_open[kStderr];
}

// ---- exit ----

void ExecService::on_child_exit(pid_t pid, int status) {
    auto it = pids_.find(pid);
    if (it == pids_.end()) return;  // an orphan we inherited, or a stream that already ended
    auto [conn_id, stream] = it->second;
    pids_.erase(it);
    Session* s = find(conn_id, stream);
    if (!s) return;
    s->reaped = true;
    s->wait_status = status;
    server_.unwatch_fd(s->timeout_watch);
    s->timeout_watch = 0;
    s->timeout_fd.reset();
    // Nobody is left to read stdin that matters: drop what is queued (the credit goes back with it).
    if (s->stdin_enabled && !s->stdin_done) {
        s->stdin_unacked += s->stdin_queue.size() - s->stdin_queue_off;
        s->stdin_queue.clear();
        s->stdin_queue_off = 0;
        close_stdin_side(*s);
    }
    // What the pipes hold now was written before the exit (by it or its children) and is always delivered.
    for (int channel : {kStdout, kStderr}) {
        int queued = 0;
        if (s->pty && channel == kStderr) continue;  // one master, counted as stdout
        if (s->out_open[channel] && ioctl(s->output_fd(channel), FIONREAD, &queued) == 0 && queued > 0)
            s->owed[channel] = static_cast<uint64_t>(queued);
    }
    // Usually the pipes are already at EOF (or hold the last bytes): look now rather than after a wakeup.
    for (int channel : {kStdout, kStderr}) {
        if (s->out_open[channel] && !(s->pty && channel == kStderr)) read_output(*s, channel);
    }
    if (all_output_done(*s)) {
        finish(*s, false);
        return;
    }
    start_linger(*s);
    update_interest(*s);
}

void ExecService::start_linger(Session& s) {
    s.last_output_ms = std::max(s.last_output_ms, monotonic_ms());
    s.linger_fd = make_timer(kExitLingerMs, kExitLingerMs);
    if (s.linger_fd) {
        uint64_t conn_id = s.conn_id;
        uint32_t stream = s.stream;
        auto watch = server_.watch_fd(s.linger_fd.get(), EPOLLIN,
                                      [=, this](uint32_t) { on_linger_tick(conn_id, stream); });
        if (watch) {
            s.linger_watch = *watch;
            return;
        }
    }
    // Without a timer we cannot wait for inherited pipes: report the exit now rather than never.
    log_line("exit linger timer: " + std::string(std::strerror(errno)));
    finish(s, true);
}

void ExecService::on_linger_tick(uint64_t conn_id, uint32_t stream) {
    Session* s = find(conn_id, stream);
    if (!s) return;
    drain_timer(s->linger_fd.get());
    // A pipe whose writers all closed while we had no credit to read it: its EOF is real, not abandoned.
    for (int channel : {kStdout, kStderr}) {
        if (!s->out_open[channel] || (s->pty && channel == kStderr)) continue;
        pollfd pfd{s->output_fd(channel), POLLIN, 0};
        int queued = 0;
        if (poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLHUP | POLLERR)) &&
            ioctl(pfd.fd, FIONREAD, &queued) == 0 && queued == 0)
            output_eof(*s, channel);
    }
    if (all_output_done(*s)) {
        finish(*s, false);
        return;
    }
    uint64_t now = monotonic_ms();
    // Background processes that keep writing (`yes &`) would hold the session open forever: once the output
    // from before the exit is delivered, they get at most kBackgroundOutputMs more.
    if (s->owed[kStdout] == 0 && s->owed[kStderr] == 0) {
        if (s->owed_done_ms == 0) s->owed_done_ms = now;
        if (now - s->owed_done_ms >= static_cast<uint64_t>(kBackgroundOutputMs)) {
            finish(*s, true);
            return;
        }
    }
    if (now - s->last_output_ms < static_cast<uint64_t>(kExitLingerMs)) return;
    for (int channel : {kStdout, kStderr}) {
        if (!s->out_open[channel] || (s->pty && channel == kStderr)) continue;
        int queued = 0;
        // Output still waiting (for credit, or for its turn) is forwarded first.
        if (ioctl(s->output_fd(channel), FIONREAD, &queued) != 0 || queued > 0) return;
    }
    finish(*s, true);
}

void ExecService::on_timeout(uint64_t conn_id, uint32_t stream) {
    Session* s = find(conn_id, stream);
    if (!s) return;
    server_.unwatch_fd(s->timeout_watch);
    s->timeout_watch = 0;
    s->timeout_fd.reset();
    if (s->reaped) return;
    s->timed_out = true;
    kill(-s->pid, SIGKILL);
}

void ExecService::finish(Session& s, bool abandoned) {
    bool any_open = false;
    for (int channel : {kStdout, kStderr}) {
        if (!s.out_open[channel]) continue;
        any_open = true;
        s.out_open[channel] = false;
        s.conn->send(proto::make_frame(proto::OutputEof{wire_channel(channel)}, s.stream));
    }
    proto::Exit exit;
    if (WIFEXITED(s.wait_status)) {
        exit.exit_code = WEXITSTATUS(s.wait_status);
    } else if (WIFSIGNALED(s.wait_status)) {
        exit.signal = WTERMSIG(s.wait_status);
        exit.core_dumped = WCOREDUMP(s.wait_status) ? 1 : 0;
    }
    exit.timed_out = s.timed_out ? 1 : 0;
    exit.output_abandoned = abandoned && any_open ? 1 : 0;
    s.conn->send(proto::make_frame(exit, s.stream));
    destroy(s);
}

void ExecService::fail_stream(Session& s, proto::ErrorCode code, std::string message) {
    log_line(s.conn->name() + ": stream " + std::to_string(s.stream) + ": " + message);
    s.conn->send_error(s.stream, code, 0, std::move(message));
    if (!s.reaped) {
        kill(-s.pid, SIGKILL);
        pids_.erase(s.pid);  // reaped later as an orphan
    }
    destroy(s);
}

void ExecService::release_fds(Session& s) {
    for (uint64_t* watch :
         {&s.out_watch[kStdout], &s.out_watch[kStderr], &s.in_watch, &s.timeout_watch, &s.linger_watch}) {
        server_.unwatch_fd(*watch);
        *watch = 0;
    }
}

void ExecService::destroy(Session& s) {
    release_fds(s);
    auto it = connections_.find(s.conn_id);
    if (it == connections_.end()) return;
    ConnectionState& state = it->second;
    uint32_t stream = s.stream;
    state.recently_ended.push_back(stream);
    if (state.recently_ended.size() > kRecentlyEndedMax) state.recently_ended.pop_front();
    state.sessions.erase(stream);  // s is gone from here on
}

// ---- connections ----

void ExecService::on_connection_closed(Connection& conn) {
    auto it = connections_.find(conn.id());
    if (it == connections_.end()) return;
    for (auto& [stream, session] : it->second.sessions) {
        if (!session->reaped) {
            kill(-session->pid, SIGKILL);
            pids_.erase(session->pid);
        }
        release_fds(*session);
    }
    connections_.erase(it);
}

void ExecService::on_output_drained(Connection& conn) {
    auto it = connections_.find(conn.id());
    if (it == connections_.end()) return;
    for (auto& [stream, session] : it->second.sessions)
        update_interest(*session);
}

}  // namespace sandlot::agent
