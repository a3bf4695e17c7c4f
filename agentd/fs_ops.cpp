#include "agentd/fs_ops.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/fsuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>

namespace sandlot::agent {

namespace {

constexpr size_t kCopyChunk = 1 << 20;

struct DirCloser {
    void operator()(DIR* dir) const { closedir(dir); }
};
using DirPtr = std::unique_ptr<DIR, DirCloser>;

int64_t to_ns(const timespec& ts) {
    return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

bool is_dot(const char* name) {
    return name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0));
}

Result<std::string> read_link(const std::string& path) {
    std::string target(PATH_MAX, '\0');
    ssize_t n = readlink(path.c_str(), target.data(), target.size());
    if (n < 0) return fs_errno("readlink", path);
    target.resize(static_cast<size_t>(n));
    return target;
}

// Removes everything inside the directory `fd` refers to (named `path` in errors), never following links.
Result<void> empty_dir(int fd, const std::string& path) {
    int dup_fd = dup(fd);
    if (dup_fd < 0) return fs_errno("dup", path);
    DirPtr dir(fdopendir(dup_fd));
    if (!dir) {
        int saved = errno;
        close(dup_fd);
        return fs_error(saved, "opendir", path);
    }
    for (;;) {
        errno = 0;
        dirent* ent = readdir(dir.get());
        if (!ent) {
            if (errno != 0) return fs_errno("readdir", path);
            break;
        }
        if (is_dot(ent->d_name)) continue;
        std::string child = path + "/" + ent->d_name;
        if (unlinkat(fd, ent->d_name, 0) == 0) continue;
        if (errno != EISDIR && errno != EPERM) return fs_errno("remove", child);
        UniqueFd sub(openat(fd, ent->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!sub) return fs_errno("open", child);
        TRY(empty_dir(sub.get(), child));
        if (unlinkat(fd, ent->d_name, AT_REMOVEDIR) != 0) return fs_errno("remove", child);
        // Restart the listing: removing entries while reading a directory may skip some.
        rewinddir(dir.get());
    }
    return {};
}

Result<void> copy_metadata(int fd, const std::string& to, const struct stat& st) {
    if (geteuid() == 0 && setfsuid(static_cast<uid_t>(-1)) == 0) {
        if (fchown(fd, st.st_uid, st.st_gid) != 0) return fs_errno("chown", to);
    }
    if (fchmod(fd, st.st_mode & 07777) != 0) return fs_errno("chmod", to);
    timespec times[2] = {st.st_atim, st.st_mtim};
    if (futimens(fd, times) != 0) return fs_errno("set times of", to);
    return {};
}

Result<void> copy_file(const std::string& from, const std::string& to, const struct stat& st) {
    UniqueFd in(open(from.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    if (!in) return fs_errno("open", from);
    std::string temp = fs_temp_name(to);
    UniqueFd out(open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!out) return fs_errno("create", temp);
    auto copy = [&]() -> Result<void> {
        for (;;) {
            ssize_t n = copy_file_range(in.get(), nullptr, out.get(), nullptr, kCopyChunk, 0);
            if (n == 0) break;
            if (n > 0) continue;
            if (errno == EINTR) continue;
            if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
                return fs_errno("copy to", to);
            // Not supported between these files: plain read/write from here on.
            std::vector<uint8_t> buffer(kCopyChunk);
            for (;;) {
                ssize_t got = read(in.get(), buffer.data(), buffer.size());
                if (got < 0 && errno == EINTR) continue;
                if (got < 0) return fs_errno("read", from);
                if (got == 0) break;
                TRY(fs_write_all(out.get(), std::span(buffer.data(), static_cast<size_t>(got)), to));
            }
            break;
        }
        TRY(copy_metadata(out.get(), to, st));
        if (close(out.release()) != 0) return fs_errno("write", to);
        if (rename(temp.c_str(), to.c_str()) != 0) return fs_errno("rename to", to);
        return {};
    };
    auto result = copy();
    if (!result) unlink(temp.c_str());
    return result;
}

Result<void> copy_any(const std::string& from, const std::string& to, bool recursive) {
    struct stat st;
    if (lstat(from.c_str(), &st) != 0) return fs_errno("copy", from);
    if (S_ISREG(st.st_mode)) return copy_file(from, to, st);
    if (S_ISLNK(st.st_mode)) {
        std::string target = TRY(read_link(from));
        std::string temp = fs_temp_name(to);
        if (symlink(target.c_str(), temp.c_str()) != 0) return fs_errno("symlink", temp);
        timespec times[2] = {st.st_atim, st.st_mtim};
        utimensat(AT_FDCWD, temp.c_str(), times, AT_SYMLINK_NOFOLLOW);
        if (rename(temp.c_str(), to.c_str()) != 0) {
            int saved = errno;
            unlink(temp.c_str());
            return fs_error(saved, "rename to", to);
        }
        return {};
    }
    if (S_ISDIR(st.st_mode)) {
        if (!recursive) return fs_error(EISDIR, "copy", from);
        if (mkdir(to.c_str(), 0700) != 0 && errno != EEXIST) return fs_errno("mkdir", to);
        UniqueFd dir_fd(open(from.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!dir_fd) return fs_errno("open", from);
        DirPtr dir(fdopendir(dir_fd.release()));
        if (!dir) return fs_errno("opendir", from);
        for (;;) {
            errno = 0;
            dirent* ent = readdir(dir.get());
            if (!ent) {
                if (errno != 0) return fs_errno("readdir", from);
                break;
            }
            if (is_dot(ent->d_name)) continue;
            TRY(copy_any(from + "/" + ent->d_name, to + "/" + ent->d_name, true));
        }
        UniqueFd out(open(to.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!out) return fs_errno("open", to);
        return copy_metadata(out.get(), to, st);
    }
    if (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) || S_ISSOCK(st.st_mode)) {
        if (mknod(to.c_str(), st.st_mode, st.st_rdev) != 0) return fs_errno("mknod", to);
        return {};
    }
    return fs_error(EINVAL, "copy", from);
}

}  // namespace

std::unexpected<Error> fs_error(int code, std::string_view op, std::string_view path) {
    std::string message(op);
    message += ' ';
    message += path;
    return std::unexpected(Error{code, std::move(message)});
}

std::unexpected<Error> fs_errno(std::string_view op, std::string_view path) {
    return fs_error(errno, op, path);
}

Result<FsIdentity> FsIdentity::become(const ExecUser& user) {
    if (user.uid == 0 && user.gid == 0) return FsIdentity(false);
    if (geteuid() != 0) {
        if (user.uid == geteuid()) return FsIdentity(false);
        return make_error("the agent is not root: cannot act as uid " + std::to_string(user.uid), EPERM);
    }
    // The raw system call: glibc's setgroups() would change every thread's groups (the agent has one).
    if (syscall(SYS_setgroups, user.groups.size(), user.groups.data()) != 0)
        return errno_error("setgroups for uid " + std::to_string(user.uid));
    setfsgid(user.gid);
    setfsuid(user.uid);
    FsIdentity identity(true);
    if (setfsuid(static_cast<uid_t>(-1)) != static_cast<int>(user.uid) ||
        setfsgid(static_cast<gid_t>(-1)) != static_cast<int>(user.gid))
        return make_error("cannot switch to uid " + std::to_string(user.uid), EPERM);
    return identity;
}

FsIdentity::~FsIdentity() {
    if (!active_) return;
    setfsuid(0);
    setfsgid(0);
    syscall(SYS_setgroups, 0, nullptr);
}

Result<proto::FsEntry> fs_stat(const std::string& path, bool follow) {
    struct stat st;
    if ((follow ? stat(path.c_str(), &st) : lstat(path.c_str(), &st)) != 0)
        return fs_errno(follow ? "stat" : "lstat", path);
    proto::FsEntry entry = proto::fs_entry_from_stat(st, path);
    if (S_ISLNK(st.st_mode)) entry.link_target = TRY(read_link(path));
    return entry;
}

Result<void> fs_make_parents(const std::string& path) {
    std::string parent = fs_dirname(path);
    if (parent == "/" || parent == ".") return {};
    struct stat st;
    if (stat(parent.c_str(), &st) == 0) {
        if (!S_ISDIR(st.st_mode)) return fs_error(ENOTDIR, "mkdir", parent);
        return {};
    }
    if (errno != ENOENT) return fs_errno("stat", parent);
    TRY(fs_make_parents(parent));
    if (mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST) return fs_errno("mkdir", parent);
    return {};
}

Result<void> fs_mkdir(const std::string& path, mode_t mode, bool parents, bool exclusive) {
    if (mode == 0) mode = 0755;
    if (parents) TRY(fs_make_parents(path));
    if (mkdir(path.c_str(), mode & 07777) == 0) {
        // mkdir applies the umask; the caller asked for exactly this mode.
        if (chmod(path.c_str(), mode & 07777) != 0) return fs_errno("chmod", path);
        return {};
    }
    if (errno == EEXIST && parents && !exclusive) {
        struct stat st;
        if (stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return {};
        return fs_error(EEXIST, "mkdir", path);
    }
    return fs_errno("mkdir", path);
}

Result<void> fs_remove(const std::string& path) {
    if (unlink(path.c_str()) != 0) {
        // unlink(2) says EISDIR on Linux, but EPERM on some file systems for a directory.
        struct stat st;
        if (errno == EPERM && lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
            return fs_error(EISDIR, "remove", path);
        return fs_errno("remove", path);
    }
    return {};
}

Result<void> fs_remove_dir(const std::string& path, bool recursive) {
    if (recursive) {
        UniqueFd fd(open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!fd) return fs_errno("remove_dir", path);
        TRY(empty_dir(fd.get(), path));
    }
    if (rmdir(path.c_str()) != 0) return fs_errno("remove_dir", path);
    return {};
}

Result<void> fs_rename(const std::string& from, const std::string& to) {
    if (rename(from.c_str(), to.c_str()) != 0) return fs_errno("rename " + from + " to", to);
    return {};
}

Result<void> fs_copy(const std::string& from, const std::string& to, bool recursive) {
    if (recursive) {
        // Copying a directory into itself would never end.
        char* a = realpath(from.c_str(), nullptr);
        std::string from_real = a ? a : from;
        free(a);
        char* b = realpath(fs_dirname(to).c_str(), nullptr);
        std::string to_parent = b ? b : fs_dirname(to);
        free(b);
        if (to_parent == from_real || to_parent.starts_with(from_real + "/"))
            return fs_error(EINVAL, "copy " + from + " into itself:", to);
    }
    return copy_any(from, to, recursive);
}

Result<void> fs_chmod(const std::string& path, mode_t mode) {
    if (chmod(path.c_str(), mode & 07777) != 0) return fs_errno("chmod", path);
    return {};
}

Result<void> fs_chown(const std::string& path, uint32_t uid, uint32_t gid, bool no_follow) {
    uid_t u = uid == proto::kFsUnchanged ? static_cast<uid_t>(-1) : uid;
    gid_t g = gid == proto::kFsUnchanged ? static_cast<gid_t>(-1) : gid;
    if ((no_follow ? lchown(path.c_str(), u, g) : chown(path.c_str(), u, g)) != 0)
        return fs_errno("chown", path);
    return {};
}

Result<void> fs_symlink(const std::string& target, const std::string& link_path) {
    if (symlink(target.c_str(), link_path.c_str()) != 0) return fs_errno("symlink", link_path);
    return {};
}

Result<std::string> fs_realpath(const std::string& path) {
    char* resolved = realpath(path.c_str(), nullptr);
    if (!resolved) return fs_errno("realpath", path);
    std::string result = resolved;
    free(resolved);
    return result;
}

Result<bool> fs_exists(const std::string& path) {
    struct stat st;
    if (lstat(path.c_str(), &st) == 0) return true;
    if (errno == ENOENT || errno == ENOTDIR) return false;
    return fs_errno("exists", path);
}

std::string fs_dirname(const std::string& path) {
    size_t end = path.size();
    while (end > 1 && path[end - 1] == '/')
        --end;
    size_t slash = path.rfind('/', end - 1);
    if (slash == std::string::npos) return ".";
    while (slash > 0 && path[slash - 1] == '/')
        --slash;
    if (slash == 0) return "/";
    return path.substr(0, slash);
}

std::string fs_join(const std::string& root, const std::string& relative) {
    if (relative.empty()) return root;
    if (!root.empty() && root.back() == '/') return root + relative;
    return root + "/" + relative;
}

std::string fs_temp_name(const std::string& path) {
    // Unpredictable enough that names do not collide; creation uses O_EXCL, so a planted name only fails.
    static uint64_t counter = 0;
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t x = (++counter * 0x9e3779b97f4a7c15ull) ^ static_cast<uint64_t>(to_ns(ts)) ^
                 (static_cast<uint64_t>(getpid()) << 40);
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 29;
    char name[40];
    std::snprintf(name, sizeof name, ".sandlot-%016llx.tmp", static_cast<unsigned long long>(x));
    std::string dir = fs_dirname(path);
    return dir == "/" ? "/" + std::string(name) : dir + "/" + name;
}

Result<void> fs_write_all(int fd, std::span<const uint8_t> data, std::string_view path) {
    while (!data.empty()) {
        ssize_t n = write(fd, data.data(), data.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fs_errno("write", path);
        if (n == 0) return fs_error(ENOSPC, "write", path);
        data = data.subspan(static_cast<size_t>(n));
    }
    return {};
}

}  // namespace sandlot::agent
