// Finding and mounting the guest's disks: virtio-blk devices are named by the serial the host gave them
// (/sys/block/vd*/serial), never by probe order, and their filesystem is probed when the host did not say.
//
// Used once at boot by PID 1, single-threaded. The sysfs root, /dev and /proc/filesystems are parameters so
// tests can point them at fake trees.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "proto/base/error.h"

namespace sandlot::agent {

struct DiskLookupPaths {
    std::string sysfs = "/sys";  // scanned: <sysfs>/block/vd*/serial
    std::string dev = "/dev";    // the device node is <dev>/<name>
};

// The serial a virtio-blk disk reports in sysfs: the file's text up to the first NUL or newline.
std::string_view trim_serial(std::string_view text);

// A whole small file (sysfs attributes, /proc files, the boot configuration), refusing more than max_bytes.
inline constexpr size_t kMaxSmallFile = 64 * 1024;
Result<std::string> read_small_file(const std::string& path, size_t max_bytes);

// The block device node of the virtio disk whose serial is `serial` ("/dev/vdb"), once both its sysfs entry
// and its node exist. Disks normally exist before init runs (virtio probes first); the lookup retries every
// few milliseconds for at most `wait` in case one is late. Two disks with the same serial are an error.
Result<std::string> find_disk_by_serial(std::string_view serial, const DiskLookupPaths& paths = {},
                                        std::chrono::milliseconds wait = std::chrono::milliseconds(5000));

// Filesystem types worth trying on a disk, from /proc/filesystems text: every type not marked "nodev", ext4
// first.
std::vector<std::string> probe_candidates(std::string_view proc_filesystems);

struct DiskMount {
    std::string device;  // "/dev/vdb"
    std::string target;  // a directory (may be /proc/self/fd/N)
    std::string fstype;  // "" = probe the candidates
    bool read_only = false;
    unsigned long extra_flags = 0;  // more MS_* flags
    std::string proc_filesystems = "/proc/filesystems";
};

// Mounts a disk. With an explicit fstype only that one is tried; else each candidate from
// /proc/filesystems in turn until one accepts the device. Returns the type that worked. The error names the
// device and what was tried (callers add what the disk is for).
Result<std::string> mount_disk(const DiskMount& request);

}  // namespace sandlot::agent
