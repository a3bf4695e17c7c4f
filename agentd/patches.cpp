#include "agentd/patches.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <optional>
#include <string>
#include <vector>

#include "agentd/log.h"
#include "proto/frame.h"

#ifndef STATX_ATTR_MOUNT_ROOT
#define STATX_ATTR_MOUNT_ROOT 0x00002000
#endif

namespace sandlot::agent {

namespace {

// Deeper trees are refused rather than risking the stack of PID 1 (paths are at most 4096 bytes anyway).
constexpr int kMaxTreeDepth = 2048;
constexpr size_t kCopyBuffer = 128 * 1024;

// "/a//b/./c" -> {"a", "b", "c"}; ".." is kept (resolution handles it inside the root).
std::vector<std::string> split_path(std::string_view path) {
    std::vector<std::string> parts;
    size_t pos = 0;
    while (pos <= path.size()) {
        size_t slash = path.find('/', pos);
        if (slash == std::string_view::npos) slash = path.size();
        std::string_view part = path.substr(pos, slash - pos);
        if (!part.empty() && part != ".") parts.emplace_back(part);
        pos = slash + 1;
    }
    return parts;
}

std::string join_path(const std::vector<std::string>& parts, size_t count) {
    std::string out;
    for (size_t i = 0; i < count; ++i)
        out += "/" + parts[i];
    return out.empty() ? "/" : out;
}

std::string child_path(const std::string& dir, const std::string& name) {
    return dir == "/" ? "/" + name : dir + "/" + name;
}

struct Entry {
    bool exists = false;
    mode_t mode = 0;
    uid_t uid = 0;
    gid_t gid = 0;
    bool mount_root = false;
    dev_t dev = 0;

    bool is_dir() const { return exists && S_ISDIR(mode); }
};

Result<Entry> stat_entry(int dir_fd, const std::string& name, const std::string& shown) {
    struct statx stx {};
    int flags = AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | (name.empty() ? AT_EMPTY_PATH : 0);
    if (statx(dir_fd, name.c_str(), flags, STATX_TYPE | STATX_MODE | STATX_UID | STATX_GID, &stx) != 0) {
        if (errno == ENOENT) return Entry{};
        return errno_error("stat " + shown);
    }
    Entry e;
    e.exists = true;
    e.mode = stx.stx_mode;
    e.uid = stx.stx_uid;
    e.gid = stx.stx_gid;
    e.dev = makedev(stx.stx_dev_major, stx.stx_dev_minor);
    e.mount_root =
        (stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) && (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT);
    return e;
}

// A directory on another filesystem than its parent: a mount point, which tree walks leave alone.
bool is_mount_boundary(const Entry& child, const Entry& parent) {
    return child.mount_root || child.dev != parent.dev;
}

Result<std::vector<std::string>> list_names(int dir_fd, const std::string& shown) {
    int fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return errno_error("open " + shown);
    DIR* dir = fdopendir(fd);
    if (!dir) {
        close(fd);
        return errno_error("opendir " + shown);
    }
    std::vector<std::string> names;
    errno = 0;
    while (dirent* entry = readdir(dir)) {
        std::string_view name = entry->d_name;
        if (name != "." && name != "..") names.emplace_back(name);
    }
    int err = errno;
    closedir(dir);
    if (err != 0) return make_error("readdir " + shown, err);
    return names;
}

UniqueFd open_dir_nofollow(int dir_fd, const std::string& name) {
    return UniqueFd(openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
}

Result<void> copy_bytes(int in, int out, const std::string& from, const std::string& to) {
    std::vector<uint8_t> buffer(kCopyBuffer);
    for (;;) {
        ssize_t n = read(in, buffer.data(), buffer.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("read " + from);
        if (n == 0) return {};
        if (auto written = proto::write_all(out, std::span(buffer.data(), static_cast<size_t>(n))); !written)
            return make_error("write " + to, written.error().code);
    }
}

// uid/gid of -1 leave that id alone; works on O_PATH fds too.
Result<void> set_owner(int fd, std::optional<uint32_t> uid, std::optional<uint32_t> gid,
                       const std::string& shown) {
    if (!uid && !gid) return {};
    uid_t u = uid ? static_cast<uid_t>(*uid) : static_cast<uid_t>(-1);
    gid_t g = gid ? static_cast<gid_t>(*gid) : static_cast<gid_t>(-1);
    if (fchownat(fd, "", u, g, AT_EMPTY_PATH) != 0) return errno_error("chown " + shown);
    return {};
}

Result<void> set_mode(int fd, mode_t mode, const std::string& shown) {
    if (fchmod(fd, mode & 07777) != 0) return errno_error("chmod " + shown);
    return {};
}

// The confined parent directory of `path` and its last component.
struct Located {
    UniqueFd parent;
    std::string name;
};

Result<Located> locate(int root_fd, std::string_view path, bool make_parents) {
    std::vector<std::string> parts = split_path(path);
    if (parts.empty()) return make_error(std::string(path) + ": names the root directory itself");
    if (parts.back() == "..") return make_error(std::string(path) + ": does not name an entry");
    std::string parent_path = join_path(parts, parts.size() - 1);
    Located located;
    located.parent = make_parents ? TRY(make_dirs_in_root(root_fd, parent_path, 0755))
                                  : TRY(open_in_root(root_fd, parent_path, O_PATH | O_DIRECTORY));
    located.name = parts.back();
    return located;
}

// Makes room for a new non-directory: removes a file or symlink of that name (never following it).
Result<void> replace_non_directory(int dir_fd, const std::string& name, const std::string& shown) {
    Entry e = TRY(stat_entry(dir_fd, name, shown));
    if (!e.exists) return {};
    if (S_ISDIR(e.mode)) return make_error(shown + ": is a directory", EISDIR);
    if (unlinkat(dir_fd, name.c_str(), 0) != 0 && errno != ENOENT) return errno_error("replace " + shown);
    return {};
}

Result<UniqueFd> create_file(int dir_fd, const std::string& name, const std::string& shown) {
    UniqueFd fd(openat(dir_fd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd) return errno_error("create " + shown);
    return fd;
}

struct Source {
    UniqueFd fd;
    struct stat st {};
};

// Patch and script sources live in the initramfs, which the host built; still resolved inside its root.
Result<Source> open_source(int sources_fd, const std::string& path) {
    Source source;
    auto fd = open_in_root(sources_fd, path, O_RDONLY | O_NONBLOCK);
    if (!fd) return make_error("source " + path, fd.error().code);
    source.fd = std::move(*fd);
    if (fstat(source.fd.get(), &source.st) != 0) return errno_error("source " + path);
    return source;
}

Result<Source> open_regular_source(int sources_fd, const std::string& path) {
    Source source = TRY(open_source(sources_fd, path));
    if (!S_ISREG(source.st.st_mode)) return make_error("source " + path + ": not a regular file");
    return source;
}

// A new regular file at `path` (replacing a non-directory) with the source's bytes, owner, then mode.
Result<void> write_new_file(int root_fd, const std::string& path, int source_fd,
                            const std::string& source_path, std::optional<uint32_t> uid,
                            std::optional<uint32_t> gid, mode_t mode) {
    Located at = TRY(locate(root_fd, path, true));
    TRY(replace_non_directory(at.parent.get(), at.name, path));
    UniqueFd out = TRY(create_file(at.parent.get(), at.name, path));
    TRY(copy_bytes(source_fd, out.get(), source_path, path));
    TRY(set_owner(out.get(), uid, gid, path));  // before chmod: chown clears set-id bits
    TRY(set_mode(out.get(), mode, path));
    return {};
}

Result<void> apply_write(const PatchRoots& roots, const proto::BootPatch& patch) {
    Source src = TRY(open_regular_source(roots.sources, patch.source));
    return write_new_file(roots.root, patch.path, src.fd.get(), patch.source, patch.uid, patch.gid,
                          patch.mode.value_or(0644));
}

Result<void> apply_append(const PatchRoots& roots, const proto::BootPatch& patch) {
    Source src = TRY(open_regular_source(roots.sources, patch.source));
    TRY(locate(roots.root, patch.path, true));  // parents
    bool created = true;
    // O_EXCL first, so a dangling symlink is never followed to create a file; O_NONBLOCK so a FIFO cannot
    // hang the boot.
    auto out =
        open_in_root(roots.root, patch.path, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_NONBLOCK, 0600);
    if (!out && out.error().code == EEXIST) {
        created = false;
        out = open_in_root(roots.root, patch.path, O_WRONLY | O_APPEND | O_NONBLOCK);
    }
    if (!out) return make_error("open " + patch.path, out.error().code);
    struct stat st {};
    if (fstat(out->get(), &st) != 0) return errno_error("stat " + patch.path);
    if (!S_ISREG(st.st_mode)) return make_error(patch.path + ": not a regular file");
    TRY(copy_bytes(src.fd.get(), out->get(), patch.source, patch.path));
    TRY(set_owner(out->get(), patch.uid, patch.gid, patch.path));
    if (created || patch.mode) TRY(set_mode(out->get(), patch.mode.value_or(0644), patch.path));
    return {};
}

Result<void> apply_mkdir(const PatchRoots& roots, const proto::BootPatch& patch) {
    UniqueFd dir = TRY(make_dirs_in_root(roots.root, patch.path, patch.mode.value_or(0755)));
    TRY(set_owner(dir.get(), patch.uid, patch.gid, patch.path));
    if (patch.mode) {
        UniqueFd real(openat(dir.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (!real) return errno_error("open " + patch.path);
        TRY(set_mode(real.get(), *patch.mode, patch.path));
    }
    return {};
}

Result<void> remove_contents(int dir_fd, const std::string& shown, int depth, bool skip_mounts);

// Removes `name` in `dir_fd` (a directory with everything below it), never following symlinks.
Result<void> remove_entry(int dir_fd, const Entry& dir_entry, const std::string& name,
                          const std::string& shown, int depth, bool skip_mounts) {
    Entry e = TRY(stat_entry(dir_fd, name, shown));
    if (!e.exists) return {};
    if (!S_ISDIR(e.mode)) {
        if (unlinkat(dir_fd, name.c_str(), 0) != 0 && errno != ENOENT) return errno_error("remove " + shown);
        return {};
    }
    if (is_mount_boundary(e, dir_entry)) {
        if (skip_mounts) return {};
        return make_error("remove " + shown + ": a mount point is in the way", EBUSY);
    }
    UniqueFd sub = open_dir_nofollow(dir_fd, name);
    if (!sub) return errno_error("open " + shown);
    TRY(remove_contents(sub.get(), shown, depth + 1, skip_mounts));
    if (unlinkat(dir_fd, name.c_str(), AT_REMOVEDIR) != 0) {
        // Freeing the initramfs: a mount point left below keeps its parents; that is fine.
        if (skip_mounts && (errno == ENOTEMPTY || errno == EBUSY)) return {};
        if (errno != ENOENT) return errno_error("remove " + shown);
    }
    return {};
}

Result<void> remove_contents(int dir_fd, const std::string& shown, int depth, bool skip_mounts) {
    if (depth > kMaxTreeDepth) return make_error(shown + ": directory tree too deep", ELOOP);
    Entry self = TRY(stat_entry(dir_fd, "", shown));
    for (const std::string& name : TRY(list_names(dir_fd, shown)))
        TRY(remove_entry(dir_fd, self, name, child_path(shown, name), depth, skip_mounts));
    return {};
}

Result<void> apply_remove(const PatchRoots& roots, const proto::BootPatch& patch) {
    std::vector<std::string> parts = split_path(patch.path);
    if (parts.empty() || parts.back() == "..") return make_error("refusing to remove " + patch.path);
    auto parent = open_in_root(roots.root, join_path(parts, parts.size() - 1), O_PATH | O_DIRECTORY);
    if (!parent) {
        if (parent.error().code == ENOENT || parent.error().code == ENOTDIR) return {};  // already gone
        return make_error("open parent of " + patch.path, parent.error().code);
    }
    Entry parent_entry = TRY(stat_entry(parent->get(), "", patch.path));
    return remove_entry(parent->get(), parent_entry, parts.back(), patch.path, 0, false);
}

Result<void> apply_symlink(const PatchRoots& roots, const proto::BootPatch& patch) {
    Located at = TRY(locate(roots.root, patch.path, true));
    TRY(replace_non_directory(at.parent.get(), at.name, patch.path));
    if (symlinkat(patch.target.c_str(), at.parent.get(), at.name.c_str()) != 0)
        return errno_error("symlink " + patch.path);
    if (patch.uid || patch.gid) {
        uid_t u = patch.uid ? static_cast<uid_t>(*patch.uid) : static_cast<uid_t>(-1);
        gid_t g = patch.gid ? static_cast<gid_t>(*patch.gid) : static_cast<gid_t>(-1);
        if (fchownat(at.parent.get(), at.name.c_str(), u, g, AT_SYMLINK_NOFOLLOW) != 0)
            return errno_error("chown " + patch.path);
    }
    return {};
}

struct Owner {
    std::optional<uint32_t> uid, gid;
    uid_t uid_or(uid_t fallback) const { return uid ? static_cast<uid_t>(*uid) : fallback; }
    gid_t gid_or(gid_t fallback) const { return gid ? static_cast<gid_t>(*gid) : fallback; }
};

// Copies the children of `src_fd` into `dst_fd` (both directories), never following symlinks on either side.
Result<void> copy_tree(int src_fd, const std::string& src_shown, int dst_fd, const std::string& dst_shown,
                       const Owner& owner, int depth) {
    if (depth > kMaxTreeDepth) return make_error(src_shown + ": directory tree too deep", ELOOP);
    for (const std::string& name : TRY(list_names(src_fd, src_shown))) {
        std::string from = child_path(src_shown, name);
        std::string to = child_path(dst_shown, name);
        Entry src = TRY(stat_entry(src_fd, name, from));
        if (!src.exists) continue;
        Entry dst = TRY(stat_entry(dst_fd, name, to));
        uid_t uid = owner.uid_or(src.uid);
        gid_t gid = owner.gid_or(src.gid);
        if (S_ISDIR(src.mode)) {
            UniqueFd sub_src = open_dir_nofollow(src_fd, name);
            if (!sub_src) return errno_error("open " + from);
            if (dst.is_dir()) {  // merge; an existing directory keeps its mode and owner
                UniqueFd sub_dst = open_dir_nofollow(dst_fd, name);
                if (!sub_dst) return errno_error("open " + to);
                TRY(copy_tree(sub_src.get(), from, sub_dst.get(), to, owner, depth + 1));
                continue;
            }
            TRY(replace_non_directory(dst_fd, name, to));
            if (mkdirat(dst_fd, name.c_str(), 0700) != 0) return errno_error("mkdir " + to);
            UniqueFd sub_dst = open_dir_nofollow(dst_fd, name);
            if (!sub_dst) return errno_error("open " + to);
            if (fchown(sub_dst.get(), uid, gid) != 0) return errno_error("chown " + to);
            TRY(copy_tree(sub_src.get(), from, sub_dst.get(), to, owner, depth + 1));
            TRY(set_mode(sub_dst.get(), src.mode, to));  // last, so a read-only directory could be filled
        } else if (S_ISREG(src.mode)) {
            UniqueFd in(openat(src_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
            if (!in) return errno_error("open " + from);
            TRY(replace_non_directory(dst_fd, name, to));
            UniqueFd out = TRY(create_file(dst_fd, name, to));
            TRY(copy_bytes(in.get(), out.get(), from, to));
            if (fchown(out.get(), uid, gid) != 0) return errno_error("chown " + to);
            TRY(set_mode(out.get(), src.mode, to));
        } else if (S_ISLNK(src.mode)) {
            char target[PATH_MAX];
            ssize_t n = readlinkat(src_fd, name.c_str(), target, sizeof target);
            if (n < 0) return errno_error("readlink " + from);
            if (static_cast<size_t>(n) >= sizeof target) return make_error("readlink " + from + ": too long");
            TRY(replace_non_directory(dst_fd, name, to));
            if (symlinkat(std::string(target, static_cast<size_t>(n)).c_str(), dst_fd, name.c_str()) != 0)
                return errno_error("symlink " + to);
            if (fchownat(dst_fd, name.c_str(), uid, gid, AT_SYMLINK_NOFOLLOW) != 0)
                return errno_error("chown " + to);
        } else {
            log_line("storage: copy skips " + from + " (not a file, directory or symlink)");
        }
    }
    return {};
}

Result<void> apply_copy(const PatchRoots& roots, const proto::BootPatch& patch) {
    Source src = TRY(open_source(roots.sources, patch.source));
    Owner owner{patch.uid, patch.gid};
    if (S_ISREG(src.st.st_mode)) {
        return write_new_file(roots.root, patch.path, src.fd.get(), patch.source, owner.uid_or(src.st.st_uid),
                              owner.gid_or(src.st.st_gid), patch.mode.value_or(src.st.st_mode & 07777));
    }
    if (!S_ISDIR(src.st.st_mode)) return make_error("source " + patch.source + ": not a file or directory");

    // The destination directory: an existing one (a symlink to one is followed, inside the root) is merged
    // into; otherwise it is made with the source's mode and owner.
    auto existing = open_in_root(roots.root, patch.path, O_RDONLY | O_DIRECTORY);
    if (existing) return copy_tree(src.fd.get(), patch.source, existing->get(), patch.path, owner, 0);
    if (existing.error().code != ENOENT && existing.error().code != ENOTDIR)
        return make_error("open " + patch.path, existing.error().code);
    Located at = TRY(locate(roots.root, patch.path, true));
    TRY(replace_non_directory(at.parent.get(), at.name, patch.path));
    if (mkdirat(at.parent.get(), at.name.c_str(), 0700) != 0) return errno_error("mkdir " + patch.path);
    UniqueFd dst = open_dir_nofollow(at.parent.get(), at.name);
    if (!dst) return errno_error("open " + patch.path);
    if (fchown(dst.get(), owner.uid_or(src.st.st_uid), owner.gid_or(src.st.st_gid)) != 0)
        return errno_error("chown " + patch.path);
    TRY(copy_tree(src.fd.get(), patch.source, dst.get(), patch.path, owner, 0));
    return set_mode(dst.get(), src.st.st_mode, patch.path);
}

}  // namespace

Result<UniqueFd> open_in_root(int root_fd, std::string_view path, int flags, mode_t mode) {
    open_how how{};
    how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
    how.mode = (flags & O_CREAT) ? mode : 0;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    std::string p = path.empty() ? std::string(".") : std::string(path);
    for (int attempt = 0;; ++attempt) {
        long fd = syscall(SYS_openat2, root_fd, p.c_str(), &how, sizeof how);
        if (fd >= 0) return UniqueFd(static_cast<int>(fd));
        // EAGAIN: a concurrent rename or mount made ".." resolution unsafe to finish; try again.
        if ((errno == EAGAIN || errno == EINTR) && attempt < 16) continue;
        return errno_error("open " + p);
    }
}

Result<UniqueFd> make_dirs_in_root(int root_fd, std::string_view path, mode_t mode, mode_t parents_mode) {
    std::vector<std::string> parts = split_path(path);
    UniqueFd current = TRY(open_in_root(root_fd, ".", O_PATH | O_DIRECTORY));
    std::string prefix;
    for (size_t i = 0; i < parts.size(); ++i) {
        const std::string& part = parts[i];
        mode_t this_mode = i + 1 == parts.size() ? mode : parents_mode;
        prefix += "/" + part;
        auto next = open_in_root(root_fd, prefix, O_PATH | O_DIRECTORY);
        if (next) {
            current = std::move(*next);
            continue;
        }
        if (next.error().code != ENOENT) return std::unexpected(next.error());
        // `prefix` resolves to `part` inside `current` unless `part` is a dangling symlink (mkdir then says
        // EEXIST and resolving it again fails, as mkdir -p would).
        if (mkdirat(current.get(), part.c_str(), this_mode) != 0) {
            if (errno != EEXIST) return errno_error("mkdir " + prefix);
            current = TRY(open_in_root(root_fd, prefix, O_PATH | O_DIRECTORY));
            continue;
        }
        UniqueFd made = open_dir_nofollow(current.get(), part);
        if (!made) return errno_error("open " + prefix);
        TRY(set_mode(made.get(), this_mode, prefix));
        current = std::move(made);
    }
    return current;
}

Result<void> apply_patch(const PatchRoots& roots, const proto::BootPatch& patch) {
    switch (patch.op) {
        case proto::BootPatch::Op::Write:
            return apply_write(roots, patch);
        case proto::BootPatch::Op::Append:
            return apply_append(roots, patch);
        case proto::BootPatch::Op::Mkdir:
            return apply_mkdir(roots, patch);
        case proto::BootPatch::Op::Remove:
            return apply_remove(roots, patch);
        case proto::BootPatch::Op::Symlink:
            return apply_symlink(roots, patch);
        case proto::BootPatch::Op::Copy:
            return apply_copy(roots, patch);
    }
    return make_error("unknown patch op");
}

Result<void> apply_patches(const PatchRoots& roots, std::span<const proto::BootPatch> patches) {
    for (size_t i = 0; i < patches.size(); ++i) {
        const proto::BootPatch& patch = patches[i];
        if (auto ok = apply_patch(roots, patch); !ok) {
            return std::unexpected(with_context(ok.error(), "patch " + std::to_string(i) + " (" +
                                                                std::string(proto::to_string(patch.op)) +
                                                                " " + patch.path + ")"));
        }
    }
    return {};
}

Result<void> install_scripts(const PatchRoots& roots, std::span<const proto::BootScript> scripts) {
    auto dir = make_dirs_in_root(roots.root, proto::kScriptDir, 0755);
    if (!dir) return std::unexpected(with_context(dir.error(), "script directory"));
    for (const proto::BootScript& script : scripts) {
        auto installed = [&]() -> Result<void> {
            if (script.name.empty() || script.name == "." || script.name == ".." ||
                script.name.find('/') != std::string::npos)
                return make_error("not a plain file name");
            Source src = TRY(open_regular_source(roots.sources, script.source));
            std::string shown = child_path(proto::kScriptDir, script.name);
            TRY(replace_non_directory(dir->get(), script.name, shown));
            UniqueFd out = TRY(create_file(dir->get(), script.name, shown));
            TRY(copy_bytes(src.fd.get(), out.get(), script.source, shown));
            return set_mode(out.get(), 0755, shown);
        }();
        if (!installed) return std::unexpected(with_context(installed.error(), "script " + script.name));
    }
    return {};
}

Result<void> remove_tree_contents(int dir_fd) {
    return remove_contents(dir_fd, "/", 0, true);
}

}  // namespace sandlot::agent
