#include "host/cli/sandbox_args.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <tuple>

#include "host/cli/pull_display.h"
#include "host/lib/attach.h"
#include "host/lib/names.h"
#include "host/lib/sandbox_log.h"

namespace sandlot::cli {

namespace fs = std::filesystem;

int fail(const std::string& message) {
    fmt::print(stderr, "sandlot: error: {}\n", message);
    return kSandlotFailed;
}

int fail(const Error& error) {
    // These codes classify the library's own complete messages ("no sandbox named ..."); an errno from a
    // system call is worth its text.
    switch (error.code) {
        case EEXIST:
        case ENOENT:
        case EBUSY:
        case ETIMEDOUT:
        case EINVAL:
            if (error.message.find(": ") == std::string::npos || error.message.starts_with("sandbox ") ||
                error.message.starts_with("no sandbox") || error.message.starts_with("a sandbox"))
                return fail(error.message);
            break;
        default:
            break;
    }
    return fail(error.to_string());
}

std::chrono::milliseconds to_ms(double seconds) {
    return std::chrono::milliseconds(static_cast<int64_t>(std::llround(seconds * 1000)));
}

void add_sandbox_options(CLI::App& cmd, SandboxArgs& box) {
    cmd.add_option("--memory", box.memory_mib, "Guest memory in MiB")->capture_default_str();
    cmd.add_option("--cpus", box.cpus, "Number of vCPUs")->capture_default_str();
    cmd.add_option("--boot-timeout", box.boot_timeout_s, "Seconds to wait for the sandbox to become ready")
        ->capture_default_str();
    cmd.add_option("--label", box.labels, "Label KEY=VALUE (repeatable)")->allow_extra_args(false);
    cmd.add_option("--max-duration", box.max_duration,
                   "Drain and stop the sandbox after this long (e.g. 30s, 10m, 2h)");
    cmd.add_option("--idle-timeout", box.idle_timeout,
                   "Stop the sandbox after this long without exec activity (a running command is activity)");
    add_storage_options(cmd, box.storage);
    cmd.add_option("--pull", box.pull, "When to pull an OCI --image: always, missing, never")
        ->capture_default_str();
    cmd.add_flag("--insecure-registry", box.insecure_registry,
                 "Pull the OCI --image over plain HTTP (a local registry on localhost)");
}

void add_process_options(CLI::App& cmd, ProcessArgs& proc) {
    cmd.add_option("-e,--env", proc.env, "Set KEY=VALUE in the command's environment (KEY alone: from here)")
        ->allow_extra_args(false);
    cmd.add_option("-w,--workdir", proc.workdir,
                   "Working directory in the sandbox (default: the user's home)");
    cmd.add_option("-u,--user", proc.user, "User: name, uid or uid:gid (default: root)");
    cmd.add_flag("-t,--tty", proc.tty, "Run the command on a pseudo-terminal");
    cmd.add_flag("-i,--interactive", proc.interactive, "Forward stdin to the command");
    cmd.add_option("--timeout", proc.timeout_s, "Kill the command after this many seconds (0: never)")
        ->capture_default_str();
}

Result<std::vector<std::string>> resolve_env(const std::vector<std::string>& entries) {
    std::vector<std::string> env;
    for (const auto& entry : entries) {
        if (entry.empty() || entry.front() == '=')
            return make_error("-e '" + entry + "': expected KEY=VALUE or KEY");
        if (entry.find('=') != std::string::npos) {
            env.push_back(entry);
        } else if (const char* value = std::getenv(entry.c_str())) {
            // Like docker: a bare KEY passes this environment's value, and nothing when it is unset.
            env.push_back(entry + "=" + value);
        }
    }
    return env;
}

Result<host::ExecRequest> make_request(const ProcessArgs& args) {
    if (args.command.empty()) return make_error("no command given ([OPTIONS] -- CMD [ARGS...])");
    if (args.timeout_s < 0 || !std::isfinite(args.timeout_s)) return make_error("--timeout must be >= 0");
    host::ExecRequest request;
    request.argv = args.command;
    request.env = TRY(resolve_env(args.env));
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

std::string human_bytes(uint64_t bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double value = static_cast<double>(bytes);
    int unit = 0;
    while (value >= 1024 && unit < 4) {
        value /= 1024;
        ++unit;
    }
    return unit == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", value, units[unit]);
}

Result<host::Labels> to_labels(const std::vector<std::string>& labels) {
    host::Labels result;
    for (const auto& text : labels) {
        auto [key, value] = TRY(host::parse_label(text));
        result[key] = value;
    }
    return result;
}

namespace {

std::string absolute(const std::string& path) {
    if (path.empty()) return path;
    std::error_code ec;
    auto result = fs::absolute(path, ec);
    return ec ? path : result.lexically_normal().string();
}

Result<std::chrono::milliseconds> optional_duration(const std::string& text, const char* option) {
    if (text.empty()) return std::chrono::milliseconds(0);
    auto duration = host::parse_duration(text);
    if (!duration) return make_error(std::string(option) + ": " + duration.error().message);
    return *duration;
}

}  // namespace

namespace {

// Pulls (per the policy) the OCI image the root names, and puts its root and run defaults in the config.
Result<void> use_oci_image(const SandboxArgs& args, host::SandboxConfig& config,
                           std::optional<host::ImageRunConfig>* image) {
    host::PullOptions options;
    options.policy = TRY(host::parse_pull_policy(args.pull));
    options.insecure = args.insecure_registry;
    if (isatty(STDERR_FILENO)) {
        options.status = [](const std::string& text) { fmt::print(stderr, "{}\n", text); };
        auto display = std::make_shared<PullDisplay>();
        options.progress = [display](const host::PullProgress& p) { display->update(p); };
    }
    host::ImageStore store;
    auto pulled = store.pull(config.storage.root.image, options);
    if (!pulled) return std::unexpected(pulled.error());
    auto& storage = config.storage;
    storage.root.image = pulled->root_path;
    // The image's settings are defaults under the ones given here (later env entries win by key).
    std::vector<std::string> env = pulled->config.env;
    env.insert(env.end(), storage.env.begin(), storage.env.end());
    storage.env = std::move(env);
    if (storage.workdir.empty()) storage.workdir = pulled->config.workdir;
    if (storage.user.empty()) storage.user = pulled->config.user;
    if (image) *image = pulled->config;
    return {};
}

}  // namespace

Result<host::SandboxConfig> to_config(const SandboxArgs& args, std::optional<host::ImageRunConfig>* image) {
    if (!(args.boot_timeout_s > 0)) return make_error("--boot-timeout must be more than 0 seconds");
    if (args.cpus == 0) return make_error("--cpus must be at least 1");
    if (args.memory_mib == 0) return make_error("--memory must be at least 1 MiB");
    host::SandboxConfig config;
    config.memory_mib = args.memory_mib;
    config.cpus = args.cpus;
    config.boot_timeout = to_ms(args.boot_timeout_s);
    config.max_duration = TRY(optional_duration(args.max_duration, "--max-duration"));
    config.idle_timeout = TRY(optional_duration(args.idle_timeout, "--idle-timeout"));
    config.storage = TRY(to_storage_options(args.storage));
    // The sandbox is booted later, by another process, maybe from another directory.
    auto& root = config.storage.root;
    if (host::is_oci_image_spec(root.image)) {
        TRY(use_oci_image(args, config, image));
    } else if (root.image.find('/') != std::string::npos || root.image.starts_with(".")) {
        root.image = absolute(root.image);
    }
    root.upper_path = absolute(root.upper_path);
    for (auto& volume : config.storage.volumes)
        if (volume.kind == host::Volume::Kind::Bind || volume.kind == host::Volume::Kind::Disk)
            volume.source = absolute(volume.source);
    for (auto& patch : config.storage.patches)
        patch.host_path = absolute(patch.host_path);
    return config;
}

}  // namespace sandlot::cli
