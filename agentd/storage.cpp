#include "agentd/storage.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>

#include "agentd/log.h"
#include "agentd/patches.h"
#include "agentd/shutdown.h"
#include "proto/base/unique_fd.h"

namespace sandlot::agent {

namespace {

constexpr size_t kMaxBootConfig = 16 << 20;  // the host writes a few KiB; never read without bound
constexpr unsigned long kTmpfsFlags = MS_NOSUID | MS_NODEV;

using proto::BootMount;
using proto::BootRoot;

template <class T>
Result<T> in_context(Result<T> result, const std::string& context) {
    if (!result) return std::unexpected(with_context(std::move(result).error(), context));
    return result;
}

// mount(2) follows this magic link to the directory the fd was opened on, so a target that was resolved
// inside the new root stays the one that gets mounted on.
std::string fd_path(int fd) {
    return "/proc/self/fd/" + std::to_string(fd);
}

std::string tmpfs_options(const char* mode, uint64_t size_bytes) {
    std::string options = std::string("mode=") + mode;
    if (size_bytes != 0) options += ",size=" + std::to_string(size_bytes);
    return options;
}

Result<void> do_mount(const std::string& source, const std::string& target, const char* fstype,
                      unsigned long flags, const std::string& data, const std::string& what) {
    if (mount(source.c_str(), target.c_str(), fstype, flags, data.empty() ? nullptr : data.c_str()) != 0)
        return errno_error(what);
    return {};
}

// A directory of our own in the initramfs (staging).
Result<void> ensure_dir(const std::string& path, mode_t mode) {
    if (mkdir(path.c_str(), mode) != 0 && errno != EEXIST) return errno_error("mkdir " + path);
    return {};
}

Result<std::string> find_disk(const std::string& serial, const StorageEnvironment& env) {
    return find_disk_by_serial(serial, env.disks, env.disk_wait);
}

// The root's source, always read-only: it is either used as is or the overlay's lower layer.
Result<void> mount_root_source(const BootRoot& root, const std::string& target,
                               const StorageEnvironment& env) {
    switch (root.kind) {
        case BootRoot::Kind::VirtioFs:
            // virtiofs always checks permissions in the guest (default_permissions is implied, and refused as
            // an option).
            return do_mount(root.source, target, "virtiofs", MS_RDONLY, "",
                            "mount virtio-fs " + root.source + " on " + target);
        case BootRoot::Kind::Disk: {
            std::string context = "root disk " + root.source;
            std::string device = TRY(in_context(find_disk(root.source, env), context));
            DiskMount request{device, target, root.fstype, true, 0, env.proc_filesystems};
            TRY(in_context(mount_disk(request), context));
            return {};
        }
        case BootRoot::Kind::Initramfs:
            break;
    }
    return make_error("the initramfs root has nothing to mount");
}

Result<void> mount_upper(const BootRoot& root, const std::string& target, const StorageEnvironment& env) {
    if (root.upper == BootRoot::Upper::Tmpfs)
        return do_mount("tmpfs", target, "tmpfs", 0, tmpfs_options("0755", root.upper_size_bytes),
                        "mount tmpfs upper on " + target);
    std::string context = "upper disk " + root.upper_source;
    std::string device = TRY(in_context(find_disk(root.upper_source, env), context));
    DiskMount request{device, target, "", false, 0, env.proc_filesystems};
    TRY(in_context(mount_disk(request), context));
    freeze_at_power_off(target, device);  // opened now: the staging mount is detached later
    return {};
}

// upper/ and work/ in the upper filesystem; a new upper/ takes the lower root's mode and owner, since the
// overlay's root directory shows the upper's.
Result<void> prepare_upper_dirs(const std::string& upper, const std::string& lower) {
    std::string upper_dir = upper + "/upper";
    if (mkdir(upper_dir.c_str(), 0755) == 0) {
        struct stat st {};
        if (stat(lower.c_str(), &st) != 0) return errno_error("stat " + lower);
        if (chown(upper_dir.c_str(), st.st_uid, st.st_gid) != 0) return errno_error("chown " + upper_dir);
        if (chmod(upper_dir.c_str(), st.st_mode & 07777) != 0) return errno_error("chmod " + upper_dir);
    } else if (errno != EEXIST) {
        return errno_error("mkdir " + upper_dir);
    }
    return ensure_dir(upper + "/work", 0700);
}

// Mounts the new root at <staging>/newroot and returns that path.
Result<std::string> mount_new_root(const BootRoot& root, const StorageEnvironment& env) {
    std::string newroot = env.staging + "/newroot";
    TRY(ensure_dir(env.staging, 0755));
    TRY(ensure_dir(newroot, 0755));
    if (root.upper == BootRoot::Upper::None) {
        TRY(mount_root_source(root, newroot, env));
        return newroot;
    }
    std::string lower = env.staging + "/lower";
    std::string upper = env.staging + "/upper";
    TRY(ensure_dir(lower, 0755));
    TRY(ensure_dir(upper, 0755));
    TRY(mount_root_source(root, lower, env));
    TRY(mount_upper(root, upper, env));
    TRY(prepare_upper_dirs(upper, lower));
    std::string options = "lowerdir=" + lower + ",upperdir=" + upper + "/upper,workdir=" + upper + "/work";
    TRY(do_mount("overlay", newroot, "overlay", 0, options, "mount overlayfs on " + newroot));
    // The overlay holds private clones of its layers: the staging mounts can go (nothing could reach them
    // after the switch anyway).
    umount2(lower.c_str(), MNT_DETACH);
    umount2(upper.c_str(), MNT_DETACH);
    return newroot;
}

// A mount point inside the new root, resolved there (a symlink in the image cannot move it elsewhere).
Result<UniqueFd> mount_point(int root_fd, const std::string& path, mode_t mode) {
    return in_context(make_dirs_in_root(root_fd, path, mode), "mount point " + path);
}

// Like switch_root(8): pivot_root(2) cannot take rootfs away, so the new root is moved onto "/" instead.
Result<void> switch_root(const std::string& newroot) {
    UniqueFd root_fd(open(newroot.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!root_fd) return errno_error("open " + newroot);

    // Fresh /tmp and /run (scripts land in /run); the initramfs's copies are empty and go away.
    umount2("/tmp", MNT_DETACH);
    umount2("/run", MNT_DETACH);
    struct Fresh {
        const char* path;
        const char* mode;
        mode_t dir_mode;
    };
    for (const Fresh& fresh : {Fresh{"/tmp", "1777", 01777}, Fresh{"/run", "0755", 0755}}) {
        UniqueFd dir = TRY(mount_point(root_fd.get(), fresh.path, fresh.dir_mode));
        TRY(do_mount("tmpfs", fd_path(dir.get()), "tmpfs", kTmpfsFlags, tmpfs_options(fresh.mode, 0),
                     std::string("mount tmpfs on ") + fresh.path));
    }
    // /dev carries /dev/pts and /dev/shm with it. /proc goes last: the targets are reached through it.
    for (const char* path : {"/dev", "/sys", "/proc"}) {
        UniqueFd dir = TRY(mount_point(root_fd.get(), path, 0755));
        TRY(do_mount(path, fd_path(dir.get()), nullptr, MS_MOVE, "",
                     std::string("move ") + path + " into the new root"));
    }
    if (chdir(newroot.c_str()) != 0) return errno_error("chdir " + newroot);
    if (mount(newroot.c_str(), "/", nullptr, MS_MOVE, nullptr) != 0)
        return errno_error("move the new root onto /");
    if (chroot(".") != 0) return errno_error("chroot into the new root");
    if (chdir("/") != 0) return errno_error("chdir /");
    return {};
}

// Deletes the old root's files if it really is an initramfs (ramfs or tmpfs). Best effort.
void free_initramfs(int old_root_fd) {
    struct statfs sfs {};
    if (fstatfs(old_root_fd, &sfs) != 0) return;
    if (static_cast<unsigned long>(sfs.f_type) != RAMFS_MAGIC &&
        static_cast<unsigned long>(sfs.f_type) != TMPFS_MAGIC)
        return;
    if (auto ok = remove_tree_contents(old_root_fd); !ok)
        log_line("storage: freeing the initramfs: " + ok.error().to_string());
}

Result<void> mount_volume(int root_fd, const BootMount& volume, const StorageEnvironment& env) {
    UniqueFd dir = TRY(make_dirs_in_root(root_fd, volume.target, 0755));
    std::string target = fd_path(dir.get());
    unsigned long read_only = volume.read_only ? MS_RDONLY : 0;
    switch (volume.kind) {
        case BootMount::Kind::VirtioFs:
            return do_mount(volume.source, target, "virtiofs", read_only, "",
                            "mount virtio-fs " + volume.source);
        case BootMount::Kind::Disk: {
            std::string context = "disk " + volume.source;
            std::string device = TRY(in_context(find_disk(volume.source, env), context));
            DiskMount request{device, target, volume.fstype, volume.read_only, 0, env.proc_filesystems};
            TRY(in_context(mount_disk(request), context));
            if (!volume.read_only) freeze_at_power_off(volume.target, device);
            return {};
        }
        case BootMount::Kind::Tmpfs:
            return do_mount("tmpfs", target, "tmpfs", kTmpfsFlags | read_only,
                            tmpfs_options("1777", volume.size_bytes), "mount tmpfs");
    }
    return make_error("unknown volume kind");
}

}  // namespace

Result<std::optional<proto::BootConfig>> load_boot_config(const std::string& path) {
    auto text = read_small_file(path, kMaxBootConfig);
    if (!text) {
        if (text.error().code == ENOENT) return std::optional<proto::BootConfig>{};
        return std::unexpected(text.error());
    }
    auto config = proto::parse_boot_config(*text);
    if (!config) return std::unexpected(with_context(config.error(), path));
    return std::optional<proto::BootConfig>(std::move(*config));
}

Result<void> setup_storage(const proto::BootConfig& config, const StorageEnvironment& env) {
    // The initramfs, where patch and script sources are read even after the switch hides it.
    UniqueFd initramfs(open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!initramfs) return errno_error("open /");

    bool switched = false;
    if (config.root.kind != BootRoot::Kind::Initramfs) {
        std::string newroot = TRY(in_context(mount_new_root(config.root, env), "root"));
        TRY(in_context(switch_root(newroot), "switching to the new root"));
        switched = true;
    }
    UniqueFd root(open("/", O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!root) return errno_error("open the new root");

    PatchRoots roots{root.get(), initramfs.get()};
    TRY(apply_patches(roots, config.patches));
    TRY(install_scripts(roots, config.scripts));
    if (switched && env.free_initramfs) free_initramfs(initramfs.get());
    initramfs.reset();

    for (const BootMount& volume : config.mounts)
        TRY(in_context(mount_volume(root.get(), volume, env), "volume " + volume.target));

    if (!config.hostname.empty() && sethostname(config.hostname.data(), config.hostname.size()) != 0)
        return errno_error("hostname \"" + config.hostname + "\"");
    return {};
}

}  // namespace sandlot::agent
