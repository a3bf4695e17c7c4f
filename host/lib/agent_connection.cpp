#include "host/lib/agent_connection.h"

#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "proto/exec.h"
#include "proto/frame.h"
#include "proto/fs.h"

namespace sandlot::host {

namespace {

// Unsolicited control replies kept while a PING/SHUTDOWN waits; more are dropped (a hostile agent could
// otherwise fill memory with PONGs).
constexpr size_t kControlQueueLimit = 16;
// STDIN frames are cut to this size so one large write does not hold the socket for long.
constexpr uint32_t kStdinChunk = 128 * 1024;
// Output credit is returned in batches of at least this much.
constexpr uint32_t kWindowGrantBatch = kOutputWindow / 4;
// Small channel frames are batched up to this many bytes per write.
constexpr size_t kChannelBatch = 256 * 1024;
// Stdin credit beyond this is not believed (it only has to stay far from overflowing).
constexpr uint64_t kMaxStdinCredit = uint64_t{1} << 40;

uint16_t type_of(proto::MessageType type) {
    return static_cast<uint16_t>(type);
}

std::string protocol_string(const proto::Hello& hello) {
    return std::to_string(hello.protocol_major) + "." + std::to_string(hello.protocol_minor);
}

// Runs a function when the scope ends.
template <class F>
class ScopeExit {
  public:
    explicit ScopeExit(F f) : f_(std::move(f)) {}
    ~ScopeExit() { f_(); }
    ScopeExit(const ScopeExit&) = delete;
    ScopeExit& operator=(const ScopeExit&) = delete;

  private:
    F f_;
};

ExitStatus exit_status_from(const proto::Exit& exit) {
    ExitStatus status;
    status.exit_code = exit.exit_code;
    status.signal = exit.signal;
    status.core_dumped = exit.core_dumped != 0;
    status.timed_out = exit.timed_out != 0;
    status.output_abandoned = exit.output_abandoned != 0;
    return status;
}

}  // namespace

// One exec session as the reader thread and the handle see it. Guarded by Core::mu.
struct ExecStreamState {
    ExecStreamState(uint32_t id, bool pty, bool stdin_open) : id(id), pty(pty), stdin_open(stdin_open) {}

    const uint32_t id;
    const bool pty;
    const bool stdin_open;

    std::condition_variable cv;  // events arrived, stdin credit arrived, the stream ended
    std::deque<ExecEvent> events;
    size_t queued_bytes = 0;                // output bytes in `events` (at most the window)
    uint64_t agent_credit = kOutputWindow;  // output bytes the agent may still send
    uint32_t consumed = 0;                  // output handed out (or discarded) but not yet granted back
    bool started = false;
    uint32_t pid = 0;
    uint64_t stdin_credit = 0;
    bool stdin_closed = false;
    bool ended = false;          // EXIT or ERROR arrived: the id is free on the agent's side
    bool exit_returned = false;  // recv() has handed out the Exit event
    std::optional<ExitStatus> final_status;
    std::optional<Error> error;  // the stream failed (agent ERROR after start, or the agent broke the rules)
    bool detached = false;       // the handle is gone: output is discarded and credited at once
};

// One channel as the reader thread and its handle see it. Guarded by Core::mu.
struct ChannelState {
    ChannelState(uint32_t id, const ChannelOptions& options)
        : id(id), options(options), credit(options.credit) {}

    const uint32_t id;
    const ChannelOptions options;
    std::condition_variable cv;
    std::deque<proto::Frame> frames;
    uint64_t credit;  // counted payload bytes the agent may still send
    bool ended = false;
    bool end_returned = false;
    bool detached = false;  // the handle is gone: frames are dropped until the end
    std::optional<Error> error;
};

struct AgentConnection::Core {
    UniqueFd fd;
    proto::Hello hello;
    uint32_t max_streams = 1;
    std::thread reader;

    std::mutex write_mu;  // one frame at a time on the socket; never held together with mu

    mutable std::mutex mu;
    std::condition_variable control_cv;
    std::condition_variable slots_cv;
    std::deque<proto::Frame> control_replies;
    bool control_waiting = false;
    std::unordered_map<uint32_t, std::shared_ptr<ExecStreamState>> streams;
    std::unordered_map<uint32_t, std::shared_ptr<ChannelState>> channels;
    uint32_t next_stream_id = 1;
    std::optional<Error> broken;
    uint64_t ignored = 0;

    std::mutex control_mu;  // one control request (PING, SHUTDOWN) at a time
    std::atomic<uint64_t> next_nonce = 1;

    Result<void> send(const proto::Frame& frame) {
        std::lock_guard lock(write_mu);
        if (!fd) return make_error("connection to agent closed", EPIPE);
        auto written = proto::write_frame(fd.get(), frame);
        if (!written) return std::unexpected(with_context(written.error(), "sending to agent"));
        return {};
    }

    // A frame whose payload is written straight from `payload` (bulk data: no copy into a Frame).
    Result<void> send_payload(proto::MessageType type, uint32_t stream, std::span<const uint8_t> payload) {
        if (payload.size() > proto::kMaxFramePayload) return make_error("frame payload too large", EMSGSIZE);
        std::array<uint8_t, proto::kFrameHeaderSize> header;
        proto::encode_header({static_cast<uint32_t>(payload.size()), stream, type_of(type), 0}, header);
        std::lock_guard lock(write_mu);
        if (!fd) return make_error("connection to agent closed", EPIPE);
        iovec iov[2] = {{header.data(), header.size()},
                        {const_cast<uint8_t*>(payload.data()), payload.size()}};
        size_t total = header.size() + payload.size();
        size_t done = 0;
        while (done < total) {
            msghdr msg{};
            size_t skip = done;
            iovec parts[2];
            int count = 0;
            for (const iovec& part : iov) {
                if (skip >= part.iov_len) {
                    skip -= part.iov_len;
                    continue;
                }
                parts[count++] = {static_cast<uint8_t*>(part.iov_base) + skip, part.iov_len - skip};
                skip = 0;
            }
            msg.msg_iov = parts;
            msg.msg_iovlen = static_cast<size_t>(count);
            ssize_t n = sendmsg(fd.get(), &msg, MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) return errno_error("sending to agent");
            done += static_cast<size_t>(n);
        }
        return {};
    }

    // Bytes that already hold whole frames.
    Result<void> send_raw(std::span<const uint8_t> bytes) {
        std::lock_guard lock(write_mu);
        if (!fd) return make_error("connection to agent closed", EPIPE);
        auto written = proto::write_all(fd.get(), bytes);
        if (!written) return std::unexpected(with_context(written.error(), "sending to agent"));
        return {};
    }

    // A free stream id. Ids only grow (wrapping after 2^32 - 1, skipping 0 and open ids), so a stale
    // handle's frame cannot reach a newer stream. Caller holds mu.
    uint32_t allocate_stream_id() {
        uint32_t id = 0;
        do {
            id = next_stream_id++;
            if (next_stream_id == 0) next_stream_id = 1;
        } while (id == proto::kControlStream || streams.contains(id) || channels.contains(id));
        return id;
    }

    size_t open_count() const { return streams.size() + channels.size(); }
    // Marks the connection broken and wakes every waiter. Caller holds mu.
    void fail_all(Error error) {
        if (!broken) broken = std::move(error);
        for (auto& [id, stream] : streams)
            stream->cv.notify_all();
        streams.clear();
        for (auto& [id, channel] : channels)
            channel->cv.notify_all();
        channels.clear();
        control_cv.notify_all();
        slots_cv.notify_all();
    }

    // Ends a stream on its terminal frame. Caller holds mu.
    void end_stream(ExecStreamState& stream) {
        stream.ended = true;
        streams.erase(stream.id);
        stream.cv.notify_all();
        slots_cv.notify_all();
    }

    void read_loop() {
        for (;;) {
            auto frame = proto::read_frame(fd.get());
            if (!frame) {
                Error error = proto::is_connection_closed(frame.error())
                                  ? Error{ECONNRESET, "connection to agent closed"}
                                  : with_context(frame.error(), "reading from agent");
                // Writers blocked on the socket must fail too.
                ::shutdown(fd.get(), SHUT_RDWR);
                std::lock_guard lock(mu);
                fail_all(std::move(error));
                return;
            }
            if (auto reply = dispatch(std::move(*frame))) (void)send(*reply);
        }
    }

    // Hands one frame from the agent to its stream. Returns a frame to send in answer (a WINDOW grant for a
    // stream whose handle is gone), which is sent after mu is released.
    std::optional<proto::Frame> dispatch(proto::Frame frame) {
        std::lock_guard lock(mu);
        if (frame.stream_id == proto::kControlStream) {
            if (!control_waiting || control_replies.size() >= kControlQueueLimit) {
                ++ignored;
                return std::nullopt;
            }
            control_replies.push_back(std::move(frame));
            control_cv.notify_all();
            return std::nullopt;
        }
        if (auto channel = channels.find(frame.stream_id); channel != channels.end())
            return on_channel_frame(channel->second, std::move(frame));
        auto it = streams.find(frame.stream_id);
        if (it == streams.end()) {
            ++ignored;
            return std::nullopt;
        }
        std::shared_ptr<ExecStreamState> keep = it->second;
        ExecStreamState& stream = *keep;
        switch (static_cast<proto::MessageType>(frame.type)) {
            case proto::MessageType::ExecStarted: {
                auto started = proto::decode_exec_started(frame.payload);
                if (!started || stream.started) break;
                stream.started = true;
                stream.pid = started->pid;
                stream.stdin_credit = stream.stdin_open ? started->stdin_window : 0;
                stream.cv.notify_all();
                return std::nullopt;
            }
            case proto::MessageType::Stdout:
            case proto::MessageType::Stderr:
                return on_output(stream, std::move(frame));
            case proto::MessageType::OutputEof: {
                auto eof = proto::decode_output_eof(frame.payload);
                if (!eof) break;
                if (eof->channel != proto::kChannelStdout && eof->channel != proto::kChannelStderr) break;
                if (!stream.detached) {
                    ExecEvent event;
                    event.kind = eof->channel == proto::kChannelStdout ? ExecEvent::Kind::StdoutEof
                                                                       : ExecEvent::Kind::StderrEof;
                    stream.events.push_back(std::move(event));
                    stream.cv.notify_all();
                }
                return std::nullopt;
            }
            case proto::MessageType::Window: {
                auto window = proto::decode_window(frame.payload);
                if (!window) break;
                stream.stdin_credit = std::min(stream.stdin_credit + window->bytes, kMaxStdinCredit);
                stream.cv.notify_all();
                return std::nullopt;
            }
            case proto::MessageType::Exit: {
                auto exit = proto::decode_exit(frame.payload);
                if (!exit) break;
                ExecEvent event;
                event.kind = ExecEvent::Kind::Exit;
                event.status = exit_status_from(*exit);
                stream.events.push_back(std::move(event));
                end_stream(stream);
                return std::nullopt;
            }
            case proto::MessageType::Error:
                on_error(stream, frame.payload);
                return std::nullopt;
            default:
                break;
        }
        ++ignored;
        return std::nullopt;
    }

    // Caller holds mu. Returns a CANCEL to send when the agent broke the channel's credit.
    std::optional<proto::Frame> on_channel_frame(std::shared_ptr<ChannelState> keep, proto::Frame frame) {
        ChannelState& c = *keep;
        bool terminal =
            frame.type == type_of(proto::MessageType::Error) || frame.type == type_of(c.options.terminal);
        if (terminal) {
            c.ended = true;
            channels.erase(c.id);
            slots_cv.notify_all();
        } else if (frame.type != type_of(c.options.window)) {
            if (frame.payload.size() > c.credit && !c.detached) {
                c.error = Error{EPROTO, "agent sent more than the stream's window allowed"};
                c.detached = true;
                c.frames.clear();
                c.cv.notify_all();
                return proto::make_frame(c.options.cancel, c.id, {});
            }
            c.credit -= std::min<uint64_t>(frame.payload.size(), c.credit);
        }
        if (!c.detached) c.frames.push_back(std::move(frame));
        c.cv.notify_all();
        return std::nullopt;
    }

    std::optional<proto::Frame> on_output(ExecStreamState& stream, proto::Frame frame) {
        uint32_t size = static_cast<uint32_t>(frame.payload.size());
        if (!stream.detached && size > stream.agent_credit) {
            // The agent broke flow control; holding this would break our memory bound. Give up on the
            // stream: kill its process, and keep crediting whatever still arrives until its EXIT.
            stream.error = Error{EPROTO, "agent sent more output than the stream's window allowed"};
            stream.events.clear();
            stream.consumed += static_cast<uint32_t>(std::min<size_t>(stream.queued_bytes, kOutputWindow));
            stream.queued_bytes = 0;
            stream.detached = true;
            stream.cv.notify_all();
            return proto::make_frame(proto::Signal{SIGKILL}, stream.id);
        }
        stream.agent_credit -= std::min<uint64_t>(size, stream.agent_credit);
        if (stream.detached) {
            stream.consumed += size;
            if (stream.consumed < kWindowGrantBatch) return std::nullopt;
            uint32_t grant = std::exchange(stream.consumed, 0);
            stream.agent_credit += grant;
            return proto::make_frame(proto::Window{grant}, stream.id);
        }
        ExecEvent event;
        event.kind = frame.type == type_of(proto::MessageType::Stdout) ? ExecEvent::Kind::Stdout
                                                                       : ExecEvent::Kind::Stderr;
        event.data = std::move(frame.payload);
        stream.queued_bytes += size;
        stream.events.push_back(std::move(event));
        stream.cv.notify_all();
        return std::nullopt;
    }

    void on_error(ExecStreamState& stream, std::span<const uint8_t> payload) {
        auto decoded = proto::decode_error(payload);
        proto::ErrorMessage error =
            decoded ? *decoded
                    : proto::ErrorMessage{.code = static_cast<uint32_t>(proto::ErrorCode::Failed),
                                          .message = "undecodable ERROR from agent"};
        if (!stream.started && error.code == static_cast<uint32_t>(proto::ErrorCode::SpawnFailed)) {
            // Not a host-side failure: the process has a status saying why it never ran.
            ExecEvent event;
            event.kind = ExecEvent::Kind::Exit;
            event.status.spawn_failure = SpawnFailure{
                .kind = static_cast<proto::SpawnErrorKind>(error.kind),
                .errno_value = error.errno_value,
                .message = error.message,
            };
            stream.events.push_back(std::move(event));
        } else {
            stream.error = Error{error.errno_value, "agent error: " + error.message};
        }
        end_stream(stream);
    }

    // Waits for the next control reply while a control request is in flight, until `deadline`: a guest that
    // never answers must not hang the host.
    Result<proto::Frame> next_control_reply(std::chrono::steady_clock::time_point deadline) {
        std::unique_lock lock(mu);
        bool ready =
            control_cv.wait_until(lock, deadline, [&] { return !control_replies.empty() || broken; });
        if (!ready) return make_error("the agent did not answer in time", ETIMEDOUT);
        if (control_replies.empty()) return std::unexpected(*broken);
        proto::Frame frame = std::move(control_replies.front());
        control_replies.pop_front();
        return frame;
    }

    // Sends a control request and returns the first reply that `accept` takes. An ERROR on the control
    // stream fails the request.
    template <class Accept>
    Result<proto::Frame> control_request(const proto::Frame& request, std::chrono::milliseconds timeout,
                                         Accept accept) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        std::lock_guard request_lock(control_mu);
        {
            std::lock_guard lock(mu);
            if (broken) return std::unexpected(*broken);
            control_replies.clear();
            control_waiting = true;
        }
        ScopeExit done([&] {
            std::lock_guard lock(mu);
            control_waiting = false;
            control_replies.clear();
        });
        TRY(send(request));
        for (;;) {
            proto::Frame frame = TRY(next_control_reply(deadline));
            if (frame.type == type_of(proto::MessageType::Error)) {
                auto err = proto::decode_error(frame.payload);
                if (!err) return make_error("agent sent an undecodable ERROR");
                return make_error("agent error: " + err->message, err->errno_value);
            }
            if (accept(frame)) return frame;
            // A stale reply (e.g. a PONG for an earlier, abandoned PING): skip it.
        }
    }

    // Stops the reader and closes the socket. Everything still waiting fails with "connection closed".
    void close() {
        {
            std::lock_guard lock(mu);
            if (!broken) broken = Error{ECONNRESET, "connection to agent closed by the host"};
        }
        if (fd) ::shutdown(fd.get(), SHUT_RDWR);
        if (reader.joinable()) reader.join();
        {
            std::lock_guard lock(mu);
            fail_all(*broken);
        }
        std::lock_guard lock(write_mu);
        fd.reset();
    }
};

namespace {

class AgentExecStream final : public ExecStream {
  public:
    AgentExecStream(std::shared_ptr<AgentConnection::Core> core, std::shared_ptr<ExecStreamState> state)
        : core_(std::move(core)), state_(std::move(state)) {}

    ~AgentExecStream() override {
        // Kill a process that still runs, and keep its stream drained until its EXIT frees the id.
        std::optional<uint32_t> grant;
        {
            std::lock_guard lock(core_->mu);
            if (state_->ended) return;
            state_->detached = true;
            state_->events.clear();
            uint32_t discarded = state_->consumed + static_cast<uint32_t>(state_->queued_bytes);
            state_->queued_bytes = 0;
            state_->consumed = 0;
            state_->agent_credit += discarded;
            if (discarded > 0) grant = discarded;
        }
        (void)core_->send(proto::make_frame(proto::Signal{SIGKILL}, state_->id));
        if (grant) (void)core_->send(proto::make_frame(proto::Window{*grant}, state_->id));
    }

    Result<std::optional<ExecEvent>> recv() override {
        ExecStreamState& s = *state_;
        std::optional<uint32_t> grant;
        ExecEvent event;
        {
            std::unique_lock lock(core_->mu);
            if (s.exit_returned) return std::nullopt;
            s.cv.wait(lock, [&] { return !s.events.empty() || s.error || (core_->broken && !s.ended); });
            if (s.events.empty()) {
                if (s.error) return std::unexpected(*s.error);
                return std::unexpected(*core_->broken);
            }
            event = std::move(s.events.front());
            s.events.pop_front();
            if (event.kind == ExecEvent::Kind::Stdout || event.kind == ExecEvent::Kind::Stderr) {
                uint32_t size = static_cast<uint32_t>(event.data.size());
                s.queued_bytes -= size;
                s.consumed += size;
                if (!s.ended && s.consumed >= kWindowGrantBatch) {
                    grant = std::exchange(s.consumed, 0);
                    s.agent_credit += *grant;
                }
            } else if (event.kind == ExecEvent::Kind::Exit) {
                s.exit_returned = true;
                s.final_status = event.status;
            }
        }
        // A failed grant means the connection broke; the next recv() reports that.
        if (grant) (void)core_->send(proto::make_frame(proto::Window{*grant}, s.id));
        return event;
    }

    Result<void> write_stdin(std::span<const uint8_t> data) override {
        if (!state_->stdin_open) return make_error("stdin of this process was not opened (stdin_open)");
        ExecStreamState& s = *state_;
        std::lock_guard stdin_lock(stdin_mu_);  // one write's chunks stay together
        size_t offset = 0;
        while (offset < data.size()) {
            uint32_t chunk = 0;
            {
                std::unique_lock lock(core_->mu);
                if (s.stdin_closed) return make_error("stdin already closed", EPIPE);
                s.cv.wait(lock, [&] {
                    return s.ended || s.error || core_->broken || (s.started && s.stdin_credit > 0);
                });
                if (s.ended || s.error) return make_error("process is gone; stdin not written", EPIPE);
                if (core_->broken) return std::unexpected(*core_->broken);
                uint64_t n = std::min<uint64_t>({data.size() - offset, s.stdin_credit, kStdinChunk});
                chunk = static_cast<uint32_t>(n);
                s.stdin_credit -= chunk;
            }
            auto part = data.subspan(offset, chunk);
            TRY(core_->send(proto::make_frame(proto::MessageType::Stdin, s.id,
                                              std::vector<uint8_t>(part.begin(), part.end()))));
            offset += chunk;
        }
        return {};
    }

    Result<void> close_stdin() override {
        if (!state_->stdin_open) return make_error("stdin of this process was not opened (stdin_open)");
        std::lock_guard stdin_lock(stdin_mu_);
        {
            std::lock_guard lock(core_->mu);
            if (state_->stdin_closed || state_->ended) {
                state_->stdin_closed = true;
                return {};
            }
            state_->stdin_closed = true;
        }
        return core_->send(proto::make_frame(proto::MessageType::StdinClose, state_->id, {}));
    }

    Result<void> signal(int signo) override {
        if (signo < 1 || signo > 64)
            return make_error("signal number out of range: " + std::to_string(signo));
        if (is_ended()) return {};  // like kill() on a process group that is gone: nothing to do
        return core_->send(proto::make_frame(proto::Signal{signo}, state_->id));
    }

    Result<void> resize(uint16_t rows, uint16_t cols) override {
        if (!state_->pty) return make_error("resize: the process has no PTY");
        if (is_ended()) return {};
        return core_->send(proto::make_frame(proto::Resize{rows, cols}, state_->id));
    }

    Result<ExitStatus> wait() override {
        for (;;) {
            {
                std::lock_guard lock(core_->mu);
                if (state_->final_status) return *state_->final_status;
            }
            auto event = TRY(recv());
            if (!event) return make_error("exec stream ended without an exit status");
        }
    }

    uint32_t stream_id() const override { return state_->id; }
    uint32_t pid() const override {
        std::lock_guard lock(core_->mu);
        return state_->pid;
    }
    bool pty() const override { return state_->pty; }
    bool stdin_open() const override { return state_->stdin_open; }

  private:
    bool is_ended() const {
        std::lock_guard lock(core_->mu);
        return state_->ended;
    }

    std::shared_ptr<AgentConnection::Core> core_;
    std::shared_ptr<ExecStreamState> state_;
    std::mutex stdin_mu_;
};

class AgentChannelHandle final : public AgentChannel {
  public:
    AgentChannelHandle(std::shared_ptr<AgentConnection::Core> core, std::shared_ptr<ChannelState> state)
        : core_(std::move(core)), state_(std::move(state)) {}

    ~AgentChannelHandle() override {
        {
            std::lock_guard lock(core_->mu);
            if (state_->ended || core_->broken) return;
            state_->detached = true;
            state_->frames.clear();
        }
        (void)core_->send(proto::make_frame(state_->options.cancel, state_->id, {}));
    }

    uint32_t id() const override { return state_->id; }

    Result<void> send(proto::MessageType type, std::span<const uint8_t> payload) override {
        TRY(flush());
        return core_->send_payload(type, state_->id, payload);
    }

    Result<void> queue(proto::MessageType type, std::span<const uint8_t> payload) override {
        if (payload.size() > proto::kMaxFramePayload) return make_error("frame payload too large", EMSGSIZE);
        std::array<uint8_t, proto::kFrameHeaderSize> header;
        proto::encode_header({static_cast<uint32_t>(payload.size()), state_->id, type_of(type), 0}, header);
        queued_.insert(queued_.end(), header.begin(), header.end());
        queued_.insert(queued_.end(), payload.begin(), payload.end());
        if (queued_.size() >= kChannelBatch) return flush();
        return {};
    }

    Result<void> flush() override {
        if (queued_.empty()) return {};
        auto sent = core_->send_raw(queued_);
        queued_.clear();
        return sent;
    }

    Result<proto::Frame> recv() override {
        std::unique_lock lock(core_->mu);
        ChannelState& c = *state_;
        c.cv.wait(lock, [&] { return !c.frames.empty() || c.error || c.end_returned || core_->broken; });
        return take(c);
    }

    Result<std::optional<proto::Frame>> try_recv() override {
        std::lock_guard lock(core_->mu);
        ChannelState& c = *state_;
        if (c.frames.empty() && !c.error && !c.end_returned && !core_->broken) return std::nullopt;
        return take(c);
    }

    Result<void> grant(uint32_t bytes) override {
        {
            std::lock_guard lock(core_->mu);
            if (state_->ended) return {};
            state_->credit += bytes;
        }
        proto::FsWindow window{bytes};
        return core_->send(proto::make_frame(state_->options.window, state_->id, proto::encode(window)));
    }

  private:
    // Caller holds mu and has waited for something to report.
    Result<proto::Frame> take(ChannelState& c) {
        if (c.error) return std::unexpected(*c.error);
        if (!c.frames.empty()) {
            proto::Frame frame = std::move(c.frames.front());
            c.frames.pop_front();
            if (c.frames.empty() && c.ended) c.end_returned = true;
            return frame;
        }
        if (c.end_returned) return make_error("the stream has ended", EPIPE);
        return std::unexpected(*core_->broken);
    }

    std::shared_ptr<AgentConnection::Core> core_;
    std::shared_ptr<ChannelState> state_;
    std::vector<uint8_t> queued_;  // whole frames not yet written
};

}  // namespace

Result<std::unique_ptr<AgentChannel>> AgentConnection::open_channel(proto::MessageType type,
                                                                    std::span<const uint8_t> payload,
                                                                    const ChannelOptions& options) {
    std::shared_ptr<ChannelState> state;
    {
        std::unique_lock lock(core_->mu);
        core_->slots_cv.wait(lock, [&] { return core_->broken || core_->open_count() < core_->max_streams; });
        if (core_->broken) return std::unexpected(*core_->broken);
        state = std::make_shared<ChannelState>(core_->allocate_stream_id(), options);
        core_->channels.emplace(state->id, state);
    }
    auto sent = core_->send_payload(type, state->id, payload);
    if (!sent) {
        std::lock_guard lock(core_->mu);
        core_->channels.erase(state->id);
        core_->slots_cv.notify_all();
        return std::unexpected(sent.error());
    }
    return std::make_unique<AgentChannelHandle>(core_, std::move(state));
}

Result<std::unique_ptr<AgentConnection>> AgentConnection::open(UniqueFd stream) {
    auto frame = TRY(proto::read_frame(stream.get()));
    if (frame.type != type_of(proto::MessageType::Hello))
        return make_error("agent did not start with HELLO (got message type " + std::to_string(frame.type) +
                          ")");
    auto hello = TRY(proto::decode_hello(frame.payload));
    if (hello.protocol_major != proto::kProtocolMajor)
        return make_error("agent speaks protocol " + protocol_string(hello) + ", this host speaks " +
                          std::to_string(proto::kProtocolMajor) + ".x");

    auto core = std::make_shared<Core>();
    core->fd = std::move(stream);
    core->max_streams = std::max<uint32_t>(hello.max_streams, 1);
    core->hello = std::move(hello);

    // The reader thread takes no signals, so they reach the application's own threads (attach() relies on
    // that for SIGWINCH and friends).
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    core->reader = std::thread([c = core.get()] { c->read_loop(); });
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    return std::unique_ptr<AgentConnection>(new AgentConnection(std::move(core)));
}

AgentConnection::~AgentConnection() {
    core_->close();
}

const proto::Hello& AgentConnection::hello() const {
    return core_->hello;
}

int AgentConnection::fd() const {
    return core_->fd.get();
}

uint64_t AgentConnection::ignored_frames() const {
    std::lock_guard lock(core_->mu);
    return core_->ignored;
}

size_t AgentConnection::open_streams() const {
    std::lock_guard lock(core_->mu);
    return core_->open_count();
}

Result<std::chrono::nanoseconds> AgentConnection::ping(std::chrono::milliseconds timeout) {
    uint64_t nonce = core_->next_nonce++;
    auto start = std::chrono::steady_clock::now();
    TRY(core_->control_request(proto::make_frame(proto::Ping{nonce}), timeout,
                               [&](const proto::Frame& frame) {
                                   if (frame.type != type_of(proto::MessageType::Pong)) return false;
                                   auto pong = proto::decode_pong(frame.payload);
                                   return pong && pong->nonce == nonce;
                               }));
    return std::chrono::steady_clock::now() - start;
}

Result<proto::Stats> AgentConnection::stats(std::chrono::milliseconds timeout) {
    const proto::Hello& hello = core_->hello;
    if (!(hello.features & proto::kFeatureStats)) {
        return make_error("agent " + hello.agent_version + " (protocol " + protocol_string(hello) +
                          ") does not support " + proto::feature_name(proto::kFeatureStats));
    }
    proto::Frame reply = TRY(core_->control_request(
        proto::make_frame(proto::StatsRequest{}), timeout,
        [](const proto::Frame& frame) { return frame.type == type_of(proto::MessageType::Stats); }));
    return proto::decode_stats(reply.payload);
}

Result<void> AgentConnection::shutdown(std::chrono::milliseconds timeout) {
    TRY(core_->control_request(proto::make_frame(proto::Shutdown{}), timeout, [](const proto::Frame& frame) {
        return frame.type == type_of(proto::MessageType::ShutdownAck);
    }));
    core_->close();  // the agent powers off as soon as it sees us hang up (or after a short grace period)
    return {};
}

Result<void> AgentConnection::check_supported(const ExecRequest& request) const {
    const proto::Hello& hello = core_->hello;
    auto need = [&](uint64_t bit) -> Result<void> {
        if (hello.features & bit) return {};
        return make_error("agent " + hello.agent_version + " (protocol " + protocol_string(hello) +
                          ") does not support " + proto::feature_name(bit));
    };
    TRY(need(proto::kFeatureExec));
    if (request.pty) TRY(need(proto::kFeaturePty));
    if (!request.user.empty()) TRY(need(proto::kFeatureExecUser));
    if (!request.rlimits.empty()) TRY(need(proto::kFeatureExecRlimits));
    if (request.timeout.count() > 0) TRY(need(proto::kFeatureExecTimeout));
    return {};
}

Result<std::unique_ptr<ExecStream>> AgentConnection::exec_stream(const ExecRequest& request) {
    TRY(check_supported(request));
    if (request.argv.empty()) return make_error("exec: empty argv");
    if (request.timeout.count() < 0) return make_error("exec: negative timeout");

    proto::ExecStart start;
    start.flags = (request.pty ? proto::kExecPty : 0) | (request.stdin_open ? proto::kExecStdin : 0);
    start.argv = request.argv;
    start.env = request.env;
    start.cwd = request.cwd;
    start.user = request.user;
    start.rlimits = request.rlimits;
    start.timeout_ms = static_cast<uint64_t>(request.timeout.count());
    start.pty_rows = request.rows;
    start.pty_cols = request.cols;
    start.output_window = kOutputWindow;
    auto payload = TRY(proto::encode_exec_start(start));

    std::shared_ptr<ExecStreamState> state;
    uint32_t id = 0;
    {
        std::unique_lock lock(core_->mu);
        core_->slots_cv.wait(lock, [&] { return core_->broken || core_->open_count() < core_->max_streams; });
        if (core_->broken) return std::unexpected(*core_->broken);
        id = core_->allocate_stream_id();
        state = std::make_shared<ExecStreamState>(id, request.pty, request.stdin_open);
        core_->streams.emplace(id, state);
    }
    auto sent = core_->send(proto::make_frame(proto::MessageType::ExecStart, id, std::move(payload)));
    if (!sent) {
        std::lock_guard lock(core_->mu);
        core_->streams.erase(id);
        core_->slots_cv.notify_all();
        return std::unexpected(sent.error());
    }
    return std::make_unique<AgentExecStream>(core_, std::move(state));
}

Result<ExecOutput> AgentConnection::exec(const ExecRequest& request, const ExecOptions& options) {
    ExecRequest req = request;
    if (options.stdin_data) req.stdin_open = true;
    auto stream = TRY(exec_stream(req));

    // Stdin is written from its own thread: the process may only read more once we took its output.
    std::thread writer;
    if (req.stdin_open) {
        if (options.stdin_data) {
            writer = std::thread([&stream, &data = *options.stdin_data] {
                auto bytes = std::span(reinterpret_cast<const uint8_t*>(data.data()), data.size());
                (void)stream->write_stdin(bytes);  // the process may exit without reading it all
                (void)stream->close_stdin();
            });
        } else {
            (void)stream->close_stdin();
        }
    }

    ExecOutput output;
    std::optional<Error> failure;
    for (;;) {
        auto event = stream->recv();
        if (!event) {
            failure = event.error();
            break;
        }
        if (!*event) {
            failure = Error{0, "exec stream ended without an exit status"};
            break;
        }
        if ((*event)->kind == ExecEvent::Kind::Exit) {
            output.status = (*event)->status;
            break;
        }
        auto& data = (*event)->data;
        if ((*event)->kind != ExecEvent::Kind::Stdout && (*event)->kind != ExecEvent::Kind::Stderr) continue;
        if (output.stdout_data.size() + output.stderr_data.size() + data.size() > options.max_output) {
            failure = Error{EFBIG, "exec: output exceeded " + std::to_string(options.max_output) +
                                       " bytes; the process was killed"};
            break;
        }
        auto& sink = (*event)->kind == ExecEvent::Kind::Stdout ? output.stdout_data : output.stderr_data;
        sink.append(data.begin(), data.end());
    }
    if (failure) {
        // Drain until EXIT so the writer (blocked on stdin credit, perhaps) is released.
        (void)stream->kill();
        (void)stream->wait();
    }
    if (writer.joinable()) writer.join();
    if (failure) return std::unexpected(*failure);
    return output;
}

Result<ExecOutput> AgentConnection::shell(std::string script, ExecRequest base, const ExecOptions& options) {
    base.argv = {"/bin/sh", "-c", std::move(script)};
    return exec(base, options);
}

}  // namespace sandlot::host
