// `sandlot run`: create a sandbox, boot it, run one command in it the way `docker run` does, stream its
// output, stop the sandbox and exit with the command's status.
//
// Attached (the default), the sandbox lives only as long as this process: if it dies, even by SIGKILL, the
// supervisor's watchdog pipe closes and the sandbox is stopped. Without --name the sandbox gets a generated
// name and is removed when it stops. With -d the sandbox keeps running; the command (optional) runs in the
// background under the supervisor, its output going to the sandbox's log.
//
// Exit status: the command's own; 128+N when signal N killed it; 127 when it was not found in the sandbox,
// 126 when it could not be executed, 125 for other spawn failures and for sandlot's own failures (options,
// boot, VM, connection), which print one line "sandlot: error: ...".
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <memory>
#include <string>
#include <vector>

#include "host/cli/commands.h"
#include "host/cli/sandbox_args.h"
#include "host/lib/attach.h"
#include "host/lib/lifecycle.h"

namespace sandlot::cli {

namespace {

struct RunArgs {
    SandboxArgs sandbox;
    ProcessArgs process;
    std::string name;
    bool detach = false;
    bool remove = false;
    bool replace = false;
    double replace_timeout_s = 10;
    std::string entrypoint;
    bool entrypoint_given = false;
};

// `sandlot run IMAGE -- CMD...`: CLI11 hands every positional over as the command, and once one came before
// the first `--` it keeps that `--` among them; the words before it name the image. Without a `--`, a first
// word that can only be an image reference ("python:3.12", "team/app", "app@sha256:...") is the image too,
// as in `docker run python:3.12 python -V`.
Result<void> split_image_from_command(RunArgs& args, const std::vector<std::string>& command_line) {
    auto& command = args.process.command;
    std::string& image = args.sandbox.storage.image;
    auto dashes = std::find(command_line.begin(), command_line.end(), "--");
    if (dashes != command_line.end()) {
        auto after = static_cast<size_t>(command_line.end() - dashes - 1);
        if (command.size() <= after) return {};  // `--` came first: all of it is the command
        size_t before = command.size() - after - 1;
        if (command[before] != "--")
            return make_error("cannot tell the image from the command: put -- before it");
        if (before > 1 || !image.empty())
            return make_error(
                fmt::format("expected at most one IMAGE before --, got: {}",
                            fmt::join(command.begin(), command.begin() + static_cast<long>(before), " ")));
        image = command.front();
        command.erase(command.begin(), command.begin() + 2);
        return {};
    }
    if (!image.empty() || command.empty()) return {};
    const std::string& first = command.front();
    bool reference_like = !first.starts_with("/") && !first.starts_with(".") &&
                          (first.find(':') != std::string::npos || first.find('@') != std::string::npos ||
                           first.find('/') != std::string::npos);
    if (reference_like && host::is_oci_image_spec(first)) {
        image = first;
        command.erase(command.begin());
    }
    return {};
}

// Docker's rule: the command is the entrypoint (the image's, or --entrypoint's) followed by the arguments
// given, or by the image's Cmd when none are given (--entrypoint drops the image's Cmd).
Result<std::vector<std::string>> image_command(const RunArgs& args, const host::ImageRunConfig& image) {
    std::vector<std::string> entrypoint = image.entrypoint;
    std::vector<std::string> rest = args.process.command;
    if (args.entrypoint_given) {
        entrypoint.clear();
        if (!args.entrypoint.empty()) entrypoint.push_back(args.entrypoint);
    }
    if (rest.empty() && !args.entrypoint_given) rest = image.cmd;
    entrypoint.insert(entrypoint.end(), rest.begin(), rest.end());
    if (entrypoint.empty()) return make_error("the image has no Entrypoint or Cmd: give a command after --");
    return entrypoint;
}

// Until the command runs, a SIGINT/SIGTERM/SIGHUP/SIGQUIT is remembered rather than killing us in the middle
// of starting the sandbox; attach() forwards them to the command while it runs.
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

std::string boot_error(const Error& error, const SandboxArgs& args) {
    if (error.code == ETIMEDOUT)
        return fmt::format("the sandbox did not become ready within {} s (--boot-timeout)",
                           args.boot_timeout_s);
    return "could not start the sandbox: " + error.message;
}

}  // namespace

// The exit status sandlot itself ends with, after saying why the command did not run or was killed.
static int report_exit(const host::ExitStatus& status, const std::string& program, double timeout_s) {
    if (status.spawn_failure) {
        const auto& failure = *status.spawn_failure;
        if (failure.kind == proto::SpawnErrorKind::NotFound) {
            fmt::print(stderr, "sandlot: error: command not found in sandbox: {}\n", program);
        } else {
            fmt::print(stderr, "sandlot: error: {}\n", failure.message);
        }
    } else if (status.timed_out) {
        fmt::print(stderr, "sandlot: error: command timed out after {} s (--timeout); it was killed\n",
                   timeout_s);
    }
    return status.shell_code();
}

int run_in_sandbox(host::SandboxHome& home, const std::string& name, const host::ExecRequest& request,
                   const ProcessArgs& args, int pending_signal) {
    auto stream = home.exec(name, request);
    if (!stream) {
        auto record = home.get(name);
        if (record && record->status != host::SandboxStatus::Running && !record->exit_reason.empty())
            return fail(fmt::format("sandbox \"{}\" is {} ({})", name, host::status_name(record->status),
                                    record->exit_reason));
        return fail(stream.error());
    }
    host::ExecStream& process = **stream;
    // A signal that came while the request was on its way is the command's.
    if (pending_signal) (void)process.signal(pending_signal);
    // Output to our stdout/stderr, -i: our stdin to its stdin, signals forwarded; -t on a terminal: raw mode.
    auto status =
        host::attach(process, args.interactive ? STDIN_FILENO : -1, STDOUT_FILENO, {.err_fd = STDERR_FILENO});
    if (!status) {
        if (status.error().message.starts_with("attach:")) return fail(status.error().message);
        auto record = home.get(name);
        if (record && record->status != host::SandboxStatus::Running)
            return fail(fmt::format(
                "the sandbox stopped while the command ran ({})",
                record->exit_reason.empty() ? host::status_name(record->status) : record->exit_reason));
        return fail("lost the connection to the sandbox's agent over vsock: " + status.error().to_string());
    }
    return report_exit(*status, args.command.front(), args.timeout_s);
}

namespace {

int run(RunArgs args, const std::vector<std::string>& command_line) {
    if (auto split = split_image_from_command(args, command_line); !split) return fail(split.error());
    std::optional<host::ImageRunConfig> image;  // set when the root is an OCI image
    auto config = to_config(args.sandbox, &image);
    if (!config) return fail(config.error());
    if (image && (!args.process.command.empty() || !args.detach)) {
        auto command = image_command(args, *image);
        if (!command) return fail(command.error());
        args.process.command = std::move(*command);
    } else if (args.entrypoint_given) {
        return fail("--entrypoint applies to OCI images (--image REF)");
    }
    std::optional<host::ExecRequest> request;
    if (!args.process.command.empty() || !args.detach) {
        auto made = make_request(args.process);
        if (!made) return fail(made.error().message);
        request = std::move(*made);
    }
    auto labels = to_labels(args.sandbox.labels);
    if (!labels) return fail(labels.error());
    config->ephemeral = args.remove || args.name.empty();
    if (args.detach && request) {
        config->init.argv = request->argv;
        config->init.env = request->env;
        config->init.cwd = request->cwd;
        config->init.user = request->user;
    }
    auto home = host::SandboxHome::open();
    if (!home) return fail(home.error());

    host::CreateOptions create_options;
    create_options.replace = args.replace;
    create_options.replace_timeout = to_ms(args.replace_timeout_s);
    std::string name = args.name;
    Result<host::SandboxRecord> created = make_error("unset");
    for (int attempt = 0; attempt < 5; ++attempt) {
        if (args.name.empty()) name = host::generate_sandbox_name();
        created = home->create(name, *config, *labels, create_options);
        if (created || !args.name.empty() || created.error().code != EEXIST) break;
    }
    if (!created) return fail(created.error());

    remember_signals();
    host::StartOptions start_options;
    start_options.attached = !args.detach;
    auto attachment = home->start(name, start_options);
    if (!attachment) {
        if (config->ephemeral) (void)home->remove(name, true);
        return fail(boot_error(attachment.error(), args.sandbox));
    }
    if (args.detach) {
        fmt::print("{}\n", name);
        return 0;
    }
    // Interrupted while booting: end quietly, like a shell; the sandbox goes with us.
    if (int signo = g_pending_signal.load()) {
        (void)home->stop(name, std::chrono::seconds(3));
        return 128 + signo;
    }
    int code = run_in_sandbox(*home, name, *request, args.process, g_pending_signal.exchange(0));
    (void)home->stop(name, std::chrono::seconds(10));
    return code;
}

}  // namespace

CommandRunner add_run_command(CLI::App& app) {
    auto args = std::make_shared<RunArgs>();
    auto* cmd = app.add_subcommand("run", "Create and boot a sandbox, run a command in it");
    // Everything after the command's name is the command's: `sandlot run sh -c 'ls -l'`.
    cmd->positionals_at_end(true);
    cmd->add_option("--name", args->name, "Name the sandbox (it is kept after it stops unless --rm)");
    cmd->add_flag("-d,--detach", args->detach,
                  "Leave the sandbox running in the background; the command (optional) runs there, logged");
    cmd->add_flag("--rm", args->remove, "Remove the sandbox when it stops (always so without --name)");
    cmd->add_flag("--replace", args->replace, "Stop and remove a sandbox of the same name first");
    cmd->add_option("--replace-timeout", args->replace_timeout_s,
                    "Seconds the replaced sandbox gets to stop before it is killed")
        ->capture_default_str();
    add_sandbox_options(*cmd, args->sandbox);
    add_process_options(*cmd, args->process);
    auto* entrypoint =
        cmd->add_option("--entrypoint", args->entrypoint,
                        "Replace an OCI image's entrypoint (\"\" for none; the image's Cmd is dropped)");
    cmd->add_option("command", args->process.command, "[IMAGE --] The command and its arguments");
    return [args, entrypoint] {
        args->entrypoint_given = entrypoint->count() > 0;
        return run(*args, command_line());
    };
}

}  // namespace sandlot::cli
