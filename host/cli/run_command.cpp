// `sandlot run`: boot a sandbox, run one command in it the way `docker run` does, stream its output, tear the
// VM down and exit with the command's status.
//
// Exit status: the command's own; 128+N when signal N killed it; 127 when it was not found in the sandbox,
// 126 when it could not be executed, 125 for other spawn failures and for sandlot's own failures (options,
// boot, VM, connection), which print one line "sandlot: error: ...".
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "host/cli/commands.h"
#include "host/cli/storage_args.h"
#include "host/lib/attach.h"
#include "host/lib/exec.h"
#include "host/lib/sandbox.h"
#include "proto/base/unique_fd.h"

namespace sandlot::cli {

namespace {

namespace fs = std::filesystem;

constexpr int kSandlotFailed = 125;  // sandlot itself failed, not the command (docker uses the same number)

// What the sandbox is. (`-d` and `--name` join these with the lifecycle issue.)
struct SandboxArgs {
    uint64_t memory_mib = 256;
    uint32_t cpus = 1;
    double boot_timeout_s = 60;
    std::string console;  // file for the guest console; "" = kept privately (and shown on boot failures)
    StorageArgs storage;
};

// What runs in it and how. `sandlot exec` will share these.
struct ProcessArgs {
    std::vector<std::string> env;  // K=V, or K to take K's value from this environment
    std::string workdir;
    std::string user;
    bool tty = false;
    bool interactive = false;
    double timeout_s = 0;
    std::vector<std::string> command;
};

struct RunArgs {
    SandboxArgs sandbox;
    ProcessArgs process;
};

int fail(const std::string& message) {
    fmt::print(stderr, "sandlot: error: {}\n", message);
    return kSandlotFailed;
}

std::chrono::milliseconds to_ms(double seconds) {
    return std::chrono::milliseconds(static_cast<int64_t>(std::llround(seconds * 1000)));
}

Result<host::ExecRequest> make_request(const ProcessArgs& args) {
    if (args.command.empty()) return make_error("no command given (sandlot run [OPTIONS] -- CMD [ARGS...])");
    if (args.timeout_s < 0 || !std::isfinite(args.timeout_s)) return make_error("--timeout must be >= 0");
    host::ExecRequest request;
    request.argv = args.command;
    for (const auto& entry : args.env) {
        if (entry.empty() || entry.front() == '=')
            return make_error("-e '" + entry + "': expected KEY=VALUE or KEY");
        if (entry.find('=') != std::string::npos) {
            request.env.push_back(entry);
        } else if (const char* value = std::getenv(entry.c_str())) {
            // Like docker: a bare KEY passes this environment's value, and nothing when it is unset.
            request.env.push_back(entry + "=" + value);
        }
    }
    request.cwd = args.workdir;
    request.user = args.user;
    request.pty = args.tty;
    request.stdin_open = args.interactive;
    request.timeout = to_ms(args.timeout_s);
    if (args.timeout_s > 0 && request.timeout.count() == 0) request.timeout = std::chrono::milliseconds(1);
    if (args.tty) {
        // attach() resizes it again from our terminal; the start size matters for what the command prints
        // first.
        auto size = host::terminal_size(STDOUT_FILENO);
        if (!size) size = host::terminal_size(STDIN_FILENO);
        if (size) std::tie(request.rows, request.cols) = *size;
        // The guest's programs should speak the host terminal's language (the agent defaults to
        // xterm-256color).
        const char* term = std::getenv("TERM");
        bool term_given = false;
        for (const auto& e : request.env)
            term_given = term_given || e.starts_with("TERM=");
        if (term && *term && !term_given)
            request.env.insert(request.env.begin(), std::string("TERM=") + term);
    }
    return request;
}

// Until the command runs (and while the VM goes down), a SIGINT/SIGTERM/SIGHUP/SIGQUIT is remembered rather
// than killing us with the VM left behind; attach() forwards them to the command while it runs.
std::atomic<int> g_pending_signal{0};
static_assert(std::atomic<int>::is_always_lock_free);  // so the handler is async-signal-safe

extern "C" void remember_signal(int signo) {
    int none = 0;
    g_pending_signal.compare_exchange_strong(none, signo);
}

void remember_signals() {
    struct sigaction action {};
    action.sa_handler = remember_signal;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    for (int signo : {SIGINT, SIGTERM, SIGHUP, SIGQUIT})
        sigaction(signo, &action, nullptr);
}

// The exit status sandlot itself ends with, after saying why the command did not run or was killed.
int report(const host::ExitStatus& status, const ProcessArgs& args) {
    if (status.spawn_failure) {
        const auto& failure = *status.spawn_failure;
        if (failure.kind == proto::SpawnErrorKind::NotFound) {
            fmt::print(stderr, "sandlot: error: command not found in sandbox: {}\n", args.command.front());
        } else {
            fmt::print(stderr, "sandlot: error: {}\n", failure.message);
        }
    } else if (status.timed_out) {
        fmt::print(stderr, "sandlot: error: command timed out after {} s (--timeout); it was killed\n",
                   args.timeout_s);
    }
    return status.shell_code();
}

// The session broke: say whether the VM died under it or the vsock connection went.
std::string session_error(const Error& error, host::Sandbox& sandbox) {
    if (error.message.starts_with("attach:")) return error.message;
    if (auto status = sandbox.wait(std::chrono::milliseconds(100)))
        return fmt::format(
            "the sandbox's VM exited unexpectedly (sandlot-vmm status {}) while the command ran", *status);
    return "lost the connection to the sandbox's agent over vsock: " + error.to_string();
}

// Runs the command in a booted sandbox and returns sandlot's exit status.
int run_process(host::Sandbox& sandbox, const host::ExecRequest& request, const ProcessArgs& args) {
    auto& agent = sandbox.agent();
    if (auto supported = agent.check_supported(request); !supported) return fail(supported.error().message);
    auto stream = agent.exec_stream(request);
    if (!stream) return fail(session_error(stream.error(), sandbox));
    host::ExecStream& process = **stream;
    // A signal that came while the request was on its way is the command's.
    if (int signo = g_pending_signal.exchange(0)) (void)process.signal(signo);

    // Output to our stdout/stderr, -i: our stdin to its stdin, signals forwarded; -t on a terminal: raw mode.
    auto status =
        host::attach(process, args.interactive ? STDIN_FILENO : -1, STDOUT_FILENO, {.err_fd = STDERR_FILENO});
    if (!status) return fail(session_error(status.error(), sandbox));
    return report(*status, args);
}

// A private directory for the VMM's log: the VMM must not hold our stdout/stderr (a reader of `sandlot run`'s
// output would wait for it), and its last words are part of our error message if it fails.
struct RunDirectory {
    std::string path;
    RunDirectory() {
        const char* base = std::getenv("XDG_RUNTIME_DIR");
        std::string templ = std::string(base && *base ? base : "/tmp") + "/sandlot-run-XXXXXX";
        if (mkdtemp(templ.data())) path = templ;
    }
    ~RunDirectory() {
        std::error_code ec;
        if (!path.empty()) fs::remove_all(path, ec);
    }
    std::string vmm_log() const { return path + "/vmm.log"; }
    // The VMM's last line, if it wrote one.
    std::string vmm_last_words() const {
        if (path.empty()) return "";
        UniqueFd fd(open(vmm_log().c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd) return "";
        std::string text(4096, '\0');
        off_t size = lseek(fd.get(), 0, SEEK_END);
        off_t from = size > 4096 ? size - 4096 : 0;
        ssize_t n = pread(fd.get(), text.data(), text.size(), from);
        text.resize(n > 0 ? static_cast<size_t>(n) : 0);
        while (!text.empty() && (text.back() == '\n' || text.back() == '\r'))
            text.pop_back();
        auto newline = text.rfind('\n');
        return newline == std::string::npos ? text : text.substr(newline + 1);
    }
};

std::string boot_error(const Error& error, const SandboxArgs& args, const RunDirectory& dir) {
    std::string message;
    if (error.code == ETIMEDOUT) {
        message =
            fmt::format("the sandbox did not become ready within {} s (--boot-timeout)", args.boot_timeout_s);
    } else {
        message = "could not start the sandbox: " + error.to_string();
    }
    if (auto words = dir.vmm_last_words(); !words.empty()) message += " (" + words + ")";
    return message;
}

// Orderly power-off; a VM that does not go is killed.
void tear_down(host::Sandbox& sandbox) {
    auto status = sandbox.shutdown(std::chrono::seconds(10));
    if (!status) sandbox.kill();
}

int run(const RunArgs& args) {
    auto request = make_request(args.process);
    if (!request) return fail(request.error().message);
    if (!(args.sandbox.boot_timeout_s > 0)) return fail("--boot-timeout must be more than 0 seconds");
    if (args.sandbox.cpus == 0) return fail("--cpus must be at least 1");
    if (args.sandbox.memory_mib == 0) return fail("--memory must be at least 1 MiB");

    remember_signals();
    RunDirectory dir;
    if (dir.path.empty())
        return fail(std::string("cannot create a runtime directory: ") + std::strerror(errno));
    auto storage = to_storage_options(args.sandbox.storage);
    if (!storage) return fail(storage.error().to_string());
    host::SandboxOptions options;
    options.storage = std::move(*storage);
    options.memory_mib = args.sandbox.memory_mib;
    if (!args.sandbox.console.empty()) options.console = "file:" + args.sandbox.console;
    options.cpus = args.sandbox.cpus;
    options.ready_timeout = to_ms(args.sandbox.boot_timeout_s);
    options.vmm_log = dir.vmm_log();
    auto sandbox = host::Sandbox::boot(options);
    // Interrupted while booting (the VMM has a process group of its own, so ^C reached only us): end
    // quietly, like a shell; the Sandbox going away kills the VM.
    if (int signo = g_pending_signal.load()) return 128 + signo;
    if (!sandbox) return fail(boot_error(sandbox.error(), args.sandbox, dir));

    int code = run_process(**sandbox, *request, args.process);
    tear_down(**sandbox);
    return code;
}

}  // namespace

CommandRunner add_run_command(CLI::App& app) {
    auto args = std::make_shared<RunArgs>();
    auto* cmd = app.add_subcommand("run", "Boot a sandbox, run a command in it, tear it down");
    // Everything after the command's name is the command's: `sandlot run sh -c 'ls -l'`.
    cmd->positionals_at_end(true);

    auto& box = args->sandbox;
    cmd->add_option("--memory", box.memory_mib, "Guest memory in MiB")->capture_default_str();
    cmd->add_option("--cpus", box.cpus, "Number of vCPUs")->capture_default_str();
    cmd->add_option("--boot-timeout", box.boot_timeout_s, "Seconds to wait for the sandbox to become ready")
        ->capture_default_str();
    cmd->add_option("--console", box.console,
                    "Write the guest console (kernel and agentd messages) to this file, for debugging");
    add_storage_options(*cmd, box.storage);

    auto& proc = args->process;
    cmd->add_option("-e,--env", proc.env, "Set KEY=VALUE in the command's environment (KEY alone: from here)")
        ->allow_extra_args(false);
    cmd->add_option("-w,--workdir", proc.workdir,
                    "Working directory in the sandbox (default: the user's home)");
    cmd->add_option("-u,--user", proc.user, "User: name, uid or uid:gid (default: root)");
    cmd->add_flag("-t,--tty", proc.tty, "Run the command on a pseudo-terminal");
    cmd->add_flag("-i,--interactive", proc.interactive, "Forward stdin to the command");
    cmd->add_option("--timeout", proc.timeout_s, "Kill the command after this many seconds (0: never)")
        ->capture_default_str();
    cmd->add_option("command", proc.command, "The command and its arguments")->required();
    return [args] { return run(*args); };
}

}  // namespace sandlot::cli
