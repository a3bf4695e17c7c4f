#include "host/lib/attach.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <mutex>
#include <thread>

#include "proto/base/unique_fd.h"

namespace sandlot::host {

namespace {

// Signals that attach() forwards to the process group instead of letting them end this process.
constexpr std::array kForwardedSignals = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};

// The handlers only write the signal number into this pipe (async-signal-safe); a thread does the rest.
std::atomic<int> g_signal_pipe = -1;
// Signal dispositions are per process, so only one attach() at a time may own them.
std::mutex g_forwarding_owner;

extern "C" void forward_signal_handler(int signo) {
    int saved_errno = errno;
    int fd = g_signal_pipe.load(std::memory_order_acquire);
    if (fd >= 0) {
        auto byte = static_cast<uint8_t>(signo);
        (void)!::write(fd, &byte, 1);
    }
    errno = saved_errno;
}

// Installs the handlers (and ignores SIGPIPE, so a closed out_fd is an error, not our death) and restores
// the previous dispositions when it goes away.
class SignalForwarding {
  public:
    static Result<std::unique_ptr<SignalForwarding>> install() {
        std::unique_lock owner(g_forwarding_owner, std::try_to_lock);
        if (!owner.owns_lock()) return make_error("attach: another attach() is already forwarding signals");
        int fds[2];
        if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) return errno_error("attach: pipe");
        std::unique_ptr<SignalForwarding> forwarding(new SignalForwarding(std::move(owner)));
        forwarding->read_end_ = UniqueFd(fds[0]);
        forwarding->write_end_ = UniqueFd(fds[1]);
        g_signal_pipe.store(fds[1]);

        struct sigaction action {};
        action.sa_handler = forward_signal_handler;
        action.sa_flags = SA_RESTART;
        sigemptyset(&action.sa_mask);
        for (size_t i = 0; i < kForwardedSignals.size(); ++i)
            sigaction(kForwardedSignals[i], &action, &forwarding->saved_[i]);
        sigaction(SIGWINCH, &action, &forwarding->saved_winch_);
        struct sigaction ignore {};
        ignore.sa_handler = SIG_IGN;
        sigemptyset(&ignore.sa_mask);
        sigaction(SIGPIPE, &ignore, &forwarding->saved_pipe_);
        return forwarding;
    }

    ~SignalForwarding() {
        for (size_t i = 0; i < kForwardedSignals.size(); ++i)
            sigaction(kForwardedSignals[i], &saved_[i], nullptr);
        sigaction(SIGWINCH, &saved_winch_, nullptr);
        sigaction(SIGPIPE, &saved_pipe_, nullptr);
        g_signal_pipe.store(-1);
    }

    int fd() const { return read_end_.get(); }

  private:
    explicit SignalForwarding(std::unique_lock<std::mutex> owner) : owner_(std::move(owner)) {}

    std::unique_lock<std::mutex> owner_;  // released last (members are destroyed after the destructor body)
    UniqueFd read_end_, write_end_;
    std::array<struct sigaction, kForwardedSignals.size()> saved_{};
    struct sigaction saved_winch_ {};
    struct sigaction saved_pipe_ {};
};

// A terminal in raw mode for as long as this lives.
class RawMode {
  public:
    static Result<std::unique_ptr<RawMode>> enter(int fd) {
        termios saved{};
        if (tcgetattr(fd, &saved) < 0) return errno_error("attach: tcgetattr");
        termios raw = saved;
        cfmakeraw(&raw);
        if (tcsetattr(fd, TCSANOW, &raw) < 0) return errno_error("attach: tcsetattr");
        return std::unique_ptr<RawMode>(new RawMode(fd, saved));
    }
    ~RawMode() { tcsetattr(fd_, TCSADRAIN, &saved_); }

  private:
    RawMode(int fd, termios saved) : fd_(fd), saved_(saved) {}
    int fd_;
    termios saved_;
};

// Writes everything, waiting out a non-blocking fd. False when the fd no longer takes data.
bool write_out(int fd, std::span<const uint8_t> data) {
    while (!data.empty()) {
        ssize_t n = ::write(fd, data.data(), data.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                pollfd p{fd, POLLOUT, 0};
                poll(&p, 1, -1);
                continue;
            }
            return false;
        }
        data = data.subspan(static_cast<size_t>(n));
    }
    return true;
}

// Waits until `fd` is readable or `stop` is signalled; false on stop.
bool wait_readable(int fd, int stop) {
    for (;;) {
        pollfd fds[2] = {{fd, POLLIN, 0}, {stop, POLLIN, 0}};
        int n = poll(fds, 2, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return false;
        if (fds[1].revents) return false;
        if (fds[0].revents) return true;
    }
}

// in_fd -> the process's stdin, until EOF (then STDIN_CLOSE) or until stopped.
void forward_input(ExecStream& stream, int in_fd, int stop) {
    std::vector<uint8_t> buffer(64 * 1024);
    for (;;) {
        if (!wait_readable(in_fd, stop)) return;
        ssize_t n = ::read(in_fd, buffer.data(), buffer.size());
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) {  // EOF, or an error such as EIO on a hung-up terminal: the input is over
            (void)stream.close_stdin();
            return;
        }
        // Fails once the process is gone or the connection broke; recv() reports the latter.
        if (!stream.write_stdin(std::span(buffer.data(), static_cast<size_t>(n)))) return;
    }
}

void resize_from(ExecStream& stream, int out_fd, int in_fd) {
    auto size = terminal_size(out_fd);
    if (!size && in_fd >= 0) size = terminal_size(in_fd);
    if (size) (void)stream.resize(size->first, size->second);
}

// Signal numbers from the handlers -> SIGNAL / RESIZE frames, until stopped.
void forward_signals(ExecStream& stream, int signal_fd, int stop, int out_fd, int in_fd) {
    for (;;) {
        if (!wait_readable(signal_fd, stop)) return;
        uint8_t signals[64];
        ssize_t n = ::read(signal_fd, signals, sizeof signals);
        for (ssize_t i = 0; i < n; ++i) {
            if (signals[i] == SIGWINCH) {
                if (stream.pty()) resize_from(stream, out_fd, in_fd);
            } else {
                (void)stream.signal(signals[i]);
            }
        }
    }
}

}  // namespace

std::optional<std::pair<uint16_t, uint16_t>> terminal_size(int fd) {
    winsize ws{};
    if (fd < 0 || ioctl(fd, TIOCGWINSZ, &ws) < 0 || ws.ws_row == 0 || ws.ws_col == 0) return std::nullopt;
    return std::pair<uint16_t, uint16_t>{ws.ws_row, ws.ws_col};
}

Result<ExitStatus> attach(ExecStream& stream, int in_fd, int out_fd, const AttachOptions& options) {
    int err_fd = options.err_fd >= 0 ? options.err_fd : out_fd;

    // Order matters: the terminal is restored before the signal handlers are.
    std::unique_ptr<SignalForwarding> signals;
    if (options.forward_signals) signals = TRY(SignalForwarding::install());
    std::unique_ptr<RawMode> raw;
    if (options.raw_mode && stream.pty() && in_fd >= 0 && isatty(in_fd)) raw = TRY(RawMode::enter(in_fd));

    UniqueFd stop(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!stop) return errno_error("attach: eventfd");

    if (stream.pty()) resize_from(stream, out_fd, in_fd);

    std::thread input, signal_thread;
    if (stream.stdin_open()) {
        if (in_fd >= 0) {
            input = std::thread(forward_input, std::ref(stream), in_fd, stop.get());
        } else {
            (void)stream.close_stdin();
        }
    }
    if (signals)
        signal_thread =
            std::thread(forward_signals, std::ref(stream), signals->fd(), stop.get(), out_fd, in_fd);

    // Output until EXIT, on this thread.
    Result<ExitStatus> result = make_error("attach: no exit status");
    bool out_ok = true, err_ok = true;
    for (;;) {
        auto event = stream.recv();
        if (!event) {
            result = std::unexpected(event.error());
            break;
        }
        if (!*event) {
            result = stream.wait();  // EXIT was already taken by an earlier recv(); wait() remembers it
            break;
        }
        ExecEvent& e = **event;
        if (e.kind == ExecEvent::Kind::Exit) {
            result = e.status;
            break;
        }
        bool is_out = e.kind == ExecEvent::Kind::Stdout;
        if (!is_out && e.kind != ExecEvent::Kind::Stderr) continue;
        bool& ok = is_out ? out_ok : err_ok;
        if (ok && !write_out(is_out ? out_fd : err_fd, e.data)) {
            ok = false;  // like a writer into a closed pipe, the process gets SIGPIPE; its output is dropped
            (void)stream.signal(SIGPIPE);
        }
    }

    uint64_t one = 1;
    (void)!::write(stop.get(), &one, sizeof one);
    if (input.joinable()) input.join();
    if (signal_thread.joinable()) signal_thread.join();
    return result;
}

}  // namespace sandlot::host
