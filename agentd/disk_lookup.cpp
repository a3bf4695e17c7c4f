#include "agentd/disk_lookup.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <thread>

#include "agentd/log.h"
#include "proto/base/unique_fd.h"

namespace sandlot::agent {

Result<std::string> read_small_file(const std::string& path, size_t max_bytes) {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return errno_error("open " + path);
    std::string text;
    char buf[4096];
    for (;;) {
        ssize_t n = read(fd.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("read " + path);
        if (n == 0) break;
        text.append(buf, static_cast<size_t>(n));
        if (text.size() > max_bytes) return make_error("read " + path + ": unexpectedly large");
    }
    return text;
}

namespace {

// Whole-disk virtio-blk names: "vd" followed by letters (partitions are not listed under /sys/block).
bool is_virtio_disk_name(std::string_view name) {
    if (name.size() < 3 || !name.starts_with("vd")) return false;
    return std::all_of(name.begin() + 2, name.end(), [](char c) { return c >= 'a' && c <= 'z'; });
}

struct Found {
    std::vector<std::string> names;  // disks whose serial matches
};

Found scan(std::string_view serial, const DiskLookupPaths& paths) {
    Found found;
    std::string block = paths.sysfs + "/block";
    DIR* dir = opendir(block.c_str());
    if (!dir) return found;
    while (dirent* entry = readdir(dir)) {
        std::string_view name = entry->d_name;
        if (!is_virtio_disk_name(name)) continue;
        auto text = read_small_file(block + "/" + std::string(name) + "/serial", kMaxSmallFile);
        if (text && trim_serial(*text) == serial) found.names.emplace_back(name);
    }
    closedir(dir);
    std::sort(found.names.begin(), found.names.end());
    return found;
}

bool is_block_device(const std::string& path) {
    struct stat st {};
    return stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode);
}

std::string join(const std::vector<std::string>& items) {
    std::string out;
    for (const auto& item : items)
        out += (out.empty() ? "" : ", ") + item;
    return out;
}

}  // namespace

std::string_view trim_serial(std::string_view text) {
    size_t end = text.find_first_of(std::string_view("\0\n", 2));
    if (end != std::string_view::npos) text = text.substr(0, end);
    return text;
}

Result<std::string> find_disk_by_serial(std::string_view serial, const DiskLookupPaths& paths,
                                        std::chrono::milliseconds wait) {
    if (serial.empty()) return make_error("empty disk serial");
    auto deadline = std::chrono::steady_clock::now() + wait;
    std::string missing_node;
    for (;;) {
        Found found = scan(serial, paths);
        if (found.names.size() > 1)
            return make_error("disk serial \"" + std::string(serial) + "\" is on several disks (" +
                              join(found.names) + ")");
        if (found.names.size() == 1) {
            std::string node = paths.dev + "/" + found.names.front();
            if (is_block_device(node)) return node;
            missing_node = node;
        }
        if (std::chrono::steady_clock::now() >= deadline) break;
        // Polling is the simple choice here: a late disk is rare, and there is no udev to wait on.
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!missing_node.empty())
        return make_error("disk \"" + std::string(serial) + "\": no block device at " + missing_node, ENOENT);
    return make_error("no disk with serial \"" + std::string(serial) + "\" in " + paths.sysfs + "/block",
                      ENODEV);
}

std::vector<std::string> probe_candidates(std::string_view text) {
    std::vector<std::string> types;
    bool has_ext4 = false;
    size_t pos = 0;
    while (pos < text.size()) {
        size_t end = text.find('\n', pos);
        if (end == std::string_view::npos) end = text.size();
        std::string_view line = text.substr(pos, end - pos);
        pos = end + 1;
        // "nodev\tproc" or "\text4"
        size_t tab = line.find('\t');
        if (tab == std::string_view::npos) continue;
        if (line.substr(0, tab).find("nodev") != std::string_view::npos) continue;
        std::string_view type = line.substr(tab + 1);
        while (!type.empty() && (type.back() == ' ' || type.back() == '\r'))
            type.remove_suffix(1);
        if (type.empty()) continue;
        if (type == "ext4") {
            has_ext4 = true;
            continue;
        }
        if (std::find(types.begin(), types.end(), type) == types.end()) types.emplace_back(type);
    }
    if (has_ext4) types.insert(types.begin(), "ext4");
    return types;
}

Result<std::string> mount_disk(const DiskMount& request) {
    std::vector<std::string> types;
    if (!request.fstype.empty()) {
        types.push_back(request.fstype);
    } else {
        auto text = read_small_file(request.proc_filesystems, kMaxSmallFile);
        if (!text) return std::unexpected(text.error());
        types = probe_candidates(*text);
        if (types.empty()) return make_error("no block filesystems listed in " + request.proc_filesystems);
    }
    unsigned long flags = request.extra_flags | (request.read_only ? MS_RDONLY : 0);
    std::string what = "mount " + request.device;
    int telling_errno = 0;  // the first error that says more than "not this type"
    for (const std::string& type : types) {
        if (mount(request.device.c_str(), request.target.c_str(), type.c_str(), flags, nullptr) == 0)
            return type;
        int err = errno;
        // A read-only disk whose journal needs replaying (its last writer was killed) cannot be mounted as
        // is: mount it without replaying, which shows the state as of the last commit.
        if (err == EROFS && request.read_only && type.starts_with("ext") &&
            mount(request.device.c_str(), request.target.c_str(), type.c_str(), flags, "noload") == 0) {
            log_line(request.device +
                     ": journal not replayed (read-only disk); recent writes may be missing");
            return type;
        }
        if (types.size() == 1) return make_error(what + " (" + type + ")", err);
        if (telling_errno == 0 && err != EINVAL && err != ENODEV) telling_errno = err;
    }
    if (telling_errno != 0) return make_error(what + " (tried " + join(types) + ")", telling_errno);
    return make_error(what + ": no filesystem recognised it (tried " + join(types) + ")");
}

}  // namespace sandlot::agent
