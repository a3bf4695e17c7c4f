// sandlot-fuse-run: serves a host directory through sandlot's FUSE server (vmm::fs::PassthroughFs, the same
// request handlers a guest reaches through virtio-fs) on a /dev/fuse mount, runs one command, unmounts.
// The storage benchmark's host part uses it to measure the server without a VM. See benchmarks/README.md.
//
//   sandlot-fuse-run --source DIR --mountpoint MNT [--threads N] -- COMMAND [ARGS...]
//
// Exit status: COMMAND's (128+N for signal N); 1 if the mount or the spawn failed. Needs root (mounting).
// Threads: this one waits for COMMAND; FuseDevMount's serving threads answer the kernel meanwhile.
#include <spawn.h>
#include <sys/wait.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "proto/base/error.h"
#include "vmm/devices/fs/fuse_dev_mount.h"
#include "vmm/devices/fs/passthrough_fs.h"

extern char** environ;

namespace sandlot::bench {
namespace {

struct Options {
    std::string source;
    std::string mountpoint;
    int threads = 2;
    std::vector<std::string> command;
};

Result<int> run_command(const std::vector<std::string>& command) {
    std::vector<char*> argv;
    for (const auto& a : command)
        argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    pid_t pid = -1;
    if (int err = posix_spawnp(&pid, argv[0], nullptr, nullptr, argv.data(), environ); err != 0)
        return make_error("spawn " + command[0], err);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return errno_error("waitpid");
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

Result<int> run(const Options& o) {
    auto server = TRY(vmm::fs::PassthroughFs::create(
        {.root = o.source, .read_only = false, .cache_timeout = std::chrono::milliseconds(1000)}));
    auto mount = TRY(vmm::fs::FuseDevMount::mount(o.mountpoint, *server, o.threads));
    int status = TRY(run_command(o.command));
    mount.reset();  // unmount before the server goes away
    return status;
}

}  // namespace
}  // namespace sandlot::bench

int main(int argc, char** argv) {
    sandlot::bench::Options o;
    CLI::App app{"Serves DIR through sandlot's FUSE server at MNT while COMMAND runs.", "sandlot-fuse-run"};
    app.add_option("--source", o.source, "host directory to serve")->required();
    app.add_option("--mountpoint", o.mountpoint, "where to mount it (an existing directory)")->required();
    app.add_option("--threads", o.threads, "serving threads")
        ->capture_default_str()
        ->check(CLI::Range(1, 64));
    app.add_option("command", o.command, "command to run while mounted")->required();
    app.positionals_at_end();
    CLI11_PARSE(app, argc, argv);
    auto status = sandlot::bench::run(o);
    if (!status) {
        std::fprintf(stderr, "sandlot-fuse-run: error: %s\n", status.error().to_string().c_str());
        return 1;
    }
    return *status;
}
