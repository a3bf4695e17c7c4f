#include "host/lib/logged_exec.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <fstream>
#include <random>
#include <thread>

#include <fmt/format.h>

namespace sandlot::host {

Result<UniqueFd> hold_activity(const std::string& activity_path) {
    UniqueFd fd(open(activity_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (!fd) return errno_error("open " + activity_path);
    // The supervisor takes it exclusively only for an instant (an idle check), or for as long as it drains.
    for (int attempt = 0;; ++attempt) {
        if (flock(fd.get(), LOCK_SH | LOCK_NB) == 0) break;
        if (errno != EWOULDBLOCK) return errno_error("flock " + activity_path);
        if (attempt == 50) return make_error("the sandbox is draining: it accepts no new commands", EBUSY);
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    touch_activity(fd.get());
    return fd;
}

void touch_activity(int fd) {
    (void)futimens(fd, nullptr);
}

std::string new_session_id() {
    std::random_device random;
    return fmt::format("{:06x}{:06x}", random() & 0xffffff, random() & 0xffffff);
}

namespace {

class LoggedExec final : public ExecStream {
  public:
    LoggedExec(std::unique_ptr<ExecStream> inner, std::unique_ptr<AgentConnection> agent,
               std::shared_ptr<LogWriter> log, std::string session, UniqueFd activity)
        : agent_(std::move(agent)),
          inner_(std::move(inner)),
          log_(std::move(log)),
          session_(std::move(session)),
          activity_(std::move(activity)) {}

    ~LoggedExec() override {
        inner_.reset();  // kills a process still running, before its connection goes
        agent_.reset();
        if (activity_) touch_activity(activity_.get());
    }

    Result<std::optional<ExecEvent>> recv() override {
        auto event = TRY(inner_->recv());
        if (event) {
            switch (event->kind) {
                case ExecEvent::Kind::Stdout:
                    append(inner_->pty() ? LogSource::Output : LogSource::Stdout, event->data);
                    break;
                case ExecEvent::Kind::Stderr:
                    append(LogSource::Stderr, event->data);
                    break;
                case ExecEvent::Kind::Exit:
                    exited(event->status);
                    break;
                default:
                    break;
            }
        }
        if (activity_) touch_activity(activity_.get());
        return event;
    }

    Result<void> write_stdin(std::span<const uint8_t> data) override { return inner_->write_stdin(data); }
    Result<void> close_stdin() override { return inner_->close_stdin(); }
    Result<void> signal(int signo) override { return inner_->signal(signo); }
    Result<void> resize(uint16_t rows, uint16_t cols) override { return inner_->resize(rows, cols); }
    Result<void> kill() override { return inner_->kill(); }

    Result<ExitStatus> wait() override {
        // Drain through recv() so that the remaining output is logged too.
        for (;;) {
            auto event = TRY(recv());
            if (!event) return status_;
        }
    }

    uint32_t stream_id() const override { return inner_->stream_id(); }
    bool pty() const override { return inner_->pty(); }
    bool stdin_open() const override { return inner_->stdin_open(); }
    uint32_t pid() const override { return inner_->pid(); }

  private:
    void append(LogSource source, std::span<const uint8_t> data) {
        if (log_) (void)log_->append(source, session_, "", data);
    }
    void exited(const ExitStatus& status) {
        status_ = status;
        if (!log_) return;
        std::string text = status.spawn_failure ? status.spawn_failure->message
                           : status.signal      ? fmt::format("killed by signal {}", status.signal)
                                                : fmt::format("exit code {}", status.exit_code);
        if (status.timed_out) text += " (timed out)";
        auto bytes = std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size());
        (void)log_->append(LogSource::System, session_, "exit", bytes);
    }

    std::unique_ptr<AgentConnection> agent_;  // declared first: destroyed after the stream
    std::unique_ptr<ExecStream> inner_;
    std::shared_ptr<LogWriter> log_;
    std::string session_;
    UniqueFd activity_;
    ExitStatus status_{};
};

}  // namespace

std::unique_ptr<ExecStream> make_logged_exec(std::unique_ptr<ExecStream> stream,
                                             std::unique_ptr<AgentConnection> agent,
                                             std::shared_ptr<LogWriter> log, std::string session,
                                             UniqueFd activity) {
    return std::make_unique<LoggedExec>(std::move(stream), std::move(agent), std::move(log),
                                        std::move(session), std::move(activity));
}

}  // namespace sandlot::host
