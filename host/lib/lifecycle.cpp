#include "host/lib/lifecycle.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <thread>

#include "host/lib/agent_connection.h"
#include "host/lib/logged_exec.h"
#include "host/lib/names.h"
#include "host/lib/paths.h"
#include "host/lib/sandbox.h"
#include "host/lib/vsock_uds.h"

extern char** environ;

namespace sandlot::host {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

bool is_active(SandboxStatus status) {
    return status == SandboxStatus::Running || status == SandboxStatus::Draining;
}

Error no_such_sandbox(const std::string& name) {
    return Error{ENOENT, "no sandbox named \"" + name + "\""};
}

// A lock file opened, not yet locked.
Result<UniqueFd> open_lock(const std::string& path) {
    UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (!fd) return errno_error("open " + path);
    return fd;
}

// Whether a supervisor holds the sandbox's lock.
bool supervisor_holds(const SandboxPaths& paths) {
    UniqueFd fd(open(paths.lock().c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return false;
    if (flock(fd.get(), LOCK_SH | LOCK_NB) == 0) return false;
    return errno == EWOULDBLOCK;
}

bool signal_process(const ProcessIdentity& process, int signo) {
    if (process.pid <= 0 || !process_alive(process)) return false;
    return ::kill(process.pid, signo) == 0;
}

StopResult stop_result(const SandboxRecord& r) {
    StopResult result;
    result.status = r.status;
    result.exit_reason = r.exit_reason;
    result.exit_code = r.exit_code;
    if (r.exit_code && *r.exit_code >= 128) result.signal = *r.exit_code - 128;
    return result;
}

// Reads the supervisor's one-line verdict ("ok" / "error: ...") from the ready pipe.
Result<void> wait_ready(int fd, milliseconds timeout, const std::string& log_path) {
    std::string line;
    auto deadline = Clock::now() + timeout;
    for (;;) {
        auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) return make_error("the sandbox did not become ready in time", ETIMEDOUT);
        pollfd pfd{fd, POLLIN, 0};
        int n = poll(&pfd, 1, static_cast<int>(left.count()));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("poll");
        if (n == 0) continue;
        char buffer[512];
        ssize_t got = read(fd, buffer, sizeof buffer);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        line.append(buffer, static_cast<size_t>(got));
        if (line.find('\n') != std::string::npos) break;
        if (line.size() > 65536) break;
    }
    if (auto nl = line.find('\n'); nl != std::string::npos) line.resize(nl);
    if (line == "ok") return {};
    if (line.starts_with("error: ")) return make_error(line.substr(7));
    if (line.starts_with("timeout: ")) return make_error(line.substr(9), ETIMEDOUT);
    return make_error("the sandbox's supervisor exited before the sandbox was ready (see " + log_path + ")");
}

}  // namespace

std::string generate_sandbox_name() {
    std::random_device random;
    return fmt::format("sandbox-{:06x}", random() & 0xffffff);
}

Result<SandboxHome> SandboxHome::open(std::string home) {
    if (home.empty()) home = home_dir();
    std::error_code ec;
    fs::create_directories(home + "/sandboxes", ec);
    if (ec && !fs::is_directory(home + "/sandboxes"))
        return make_error("cannot create " + home + "/sandboxes: " + ec.message());
    SandboxHome result;
    result.home_ = home;
    result.db_ = std::make_unique<StateDb>(TRY(StateDb::open(home + "/sandlot.db")));
    return result;
}

SandboxPaths SandboxHome::paths(const SandboxRecord& record) const {
    return SandboxPaths{home_ + "/sandboxes/" + record.id};
}

Result<SandboxRecord> SandboxHome::find(const std::string& name) {
    auto record = TRY(db_->find_sandbox(name));
    if (!record) return std::unexpected(no_such_sandbox(name));
    return std::move(*record);
}

Result<SandboxRecord> SandboxHome::get(const std::string& name) {
    return refresh(TRY(find(name)));
}

Result<std::vector<SandboxRecord>> SandboxHome::list(const SandboxFilter& filter) {
    // Refresh first, then filter by status: a filter on "running" must not show a dead sandbox.
    SandboxFilter by_labels;
    by_labels.labels = filter.labels;
    std::vector<SandboxRecord> result;
    for (auto& record : TRY(db_->list_sandboxes(by_labels))) {
        auto fresh = refresh(std::move(record));
        if (!fresh) continue;  // removed meanwhile
        if (!filter.statuses.empty() &&
            std::find(filter.statuses.begin(), filter.statuses.end(), fresh->status) == filter.statuses.end())
            continue;
        result.push_back(std::move(*fresh));
    }
    return result;
}

Result<SandboxRecord> SandboxHome::refresh(SandboxRecord record) {
    bool claims_supervisor = is_active(record.status) || record.supervisor.pid != 0;
    if (!claims_supervisor) return record;
    auto sandbox_paths = paths(record);
    // The supervisor records the end itself within moments of the VMM's exit: give it that moment.
    auto deadline = Clock::now() + milliseconds(3'000);
    while (supervisor_holds(sandbox_paths)) {
        if (record.vmm.pid == 0 || process_alive(record.vmm) || Clock::now() >= deadline) return record;
        std::this_thread::sleep_for(milliseconds(50));
        auto again = TRY(db_->find_sandbox_by_id(record.id));
        if (!again) return std::unexpected(no_such_sandbox(record.name));
        record = std::move(*again);
        if (!is_active(record.status) && record.supervisor.pid == 0) return record;
    }
    // Nobody holds the lock: whatever the record says, no supervisor runs it.
    return db_->update_sandbox(record.id, [&](SandboxRecord& r) -> Result<void> {
        if (!is_active(r.status) && r.supervisor.pid == 0) return {};
        signal_process(r.vmm, SIGKILL);  // its --parent-pid watch should have done so already
        if (is_active(r.status)) {
            r.status = SandboxStatus::Crashed;
            r.exit_reason = "supervisor-died";
            r.stopped_ns = unix_now_ns();
        } else if (r.status == SandboxStatus::Created && r.exit_reason.empty()) {
            r.exit_reason = "boot-failed: the supervisor exited while booting";
            r.status = SandboxStatus::Crashed;
        }
        r.vmm = {};
        r.supervisor = {};
        r.request.clear();
        return {};
    });
}

Result<SandboxRecord> SandboxHome::create(const std::string& name, SandboxConfig config, const Labels& labels,
                                          const CreateOptions& options) {
    TRY(validate_sandbox_name(name));
    for (const auto& [key, value] : labels)
        TRY(parse_label(key + "=" + value));
    if (options.replace) {
        if (auto existing = TRY(db_->find_sandbox(name))) {
            (void)existing;
            TRY(stop(name, options.replace_timeout));
            TRY(remove(name, true));
        }
    }
    auto record = TRY(db_->insert_sandbox(name, config_to_json(config), labels));
    auto sandbox_paths = paths(record);
    std::error_code ec;
    fs::create_directories(sandbox_paths.logs(), ec);
    if (ec) {
        (void)db_->delete_sandbox(record.id);
        return make_error("cannot create " + sandbox_paths.dir + ": " + ec.message());
    }
    auto& root = config.storage.root;
    if (!config.ephemeral && !root.image.empty() && root.writable == RootOptions::Writable::Disk &&
        root.upper_path.empty()) {
        root.upper_path = sandbox_paths.upper();
        record = TRY(db_->update_sandbox(record.id, [&](SandboxRecord& r) -> Result<void> {
            r.config = config_to_json(config);
            return {};
        }));
    }
    if (auto log = LogWriter::open(sandbox_paths.logs())) (void)(*log)->system("create", "created " + name);
    return record;
}

Result<std::optional<Attachment>> SandboxHome::start(const std::string& name, const StartOptions& options) {
    auto record = TRY(get(name));
    if (is_active(record.status)) return make_error("sandbox \"" + name + "\" is already running", EBUSY);
    auto config = TRY(config_from_json(record.config));
    auto sandbox_paths = paths(record);
    std::error_code ec;
    fs::create_directories(sandbox_paths.logs(), ec);

    // The lock decides who starts it; the supervisor inherits it and holds it while it runs.
    auto lock = TRY(open_lock(sandbox_paths.lock()));
    if (flock(lock.get(), LOCK_EX | LOCK_NB) != 0)
        return make_error("sandbox \"" + name + "\" is already running (or starting)", EBUSY);
    // Re-read under the lock: another starter may have finished in between.
    record = TRY(find(name));
    if (is_active(record.status)) return make_error("sandbox \"" + name + "\" is already running", EBUSY);
    TRY(db_->update_sandbox(record.id, [](SandboxRecord& r) -> Result<void> {
        r.request.clear();
        r.exit_reason.clear();
        return {};
    }));

    int ready[2], watchdog[2] = {-1, -1};
    if (pipe2(ready, O_CLOEXEC) != 0) return errno_error("pipe");
    UniqueFd ready_read(ready[0]), ready_write(ready[1]);
    UniqueFd watchdog_read, watchdog_write;
    if (options.attached) {
        if (pipe2(watchdog, O_CLOEXEC) != 0) return errno_error("pipe");
        watchdog_read = UniqueFd(watchdog[0]);
        watchdog_write = UniqueFd(watchdog[1]);
    }

    std::string supervisor = bin_dir() + "/sandlot-supervisor";
    std::string log_path = sandbox_paths.dir + "/supervisor.log";
    std::vector<std::string> argv = {supervisor,  "--home", home_,        "--id", record.id,
                                     "--lock-fd", "3",      "--ready-fd", "4"};
    if (options.attached) argv.insert(argv.end(), {"--watchdog-fd", "5"});
    std::vector<char*> cargv;
    for (auto& a : argv)
        cargv.push_back(a.data());
    cargv.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    posix_spawn_file_actions_adddup2(&actions, lock.get(), 3);
    posix_spawn_file_actions_adddup2(&actions, ready_write.get(), 4);
    if (options.attached) posix_spawn_file_actions_adddup2(&actions, watchdog_read.get(), 5);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    pid_t pid = -1;
    int rc = posix_spawn(&pid, cargv[0], &actions, &attr, cargv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) return make_error("spawn " + supervisor, rc);
    // The first process only forks the supervisor proper and exits.
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    lock.reset();
    ready_write.reset();
    watchdog_read.reset();

    auto verdict = wait_ready(ready_read.get(), config.boot_timeout + milliseconds(15'000), log_path);
    if (!verdict) {
        // A supervisor that never answered is stopped here; one that failed has recorded why.
        if (auto now = find(name); now && now->supervisor.pid != 0) signal_process(now->supervisor, SIGKILL);
        return std::unexpected(verdict.error());
    }
    if (!options.attached) return std::optional<Attachment>();
    return std::optional<Attachment>(Attachment{std::move(watchdog_write)});
}

Result<void> SandboxHome::request_stop(const std::string& name, milliseconds timeout) {
    auto record = TRY(get(name));
    if (!is_active(record.status) && record.supervisor.pid == 0) return {};
    record = TRY(db_->update_sandbox(record.id, [&](SandboxRecord& r) -> Result<void> {
        if (r.request != "kill") {
            r.request = "stop";
            r.request_timeout_ms = timeout.count();
        }
        return {};
    }));
    signal_process(record.supervisor, SIGUSR1);
    return {};
}

Result<void> SandboxHome::request_kill(const std::string& name) {
    auto record = TRY(get(name));
    if (!is_active(record.status) && record.supervisor.pid == 0) return {};
    record = TRY(db_->update_sandbox(record.id, [&](SandboxRecord& r) -> Result<void> {
        r.request = "kill";
        return {};
    }));
    signal_process(record.supervisor, SIGUSR1);
    return {};
}

Result<void> SandboxHome::request_drain(const std::string& name, milliseconds timeout) {
    auto record = TRY(get(name));
    if (!is_active(record.status)) return make_error("sandbox \"" + name + "\" is not running");
    record = TRY(db_->update_sandbox(record.id, [&](SandboxRecord& r) -> Result<void> {
        if (r.request.empty()) {
            r.request = "drain";
            r.request_timeout_ms = timeout.count();
        }
        return {};
    }));
    signal_process(record.supervisor, SIGUSR1);
    return {};
}

Result<StopResult> SandboxHome::wait_until_stopped(const std::string& name, milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    for (;;) {
        auto record = get(name);
        if (!record && record.error().code == ENOENT) {
            // An ephemeral sandbox's record goes with it.
            StopResult gone;
            gone.exit_reason = "removed";
            return gone;
        }
        if (!record) return std::unexpected(record.error());
        if (!is_active(record->status) && record->supervisor.pid == 0) return stop_result(*record);
        if (Clock::now() >= deadline)
            return make_error(
                "sandbox \"" + name + "\" did not stop within " + std::to_string(timeout.count()) + " ms",
                ETIMEDOUT);
        std::this_thread::sleep_for(milliseconds(50));
    }
}

Result<StopResult> SandboxHome::stop(const std::string& name, milliseconds timeout) {
    TRY(request_stop(name, timeout));
    // The supervisor kills the VMM once the grace is over; allow for that and its bookkeeping.
    auto stopped = wait_until_stopped(name, timeout + milliseconds(5'000));
    if (stopped || stopped.error().code != ETIMEDOUT) return stopped;
    return kill(name);
}

Result<StopResult> SandboxHome::kill(const std::string& name) {
    TRY(request_kill(name));
    return wait_until_stopped(name, milliseconds(15'000));
}

Result<void> SandboxHome::remove(const std::string& name, bool force) {
    auto record = TRY(get(name));
    if (is_active(record.status) || record.supervisor.pid != 0) {
        if (!force)
            return make_error("sandbox \"" + name + "\" is running; stop it first, or remove it with rm -f",
                              EBUSY);
        TRY(kill(name));
    }
    auto sandbox_paths = paths(record);
    auto lock = TRY(open_lock(sandbox_paths.lock()));
    // A supervisor that has just recorded the end may still be on its way out.
    auto deadline = Clock::now() + milliseconds(5'000);
    while (flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
        if (Clock::now() >= deadline)
            return make_error("sandbox \"" + name + "\" is starting; try again", EBUSY);
        std::this_thread::sleep_for(milliseconds(50));
    }
    record = TRY(find(name));
    if (is_active(record.status)) return make_error("sandbox \"" + name + "\" is running", EBUSY);
    TRY(db_->delete_sandbox(record.id));
    std::error_code ec;
    fs::remove_all(sandbox_paths.dir, ec);
    return {};
}

Result<SandboxHome::AgentSession> SandboxHome::connect(const std::string& name) {
    auto record = TRY(get(name));
    auto not_running = [&](const SandboxRecord& r) -> std::optional<Error> {
        if (r.status == SandboxStatus::Draining)
            return Error{EBUSY, "sandbox \"" + name + "\" is draining: it accepts no new commands"};
        if (r.status != SandboxStatus::Running)
            return Error{
                EINVAL, fmt::format("sandbox \"{}\" is not running (it is {})", name, status_name(r.status))};
        return std::nullopt;
    };
    if (auto error = not_running(record)) return std::unexpected(*error);
    auto sandbox_paths = paths(record);
    auto activity = hold_activity(sandbox_paths.activity());
    if (!activity && activity.error().code == EBUSY)
        return make_error("sandbox \"" + name + "\" is draining: it accepts no new commands", EBUSY);
    if (!activity) return std::unexpected(activity.error());
    // Re-check with the lock held: a drain that began meanwhile waits for us, or we see it here.
    record = TRY(find(name));
    if (auto error = not_running(record)) return std::unexpected(*error);
    auto agent = TRY(AgentConnection::open(TRY(vsock_uds_connect(sandbox_paths.vsock(), kAgentPort))));
    return AgentSession{std::move(agent), std::move(*activity)};
}

Result<std::unique_ptr<ExecStream>> SandboxHome::exec(const std::string& name, const ExecRequest& request) {
    auto session_agent = TRY(connect(name));
    auto& agent = session_agent.agent;
    TRY(agent->check_supported(request));
    auto stream = TRY(agent->exec_stream(request));
    auto sandbox_paths = paths(TRY(find(name)));
    std::shared_ptr<LogWriter> log;
    if (auto opened = LogWriter::open(sandbox_paths.logs()))
        log = std::shared_ptr<LogWriter>(std::move(*opened));
    auto session = new_session_id();
    if (log) {
        std::string argv;
        for (const auto& a : request.argv)
            argv += (argv.empty() ? "" : " ") + a;
        (void)log->append(LogSource::System, session, "exec",
                          std::span(reinterpret_cast<const uint8_t*>(argv.data()), argv.size()));
    }
    return make_logged_exec(std::move(stream), std::move(agent), std::move(log), std::move(session),
                            std::move(session_agent.activity));
}

Result<std::vector<LogRecord>> SandboxHome::logs(const std::string& name, const LogQuery& query) {
    auto record = TRY(find(name));
    return read_logs(paths(record).logs(), query);
}

Result<std::unique_ptr<LogFollower>> SandboxHome::log_stream(const std::string& name, const LogQuery& query) {
    auto record = TRY(find(name));
    return LogFollower::open(paths(record).logs(), query);
}

namespace {

// What one look at a running sandbox gives, before CPU is turned into a rate.
struct Sample {
    SandboxMetrics metrics;
    Clock::time_point when;
};

Result<Sample> take_sample(const SandboxRecord& record, const SandboxPaths& paths) {
    if (!is_active(record.status) || record.vmm.pid == 0)
        return make_error("sandbox \"" + record.name + "\" is not running");
    auto config = TRY(config_from_json(record.config));
    Sample sample;
    auto& m = sample.metrics;
    m.name = record.name;
    m.time_ns = unix_now_ns();
    sample.when = Clock::now();
    m.vcpu_time_ns = TRY(vcpu_time_ns(record.vmm.pid));
    m.host_rss_bytes = process_rss_bytes(record.vmm.pid).value_or(0);
    m.memory_limit_bytes = config.memory_mib << 20;
    if (auto counters = read_vmm_counters(paths.stats())) {
        m.disk_read_bytes = counters->blk_read_bytes;
        m.disk_write_bytes = counters->blk_write_bytes;
        m.net_rx_bytes = counters->net_rx_bytes;
        m.net_tx_bytes = counters->net_tx_bytes;
    }
    if (record.started_ns > 0)
        m.uptime_ns = static_cast<uint64_t>(std::max<int64_t>(m.time_ns - record.started_ns, 0));
    if (auto socket = vsock_uds_connect(paths.vsock(), kAgentPort)) {
        if (auto agent = AgentConnection::open(std::move(*socket))) {
            if (auto stats = (*agent)->stats(milliseconds(2'000))) {
                m.memory_used_bytes =
                    (stats->mem_total_kib - std::min(stats->mem_available_kib, stats->mem_total_kib)) * 1024;
                m.guest_answered = true;
            }
        }
    }
    return sample;
}

void rate(SandboxMetrics& now, const Sample& before, Clock::time_point now_when) {
    auto wall = std::chrono::duration_cast<std::chrono::nanoseconds>(now_when - before.when).count();
    if (wall > 0 && now.vcpu_time_ns >= before.metrics.vcpu_time_ns)
        now.cpu_percent = 100.0 * static_cast<double>(now.vcpu_time_ns - before.metrics.vcpu_time_ns) /
                          static_cast<double>(wall);
}

}  // namespace

Result<SandboxMetrics> SandboxHome::metrics(const std::string& name, milliseconds window) {
    auto record = TRY(get(name));
    auto sandbox_paths = paths(record);
    auto first = TRY(take_sample(record, sandbox_paths));
    std::this_thread::sleep_for(window);
    auto second = TRY(take_sample(record, sandbox_paths));
    rate(second.metrics, first, second.when);
    return second.metrics;
}

Result<void> SandboxHome::metrics_stream(const std::string& name, milliseconds interval,
                                         const std::function<bool(const SandboxMetrics&)>& sink) {
    auto record = TRY(get(name));
    auto sandbox_paths = paths(record);
    auto previous = TRY(take_sample(record, sandbox_paths));
    for (;;) {
        std::this_thread::sleep_for(interval);
        record = TRY(get(name));
        auto sample = take_sample(record, sandbox_paths);
        if (!sample) return is_active(record.status) ? std::unexpected(sample.error()) : Result<void>();
        rate(sample->metrics, previous, sample->when);
        if (!sink(sample->metrics)) return {};
        previous = std::move(*sample);
    }
}

Result<std::vector<SandboxMetrics>> SandboxHome::all_metrics(milliseconds window) {
    SandboxFilter running;
    running.statuses = {SandboxStatus::Running, SandboxStatus::Draining};
    auto records = TRY(list(running));
    std::vector<std::optional<Sample>> first;
    for (const auto& record : records) {
        auto sample = take_sample(record, paths(record));
        first.push_back(sample ? std::optional<Sample>(std::move(*sample)) : std::nullopt);
    }
    std::this_thread::sleep_for(window);
    std::vector<SandboxMetrics> result;
    for (size_t i = 0; i < records.size(); ++i) {
        if (!first[i]) continue;
        auto sample = take_sample(records[i], paths(records[i]));
        if (!sample) continue;  // stopped meanwhile
        rate(sample->metrics, *first[i], sample->when);
        result.push_back(std::move(sample->metrics));
    }
    return result;
}

}  // namespace sandlot::host
