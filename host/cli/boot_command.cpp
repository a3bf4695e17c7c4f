// `sandlot boot`: boot a sandbox, report the agent's HELLO and the boot time, shut it down.
#include <fmt/format.h>

#include <memory>

#include "host/cli/commands.h"
#include "host/lib/sandbox.h"

namespace sandlot::cli {

namespace {

struct BootArgs {
    host::SandboxOptions options;
    double timeout_s = 60;
};

double ms(uint64_t ns) {
    return static_cast<double>(ns) / 1e6;
}

int run_boot(const BootArgs& args) {
    auto options = args.options;
    options.ready_timeout = std::chrono::milliseconds(static_cast<int64_t>(args.timeout_s * 1000));
    auto sandbox = host::Sandbox::boot(options);
    if (!sandbox) {
        fmt::print(stderr, "sandlot: error: {}\n", sandbox.error().to_string());
        return 1;
    }
    const auto& hello = (*sandbox)->hello();
    fmt::print(
        "agent ready: protocol={}.{} agent={} kernel={} cpus={} memory_kib={} kernel_boot_ms={:.1f} "
        "agent_ready_ms={:.1f} boot_to_agent_ms={:.1f}\n",
        hello.protocol_major, hello.protocol_minor, hello.agent_version, hello.kernel_release,
        hello.cpus_online, hello.mem_total_kib, ms(hello.agent_start_ns), ms(hello.agent_ready_ns),
        std::chrono::duration<double, std::milli>((*sandbox)->boot_to_agent()).count());
    std::fflush(stdout);
    auto status = (*sandbox)->shutdown();
    if (!status) {
        fmt::print(stderr, "sandlot: error: shutdown: {}\n", status.error().to_string());
        return 1;
    }
    if (*status != 0) {
        fmt::print(stderr, "sandlot: error: sandlot-vmm exited with status {}\n", *status);
        return 1;
    }
    fmt::print("sandbox stopped cleanly\n");
    return 0;
}

}  // namespace

CommandRunner add_boot_command(CLI::App& app) {
    auto args = std::make_shared<BootArgs>();
    auto* cmd =
        app.add_subcommand("boot", "Boot a sandbox, print the agent's greeting and boot time, shut down");
    cmd->add_option("--memory", args->options.memory_mib, "Guest memory in MiB")->capture_default_str();
    cmd->add_option("--cpus", args->options.cpus, "Number of vCPUs")->capture_default_str();
    cmd->add_option("--kernel", args->options.kernel, "Guest kernel (vmlinux or bzImage)");
    cmd->add_option("--initrd", args->options.initrd, "Guest initramfs");
    cmd->add_option("--cmdline", args->options.cmdline, "Extra kernel command line");
    cmd->add_option("--console", args->options.console, "Guest console: none, stdout or file:PATH")
        ->capture_default_str();
    cmd->add_option("--timeout", args->timeout_s, "Seconds to wait for the agent")->capture_default_str();
    cmd->add_flag("--poll", args->options.wait_by_polling,
                  "Wait for the agent by retrying vsock CONNECT instead of its boot notification");
    return [args] { return run_boot(*args); };
}

}  // namespace sandlot::cli
