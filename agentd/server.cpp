#include "agentd/server.h"

#include <linux/vm_sockets.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "agentd/log.h"
#include "agentd/stats.h"
#include "proto/base/unix_address.h"

namespace sandlot::agent {

namespace {

constexpr size_t kReadChunk = 64 * 1024;
constexpr int kDrainTimeoutMs = 1000;

constexpr int kStopSignals[] = {SIGTERM, SIGINT, SIGUSR1, SIGUSR2};

std::string hex16(uint16_t v) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "0x%04x", v);
    return buf;
}

std::string describe_peer(const sockaddr_storage& addr, uint64_t id) {
    std::string name;
    if (addr.ss_family == AF_VSOCK) {
        const auto& vm = reinterpret_cast<const sockaddr_vm&>(addr);
        name = "vsock:" + std::to_string(vm.svm_cid) + ":" + std::to_string(vm.svm_port);
    } else {
        name = "unix";
    }
    return name + " #" + std::to_string(id);
}

uint64_t monotonic_ms() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1'000'000;
}

}  // namespace

// ---- Connection ----

Connection::Connection(Server& server, uint64_t id, UniqueFd fd, std::string name)
    : server_(server), id_(id), fd_(std::move(fd)), name_(std::move(name)) {}

void Connection::send(const proto::Frame& frame) {
    if (dead_) return;
    auto bytes = proto::encode_frame(frame);
    if (!bytes) {
        log_line(name_ + ": dropping reply: " + bytes.error().to_string());
        return;
    }
    output_.insert(output_.end(), bytes->begin(), bytes->end());
    queue_flush();
}

void Connection::send_data(proto::MessageType type, uint32_t stream_id, std::span<const uint8_t> payload) {
    if (dead_) return;
    if (payload.size() > proto::kMaxFramePayload) {
        log_line(name_ + ": dropping oversized " + proto::message_type_name(static_cast<uint16_t>(type)));
        return;
    }
    std::array<uint8_t, proto::kFrameHeaderSize> header;
    proto::encode_header({static_cast<uint32_t>(payload.size()), stream_id, static_cast<uint16_t>(type), 0},
                         header);
    output_.insert(output_.end(), header.begin(), header.end());
    output_.insert(output_.end(), payload.begin(), payload.end());
    queue_flush();
}

// Written when the server has finished the current batch of events (the replies to one read leave in one
// send()); flush() asks for EPOLLOUT only if the socket could not take everything.
void Connection::queue_flush() {
    if (!flush_queued_) {
        flush_queued_ = true;
        server_.to_flush_.push_back(id_);
    }
}

void Connection::send_error(uint32_t stream_id, proto::ErrorCode code, int errno_value, std::string message,
                            uint32_t kind) {
    proto::ErrorMessage error{static_cast<uint32_t>(code), errno_value, std::move(message), kind};
    send(proto::make_frame(error, stream_id));
}

bool Connection::congested() {
    if (pending_output() < Server::kOutputHighWater) return false;
    drain_wanted_ = true;
    return true;
}

void Connection::close_after_flush() {
    closing_ = true;
    update_interest();
}

void Connection::flush() {
    while (!dead_ && !connecting_ && output_sent_ < output_.size()) {
        ssize_t n = ::send(fd_.get(), output_.data() + output_sent_, output_.size() - output_sent_,
                           MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            // The guest kernel could not allocate a vsock packet (its memory is full of page cache during a
            // big transfer): transient, not the peer's fault. Back off a moment and retry when writable
            // again.
            if (errno == ENOMEM || errno == ENOBUFS) {
                usleep(1000);
                break;
            }
            log_line(name_ + ": write failed: " + std::strerror(errno));
            dead_ = true;
            return;
        }
        output_sent_ += static_cast<size_t>(n);
    }
    if (output_sent_ == output_.size()) {
        output_.clear();
        output_sent_ = 0;
    } else if (output_sent_ > kReadChunk && output_sent_ > output_.size() / 2) {
        output_.erase(output_.begin(), output_.begin() + static_cast<ptrdiff_t>(output_sent_));
        output_sent_ = 0;
    }
    update_interest();
    if (drain_wanted_ && !dead_ && pending_output() < Server::kOutputHighWater) {
        drain_wanted_ = false;
        server_.run_drained_hooks(*this);
    }
}

void Connection::update_interest() {
    if (dead_) return;
    size_t pending = output_.size() - output_sent_;
    uint32_t want = 0;
    if (connecting_) {
        want = EPOLLOUT;
    } else {
        // Backpressure: a peer that does not read its replies stops being read.
        if (!closing_ && pending < Server::kOutputHighWater) want |= EPOLLIN;
        if (pending > 0) want |= EPOLLOUT;
    }
    if (want == interest_) return;
    epoll_event ev{};
    ev.events = want;
    ev.data.u64 = id_;
    if (epoll_ctl(server_.epoll_.get(), EPOLL_CTL_MOD, fd_.get(), &ev) != 0) {
        log_line(name_ + ": epoll_ctl: " + std::strerror(errno));
        dead_ = true;
        return;
    }
    interest_ = want;
}

// ---- Server ----

Result<std::unique_ptr<Server>> Server::create(uint64_t start_ns) {
    std::unique_ptr<Server> server(new Server());
    server->times_.start_ns = start_ns;

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    for (int sig : kStopSignals)
        sigaddset(&set, sig);
    if (sigprocmask(SIG_BLOCK, &set, nullptr) != 0) return errno_error("sigprocmask");
    // Writes to a vanished peer must fail with EPIPE, not kill the agent.
    signal(SIGPIPE, SIG_IGN);

    server->epoll_ = UniqueFd(epoll_create1(EPOLL_CLOEXEC));
    if (!server->epoll_) return errno_error("epoll_create1");
    server->signal_fd_ = UniqueFd(signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!server->signal_fd_) return errno_error("signalfd");
    server->signal_id_ = TRY(server->watch(server->signal_fd_.get(), EPOLLIN));
    // Children that exited before the signalfd existed would otherwise wait for the next SIGCHLD.
    server->reap_children();

    server->install_control_handlers();
    return server;
}

Server::~Server() {
    for (const std::string& path : unix_paths_)
        unlink(path.c_str());
}

Result<uint64_t> Server::watch(int fd, uint32_t events) {
    uint64_t id = next_id_++;
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = id;
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return errno_error("epoll_ctl add");
    return id;
}

Result<uint64_t> Server::watch_fd(int fd, uint32_t events, FdHandler on_event) {
    uint64_t id = next_id_++;
    FdWatch watch{fd, events, false, std::make_shared<FdHandler>(std::move(on_event))};
    if (events != 0) {
        epoll_event ev{};
        ev.events = events;
        ev.data.u64 = id;
        if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return errno_error("epoll_ctl add");
        watch.registered = true;
    }
    watches_.emplace(id, std::move(watch));
    return id;
}

Result<void> Server::modify_fd(uint64_t id, uint32_t events) {
    auto it = watches_.find(id);
    if (it == watches_.end()) return make_error("modify_fd: unknown watch " + std::to_string(id));
    FdWatch& watch = it->second;
    if (events == watch.events) return {};
    if (events == 0) {
        if (watch.registered && epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, watch.fd, nullptr) != 0)
            return errno_error("epoll_ctl del");
        watch.registered = false;
    } else {
        epoll_event ev{};
        ev.events = events;
        ev.data.u64 = id;
        int op = watch.registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
        if (epoll_ctl(epoll_.get(), op, watch.fd, &ev) != 0) return errno_error("epoll_ctl");
        watch.registered = true;
    }
    watch.events = events;
    return {};
}

void Server::unwatch_fd(uint64_t id) {
    auto it = watches_.find(id);
    if (it == watches_.end()) return;
    if (it->second.registered) epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second.fd, nullptr);
    watches_.erase(it);  // a handler running right now keeps its own reference (see run())
}

void Server::add_connection_hooks(const void* owner, ConnectionHook closed, ConnectionHook drained) {
    hooks_.push_back({owner, std::move(closed), std::move(drained)});
}

void Server::remove_connection_hooks(const void* owner) {
    std::erase_if(hooks_, [&](const ConnectionHooks& hooks) { return hooks.owner == owner; });
}

void Server::run_drained_hooks(Connection& conn) {
    std::vector<ConnectionHooks> hooks = hooks_;
    for (auto& hook : hooks)
        if (hook.drained && !conn.dead_) hook.drained(conn);
}

void Server::set_handler(proto::MessageType type, Handler handler) {
    handlers_[static_cast<uint16_t>(type)] = std::move(handler);
}

void Server::request_stop(StopReason reason) {
    if (!stop_) stop_ = reason;
}

void Server::install_control_handlers() {
    set_handler(proto::MessageType::Ping, [](Server&, Connection& conn, const proto::Frame& frame) {
        auto ping = proto::decode_ping(frame.payload);
        if (!ping) {
            conn.send_error(frame.stream_id, proto::ErrorCode::Malformed, 0, ping.error().to_string());
            return Result<void>{};
        }
        conn.send(proto::make_frame(proto::Pong{ping->nonce}, frame.stream_id));
        return Result<void>{};
    });
    set_handler(proto::MessageType::StatsRequest,
                [](Server& server, Connection& conn, const proto::Frame& frame) {
                    proto::Stats stats = collect_stats();
                    if (server.session_counter_) {
                        stats.exec_sessions =
                            static_cast<uint32_t>(std::min<size_t>(server.session_counter_(), UINT32_MAX));
                    }
                    conn.send(proto::make_frame(stats, frame.stream_id));
                    return Result<void>{};
                });
    set_handler(proto::MessageType::Shutdown,
                [](Server& server, Connection& conn, const proto::Frame& frame) {
                    conn.send(proto::make_frame(proto::ShutdownAck{}, frame.stream_id));
                    conn.await_peer_close_ = true;
                    server.request_stop(StopReason::ShutdownRequest);
                    return Result<void>{};
                });
    // Never answer an ERROR with an ERROR: two confused peers would bounce them forever.
    set_handler(proto::MessageType::Error, [](Server&, Connection& conn, const proto::Frame& frame) {
        auto error = proto::decode_error(frame.payload);
        log_line(conn.name() + ": peer reported " +
                 (error ? "error " + std::to_string(error->code) + ": " + error->message
                        : error.error().to_string()));
        return Result<void>{};
    });
}

Result<void> Server::add_listener(UniqueFd fd) {
    if (listen(fd.get(), SOMAXCONN) != 0) return errno_error("listen");
    uint64_t id = TRY(watch(fd.get(), EPOLLIN));
    listeners_.emplace(id, std::move(fd));
    if (times_.ready_ns == 0) times_.ready_ns = boottime_ns();
    return {};
}

Result<void> Server::listen_unix(const std::string& path) {
    sockaddr_un addr = TRY(unix_address(path));
    UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) return errno_error("socket(AF_UNIX)");
    // A socket file left by an earlier run would make bind fail; anything else at the path is kept.
    struct stat st;
    if (lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(path.c_str());
    if (bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
        return errno_error("bind " + path);
    unix_paths_.push_back(path);
    return add_listener(std::move(fd));
}

Result<void> Server::listen_vsock(uint32_t port) {
    UniqueFd fd(socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) return errno_error("socket(AF_VSOCK)");
    sockaddr_vm addr{};
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = VMADDR_CID_ANY;
    addr.svm_port = port;
    if (bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        return errno_error("bind vsock port " + std::to_string(port));
    }
    return add_listener(std::move(fd));
}

Result<void> Server::start_connect(UniqueFd fd, const sockaddr* addr, socklen_t len, std::string name) {
    if (times_.ready_ns == 0) times_.ready_ns = boottime_ns();
    int rc;
    do {
        rc = connect(fd.get(), addr, len);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0 && errno != EINPROGRESS) return errno_error("connect " + name);
    Connection& conn = add_connection(std::move(fd), std::move(name), rc != 0);
    if (rc == 0) greet(conn);
    if (conn.dead_) drop_connection(conn.id());
    return {};
}

Result<void> Server::connect_vsock(uint32_t cid, uint32_t port) {
    UniqueFd fd(socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) return errno_error("socket(AF_VSOCK)");
    sockaddr_vm addr{};
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = cid;
    addr.svm_port = port;
    return start_connect(std::move(fd), reinterpret_cast<sockaddr*>(&addr), sizeof addr,
                         "vsock:" + std::to_string(cid) + ":" + std::to_string(port));
}

Result<void> Server::connect_unix(const std::string& path) {
    sockaddr_un addr = TRY(unix_address(path));
    UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) return errno_error("socket(AF_UNIX)");
    return start_connect(std::move(fd), reinterpret_cast<sockaddr*>(&addr), sizeof addr, "unix:" + path);
}

Connection& Server::add_connection(UniqueFd fd, std::string name, bool connecting) {
    uint64_t id = next_id_++;
    int raw_fd = fd.get();
    auto conn = std::unique_ptr<Connection>(new Connection(*this, id, std::move(fd), std::move(name)));
    conn->connecting_ = connecting;
    epoll_event ev{};
    ev.events = 0;
    ev.data.u64 = id;
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, raw_fd, &ev) != 0) {
        log_line(conn->name_ + ": epoll_ctl add: " + std::strerror(errno));
        conn->dead_ = true;
    }
    conn->update_interest();
    Connection& ref = *conn;
    connections_.emplace(id, std::move(conn));
    return ref;
}

void Server::greet(Connection& conn) {
    conn.send(proto::make_frame(build_hello(times_)));
    conn.flush();
}

void Server::drop_connection(uint64_t id) {
    auto it = connections_.find(id);
    if (it == connections_.end()) return;
    // A hook may remove hooks: iterate over a copy.
    std::vector<ConnectionHooks> hooks = hooks_;
    for (auto& hook : hooks)
        if (hook.closed) hook.closed(*it->second);
    epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second->fd_.get(), nullptr);
    connections_.erase(it);
}

void Server::accept_all(int listen_fd) {
    for (;;) {
        sockaddr_storage addr{};
        socklen_t len = sizeof addr;
        int raw = accept4(listen_fd, reinterpret_cast<sockaddr*>(&addr), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (raw < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                log_line(std::string("accept: ") + std::strerror(errno));
            return;
        }
        UniqueFd fd(raw);
        if (connections_.size() >= kMaxConnections) {
            log_line("refusing connection: " + std::to_string(kMaxConnections) + " already open");
            continue;
        }
        // next_id_ is the id add_connection is about to hand out.
        Connection& conn = add_connection(std::move(fd), describe_peer(addr, next_id_), false);
        greet(conn);
        if (conn.dead_) drop_connection(conn.id());
    }
}

void Server::handle_connection_event(Connection& conn, uint32_t events) {
    if (conn.connecting_) {
        int error = 0;
        socklen_t len = sizeof error;
        if (getsockopt(conn.fd_.get(), SOL_SOCKET, SO_ERROR, &error, &len) != 0) error = errno;
        if (error != 0) {
            log_line(conn.name_ + ": connect failed: " + std::strerror(error));
            conn.dead_ = true;
            return;
        }
        conn.connecting_ = false;
        greet(conn);
        return;
    }
    if (events & EPOLLIN) read_from(conn);
    conn.flush();  // replies queued while reading, or what EPOLLOUT says now fits
    // Without EPOLLIN to read the EOF from, a hangup means the peer is gone in both directions.
    if ((events & EPOLLERR) || ((events & EPOLLHUP) && !(events & EPOLLIN))) conn.dead_ = true;
}

void Server::read_from(Connection& conn) {
    uint8_t buffer[kReadChunk];
    ssize_t n;
    do {
        n = recv(conn.fd_.get(), buffer, sizeof buffer, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        log_line(conn.name_ + ": read failed: " + std::strerror(errno));
        conn.dead_ = true;
        return;
    }
    if (n == 0) {
        conn.close_after_flush();  // the peer is done sending; finish writing replies
        return;
    }

    auto fed = conn.decoder_.feed(std::span<const uint8_t>(buffer, static_cast<size_t>(n)));
    while (fed && !conn.closing_ && !conn.dead_ && !stop_) {
        auto frame = conn.decoder_.next();
        if (!frame) {
            fed = std::unexpected(frame.error());
            break;
        }
        if (!*frame) break;
        dispatch(conn, **frame);
    }
    if (!fed) {
        // Frame boundaries are lost: report once, then close this connection only.
        log_line(conn.name_ + ": protocol error, closing: " + fed.error().to_string());
        conn.send_error(proto::kControlStream, proto::ErrorCode::Protocol, 0, fed.error().to_string());
        conn.close_after_flush();
    }
}

void Server::dispatch(Connection& conn, const proto::Frame& frame) {
    auto it = handlers_.find(frame.type);
    if (it == handlers_.end()) {
        conn.send_error(frame.stream_id, proto::ErrorCode::Unsupported, 0,
                        "unsupported message type " + hex16(frame.type));
        return;
    }
    auto result = it->second(*this, conn, frame);
    if (!result) {
        conn.send_error(frame.stream_id, proto::ErrorCode::Failed, result.error().code,
                        proto::message_type_name(frame.type) + ": " + result.error().to_string());
    }
}

void Server::reap_children() {
    for (;;) {
        int status = 0;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0) return;  // 0: none left exited; -1/ECHILD: no children at all
        if (child_exit_) child_exit_(pid, status);
    }
}

void Server::handle_signals() {
    for (;;) {
        signalfd_siginfo info;
        ssize_t n = read(signal_fd_.get(), &info, sizeof info);
        if (n < 0 && errno == EINTR) continue;
        if (n != sizeof info) return;
        if (info.ssi_signo == SIGCHLD) {
            reap_children();
        } else {
            log_line(std::string("received SIG") + sigabbrev_np(static_cast<int>(info.ssi_signo)));
            request_stop(StopReason::Signal);
        }
    }
}

Result<StopReason> Server::run() {
    std::array<epoll_event, 64> events;
    while (!stop_) {
        // Output queued outside an event's handling (an output-drained hook producing more) is flushed on
        // the next turn: do not sleep while some waits.
        int n = epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()),
                           to_flush_.empty() ? -1 : 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno_error("epoll_wait");
        }
        for (int i = 0; i < n && !stop_; ++i) {
            uint64_t id = events[i].data.u64;
            if (auto watch = watches_.find(id); watch != watches_.end()) {
                // The handler may unwatch (and so destroy) its own entry: hold a reference while it runs.
                std::shared_ptr<FdHandler> handler = watch->second.handler;
                (*handler)(events[i].events);
            } else if (id == signal_id_) {
                handle_signals();
            } else if (auto listener = listeners_.find(id); listener != listeners_.end()) {
                accept_all(listener->second.get());
            } else if (auto it = connections_.find(id); it != connections_.end()) {
                // (A connection dropped earlier in this batch is simply not found.)
                Connection& conn = *it->second;
                handle_connection_event(conn, events[i].events);
                if (conn.dead_ || (conn.closing_ && conn.output_sent_ == conn.output_.size())) {
                    drop_connection(id);
                }
            }
        }
        flush_queued_connections();
    }
    drain_before_exit();
    return *stop_;
}

void Server::flush_queued_connections() {
    // Flushing may run the output-drained hook, which may queue more: take the list first.
    std::vector<uint64_t> ids;
    ids.swap(to_flush_);
    for (uint64_t id : ids) {
        auto it = connections_.find(id);
        if (it == connections_.end()) continue;
        Connection& conn = *it->second;
        conn.flush_queued_ = false;
        conn.flush();
        if (conn.dead_ || (conn.closing_ && conn.output_sent_ == conn.output_.size())) drop_connection(id);
    }
}

void Server::drain_before_exit() {
    // A vsock send() only queues bytes in the guest kernel; they reach the host later. So write what is
    // queued, then half-close the connections that asked for the shutdown and wait for their peers to read
    // the reply and close. Bounded by kDrainTimeoutMs in all cases.
    uint64_t deadline = monotonic_ms() + kDrainTimeoutMs;
    for (;;) {
        std::vector<pollfd> waiting;
        for (auto& [id, conn] : connections_) {
            if (conn->dead_ || conn->connecting_) continue;
            conn->flush();
            if (conn->output_sent_ < conn->output_.size()) {
                waiting.push_back({conn->fd_.get(), POLLOUT, 0});
            } else if (conn->await_peer_close_) {
                if (!conn->closing_) {
                    ::shutdown(conn->fd_.get(), SHUT_WR);
                    conn->closing_ = true;
                }
                char scratch[256];
                ssize_t n = recv(conn->fd_.get(), scratch, sizeof scratch, MSG_DONTWAIT);
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                    conn->dead_ = true;  // the peer closed: the reply was delivered
                } else {
                    waiting.push_back({conn->fd_.get(), POLLIN, 0});
                }
            }
        }
        uint64_t now = monotonic_ms();
        if (waiting.empty() || now >= deadline) return;
        poll(waiting.data(), waiting.size(), static_cast<int>(deadline - now));
    }
}

}  // namespace sandlot::agent
