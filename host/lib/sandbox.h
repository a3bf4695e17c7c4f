// A running microVM with its agent: the host library's front door.
//
//   auto sandbox = TRY(Sandbox::boot(options));     // spawns sandlot-vmm, waits for agentd's HELLO
//   sandbox->agent().ping();
//   int status = TRY(sandbox->shutdown());          // orderly power-off; the VMM's exit status
//
// The VMM runs as a child process; a Sandbox that goes away kills it and removes its runtime directory.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "host/lib/agent_connection.h"
#include "host/lib/guest_fs.h"
#include "host/lib/process.h"
#include "host/lib/storage.h"
#include "proto/base/error.h"

namespace sandlot::host {

// agentd's vsock ports: it listens on kAgentPort; at boot it connects to the host on kAgentNotifyPort.
inline constexpr uint32_t kAgentPort = 1024;
inline constexpr uint32_t kAgentNotifyPort = 1025;

struct SandboxOptions {
    std::string kernel;  // default: guest_dir()/vmlinux
    std::string initrd;  // default: guest_dir()/initramfs.cpio.gz
    std::string vmm;     // default: bin_dir()/sandlot-vmm
    uint64_t memory_mib = 256;
    uint32_t cpus = 1;
    std::string cmdline;  // appended to the kernel command line
    // sandlot-vmm --console: none | stdout | file:PATH. "none" still keeps the guest console in the runtime
    // directory, so that a guest that fails to boot (agentd cannot mount the root, ...) can say why.
    std::string console = "none";
    std::optional<std::string> vmm_log;  // the VMM's stdout+stderr go here (else inherited)
    std::chrono::milliseconds ready_timeout{60'000};
    // Wait for the agent by retrying CONNECT instead of its boot-time notification connection.
    bool wait_by_polling = false;
    StorageOptions storage;  // root filesystem, volumes, patches, exec defaults
    // Where the vsock socket, the boot archive and the console log go. "" = a fresh private directory,
    // removed with the Sandbox; a given one is kept (the supervisor uses the sandbox's own directory).
    std::string runtime_dir;
    std::vector<std::string> vmm_args;  // more sandlot-vmm arguments (--stats-file, --parent-pid)
};

class Sandbox {
  public:
    static Result<std::unique_ptr<Sandbox>> boot(SandboxOptions options);
    ~Sandbox();

    AgentConnection& agent() { return *agent_; }
    // Files in the guest, as `user` ("" = the sandbox's default user).
    GuestFs fs(std::string user = {}) { return GuestFs(*agent_, std::move(user)); }
    const proto::Hello& hello() const { return agent_->hello(); }
    // Host-measured time from spawning the VMM to receiving the agent's HELLO.
    std::chrono::nanoseconds boot_to_agent() const { return boot_to_agent_; }
    const std::string& vsock_uds() const { return vsock_uds_; }
    const std::string& runtime_dir() const { return runtime_dir_; }
    pid_t vmm_pid() const { return vmm_->pid(); }
    int vmm_pidfd() const { return vmm_->pidfd(); }  // readable once the VMM has exited

    // A new connection to the agent through the vsock socket's CONNECT handshake.
    Result<std::unique_ptr<AgentConnection>> connect();

    // Asks the agent to power off and waits for the VMM to exit; returns its exit status (0 = clean).
    Result<int> shutdown(std::chrono::milliseconds timeout = std::chrono::seconds(30));
    // Waits for the VMM to exit on its own.
    Result<int> wait(std::chrono::milliseconds timeout);
    void kill();

  private:
    Sandbox() = default;
    Result<void> wait_for_agent();
    std::string console_log() const;
    // agentd's last console line ("agentd: ..."), if any: why a guest stopped during boot.
    std::string agent_last_words() const;

    SandboxOptions options_;
    std::string runtime_dir_;
    bool own_runtime_dir_ = false;
    std::string vsock_uds_;
    PreparedStorage storage_;
    std::optional<ChildProcess> vmm_;
    std::unique_ptr<AgentConnection> agent_;
    std::chrono::nanoseconds boot_to_agent_{0};
};

}  // namespace sandlot::host
