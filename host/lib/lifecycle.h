// Named sandboxes and their lifecycle: the host library's API for sandboxes that outlive one process.
//
//   auto home = TRY(SandboxHome::open());                 // $SANDLOT_HOME: state database, sandbox dirs
//   TRY(home.create("web", config, {{"team", "a"}}));
//   TRY(home.start("web"));                               // detached: runs until stopped
//   auto proc = TRY(home.exec("web", {.argv = {"uname"}})); // from any process, over the vsock socket
//   TRY(home.stop("web", std::chrono::seconds(10)));
//
// Each running sandbox has a supervisor process (sandlot-supervisor, host/lib/supervisor.h) that owns its
// VMM, logs its console and events, enforces --max-duration and --idle-timeout, carries out stop/kill/drain
// requests and records how the sandbox ended. It holds the sandbox's lock file for its whole life, so
// "running" can always be checked: a record that says running while nobody holds the lock is corrected to
// crashed ("supervisor-died") on the next read.
//
// Requests from other processes (stop, kill, drain) are written to the record, then the supervisor is woken
// with SIGUSR1. Execs connect to the guest agent directly; each holds the sandbox's activity lock (shared)
// while it runs, which is how the supervisor sees exec activity and waits for running commands when draining.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "host/lib/agent_connection.h"
#include "host/lib/exec.h"
#include "host/lib/metrics.h"
#include "host/lib/sandbox_config.h"
#include "host/lib/sandbox_log.h"
#include "host/lib/state_db.h"
#include "proto/base/error.h"
#include "proto/base/unique_fd.h"

namespace sandlot::host {

// Files in a sandbox's directory (home/sandboxes/<id>/).
struct SandboxPaths {
    std::string dir;
    std::string lock() const { return dir + "/lock"; }
    std::string activity() const { return dir + "/activity"; }
    std::string logs() const { return dir + "/logs"; }
    std::string vsock() const { return dir + "/vsock.sock"; }
    std::string console() const { return dir + "/console.fifo"; }
    std::string stats() const { return dir + "/stats"; }
    std::string vmm_log() const { return dir + "/vmm.log"; }
    std::string upper() const { return dir + "/upper.ext4"; }
};

struct CreateOptions {
    bool replace = false;  // stop and remove a sandbox of the same name first
    std::chrono::milliseconds replace_timeout{10'000};
};

struct StartOptions {
    // Attached: the sandbox is stopped when this process exits, however it exits. The returned
    // Attachment must be kept alive for as long as the sandbox should run.
    bool attached = false;
};

// Ties an attached sandbox to its creator: the write end of the supervisor's watchdog pipe.
struct Attachment {
    UniqueFd watchdog;
};

struct StopResult {
    SandboxStatus status = SandboxStatus::Stopped;
    std::string exit_reason;
    std::optional<int> exit_code;  // the VMM's exit status
    int signal = 0;                // the signal that killed the VMM, if one did
};

class SandboxHome {
  public:
    static Result<SandboxHome> open(std::string home = {});  // "" = home_dir()
    SandboxHome(SandboxHome&&) = default;
    SandboxHome& operator=(SandboxHome&&) = default;

    const std::string& path() const { return home_; }
    SandboxPaths paths(const SandboxRecord& record) const;

    // A new sandbox in status created. The name is validated; a taken one fails (EEXIST) unless replace.
    // Relative host paths in the configuration must already be absolute. A persistent sandbox whose root
    // has a disk writable layer without a path keeps it in its directory (upper.ext4), so its data survives
    // stop and start.
    Result<SandboxRecord> create(const std::string& name, SandboxConfig config, const Labels& labels,
                                 const CreateOptions& options = {});

    // The record, corrected first if it claims a supervisor that is gone. ENOENT: "no sandbox named \"X\"".
    Result<SandboxRecord> get(const std::string& name);
    Result<std::vector<SandboxRecord>> list(const SandboxFilter& filter = {});

    // Boots it: returns once the guest agent is ready (or with the boot error). Fails if it is running.
    Result<std::optional<Attachment>> start(const std::string& name, const StartOptions& options = {});

    // Non-waiting requests to the supervisor.
    Result<void> request_stop(const std::string& name, std::chrono::milliseconds timeout);
    Result<void> request_kill(const std::string& name);
    Result<void> request_drain(const std::string& name, std::chrono::milliseconds timeout);
    // Waits until the sandbox is neither running nor draining (ETIMEDOUT otherwise).
    Result<StopResult> wait_until_stopped(const std::string& name, std::chrono::milliseconds timeout);
    // request_stop + wait; after the timeout the VMM is killed. Stopping a stopped sandbox is not an error.
    Result<StopResult> stop(const std::string& name, std::chrono::milliseconds timeout);
    Result<StopResult> kill(const std::string& name);
    // Removes record, directory and logs. A running sandbox is refused unless force (then killed first).
    Result<void> remove(const std::string& name, bool force);

    // A connection to a running sandbox's agent, for file operations (GuestFs(*session.agent)). Holding it
    // counts as activity (idle timeouts wait, a drain waits for it to be dropped).
    struct AgentSession {
        std::unique_ptr<AgentConnection> agent;
        UniqueFd activity;
    };
    Result<AgentSession> connect(const std::string& name);

    // Starts a command in a running sandbox. Its output is captured into the sandbox's log as it is
    // received, and it counts as activity until the handle goes away.
    Result<std::unique_ptr<ExecStream>> exec(const std::string& name, const ExecRequest& request);

    Result<std::vector<LogRecord>> logs(const std::string& name, const LogQuery& query);
    Result<std::unique_ptr<LogFollower>> log_stream(const std::string& name, const LogQuery& query);

    // A snapshot; cpu_percent over a short sample (`window`) taken now.
    Result<SandboxMetrics> metrics(const std::string& name,
                                   std::chrono::milliseconds window = std::chrono::milliseconds(250));
    // Calls `sink` every `interval` with CPU measured over that interval, until it returns false or the
    // sandbox stops.
    Result<void> metrics_stream(const std::string& name, std::chrono::milliseconds interval,
                                const std::function<bool(const SandboxMetrics&)>& sink);
    Result<std::vector<SandboxMetrics>> all_metrics(
        std::chrono::milliseconds window = std::chrono::milliseconds(250));

    // The record made truthful: a claimed supervisor that is gone turns it into crashed.
    Result<SandboxRecord> refresh(SandboxRecord record);

  private:
    SandboxHome() = default;
    Result<SandboxRecord> find(const std::string& name);
    std::string home_;
    std::unique_ptr<StateDb> db_;
};

// Docker-like generated names for unnamed sandboxes: "sandbox-3f9a1c".
std::string generate_sandbox_name();

}  // namespace sandlot::host
