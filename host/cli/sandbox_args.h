// Options shared by `sandlot run`, `create` and `exec`: what a sandbox is (SandboxArgs) and what runs in it
// and how (ProcessArgs), and the one-line failure convention of every command.
#pragma once

#include <CLI/CLI.hpp>
#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "host/cli/storage_args.h"
#include "host/lib/exec.h"
#include "host/lib/image_store.h"
#include "host/lib/lifecycle.h"
#include "host/lib/sandbox_config.h"
#include "host/lib/state_db.h"
#include "proto/base/error.h"

namespace sandlot::cli {

// sandlot itself failed, not a command in a sandbox (docker uses the same number).
inline constexpr int kSandlotFailed = 125;

// Prints "sandlot: error: MESSAGE" and returns kSandlotFailed.
int fail(const std::string& message);
int fail(const Error& error);

struct SandboxArgs {
    uint64_t memory_mib = 256;
    uint32_t cpus = 1;
    double boot_timeout_s = 60;
    StorageArgs storage;
    std::vector<std::string> labels;  // k=v
    std::string max_duration;         // "" = none
    std::string idle_timeout;
    std::string pull = "missing";    // an OCI image's pull policy: always, missing, never
    bool insecure_registry = false;  // pull it over plain HTTP
};

struct ProcessArgs {
    std::vector<std::string> env;  // K=V, or K to take K's value from this environment
    std::string workdir;
    std::string user;
    bool tty = false;
    bool interactive = false;
    double timeout_s = 0;
    std::vector<std::string> command;
};

void add_sandbox_options(CLI::App& cmd, SandboxArgs& args);
// -e, -w, -u, -t, -i, --timeout (not the command itself).
void add_process_options(CLI::App& cmd, ProcessArgs& args);

// The sandbox's configuration; host paths become absolute. Defaults for every command (-e/-w/-u given
// to `create`) go into its storage defaults. An OCI image (--image REF) is pulled per --pull, its prepared
// root becomes the sandbox's root and its Env/WorkingDir/User the defaults under those given here; its
// Entrypoint and Cmd go to `image` when given.
Result<host::SandboxConfig> to_config(const SandboxArgs& args,
                                      std::optional<host::ImageRunConfig>* image = nullptr);
Result<host::Labels> to_labels(const std::vector<std::string>& labels);
// The exec request for `args.command`, with the terminal's size and TERM for -t.
Result<host::ExecRequest> make_request(const ProcessArgs& args);
// Docker-style KEY=VALUE list, a bare KEY taking this environment's value.
Result<std::vector<std::string>> resolve_env(const std::vector<std::string>& entries);

std::chrono::milliseconds to_ms(double seconds);

// "512 B", "1.5 MiB".
std::string human_bytes(uint64_t bytes);

// Runs `request` in the running sandbox NAME with this terminal attached (run_command.cpp); returns sandlot's
// exit status: the command's, or 125 after one error line.
int run_in_sandbox(host::SandboxHome& home, const std::string& name, const host::ExecRequest& request,
                   const ProcessArgs& args, int pending_signal = 0);

}  // namespace sandlot::cli
