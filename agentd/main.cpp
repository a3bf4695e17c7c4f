// agentd: the sandlot guest agent.
//
// As PID 1 (the guest's /init) it prepares the guest, listens on vsock (port from sandlot.port=, default
// 1024), optionally connects out to the host (sandlot.notify=P, host CID 2) and serves the control protocol
// until SHUTDOWN or an init power-off signal, then syncs and restarts the VM (the VMM's "done"). argv is
// ignored in this mode: the kernel hands init whatever command-line words it did not recognise.
//
// As PID 1, when the initramfs holds a boot configuration (proto::kBootConfigPath), it sets up storage from
// it right after the basic mounts (agentd/storage.h) and takes its exec defaults; a storage failure is logged
// ("agentd: storage: ...") and powers the VM off.
//
// Given --listen-unix, --listen-vsock or --notify-unix it is a plain process for tests and manual use (even
// as PID 1, e.g. under `unshare --pid --fork`), serving the same protocol without touching the system. It is
// then a child subreaper, so orphans of the processes it runs are reaped by it. SHUTDOWN or SIGTERM make it
// exit 0. --boot-config FILE takes only the exec defaults (env, workdir, user) from a boot configuration;
// nothing is mounted:
//   agentd --listen-unix PATH | --listen-vsock PORT  [--notify-unix PATH] [--boot-config FILE]
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agentd/exec_service.h"
#include "agentd/exec_spawn.h"
#include "agentd/fs_service.h"
#include "agentd/hello.h"
#include "agentd/init.h"
#include "agentd/log.h"
#include "agentd/server.h"
#include "agentd/shutdown.h"
#include "agentd/storage.h"
#include "proto/boot_config.h"

namespace sandlot::agent {
namespace {

// Every exec stream holds a few fds: lift the agent's soft limit (and, where allowed, the hard one) so
// max_streams fit. Returns the limit the agent started with, which its children get back.
std::optional<rlimit> raise_fd_limit() {
    rlimit original{};
    if (getrlimit(RLIMIT_NOFILE, &original) != 0) return std::nullopt;
    constexpr rlim_t kWanted = 1 << 16;
    rlimit raised = original;
    if (raised.rlim_max != RLIM_INFINITY && raised.rlim_max < kWanted) {
        rlimit bigger{kWanted, kWanted};
        if (setrlimit(RLIMIT_NOFILE, &bigger) == 0) return original;  // allowed for root (CAP_SYS_RESOURCE)
    }
    raised.rlim_cur = raised.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) != 0) log_line("cannot raise RLIMIT_NOFILE");
    return original;
}

bool wants_host_mode(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (arg == "--listen-unix" || arg == "--listen-vsock" || arg == "--notify-unix") return true;
    }
    return false;
}

// Pipes created later must not land on 0/1/2, or a child's dup2 onto its stdio would clobber them.
void ensure_stdio_open() {
    for (int fd = 0; fd <= 2; ++fd) {
        if (fcntl(fd, F_GETFD) >= 0) continue;
        int null_fd = open("/dev/null", O_RDWR);
        if (null_fd >= 0 && null_fd != fd) {
            dup2(null_fd, fd);
            close(null_fd);
        }
    }
}

// The boot configuration's defaults for every exec.
void add_exec_defaults(ExecConfig& exec, const proto::BootConfig& boot) {
    exec.default_env.insert(exec.default_env.end(), boot.env.begin(), boot.env.end());
    exec.default_cwd = boot.workdir;  // empty: the user's home, as without a boot configuration
    exec.default_user = boot.user;
}

// A broken storage setup ends the VM; the host reports the line logged here.
[[noreturn]] void storage_failed(const Error& error) {
    log_line("storage: " + error.to_string());
    power_off("storage setup failed");
}

[[noreturn]] void run_as_init(uint64_t start_ns) {
    setup_pid1();
    // Storage comes before anything else reads the filesystem: afterwards "/" may be another root.
    auto boot = load_boot_config();
    if (!boot) storage_failed(boot.error());
    if (*boot) {
        if (auto ok = setup_storage(**boot); !ok) storage_failed(ok.error());
    }
    BootOptions options = parse_kernel_cmdline(read_kernel_cmdline());
    auto child_nofile = raise_fd_limit();

    auto server = Server::create(start_ns);
    if (!server) power_off("cannot start: " + server.error().to_string());
    ExecConfig exec_config;
    exec_config.child_nofile = child_nofile;
    // Scripts are found by name from every exec (a boot env's own PATH replaces this one).
    exec_config.default_env.push_back(std::string("PATH=") + kDefaultPath + ":" + proto::kScriptDir);
    if (*boot) add_exec_defaults(exec_config, **boot);
    FsConfig fs_config{exec_config.user_db, exec_config.default_user};
    auto exec = ExecService::install(**server, std::move(exec_config));
    auto files = FsService::install(**server, std::move(fs_config));
    (*server)->set_session_counter([&exec] { return exec->session_count(); });

    bool reachable = true;
    if (auto ok = (*server)->listen_vsock(options.port); !ok) {
        log_line(ok.error().to_string());
        reachable = false;
    }
    if (options.notify_port) {
        if (auto ok = (*server)->connect_vsock(VMADDR_CID_HOST, *options.notify_port); ok) {
            reachable = true;
        } else {
            log_line(ok.error().to_string());
        }
    }
    // Nobody could ever talk to us: end the VM rather than leave the host waiting on a silent guest.
    if (!reachable) power_off("no way to reach the host");

    auto stopped = (*server)->run();
    if (!stopped) power_off("event loop failed: " + stopped.error().to_string());
    power_off(*stopped == StopReason::ShutdownRequest ? "shutdown requested" : "signal");
}

void usage() {
    std::fputs(
        "usage: agentd --listen-unix PATH | --listen-vsock PORT [--notify-unix PATH] [--boot-config FILE]\n"
        "  As PID 1 agentd ignores its arguments and reads sandlot.port= / sandlot.notify= from "
        "/proc/cmdline.\n",
        stderr);
}

int run_host_mode(int argc, char** argv, uint64_t start_ns) {
    std::vector<std::string> listen_unix, notify_unix;
    std::string boot_config;
    std::vector<uint32_t> listen_vsock;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            usage();
            return 0;
        }
        if (i + 1 >= argc) {
            log_line("missing value for " + std::string(arg));
            usage();
            return 2;
        }
        std::string_view value = argv[++i];
        if (arg == "--listen-unix") {
            listen_unix.emplace_back(value);
        } else if (arg == "--notify-unix") {
            notify_unix.emplace_back(value);
        } else if (arg == "--boot-config") {
            boot_config = value;
        } else if (arg == "--listen-vsock") {
            uint32_t port = 0;
            auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), port);
            if (ec != std::errc() || end != value.data() + value.size()) {
                log_line("bad port: " + std::string(value));
                return 2;
            }
            listen_vsock.push_back(port);
        } else {
            log_line("unknown option: " + std::string(arg));
            usage();
            return 2;
        }
    }
    if (listen_unix.empty() && listen_vsock.empty() && notify_unix.empty()) {
        usage();
        return 2;
    }

    ensure_stdio_open();
    auto child_nofile = raise_fd_limit();
    // Orphans of the commands we run are re-parented to us (not to init) and reaped by the server's loop.
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) log_line("PR_SET_CHILD_SUBREAPER failed");

    auto server = Server::create(start_ns);
    if (!server) {
        log_line(server.error().to_string());
        return 1;
    }
    ExecConfig exec_config;
    exec_config.child_nofile = child_nofile;
    if (!boot_config.empty()) {
        auto boot = load_boot_config(boot_config);
        if (!boot || !*boot) {
            log_line(boot ? boot_config + ": No such file or directory" : boot.error().to_string());
            return 1;
        }
        add_exec_defaults(exec_config, **boot);
    }
    FsConfig fs_config{exec_config.user_db, exec_config.default_user};
    auto exec = ExecService::install(**server, std::move(exec_config));
    auto files = FsService::install(**server, std::move(fs_config));
    (*server)->set_session_counter([&exec] { return exec->session_count(); });
    for (const auto& path : listen_unix) {
        if (auto ok = (*server)->listen_unix(path); !ok) {
            log_line(ok.error().to_string());
            return 1;
        }
    }
    for (uint32_t port : listen_vsock) {
        if (auto ok = (*server)->listen_vsock(port); !ok) {
            log_line(ok.error().to_string());
            return 1;
        }
    }
    for (const auto& path : notify_unix) {
        if (auto ok = (*server)->connect_unix(path); !ok) {
            log_line(ok.error().to_string());
            return 1;
        }
    }
    auto stopped = (*server)->run();
    if (!stopped) {
        log_line(stopped.error().to_string());
        return 1;
    }
    return 0;
}

}  // namespace
}  // namespace sandlot::agent

int main(int argc, char** argv) {
    // First thing: this is the closest the agent can get to "kernel finished booting".
    uint64_t start_ns = sandlot::agent::boottime_ns();
    if (getpid() == 1 && !sandlot::agent::wants_host_mode(argc, argv)) sandlot::agent::run_as_init(start_ns);
    return sandlot::agent::run_host_mode(argc, argv, start_ns);
}
