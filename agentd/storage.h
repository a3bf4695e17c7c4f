// The guest's storage at boot, as the host's boot configuration (proto/boot_config.h) describes it: the root
// filesystem (the initramfs itself, a virtio-fs share or a disk, optionally under an overlayfs upper on tmpfs
// or a disk), the switch into it, patches, scripts, volumes and the hostname.
//
// PID 1 runs setup_storage() once, after setup_pid1() and before the server listens. The order:
//   1. root: mount the source read-only (at <staging>/newroot when there is no upper; else at
//      <staging>/lower, the upper at <staging>/upper and overlayfs at <staging>/newroot), then switch into it
//      the way switch_root does for an initramfs (pivot_root does not work on rootfs): fresh tmpfs on /tmp
//      and /run in the new root, /dev (with /dev/pts and /dev/shm), /sys and /proc moved there, the new root
//      moved onto "/" and chroot'ed into.
//   2. patches, in order, on the new root (the writable layer: a patch under a volume's target lands in the
//      root and is hidden by the volume);
//   3. scripts into proto::kScriptDir;
//   4. the old initramfs's files are deleted (its sources are no longer needed; agentd's own binary stays
//      mapped), freeing the RAM they held;
//   5. volumes, in order; targets are made (mkdir -p) inside the new root;
//   6. the hostname.
// With the initramfs as the root there is no switch: 2-6 happen on "/" as it is, and nothing is deleted.
//
// Every path the configuration names is resolved inside the new root (see agentd/patches.h); mount targets
// are opened that way and mounted through /proc/self/fd, so a symlink in the root image cannot redirect a
// mount either. Errors read "<what>: <why>"; the caller logs them and powers off.
//
// Single-threaded, PID 1 only (it changes the process's root); tests run it in a private mount namespace.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include "agentd/disk_lookup.h"
#include "proto/base/error.h"
#include "proto/boot_config.h"

namespace sandlot::agent {

// Reads and parses the boot configuration. A missing file is nullopt (the initramfs is the root, as before);
// an unreadable or malformed one is an error.
Result<std::optional<proto::BootConfig>> load_boot_config(const std::string& path = proto::kBootConfigPath);

struct StorageEnvironment {
    std::string staging = "/sandlot";  // lower/, upper/ and newroot/ are made in it (in the initramfs)
    DiskLookupPaths disks;
    std::string proc_filesystems = "/proc/filesystems";
    std::chrono::milliseconds disk_wait = std::chrono::milliseconds(5000);  // for a disk that is late
    // After a root switch, delete the old root's files (only when it is a ramfs or tmpfs, i.e. an initramfs).
    bool free_initramfs = true;
};

Result<void> setup_storage(const proto::BootConfig& config, const StorageEnvironment& env = {});

}  // namespace sandlot::agent
