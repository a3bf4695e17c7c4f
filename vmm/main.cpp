// sandlot-vmm: boots one microVM and runs it until the guest restarts or crashes.
//
//   sandlot-vmm --kernel PATH [--initrd PATH]... [--cmdline STR] [--memory MiB] [--cpus N]
//               [--vsock-uds PATH] [--vsock-cid N] [--disk PATH[,ro][,serial=ID]]...
//               [--fs TAG=DIR[,ro]]... [--console stdout|none|file:PATH] [--stats-file PATH]
//               [--parent-pid PID] [--allow-pvm]
//
// Several --initrd files are concatenated (the kernel unpacks each archive in turn). Disks become
// /dev/vda, /dev/vdb, ... in the order given; the guest finds them by serial (/sys/block/vd*/serial). Each
// --fs shares a host directory through virtio-fs under TAG (mount -t virtiofs TAG DIR in the guest).
// --stats-file PATH publishes the devices' I/O counters (proto/vmm_stats.h) in a file the host maps.
//
// Exit status: 0 when the guest restarted (or powered off) in an orderly way, 1 when it crashed or the VMM
// failed, 2 for a usage error. On success nothing is printed but the guest console; every error is one line
// "sandlot-vmm: error: <what>" on stderr.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
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
#include <vector>

#include "proto/base/error.h"
#include "vmm/arch/x86/mptable.h"
#include "vmm/devices/blk/blk_device.h"
#include "vmm/devices/fs/fs_device.h"
#include "vmm/devices/fs/passthrough_fs.h"
#include "vmm/devices/virtio/attach.h"
#include "vmm/devices/vsock/vsock_device.h"
#include "vmm/machine.h"
#include "vmm/memory/layout.h"
#include "vmm/stats_file.h"

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

struct FsShare {
    std::string tag;
    std::string dir;
    bool read_only = false;
};

// Splits "VALUE,opt,key=value" at commas. Paths with commas cannot be given; nothing we create has them.
std::vector<std::string> split_commas(const std::string& spec) {
    std::vector<std::string> parts;
    size_t start = 0;
    for (;;) {
        size_t comma = spec.find(',', start);
        parts.push_back(spec.substr(start, comma - start));
        if (comma == std::string::npos) return parts;
        start = comma + 1;
    }
}

// --disk PATH[,ro][,serial=ID]
sandlot::Result<sandlot::vmm::blk::BlkConfig> parse_disk(const std::string& spec) {
    auto parts = split_commas(spec);
    sandlot::vmm::blk::BlkConfig disk;
    disk.path = parts[0];
    if (disk.path.empty()) return sandlot::make_error("--disk " + spec + ": no image path");
    for (size_t i = 1; i < parts.size(); ++i) {
        if (parts[i] == "ro") {
            disk.read_only = true;
        } else if (parts[i] == "rw") {
            disk.read_only = false;
        } else if (parts[i].starts_with("serial=")) {
            disk.serial = parts[i].substr(7);
            if (disk.serial.size() > 20)
                return sandlot::make_error("--disk " + spec + ": serial is over 20 bytes");
        } else {
            return sandlot::make_error("--disk " + spec + ": unknown option \"" + parts[i] +
                                       "\" (ro, rw, serial=ID)");
        }
    }
    return disk;
}

// --fs TAG=DIR[,ro]
sandlot::Result<FsShare> parse_fs(const std::string& spec) {
    auto parts = split_commas(spec);
    size_t eq = parts[0].find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == parts[0].size())
        return sandlot::make_error("--fs " + spec + ": expected TAG=DIR[,ro]");
    FsShare share{parts[0].substr(0, eq), parts[0].substr(eq + 1)};
    if (share.tag.size() > 36) return sandlot::make_error("--fs " + spec + ": tag is over 36 bytes");
    for (size_t i = 1; i < parts.size(); ++i) {
        if (parts[i] == "ro") {
            share.read_only = true;
        } else if (parts[i] == "rw") {
            share.read_only = false;
        } else {
            return sandlot::make_error("--fs " + spec + ": unknown option \"" + parts[i] + "\" (ro, rw)");
        }
    }
    return share;
}

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
    for (const std::string& initrd : config.initrds) {
        if (!readable_file(initrd)) return "--initrd " + initrd + ": " + std::strerror(errno);
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
    VsockOptions vsock;
    std::vector<std::string> disk_specs, fs_specs;
    std::string stats_path;
    pid_t parent_pid = 0;

    CLI::App app{"Boots a sandlot microVM and runs it until the guest restarts or crashes.", "sandlot-vmm"};
    app.add_option("--kernel", config.kernel, "guest kernel: ELF vmlinux with a PVH note, or bzImage")
        ->required();
    app.add_option("--initrd", config.initrds, "initramfs image (repeat to concatenate several)");
    app.add_option("--cmdline", config.cmdline_extra, "appended to the kernel command line");
    app.add_option("--memory", config.memory_mib, "guest memory in MiB")->capture_default_str();
    app.add_option("--cpus", config.vcpus, "number of vCPUs")->capture_default_str();
    app.add_option("--vsock-uds", vsock.uds_path, "host Unix socket for the guest's virtio-vsock device");
    app.add_option("--vsock-cid", vsock.guest_cid, "the guest's vsock context id")->capture_default_str();
    app.add_option("--disk", disk_specs, "virtio-blk disk: PATH[,ro][,serial=ID] (repeatable)");
    app.add_option("--fs", fs_specs, "virtio-fs share of a host directory: TAG=DIR[,ro] (repeatable)");
    app.add_option("--console", config.console, "guest console output: stdout, none or file:PATH")
        ->capture_default_str();
    app.add_option("--stats-file", stats_path, "publish I/O counters in this file (created, mode 0600)");
    app.add_option("--parent-pid", parent_pid,
                   "end (SIGKILL) when this process, our parent, exits: a supervisor's VM dies with it");
    app.add_flag("--allow-pvm", config.allow_pvm,
                 "run on a PVM /dev/kvm (the guest kernel must be PVM-enabled)");

    try {  // CLI11 reports parse results, including --help, as exceptions
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);  // --help
        return fail(kExitUsage, e.what());
    }
    if (std::string problem = validate(config, vsock); !problem.empty()) return fail(kExitUsage, problem);
    if (parent_pid > 0) {
        // The death signal is armed first, then the parent checked: a parent that died in between is seen.
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent_pid) return fail(kExitFailure, "--parent-pid: the parent has already exited");
    }
    std::vector<sandlot::vmm::blk::BlkConfig> disks;
    for (const std::string& spec : disk_specs) {
        auto disk = parse_disk(spec);
        if (!disk) return fail(kExitUsage, disk.error().to_string());
        disks.push_back(std::move(*disk));
    }
    std::vector<FsShare> shares;
    for (const std::string& spec : fs_specs) {
        auto share = parse_fs(spec);
        if (!share) return fail(kExitUsage, share.error().to_string());
        shares.push_back(std::move(*share));
    }

    // Declared before the machine and the devices, so it outlives every device that counts into it.
    auto stats = stats_path.empty() ? sandlot::vmm::StatsFile::private_instance()
                                    : sandlot::vmm::StatsFile::create(stats_path);
    if (!stats) return fail(kExitFailure, stats.error().to_string());
    sandlot::proto::VmmStats* counters = &stats->stats();

    auto machine = sandlot::vmm::Machine::create(config);
    if (!machine) return fail(kExitFailure, machine.error().to_string());

    if (!vsock.uds_path.empty()) {
        auto device = sandlot::vmm::vsock::VsockDevice::create(vsock.guest_cid, vsock.uds_path,
                                                               (*machine)->event_loop());
        if (!device) return fail(kExitFailure, device.error().to_string());
        if (auto attached = sandlot::vmm::virtio::attach_virtio_device(**machine, *device); !attached)
            return fail(kExitFailure, attached.error().to_string());
    }

    // Disks and shares come after vsock so that their slots (and so /dev/vdX names) follow the order given.
    for (auto& disk : disks) {
        disk.stats = counters;
        auto device = sandlot::vmm::blk::BlkDevice::create(disk, (*machine)->event_loop());
        if (!device) return fail(kExitFailure, device.error().to_string());
        if (auto attached = sandlot::vmm::virtio::attach_virtio_device(**machine, *device); !attached)
            return fail(kExitFailure, attached.error().to_string());
    }
    for (const auto& share : shares) {
        auto server = sandlot::vmm::fs::PassthroughFs::create({share.dir, share.read_only});
        if (!server) return fail(kExitFailure, "--fs " + share.tag + ": " + server.error().to_string());
        auto device = sandlot::vmm::fs::FsDevice::create(
            share.tag, std::shared_ptr<sandlot::vmm::fs::FuseHandler>(std::move(*server)),
            (*machine)->event_loop(), counters);
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
