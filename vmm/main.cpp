// sandlot-vmm: boots one microVM and runs it until the guest restarts or crashes.
//
//   sandlot-vmm --kernel PATH [--initrd PATH] [--cmdline STR] [--memory MiB] [--cpus N]
//               [--vsock-uds PATH] [--vsock-cid N] [--console stdout|none|file:PATH] [--allow-pvm]
//
// Exit status: 0 when the guest restarted (or powered off) in an orderly way, 1 when it crashed or the VMM
// failed, 2 for a usage error. On success nothing is printed but the guest console; every error is one line
// "sandlot-vmm: error: <what>" on stderr.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <optional>
#include <string>

#include "proto/base/error.h"
#include "vmm/arch/x86/mptable.h"
#include "vmm/devices/virtio/attach.h"
#include "vmm/devices/vsock/vsock_device.h"
#include "vmm/machine.h"
#include "vmm/memory/layout.h"

namespace {

using sandlot::vmm::MachineConfig;
using sandlot::vmm::layout::kMaxMemoryMiB;
using sandlot::vmm::layout::kMinMemoryMiB;

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
// CONFIG_NR_CPUS of the sandlot guest kernel. Machine::create() further caps it at KVM's max vCPUs.
constexpr uint32_t kMaxCpus = 64;
static_assert(kMaxCpus <= sandlot::vmm::x86::kMpMaxCpus, "the MP table must be able to list every vCPU");

// vsock device options, carried to the spot in run_vmm() where the device is built.
struct VsockOptions {
    std::string uds_path;    // host Unix socket that stands for the host side; empty: no vsock device
    uint32_t guest_cid = 3;  // 0-2 are reserved (hypervisor, local, host)
};

int fail(int status, std::string message) {
    std::replace(message.begin(), message.end(), '\n', ' ');  // one line, always
    std::fprintf(stderr, "sandlot-vmm: error: %s\n", message.c_str());
    return status;
}

// MemTotal from /proc/meminfo, in MiB; nullopt if it cannot be read.
std::optional<uint64_t> host_memory_mib() {
    std::ifstream meminfo("/proc/meminfo");
    std::string key;
    uint64_t kib = 0;
    while (meminfo >> key >> kib) {
        if (key == "MemTotal:") return kib / 1024;
        meminfo.ignore(1 << 10, '\n');
    }
    return std::nullopt;
}

// A regular file we can open for reading; on failure errno says why (EISDIR for a directory and the like).
bool readable_file(const std::string& path) {
    sandlot::UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return false;
    struct stat st;
    if (fstat(fd.get(), &st) != 0) return false;
    if (!S_ISREG(st.st_mode)) {
        errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
        return false;
    }
    return true;
}

bool valid_console(const std::string& console) {
    return console == "stdout" || console == "none" || (console.starts_with("file:") && console.size() > 5);
}

// Checks what can be checked without KVM. Returns an error message, or an empty string.
std::string validate(const MachineConfig& config, const VsockOptions& vsock) {
    if (config.memory_mib < kMinMemoryMiB || config.memory_mib > kMaxMemoryMiB) {
        return "--memory must be between " + std::to_string(kMinMemoryMiB) + " and " +
               std::to_string(kMaxMemoryMiB) + " MiB";
    }
    if (auto host_mib = host_memory_mib(); host_mib && config.memory_mib > *host_mib) {
        return "--memory " + std::to_string(config.memory_mib) + " MiB is more than this host's RAM (" +
               std::to_string(*host_mib) + " MiB)";
    }
    if (config.vcpus < 1 || config.vcpus > kMaxCpus)
        return "--cpus must be between 1 and " + std::to_string(kMaxCpus);
    if (!readable_file(config.kernel)) return "--kernel " + config.kernel + ": " + std::strerror(errno);
    if (config.initrd && !readable_file(*config.initrd)) {
        return "--initrd " + *config.initrd + ": " + std::strerror(errno);
    }
    if (!valid_console(config.console)) return "--console must be stdout, none or file:PATH";
    if (!vsock.uds_path.empty() && vsock.uds_path.size() >= sizeof(sockaddr_un{}.sun_path)) {
        return "--vsock-uds path is too long for a Unix socket";
    }
    if (vsock.guest_cid < 3 || vsock.guest_cid == UINT32_MAX)
        return "--vsock-cid must be between 3 and 4294967294";
    return {};
}

int run_vmm(int argc, char** argv) {
    MachineConfig config;
    std::string initrd;
    VsockOptions vsock;

    CLI::App app{"Boots a sandlot microVM and runs it until the guest restarts or crashes.", "sandlot-vmm"};
    app.add_option("--kernel", config.kernel, "guest kernel: ELF vmlinux with a PVH note, or bzImage")
        ->required();
    app.add_option("--initrd", initrd, "initramfs image");
    app.add_option("--cmdline", config.cmdline_extra, "appended to the kernel command line");
    app.add_option("--memory", config.memory_mib, "guest memory in MiB")->capture_default_str();
    app.add_option("--cpus", config.vcpus, "number of vCPUs")->capture_default_str();
    app.add_option("--vsock-uds", vsock.uds_path, "host Unix socket for the guest's virtio-vsock device");
    app.add_option("--vsock-cid", vsock.guest_cid, "the guest's vsock context id")->capture_default_str();
    app.add_option("--console", config.console, "guest console output: stdout, none or file:PATH")
        ->capture_default_str();
    app.add_flag("--allow-pvm", config.allow_pvm,
                 "run on a PVM /dev/kvm (the guest kernel must be PVM-enabled)");

    try {  // CLI11 reports parse results, including --help, as exceptions
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);  // --help
        return fail(kExitUsage, e.what());
    }
    if (!initrd.empty()) config.initrd = initrd;
    if (std::string problem = validate(config, vsock); !problem.empty()) return fail(kExitUsage, problem);

    auto machine = sandlot::vmm::Machine::create(config);
    if (!machine) return fail(kExitFailure, machine.error().to_string());

    if (!vsock.uds_path.empty()) {
        auto device = sandlot::vmm::vsock::VsockDevice::create(vsock.guest_cid, vsock.uds_path,
                                                               (*machine)->event_loop());
        if (!device) return fail(kExitFailure, device.error().to_string());
        if (auto attached = sandlot::vmm::virtio::attach_virtio_device(**machine, *device); !attached)
            return fail(kExitFailure, attached.error().to_string());
    }

    auto status = (*machine)->run();
    if (!status) return fail(kExitFailure, status.error().to_string());
    return *status;
}

}  // namespace

int main(int argc, char** argv) {
    // A console or vsock peer that goes away must show up as EPIPE on the write, not kill the VMM.
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, nullptr);

    try {
        return run_vmm(argc, argv);
    } catch (const std::exception& e) {  // e.g. std::bad_alloc: still one line and a status, never an abort
        return fail(kExitFailure, e.what());
    } catch (...) {
        return fail(kExitFailure, "unexpected internal error");
    }
}
