#include "host/lib/supervisor.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <thread>

#include "host/lib/lifecycle.h"
#include "host/lib/logged_exec.h"
#include "host/lib/sandbox.h"
#include "proto/frame.h"

namespace sandlot::host {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

void log_system(LogWriter& log, std::string_view event, std::string_view text) {
    (void)log.system(event, text);
}

// Copies the guest console (a FIFO the VMM writes) into the log, one record per line, and notices panics
// and agentd's last words.
class ConsoleReader {
  public:
    ConsoleReader(UniqueFd fifo, std::shared_ptr<LogWriter> log)
        : fifo_(std::move(fifo)), log_(std::move(log)) {
        int fds[2];
        if (pipe2(fds, O_CLOEXEC) == 0) {
            stop_read_ = UniqueFd(fds[0]);
            stop_write_ = UniqueFd(fds[1]);
        }
        thread_ = std::thread([this] { run(); });
    }
    ~ConsoleReader() { stop(); }

    // Reads what is left, then ends the thread.
    void stop() {
        if (!thread_.joinable()) return;
        (void)!write(stop_write_.get(), "x", 1);
        thread_.join();
    }
    bool panicked() const { return panicked_.load(); }
    std::string agent_last_words() const {
        std::lock_guard lock(mutex_);
        return agent_words_;
    }

  private:
    void run() {
        pthread_setname_np(pthread_self(), "console");
        char buffer[4096];
        for (;;) {
            pollfd fds[2] = {{fifo_.get(), POLLIN, 0}, {stop_read_.get(), POLLIN, 0}};
            int n = poll(fds, 2, -1);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) break;
            bool stopping = fds[1].revents != 0;
            if (fds[0].revents & POLLIN || stopping) {
                // Non-blocking: drain what is there.
                for (;;) {
                    ssize_t got = read(fifo_.get(), buffer, sizeof buffer);
                    if (got <= 0) break;
                    feed(std::string_view(buffer, static_cast<size_t>(got)));
                    if (static_cast<size_t>(got) < sizeof buffer) break;
                }
            }
            if (stopping) break;
        }
        if (!line_.empty()) emit();
    }
    void feed(std::string_view data) {
        for (char c : data) {
            if (c == '\n') {
                emit();
            } else if (c != '\r') {
                line_.push_back(c);
                if (line_.size() >= 4096) emit();
            }
        }
    }
    void emit() {
        if (line_.find("Kernel panic - not syncing") != std::string::npos) panicked_ = true;
        if (auto at = line_.find("agentd: "); at != std::string::npos) {
            std::lock_guard lock(mutex_);
            // The reason, not the "powering off" line that follows it.
            if (agent_words_.empty() || line_.find("agentd: powering off") == std::string::npos)
                agent_words_ = line_.substr(at);
        }
        log_system(*log_, "console", line_);
        line_.clear();
    }

    UniqueFd fifo_;
    std::shared_ptr<LogWriter> log_;
    UniqueFd stop_read_, stop_write_;
    std::thread thread_;
    std::string line_;
    std::atomic<bool> panicked_{false};
    mutable std::mutex mutex_;
    std::string agent_words_;
};

void write_line(int fd, const std::string& line) {
    if (fd < 0) return;
    std::string text = line + "\n";
    (void)proto::write_all(fd, std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
}

std::string last_line_of(const std::string& path) {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return "";
    std::string text(4096, '\0');
    off_t size = lseek(fd.get(), 0, SEEK_END);
    ssize_t n = pread(fd.get(), text.data(), text.size(), size > 4096 ? size - 4096 : 0);
    text.resize(n > 0 ? static_cast<size_t>(n) : 0);
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r'))
        text.pop_back();
    auto newline = text.rfind('\n');
    return newline == std::string::npos ? text : text.substr(newline + 1);
}

// Files a previous run of this sandbox may have left behind (a crash): sockets the VMM must create anew.
void remove_runtime_files(const SandboxPaths& paths) {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(paths.dir, ec)) {
        auto name = entry.path().filename().string();
        if (name.starts_with("vsock.sock") || name == "console.fifo" || name == "stats" ||
            name == "boot.cpio")
            fs::remove(entry.path(), ec);
    }
}

class Supervisor {
  public:
    explicit Supervisor(const SupervisorArgs& args) : args_(args) {}
    int run();

  private:
    Result<void> boot();
    void loop();
    void check_request();
    void begin_stop(std::string reason, milliseconds timeout);
    void begin_drain(std::string reason, milliseconds timeout);
    void kill_vmm(std::string reason);
    bool idle_expired();
    bool drained();
    void record_end(int vmm_status);
    void fail_boot(const std::string& why, bool timed_out = false);
    Result<SandboxRecord> update(const std::function<void(SandboxRecord&)>& change) {
        return db_->update_sandbox(id_, [&](SandboxRecord& r) -> Result<void> {
            change(r);
            return {};
        });
    }

    SupervisorArgs args_;
    std::string id_;
    SandboxPaths paths_;
    std::unique_ptr<StateDb> db_;
    SandboxConfig config_;
    std::shared_ptr<LogWriter> log_;
    std::unique_ptr<ConsoleReader> console_;
    std::unique_ptr<Sandbox> sandbox_;
    UniqueFd activity_;
    UniqueFd signals_;
    std::thread init_thread_;

    Clock::time_point started_;
    int64_t started_unix_ns_ = 0;
    enum class Phase { Running, Draining, Stopping } phase_ = Phase::Running;
    std::string reason_;  // why we are ending it; "" = not us
    Clock::time_point drain_deadline_{}, kill_deadline_{};
};

int Supervisor::run() {
    id_ = args_.id;
    paths_.dir = args_.home + "/sandboxes/" + id_;
    auto db = StateDb::open(args_.home + "/sandlot.db");
    if (!db) {
        write_line(args_.ready_fd, "error: " + db.error().to_string());
        return 1;
    }
    db_ = std::make_unique<StateDb>(std::move(*db));
    auto record = db_->find_sandbox_by_id(id_);
    if (!record || !*record) {
        write_line(args_.ready_fd, "error: sandbox " + id_ + " is gone");
        return 1;
    }
    auto config = config_from_json((*record)->config);
    if (!config) {
        fail_boot(config.error().to_string());
        return 1;
    }
    config_ = std::move(*config);
    auto log = LogWriter::open(paths_.logs());
    if (!log) {
        fail_boot(log.error().to_string());
        return 1;
    }
    log_ = std::shared_ptr<LogWriter>(std::move(*log));

    sigset_t set;
    sigemptyset(&set);
    for (int signo : {SIGTERM, SIGINT, SIGHUP, SIGUSR1})
        sigaddset(&set, signo);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    signals_ = UniqueFd(signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));

    if (auto booted = boot(); !booted) {
        fail_boot(booted.error().to_string(), booted.error().code == ETIMEDOUT);
        return 1;
    }
    loop();
    return 0;
}

Result<void> Supervisor::boot() {
    remove_runtime_files(paths_);
    activity_ = UniqueFd(open(paths_.activity().c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (!activity_) return errno_error("open " + paths_.activity());
    touch_activity(activity_.get());
    if (mkfifo(paths_.console().c_str(), 0600) != 0) return errno_error("mkfifo " + paths_.console());
    // Read-write, so that the VMM's open does not wait for a reader and its writes never see EPIPE.
    UniqueFd fifo(open(paths_.console().c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
    if (!fifo) return errno_error("open " + paths_.console());
    console_ = std::make_unique<ConsoleReader>(std::move(fifo), log_);

    log_system(*log_, "boot",
               fmt::format("booting: {} MiB, {} vCPU, root {}", config_.memory_mib, config_.cpus,
                           config_.storage.root.image.empty() ? "initramfs" : config_.storage.root.image));
    SandboxOptions options;
    options.memory_mib = config_.memory_mib;
    options.cpus = config_.cpus;
    options.storage = config_.storage;
    options.ready_timeout = config_.boot_timeout;
    options.runtime_dir = paths_.dir;
    options.console = "file:" + paths_.console();
    options.vmm_log = paths_.vmm_log();
    options.vmm_args = {"--stats-file", paths_.stats(), "--parent-pid", std::to_string(getpid())};

    auto supervisor = TRY(identify_process(getpid()));
    TRY(update([&](SandboxRecord& r) {
        r.supervisor = supervisor;
        r.request.clear();
    }));
    auto sandbox = Sandbox::boot(options);
    if (!sandbox) {
        std::string why = sandbox.error().to_string();
        console_->stop();  // everything the guest printed is read before its last words are looked for
        if (auto words = console_->agent_last_words(); !words.empty() && why.find(words) == std::string::npos)
            why += ": " + words;
        else if (auto line = last_line_of(paths_.vmm_log()); !line.empty())
            why += " (" + line + ")";
        return make_error(why, sandbox.error().code);
    }
    sandbox_ = std::move(*sandbox);
    started_ = Clock::now();
    started_unix_ns_ = unix_now_ns();
    auto vmm = identify_process(sandbox_->vmm_pid());
    TRY(update([&](SandboxRecord& r) {
        r.status = SandboxStatus::Running;
        r.started_ns = started_unix_ns_;
        r.stopped_ns = 0;
        r.vmm = vmm.value_or(ProcessIdentity{sandbox_->vmm_pid(), 0});
        r.exit_reason.clear();
        r.exit_code.reset();
    }));
    log_system(*log_, "ready",
               fmt::format("agent ready after {} ms",
                           std::chrono::duration_cast<milliseconds>(sandbox_->boot_to_agent()).count()));
    write_line(args_.ready_fd, "ok");
    if (args_.ready_fd >= 0) close(args_.ready_fd);
    args_.ready_fd = -1;

    if (!config_.init.argv.empty()) {
        ExecRequest request;
        request.argv = config_.init.argv;
        request.env = config_.init.env;
        request.cwd = config_.init.cwd;
        request.user = config_.init.user;
        init_thread_ = std::thread([this, request] {
            auto session = new_session_id();
            auto activity = hold_activity(paths_.activity());
            auto stream = sandbox_->agent().exec_stream(request);
            if (!stream) {
                log_system(*log_, "exec", "could not start the command: " + stream.error().to_string());
                return;
            }
            std::string argv;
            for (const auto& a : request.argv)
                argv += (argv.empty() ? "" : " ") + a;
            auto bytes = std::span(reinterpret_cast<const uint8_t*>(argv.data()), argv.size());
            (void)log_->append(LogSource::System, session, "exec", bytes);
            auto logged = make_logged_exec(std::move(*stream), nullptr, log_, session,
                                           activity ? std::move(*activity) : UniqueFd());
            (void)logged->wait();
        });
    }
    return {};
}

void Supervisor::fail_boot(const std::string& why, bool timed_out) {
    if (log_) log_system(*log_, "crash", "boot-failed: " + why);
    if (db_) {
        (void)update([&](SandboxRecord& r) {
            r.status = SandboxStatus::Crashed;
            r.exit_reason = "boot-failed: " + why;
            r.stopped_ns = unix_now_ns();
            r.vmm = {};
            r.supervisor = {};
            r.request.clear();
        });
    }
    write_line(args_.ready_fd, (timed_out ? "timeout: " : "error: ") + why);
    if (console_) console_->stop();
    sandbox_.reset();
    remove_runtime_files(paths_);
}

void Supervisor::loop() {
    auto max_deadline =
        config_.max_duration.count() > 0 ? started_ + config_.max_duration : Clock::time_point::max();
    int pidfd = sandbox_->vmm_pidfd();
    int watchdog = args_.watchdog_fd;
    for (;;) {
        pollfd fds[3] = {{pidfd, POLLIN, 0}, {signals_.get(), POLLIN, 0}, {watchdog, POLLIN, 0}};
        int n = poll(fds, watchdog >= 0 ? 3 : 2, 200);
        if (n < 0 && errno != EINTR) break;
        if (fds[0].revents) break;  // the VMM exited
        if (fds[1].revents & POLLIN) {
            signalfd_siginfo info{};
            while (read(signals_.get(), &info, sizeof info) == sizeof info) {
                if (info.ssi_signo == SIGUSR1) {
                    check_request();
                } else {
                    begin_stop("stopped", milliseconds(10'000));
                }
            }
        }
        if (watchdog >= 0 && fds[2].revents) {
            char byte;
            if (read(watchdog, &byte, 1) <= 0) {
                close(watchdog);
                watchdog = args_.watchdog_fd = -1;
                begin_stop("creator-exited", milliseconds(3'000));
            }
        }
        auto now = Clock::now();
        if (phase_ == Phase::Running && now >= max_deadline)
            begin_drain("max-duration", config_.drain_timeout);
        if (phase_ == Phase::Running && idle_expired()) begin_stop("idle-timeout", milliseconds(10'000));
        if (phase_ == Phase::Draining && (drained() || now >= drain_deadline_))
            begin_stop(reason_, milliseconds(10'000));
        if (phase_ == Phase::Stopping && now >= kill_deadline_) sandbox_->kill();
    }
    auto status = sandbox_->wait(milliseconds(5'000));
    record_end(status.value_or(128 + SIGKILL));
}

void Supervisor::check_request() {
    auto record = db_->find_sandbox_by_id(id_);
    if (!record || !*record) return;
    const auto& r = **record;
    milliseconds timeout(r.request_timeout_ms > 0 ? r.request_timeout_ms : 10'000);
    if (r.request == "stop") {
        begin_stop("stopped", timeout);
    } else if (r.request == "kill") {
        kill_vmm("killed");
    } else if (r.request == "drain") {
        begin_drain("stopped: drained", timeout);
    }
}

void Supervisor::begin_drain(std::string reason, milliseconds timeout) {
    if (phase_ != Phase::Running) return;
    phase_ = Phase::Draining;
    reason_ = std::move(reason);
    drain_deadline_ = Clock::now() + timeout;
    (void)update([](SandboxRecord& r) { r.status = SandboxStatus::Draining; });
    log_system(*log_, "drain", reason_ + ": no new commands; waiting for running ones");
}

void Supervisor::begin_stop(std::string reason, milliseconds timeout) {
    if (phase_ == Phase::Stopping) {
        // A second stop request may shorten the grace, never lengthen it.
        kill_deadline_ = std::min(kill_deadline_, Clock::now() + timeout);
        return;
    }
    // A drain's reason stays the reason.
    if (phase_ != Phase::Draining || reason_.empty()) reason_ = std::move(reason);
    phase_ = Phase::Stopping;
    kill_deadline_ = Clock::now() + timeout;
    log_system(*log_, "stop", reason_ + ": stopping");
    // The agent kills every process, syncs, freezes the writable disks and powers off.
    auto acked = sandbox_->agent().shutdown(std::min(timeout, milliseconds(5'000)));
    if (!acked) sandbox_->kill();
}

void Supervisor::kill_vmm(std::string reason) {
    if (reason_.empty() || phase_ != Phase::Stopping) reason_ = std::move(reason);
    phase_ = Phase::Stopping;
    kill_deadline_ = Clock::now();
    sandbox_->kill();
}

bool Supervisor::idle_expired() {
    if (config_.idle_timeout.count() <= 0) return false;
    // Any exec holding the activity lock shared is activity; otherwise the file's mtime is the last one.
    if (flock(activity_.get(), LOCK_EX | LOCK_NB) != 0) return false;
    struct stat st {};
    bool expired = false;
    if (fstat(activity_.get(), &st) == 0) {
        int64_t last =
            std::max<int64_t>(st.st_mtim.tv_sec * 1'000'000'000LL + st.st_mtim.tv_nsec, started_unix_ns_);
        expired = unix_now_ns() - last >= std::chrono::nanoseconds(config_.idle_timeout).count();
    }
    flock(activity_.get(), LOCK_UN);
    return expired;
}

bool Supervisor::drained() {
    // Held from here on: new execs see the lock taken and refuse (the sandbox is draining).
    return flock(activity_.get(), LOCK_EX | LOCK_NB) == 0;
}

void Supervisor::record_end(int vmm_status) {
    if (init_thread_.joinable()) {
        sandbox_->kill();
        init_thread_.join();
    }
    console_->stop();
    SandboxStatus status = SandboxStatus::Stopped;
    std::string reason = reason_;
    if (reason.empty()) {
        if (vmm_status == 0 && console_->panicked()) {
            status = SandboxStatus::Crashed;
            reason = "guest-panic";
        } else if (vmm_status == 0) {
            reason = "poweroff";
        } else if (vmm_status >= 128) {
            status = SandboxStatus::Crashed;
            reason = fmt::format("vmm-killed: signal {}", vmm_status - 128);
        } else {
            status = SandboxStatus::Crashed;
            auto line = last_line_of(paths_.vmm_log());
            reason = "vmm-failed: " + (line.empty() ? fmt::format("exit status {}", vmm_status) : line);
        }
    }
    log_system(*log_, status == SandboxStatus::Crashed ? "crash" : "stopped", reason);
    sandbox_.reset();
    remove_runtime_files(paths_);
    if (config_.ephemeral) {
        (void)db_->delete_sandbox(id_);
        std::error_code ec;
        fs::remove_all(paths_.dir, ec);
        return;
    }
    (void)update([&](SandboxRecord& r) {
        r.status = status;
        r.exit_reason = reason;
        r.exit_code = vmm_status;
        r.stopped_ns = unix_now_ns();
        r.vmm = {};
        r.supervisor = {};
        r.request.clear();
    });
}

}  // namespace

int run_supervisor(const SupervisorArgs& args) {
    for (int fd : {args.lock_fd, args.ready_fd, args.watchdog_fd})
        if (fd >= 0) fcntl(fd, F_SETFD, FD_CLOEXEC);
    Supervisor supervisor(args);
    return supervisor.run();
}

}  // namespace sandlot::host
