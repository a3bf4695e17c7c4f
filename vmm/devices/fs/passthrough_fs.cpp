#include "vmm/devices/fs/passthrough_fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include "vmm/devices/fs/fuse_wire.h"

namespace sandlot::vmm::fs {

namespace {

constexpr int kNoReply = -1;
constexpr uint32_t kMinMinor = 12;  // every struct we parse has its current size from 7.12 on
constexpr uint32_t kPageSize = 4096;
constexpr size_t kXattrSizeMax = 65536;  // XATTR_SIZE_MAX, XATTR_LIST_MAX
constexpr size_t kXattrNameMax = 255;    // XATTR_NAME_MAX
constexpr uint64_t kOffsetMax = INT64_MAX;
constexpr uint64_t kMaxCopyRange = 1u << 30;

// What we ask for in INIT (the kernel's offer masks it). No writeback cache (the guest's page cache would
// then guess at file sizes and O_APPEND), no EXPORT_SUPPORT (we never resolve "." or ".."), no
// DONT_MASK (the guest kernel applies the umask), no SETXATTR_EXT / INIT_EXT (their structs unused).
constexpr uint32_t kWantedFlags = FUSE_ASYNC_READ | FUSE_POSIX_LOCKS | FUSE_ATOMIC_O_TRUNC | FUSE_BIG_WRITES |
                                  FUSE_FLOCK_LOCKS | FUSE_AUTO_INVAL_DATA | FUSE_DO_READDIRPLUS |
                                  FUSE_READDIRPLUS_AUTO | FUSE_ASYNC_DIO | FUSE_PARALLEL_DIROPS |
                                  FUSE_MAX_PAGES | FUSE_CACHE_SYMLINKS;

struct LinuxDirent64 {
    uint64_t d_ino;
    int64_t d_off;
    uint16_t d_reclen;
    uint8_t d_type;
    char d_name[];
};

// A directory entry name from the guest: copied out of the request first (a virtio-fs request may live
// in guest memory that changes under us), then validated.
int read_name(RequestReader& args, std::string& name) {
    std::optional<std::string_view> s = args.read_string();
    if (!s) return EINVAL;
    name.assign(s->data(), s->size());
    // A NUL inside the copy means the bytes changed after we found the terminator: the syscall would see a
    // different (unvalidated) name than the one checked here.
    if (name.find('\0') != std::string::npos) return EINVAL;
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) return EINVAL;
    if (name.size() > NAME_MAX) return ENAMETOOLONG;
    return 0;
}

// What a guest may leave on the host: no setuid/setgid files (the host might run them one day; setgid on a
// directory only passes its group on and stays), and no security.* or trusted.* xattrs (file capabilities,
// SELinux labels, overlayfs metadata). A root guest could otherwise plant a root-owned setuid binary.
mode_t host_safe_mode(mode_t mode, bool is_dir) {
    return is_dir ? mode : mode & ~static_cast<mode_t>(S_ISUID | S_ISGID);
}

bool guest_may_set_xattr(const std::string& name) {
    return !name.starts_with("security.") && !name.starts_with("trusted.");
}

int read_xattr_name(RequestReader& args, std::string& name) {
    std::optional<std::string_view> s = args.read_string();
    if (!s) return EINVAL;
    name.assign(s->data(), s->size());
    if (name.empty() || name.find('\0') != std::string::npos) return EINVAL;
    if (name.size() > kXattrNameMax) return ERANGE;
    return 0;
}

// Host open flags for a guest open: the access mode and the harmless status flags only. O_CREAT, O_EXCL,
// O_NOFOLLOW, O_PATH, O_TMPFILE, O_DIRECTORY and O_DIRECT are ours to decide (O_DIRECT would impose the
// host's alignment rules on guest buffers).
int host_open_flags(uint32_t guest) {
    constexpr uint32_t kKeep = O_ACCMODE | O_APPEND | O_TRUNC | O_NONBLOCK | O_SYNC | O_DSYNC | O_NOATIME;
    return static_cast<int>(guest & kKeep) | O_CLOEXEC | O_NOCTTY;
}

bool writes(int flags) {
    return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

std::string fd_name(int fd) {
    return std::to_string(fd);
}

// A node's inode by path, for the path-only syscalls (xattrs). Built from our own fd number, never from
// guest data; only used for non-symlink nodes (the magic link resolves to exactly the node's inode).
std::string proc_path(const Node& node) {
    return "/proc/self/fd/" + fd_name(node.fd.get());
}

int stat_fd(int fd, struct stat& st) {
    if (fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0) return errno;
    return 0;
}

int to_flock(const fuse_file_lock& lk, struct flock& fl) {
    if (lk.type != F_RDLCK && lk.type != F_WRLCK && lk.type != F_UNLCK) return EINVAL;
    if (lk.start > kOffsetMax || lk.end < lk.start) return EINVAL;
    fl = {};
    fl.l_type = static_cast<short>(lk.type);
    fl.l_whence = SEEK_SET;
    fl.l_start = static_cast<off_t>(lk.start);
    fl.l_len = lk.end >= kOffsetMax ? 0 : static_cast<off_t>(lk.end - lk.start + 1);
    return 0;
}

// rdev as fuse_attr carries it (the kernel's new_encode_dev).
uint32_t encode_dev(dev_t dev) {
    uint32_t maj = major(dev), min = minor(dev);
    return (min & 0xff) | (maj << 8) | ((min & ~0xffu) << 12);
}

}  // namespace

struct PassthroughFs::Request {
    fuse_in_header h{};
    RequestReader args;
    std::shared_ptr<Node> node;  // h.nodeid, resolved for every operation that names one
};

Result<std::unique_ptr<PassthroughFs>> PassthroughFs::create(const PassthroughOptions& options) {
    UniqueFd fd(open(options.root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!fd) return errno_error("shared directory " + options.root);
    struct stat st;
    if (int err = stat_fd(fd.get(), st)) return make_error("shared directory " + options.root, err);
    UniqueFd proc(open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!proc) return errno_error("open /proc/self/fd");
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    auto root = std::make_shared<Node>();
    root->fd = std::move(fd);
    root->dev = st.st_dev;
    root->ino = st.st_ino;
    root->type = S_IFDIR;
    root->lookups = 1;
    return std::unique_ptr<PassthroughFs>(new PassthroughFs(options, std::move(root), std::move(proc)));
}

PassthroughFs::PassthroughFs(const PassthroughOptions& options, std::shared_ptr<Node> root, UniqueFd proc_fd)
    : options_(options),
      root_(root),
      proc_fd_(std::move(proc_fd)),
      vmm_is_root_(geteuid() == 0),
      nodes_(std::move(root), kMaxNodes),
      handles_(kMaxHandles) {}

PassthroughFs::~PassthroughFs() = default;

size_t PassthroughFs::lock_file_count() const {
    std::lock_guard lock(lock_mutex_);
    return lock_files_.size();
}

void PassthroughFs::handle(std::span<const uint8_t> request, std::vector<uint8_t>& reply) {
    reply.clear();
    reply.resize(sizeof(fuse_out_header));
    Request r{.h = {}, .args = RequestReader({}), .node = nullptr};
    int err = 0;
    if (request.size() < sizeof(fuse_in_header)) {
        err = EINVAL;  // no header to answer: unique stays 0
    } else {
        std::memcpy(&r.h, request.data(), sizeof r.h);
        size_t extensions = size_t{r.h.total_extlen} * 8;
        if (r.h.len < sizeof r.h || r.h.len > request.size() || extensions > r.h.len - sizeof r.h) {
            err = EINVAL;
        } else {
            r.args = RequestReader(request.subspan(sizeof r.h, r.h.len - sizeof r.h - extensions));
        }
    }
    const uint32_t op = r.h.opcode;
    bool no_reply_op =
        op == FUSE_FORGET || op == FUSE_BATCH_FORGET || op == FUSE_INTERRUPT || op == FUSE_NOTIFY_REPLY;
    if (err == 0 && op != FUSE_INIT && !initialized_.load(std::memory_order_acquire)) err = EIO;
    if (err != 0 && no_reply_op) err = kNoReply;  // malformed or early: still never answered
    if (err == 0) {
        bool names_node = !no_reply_op && op != FUSE_INIT && op != FUSE_DESTROY;
        if (names_node) {
            r.node = nodes_.get(r.h.nodeid);
            if (!r.node) err = ENOENT;
        }
    }
    if (err == 0) {
        switch (op) {
            case FUSE_INIT:
                err = op_init(r, reply);
                break;
            case FUSE_DESTROY:
                err = op_destroy();
                break;
            case FUSE_LOOKUP:
                err = op_lookup(r, reply);
                break;
            case FUSE_FORGET:
                err = op_forget(r);
                break;
            case FUSE_BATCH_FORGET:
                err = op_batch_forget(r);
                break;
            case FUSE_GETATTR:
                err = op_getattr(r, reply);
                break;
            case FUSE_SETATTR:
                err = op_setattr(r, reply);
                break;
            case FUSE_READLINK:
                err = op_readlink(r, reply);
                break;
            case FUSE_SYMLINK:
                err = op_symlink(r, reply);
                break;
            case FUSE_MKNOD:
                err = op_mknod(r, reply);
                break;
            case FUSE_MKDIR:
                err = op_mkdir(r, reply);
                break;
            case FUSE_UNLINK:
                err = op_unlink(r, false);
                break;
            case FUSE_RMDIR:
                err = op_unlink(r, true);
                break;
            case FUSE_RENAME:
                err = op_rename(r, false);
                break;
            case FUSE_RENAME2:
                err = op_rename(r, true);
                break;
            case FUSE_LINK:
                err = op_link(r, reply);
                break;
            case FUSE_OPEN:
                err = op_open(r, reply, false);
                break;
            case FUSE_OPENDIR:
                err = op_open(r, reply, true);
                break;
            case FUSE_CREATE:
                err = op_create(r, reply);
                break;
            case FUSE_READ:
                err = op_read(r, reply);
                break;
            case FUSE_WRITE:
                err = op_write(r, reply);
                break;
            case FUSE_STATFS:
                err = op_statfs(r, reply);
                break;
            case FUSE_RELEASE:
                err = op_release(r, false);
                break;
            case FUSE_RELEASEDIR:
                err = op_release(r, true);
                break;
            case FUSE_FLUSH:
                err = op_flush(r);
                break;
            case FUSE_FSYNC:
                err = op_fsync(r, false);
                break;
            case FUSE_FSYNCDIR:
                err = op_fsync(r, true);
                break;
            case FUSE_SETXATTR:
                err = op_setxattr(r);
                break;
            case FUSE_GETXATTR:
                err = op_getxattr(r, reply, false);
                break;
            case FUSE_LISTXATTR:
                err = op_getxattr(r, reply, true);
                break;
            case FUSE_REMOVEXATTR:
                err = op_removexattr(r);
                break;
            case FUSE_READDIR:
                err = op_readdir(r, reply, false);
                break;
            case FUSE_READDIRPLUS:
                err = op_readdir(r, reply, true);
                break;
            case FUSE_GETLK:
                err = op_getlk(r, reply);
                break;
            case FUSE_SETLK:
                err = op_setlk(r, false);
                break;
            case FUSE_SETLKW:
                err = op_setlk(r, true);
                break;
            case FUSE_ACCESS:
                err = op_access(r);
                break;
            case FUSE_INTERRUPT:
                err = op_interrupt(r);
                break;
            case FUSE_NOTIFY_REPLY:
                err = kNoReply;
                break;
            case FUSE_FALLOCATE:
                err = op_fallocate(r);
                break;
            case FUSE_LSEEK:
                err = op_lseek(r, reply);
                break;
            case FUSE_COPY_FILE_RANGE:
                err = op_copy_file_range(r, reply);
                break;
            case FUSE_SYNCFS:
                err = op_syncfs();
                break;
            default:
                err = ENOSYS;
                break;
        }
    }
    if (err == kNoReply) {
        reply.clear();
        return;
    }
    if (err != 0) reply.resize(sizeof(fuse_out_header));
    fuse_out_header out{};
    out.len = static_cast<uint32_t>(reply.size());
    out.error = -err;
    out.unique = r.h.unique;
    std::memcpy(reply.data(), &out, sizeof out);
}

// ---- session ----

int PassthroughFs::op_init(Request& r, std::vector<uint8_t>& out) {
    // major, minor, max_readahead, flags: the part of fuse_init_in every protocol version sends.
    struct InitInCommon {
        uint32_t major, minor, max_readahead, flags;
    };
    std::optional<InitInCommon> in = r.args.read<InitInCommon>();
    if (!in) return EINVAL;
    fuse_init_out o{};
    o.major = FUSE_KERNEL_VERSION;
    o.minor = FUSE_KERNEL_MINOR_VERSION;
    if (in->major > FUSE_KERNEL_VERSION) {
        // The kernel retries with our major when we answer with just the version.
        const auto* p = reinterpret_cast<const uint8_t*>(&o);
        out.insert(out.end(), p, p + FUSE_COMPAT_INIT_OUT_SIZE);
        return 0;
    }
    if (in->major < FUSE_KERNEL_VERSION || in->minor < kMinMinor) return EPROTO;
    reset_session();  // a new session (virtio-fs: the guest remounted)
    uint32_t minor = std::min<uint32_t>(in->minor, FUSE_KERNEL_MINOR_VERSION);
    o.minor = minor;
    o.max_readahead = in->max_readahead;
    o.flags = in->flags & kWantedFlags;
    o.max_background = 64;
    o.congestion_threshold = 48;
    o.max_write = kMaxIo;
    o.time_gran = 1;
    o.max_pages = static_cast<uint16_t>(kMaxIo / kPageSize);
    size_t size = minor >= 23 ? sizeof o : FUSE_COMPAT_22_INIT_OUT_SIZE;
    const auto* p = reinterpret_cast<const uint8_t*>(&o);
    out.insert(out.end(), p, p + size);
    initialized_.store(true, std::memory_order_release);
    return 0;
}

int PassthroughFs::op_syncfs() {
    UniqueFd fd;  // syncfs() needs a real fd, not an O_PATH one
    if (int err = reopen(*root_, O_RDONLY, fd)) return err;
    return syncfs(fd.get()) < 0 ? errno : 0;
}

int PassthroughFs::op_destroy() {
    initialized_.store(false, std::memory_order_release);
    reset_session();
    return 0;
}

void PassthroughFs::reset_session() {
    handles_.reset();
    nodes_.reset();
    std::map<LockKey, std::shared_ptr<LockFile>> dropped;
    std::lock_guard lock(lock_mutex_);
    dropped.swap(lock_files_);
}

// ---- nodes ----

void PassthroughFs::fill_attr(const struct stat& st, fuse_attr& a) const {
    a = {};
    a.ino = st.st_ino;
    a.size = static_cast<uint64_t>(st.st_size);
    a.blocks = static_cast<uint64_t>(st.st_blocks);
    a.atime = static_cast<uint64_t>(st.st_atim.tv_sec);
    a.mtime = static_cast<uint64_t>(st.st_mtim.tv_sec);
    a.ctime = static_cast<uint64_t>(st.st_ctim.tv_sec);
    a.atimensec = static_cast<uint32_t>(st.st_atim.tv_nsec);
    a.mtimensec = static_cast<uint32_t>(st.st_mtim.tv_nsec);
    a.ctimensec = static_cast<uint32_t>(st.st_ctim.tv_nsec);
    a.mode = st.st_mode;
    a.nlink = static_cast<uint32_t>(st.st_nlink);
    a.uid = st.st_uid;
    a.gid = st.st_gid;
    a.rdev = encode_dev(st.st_rdev);
    a.blksize = static_cast<uint32_t>(st.st_blksize);
}

void PassthroughFs::fill_entry(uint64_t id, const struct stat& st, fuse_entry_out& e) const {
    e = {};
    e.nodeid = id;
    e.generation = 0;  // ids are never reused (they carry a generation)
    auto ms = std::max<int64_t>(options_.cache_timeout.count(), 0);
    e.entry_valid = e.attr_valid = static_cast<uint64_t>(ms / 1000);
    e.entry_valid_nsec = e.attr_valid_nsec = static_cast<uint32_t>((ms % 1000) * 1000000);
    fill_attr(st, e.attr);
}

int PassthroughFs::register_node(UniqueFd fd, fuse_entry_out& e) {
    struct stat st;
    if (int err = stat_fd(fd.get(), st)) return err;
    auto acquired = nodes_.acquire(std::move(fd), st);
    if (!acquired) return ENFILE;
    fill_entry(acquired->first, st, e);
    return 0;
}

int PassthroughFs::lookup_child(const Node& parent, std::string_view name, fuse_entry_out& e) {
    // `name` is NUL-terminated: it is a validated std::string's view.
    UniqueFd fd(openat(parent.fd.get(), name.data(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) return errno;
    return register_node(std::move(fd), e);
}

int PassthroughFs::reopen(const Node& node, int flags, UniqueFd& out) const {
    flags &= ~(O_CREAT | O_EXCL | O_NOFOLLOW | O_DIRECTORY);
    if (node.is_dir()) {
        out.reset(openat(node.fd.get(), ".", flags | O_DIRECTORY | O_CLOEXEC));
    } else if (node.is_regular()) {
        out.reset(openat(proc_fd_.get(), fd_name(node.fd.get()).c_str(), flags | O_CLOEXEC));
    } else {
        return ENXIO;  // FIFOs, sockets, devices and symlinks are never opened on the host
    }
    return out ? 0 : errno;
}

int PassthroughFs::chmod_node(const Node& node, mode_t mode) const {
    if (node.is_symlink()) return EOPNOTSUPP;
    mode = host_safe_mode(mode, node.is_dir());
    if (fchmodat(proc_fd_.get(), fd_name(node.fd.get()).c_str(), mode, 0) < 0) return errno;
    return 0;
}

// Gives a node the guest just made its owner and exact mode, then registers it. `fd` is an O_PATH fd to it.
int PassthroughFs::finish_new_node(const Node& parent, const Request& r, uint32_t mode, UniqueFd fd,
                                   fuse_entry_out& e) {
    struct stat parent_st, st;
    if (int err = stat_fd(parent.fd.get(), parent_st)) return err;
    // Under a setgid directory the host kernel already gave the node the directory's group, as it should.
    gid_t gid = (parent_st.st_mode & S_ISGID) ? static_cast<gid_t>(-1) : r.h.gid;
    if (fchownat(fd.get(), "", r.h.uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0 && vmm_is_root_) {
        return errno;
    }
    if (int err = stat_fd(fd.get(), st)) return err;
    if (!S_ISLNK(st.st_mode)) {
        // Our umask may have cleared bits the guest asked for (the guest kernel applied its own already).
        mode_t want = host_safe_mode(mode & 07777, S_ISDIR(st.st_mode)) |
                      (S_ISDIR(st.st_mode) ? (st.st_mode & S_ISGID) : 0);
        if ((st.st_mode & 07777) != want) {
            if (fchmodat(proc_fd_.get(), fd_name(fd.get()).c_str(), want, 0) < 0) return errno;
        }
    }
    return register_node(std::move(fd), e);
}

int PassthroughFs::op_lookup(Request& r, std::vector<uint8_t>& out) {
    std::string name;
    if (int err = read_name(r.args, name)) return err;
    if (!r.node->is_dir()) return ENOTDIR;
    fuse_entry_out e;
    if (int err = lookup_child(*r.node, name, e)) return err;
    append_struct(out, e);
    return 0;
}

int PassthroughFs::op_forget(Request& r) {
    if (auto in = r.args.read<fuse_forget_in>()) nodes_.forget(r.h.nodeid, in->nlookup);
    return kNoReply;
}

int PassthroughFs::op_batch_forget(Request& r) {
    std::optional<fuse_batch_forget_in> in = r.args.read<fuse_batch_forget_in>();
    if (!in) return kNoReply;
    for (uint32_t i = 0; i < in->count; ++i) {
        std::optional<fuse_forget_one> one = r.args.read<fuse_forget_one>();
        if (!one) break;  // a count larger than the request: only what is there
        nodes_.forget(one->nodeid, one->nlookup);
    }
    return kNoReply;
}

int PassthroughFs::op_getattr(Request& r, std::vector<uint8_t>& out) {
    struct stat st;
    if (int err = stat_fd(r.node->fd.get(), st)) return err;
    fuse_attr_out a{};
    auto ms = std::max<int64_t>(options_.cache_timeout.count(), 0);
    a.attr_valid = static_cast<uint64_t>(ms / 1000);
    a.attr_valid_nsec = static_cast<uint32_t>((ms % 1000) * 1000000);
    fill_attr(st, a.attr);
    append_struct(out, a);
    return 0;
}

int PassthroughFs::op_setattr(Request& r, std::vector<uint8_t>& out) {
    std::optional<fuse_setattr_in> in = r.args.read<fuse_setattr_in>();
    if (!in) return EINVAL;
    const Node& node = *r.node;
    constexpr uint32_t kChanges = FATTR_MODE | FATTR_UID | FATTR_GID | FATTR_SIZE | FATTR_ATIME |
                                  FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW | FATTR_CTIME;
    if ((in->valid & kChanges) && options_.read_only) return EROFS;
    std::shared_ptr<Handle> handle;
    if (in->valid & FATTR_FH) {
        handle = handles_.get(in->fh);
        if (!handle || handle->node_id != r.h.nodeid) return EBADF;
    }
    if (in->valid & (FATTR_UID | FATTR_GID)) {
        uid_t uid = (in->valid & FATTR_UID) ? in->uid : static_cast<uid_t>(-1);
        gid_t gid = (in->valid & FATTR_GID) ? in->gid : static_cast<gid_t>(-1);
        if (fchownat(node.fd.get(), "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0) return errno;
    }
    if (in->valid & FATTR_MODE) {
        if (int err = chmod_node(node, in->mode & 07777)) return err;
    }
    if (in->valid & FATTR_SIZE) {
        if (node.is_dir()) return EISDIR;
        if (!node.is_regular()) return EINVAL;
        if (in->size > kOffsetMax) return EFBIG;
        UniqueFd own;
        int fd;
        if (handle && handle->access_mode != O_RDONLY) {
            fd = handle->fd.get();
        } else {
            if (int err = reopen(node, O_WRONLY | O_NONBLOCK, own)) return err;
            fd = own.get();
        }
        if (ftruncate(fd, static_cast<off_t>(in->size)) < 0) return errno;
    }
    if (in->valid & (FATTR_ATIME | FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW)) {
        struct timespec ts[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
        if (in->valid & FATTR_ATIME_NOW) {
            ts[0].tv_nsec = UTIME_NOW;
        } else if (in->valid & FATTR_ATIME) {
            if (in->atimensec >= 1000000000u) return EINVAL;
            ts[0] = {static_cast<time_t>(in->atime), static_cast<long>(in->atimensec)};
        }
        if (in->valid & FATTR_MTIME_NOW) {
            ts[1].tv_nsec = UTIME_NOW;
        } else if (in->valid & FATTR_MTIME) {
            if (in->mtimensec >= 1000000000u) return EINVAL;
            ts[1] = {static_cast<time_t>(in->mtime), static_cast<long>(in->mtimensec)};
        }
        if (utimensat(node.fd.get(), "", ts, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0) return errno;
    }
    return op_getattr(r, out);
}

int PassthroughFs::op_readlink(Request& r, std::vector<uint8_t>& out) {
    if (!r.node->is_symlink()) return EINVAL;
    char buf[PATH_MAX];
    ssize_t n = readlinkat(r.node->fd.get(), "", buf, sizeof buf);
    if (n < 0) return errno;
    append_bytes(out, std::span(reinterpret_cast<const uint8_t*>(buf), static_cast<size_t>(n)));
    return 0;
}

int PassthroughFs::op_symlink(Request& r, std::vector<uint8_t>& out) {
    std::string name;
    if (int err = read_name(r.args, name)) return err;
    std::optional<std::string_view> target_view = r.args.read_string();
    if (!target_view) return EINVAL;
    std::string target(*target_view);
    if (target.find('\0') != std::string::npos) return EINVAL;
    if (target.empty()) return ENOENT;
    if (target.size() >= PATH_MAX) return ENAMETOOLONG;
    if (options_.read_only) return EROFS;
    if (!r.node->is_dir()) return ENOTDIR;
    // The target is stored, never followed by us.
    if (symlinkat(target.c_str(), r.node->fd.get(), name.c_str()) < 0) return errno;
    UniqueFd fd(openat(r.node->fd.get(), name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) return errno;
    fuse_entry_out e;
    if (int err = finish_new_node(*r.node, r, 0, std::move(fd), e)) return err;
    append_struct(out, e);
    return 0;
}

int PassthroughFs::op_mknod(Request& r, std::vector<uint8_t>& out) {
    std::optional<fuse_mknod_in> in = r.args.read<fuse_mknod_in>();
    if (!in) return EINVAL;
    std::string name;
    if (int err = read_name(r.args, name)) return err;
    if (options_.read_only) return EROFS;
    if (!r.node->is_dir()) return ENOTDIR;
    mode_t type = in->mode & S_IFMT;
    bool whiteout = type == S_IFCHR && in->rdev == 0;  // overlayfs whiteout: char 0:0, opens nothing
    if (type != S_IFREG && type != S_IFIFO && type != S_IFSOCK && !whiteout) return EPERM;
    if (mknodat(r.node->fd.get(), name.c_str(), type | host_safe_mode(in->mode & 07777, false), 0) < 0)
        return errno;
    UniqueFd fd(openat(r.node->fd.get(), name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) return errno;
    fuse_entry_out e;
    if (int err = finish_new_node(*r.node, r, in->mode, std::move(fd), e)) return err;
    append_struct(out, e);
    return 0;
}

int PassthroughFs::op_mkdir(Request& r, std::vector<uint8_t>& out) {
    std::optional<fuse_mkdir_in> in = r.args.read<fuse_mkdir_in>();
    if (!in) return EINVAL;
    std::string name;
    if (int err = read_name(r.args, name)) return err;
    if (options_.read_only) return EROFS;
    if (!r.node->is_dir()) return ENOTDIR;
    if (mkdirat(r.node->fd.get(), name.c_str(), in->mode & 07777) < 0) return errno;
    UniqueFd fd(openat(r.node->fd.get(), name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) return errno;
    fuse_entry_out e;
    if (int err = finish_new_node(*r.node, r, in->mode, std::move(fd), e)) return err;
    append_struct(out, e);
    return 0;
}

int PassthroughFs::op_unlink(Request& r, bool dir) {
    std::string name;
    if (int err = read_name(r.args, name)) return err;
    if (options_.read_only) return EROFS;
    if (!r.node->is_dir()) return ENOTDIR;
    if (unlinkat(r.node->fd.get(), name.c_str(), dir ? AT_REMOVEDIR : 0) < 0) return errno;
    return 0;
}

int PassthroughFs::op_rename(Request& r, bool v2) {
    uint64_t newdir;
    uint32_t flags = 0;
    if (v2) {
        std::optional<fuse_rename2_in> in = r.args.read<fuse_rename2_in>();
        if (!in) return EINVAL;
        newdir = in->newdir;
        flags = in->flags;
    } else {
        std::optional<fuse_rename_in> in = r.args.read<fuse_rename_in>();
        if (!in) return EINVAL;
        newdir = in->newdir;
    }
    std::string oldname, newname;
    if (int err = read_name(r.args, oldname)) return err;
    if (int err = read_name(r.args, newname)) return err;
    if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT)) return EINVAL;
    if (options_.read_only) return EROFS;
    std::shared_ptr<Node> to = nodes_.get(newdir);
    if (!to) return ENOENT;
    if (!r.node->is_dir() || !to->is_dir()) return ENOTDIR;
    if (renameat2(r.node->fd.get(), oldname.c_str(), to->fd.get(), newname.c_str(), flags) < 0) return errno;
    return 0;
}

int PassthroughFs::op_link(Request& r, std::vector<uint8_t>& out) {
    std::optional<fuse_link_in> in = r.args.read<fuse_link_in>();
    if (!in) return EINVAL;
    std::string name;
    if (int err = read_name(r.args, name)) return err;
    if (options_.read_only) return EROFS;
    std::shared_ptr<Node> old = nodes_.get(in->oldnodeid);
    if (!old) return ENOENT;
    if (!r.node->is_dir()) return ENOTDIR;
    if (old->is_dir()) return EPERM;
    if (linkat(old->fd.get(), "", r.node->fd.get(), name.c_str(), AT_EMPTY_PATH) < 0) {
        // Without CAP_DAC_READ_SEARCH, AT_EMPTY_PATH fails; the /proc link names the same inode.
        if ((errno != ENOENT && errno != EPERM) || old->is_symlink()) return errno;
        if (linkat(proc_fd_.get(), fd_name(old->fd.get()).c_str(), r.node->fd.get(), name.c_str(),
                   AT_SYMLINK_FOLLOW) < 0) {
            return errno;
        }
    }
    struct stat st;
    if (int err = stat_fd(old->fd.get(), st)) return err;
    if (!nodes_.add_lookup(in->oldnodeid)) return ENOENT;
    fuse_entry_out e;
    fill_entry(in->oldnodeid, st, e);
    append_struct(out, e);
    return 0;
}

// ---- files ----

int PassthroughFs::op_open(Request& r, std::vector<uint8_t>& out, bool dir) {
    std::optional<fuse_open_in> in = r.args.read<fuse_open_in>();
    if (!in) return EINVAL;
    const Node& node = *r.node;
    int flags;
    if (dir) {
        if (!node.is_dir()) return ENOTDIR;
        flags = O_RDONLY;
    } else {
        if (node.is_dir()) return EISDIR;
        if (!node.is_regular()) return ENXIO;
        flags = host_open_flags(in->flags);
        if ((flags & O_ACCMODE) == O_ACCMODE) return EINVAL;
        if (options_.read_only && writes(flags)) return EROFS;
    }
    auto handle = std::make_shared<Handle>();
    if (int err = reopen(node, flags, handle->fd)) return err;
    handle->node_id = r.h.nodeid;
    handle->node = r.node;
    handle->is_dir = dir;
    handle->access_mode = flags & O_ACCMODE;
    std::optional<uint64_t> fh = handles_.insert(std::move(handle));
    if (!fh) return ENFILE;
    fuse_open_out o{};
    o.fh = *fh;
    // Keep the guest's page cache across opens (FUSE_AUTO_INVAL_DATA drops it when the host changes mtime):
    // without it every exec of a binary on the share would read it again.
    o.open_flags = dir ? 0 : FOPEN_KEEP_CACHE;
    append_struct(out, o);
    return 0;
}

int PassthroughFs::op_create(Request& r, std::vector<uint8_t>& out) {
    std::optional<fuse_create_in> in = r.args.read<fuse_create_in>();
    if (!in) return EINVAL;
    std::string name;
    if (int err = read_name(r.args, name)) return err;
    if (options_.read_only) return EROFS;
    const Node& parent = *r.node;
    if (!parent.is_dir()) return ENOTDIR;
    int flags = host_open_flags(in->flags);
    if ((flags & O_ACCMODE) == O_ACCMODE) return EINVAL;
    auto handle = std::make_shared<Handle>();
    fuse_entry_out e;
    // O_EXCL always: an existing name might be a FIFO or a device, which must not be opened here.
    handle->fd.reset(openat(parent.fd.get(), name.c_str(), flags | O_CREAT | O_EXCL | O_NOFOLLOW,
                            host_safe_mode(in->mode & 07777, false)));
    if (handle->fd) {
        UniqueFd path_fd(openat(proc_fd_.get(), fd_name(handle->fd.get()).c_str(), O_PATH | O_CLOEXEC));
        if (!path_fd) return errno;
        if (int err = finish_new_node(parent, r, in->mode, std::move(path_fd), e)) return err;
    } else {
        if (errno != EEXIST || (in->flags & O_EXCL)) return errno;
        // The guest believed the name free (its cache was stale): open what is there, if it is a file.
        UniqueFd path_fd(openat(parent.fd.get(), name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
        if (!path_fd) return errno;
        struct stat st;
        if (int err = stat_fd(path_fd.get(), st)) return err;
        if (S_ISDIR(st.st_mode)) return EISDIR;
        if (!S_ISREG(st.st_mode)) return EEXIST;
        handle->fd.reset(openat(proc_fd_.get(), fd_name(path_fd.get()).c_str(), flags));
        if (!handle->fd) return errno;
        if (int err = register_node(std::move(path_fd), e)) return err;
    }
    handle->node_id = e.nodeid;
    handle->node = nodes_.get(e.nodeid);
    handle->access_mode = flags & O_ACCMODE;
    std::optional<uint64_t> fh = handle->node ? handles_.insert(std::move(handle)) : std::nullopt;
    if (!fh) {
        nodes_.forget(e.nodeid, 1);
        return ENFILE;
    }
    fuse_open_out o{};
    o.fh = *fh;
    o.open_flags = FOPEN_KEEP_CACHE;
    append_struct(out, e);
    append_struct(out, o);
    return 0;
}

int PassthroughFs::op_read(Request& r, std::vector<uint8_t>& out) {
    std::optional<fuse_read_in> in = r.args.read<fuse_read_in>();
    if (!in) return EINVAL;
    std::shared_ptr<Handle> h = handles_.get(in->fh);
    if (!h || h->is_dir) return EBADF;
    if (in->size > kMaxIo || in->offset > kOffsetMax) return EINVAL;
    size_t base = out.size();
    out.resize(base + in->size);
    size_t done = 0;
    while (done < in->size) {
        ssize_t n = pread(h->fd.get(), out.data() + base + done, in->size - done,
                          static_cast<off_t>(in->offset + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            if (done > 0) break;
            return errno;
        }
        if (n == 0) break;
        done += static_cast<size_t>(n);
    }
    out.resize(base + done);
    return 0;
}

int PassthroughFs::op_write(Request& r, std::vector<uint8_t>& out) {
    std::optional<fuse_write_in> in = r.args.read<fuse_write_in>();
    if (!in) return EINVAL;
    if (in->size > kMaxIo || in->offset > kOffsetMax) return EINVAL;
    std::optional<std::span<const uint8_t>> data = r.args.read_bytes(in->size);
    if (!data) return EINVAL;
    if (options_.read_only) return EROFS;
    std::shared_ptr<Handle> h = handles_.get(in->fh);
    if (!h || h->is_dir || h->access_mode == O_RDONLY) return EBADF;
    size_t done = 0;
    while (done < data->size()) {
        ssize_t n = pwrite(h->fd.get(), data->data() + done, data->size() - done,
                           static_cast<off_t>(in->offset + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            if (done > 0) break;
            return errno;
        }
        if (n == 0) break;
        done += static_cast<size_t>(n);
    }
    fuse_write_out o{};
    o.size = static_cast<uint32_t>(done);
    append_struct(out, o);
    return 0;
}

int PassthroughFs::op_statfs(Request& r, std::vector<uint8_t>& out) {
    struct statvfs sv;
    if (fstatvfs(r.node->fd.get(), &sv) < 0) return errno;
    fuse_statfs_out o{};
    o.st.blocks = sv.f_blocks;
    o.st.bfree = sv.f_bfree;
    o.st.bavail = sv.f_bavail;
    o.st.files = sv.f_files;
    o.st.ffree = sv.f_ffree;
    o.st.bsize = static_cast<uint32_t>(sv.f_bsize);
    o.st.namelen = static_cast<uint32_t>(sv.f_namemax);
    o.st.frsize = static_cast<uint32_t>(sv.f_frsize);
    append_struct(out, o);
    return 0;
}

int PassthroughFs::op_release(Request& r, bool dir) {
    std::optional<fuse_release_in> in = r.args.read<fuse_release_in>();
    if (!in) return EINVAL;
    std::shared_ptr<Handle> h = handles_.get(in->fh);
    if (!h || h->is_dir != dir) return EBADF;
    if (in->release_flags & FUSE_RELEASE_FLOCK_UNLOCK) flock(h->fd.get(), LOCK_UN);
    handles_.remove(in->fh);
    return 0;
}

int PassthroughFs::op_flush(Request& r) {
    std::optional<fuse_flush_in> in = r.args.read<fuse_flush_in>();
    if (!in) return EINVAL;
    std::shared_ptr<Handle> h = handles_.get(in->fh);
    if (!h || h->is_dir) return EBADF;
    // A close() in the guest: POSIX drops every lock its process holds on the file.
    drop_lock_file(h->node_id, in->lock_owner);
    return 0;
}

int PassthroughFs::op_fsync(Request& r, bool dir) {
    std::optional<fuse_fsync_in> in = r.args.read<fuse_fsync_in>();
    if (!in) return EINVAL;
    std::shared_ptr<Handle> h = handles_.get(in->fh);
    if (!h || h->is_dir != dir) return EBADF;
    int rc = (in->fsync_flags & FUSE_FSYNC_FDATASYNC) ? fdatasync(h->fd.get()) : fsync(h->fd.get());
    return rc < 0 ? errno : 0;
}

int PassthroughFs::op_fallocate(Request& r) {
    std::optional<fuse_fallocate_in> in = r.args.read<fuse_fallocate_in>();
    if (!in) return EINVAL;
    if (options_.read_only) return EROFS;
    std::shared_ptr<Handle> h = handles_.get(in->fh);
    if (!h || h->is_dir || h->access_mode == O_RDONLY) return EBADF;
    constexpr uint32_t kModes = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE |
                                FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE | FALLOC_FL_UNSHARE_RANGE;
    if (in->mode & ~kModes) return EOPNOTSUPP;
    if (in->offset > kOffsetMax || in->length > kOffsetMax - in->offset) return EFBIG;
    if (fallocate(h->fd.get(), static_cast<int>(in->mode), static_cast<off_t>(in->offset),
                  static_cast<off_t>(in->length)) < 0) {
        return errno;
    }
    return 0;
}

int PassthroughFs::op_lseek(Request& r, std::vector<uint8_t>& out) {
    std::optional<fuse_lseek_in> in = r.args.read<fuse_lseek_in>();
    if (!in) return EINVAL;
    std::shared_ptr<Handle> h = handles_.get(in->fh);
    if (!h || h->is_dir) return EBADF;
    if (in->whence != SEEK_DATA && in->whence != SEEK_HOLE) return EINVAL;
    if (in->offset > kOffsetMax) return ENXIO;
    off_t pos = lseek(h->fd.get(), static_cast<off_t>(in->offset), static_cast<int>(in->whence));
    if (pos < 0) return errno;
    fuse_lseek_out o{};
    o.offset = static_cast<uint64_t>(pos);
    append_struct(out, o);
    return 0;
}

int PassthroughFs::op_copy_file_range(Request& r, std::vector<uint8_t>& out) {
    std::optional<fuse_copy_file_range_in> in = r.args.read<fuse_copy_file_range_in>();
    if (!in) return EINVAL;
    if (in->flags != 0) return EINVAL;
    if (options_.read_only) return EROFS;
    std::shared_ptr<Handle> src = handles_.get(in->fh_in);
    std::shared_ptr<Handle> dst = handles_.get(in->fh_out);
    if (!src || src->is_dir || src->access_mode == O_WRONLY) return EBADF;
    if (!dst || dst->is_dir || dst->access_mode == O_RDONLY) return EBADF;
    if (in->off_in > kOffsetMax || in->off_out > kOffsetMax) return EINVAL;
    loff_t off_in = static_cast<loff_t>(in->off_in), off_out = static_cast<loff_t>(in->off_out);
    size_t len = static_cast<size_t>(std::min<uint64_t>(in->len, kMaxCopyRange));
    ssize_t n = copy_file_range(src->fd.get(), &off_in, dst->fd.get(), &off_out, len, 0);
    if (n < 0) return errno;
    fuse_write_out o{};
    o.size = static_cast<uint32_t>(n);
    append_struct(out, o);
    return 0;
}

int PassthroughFs::op_access(Request& r) {
    std::optional<fuse_access_in> in = r.args.read<fuse_access_in>();
    if (!in) return EINVAL;
    if ((in->mask & W_OK) && options_.read_only) return EROFS;
    if (r.node->is_symlink()) return 0;
    if (faccessat(proc_fd_.get(), fd_name(r.node->fd.get()).c_str(), static_cast<int>(in->mask & 7), 0) < 0) {
        return errno;
    }
    return 0;
}

// ---- xattrs ----
// Through /proc/self/fd/N for non-symlinks. Symlinks carry no xattrs here (Linux refuses user.* on them
// and the path-based calls cannot reach a symlink through an O_PATH fd).

int PassthroughFs::op_setxattr(Request& r) {
    // Without FUSE_SETXATTR_EXT (we never ask for it) the kernel sends the 8-byte compat struct.
    struct SetxattrInCompat {
        uint32_t size, flags;
    };
    std::optional<SetxattrInCompat> compat = r.args.read<SetxattrInCompat>();
    if (!compat) return EINVAL;
    std::string name;
    if (int err = read_xattr_name(r.args, name)) return err;
    if (compat->size > kXattrSizeMax) return E2BIG;
    std::optional<std::span<const uint8_t>> value = r.args.read_bytes(compat->size);
    if (!value) return EINVAL;
    if (compat->flags & ~static_cast<uint32_t>(XATTR_CREATE | XATTR_REPLACE)) return EINVAL;
    if (options_.read_only) return EROFS;
    if (r.node->is_symlink()) return EPERM;
    if (!guest_may_set_xattr(name)) return EPERM;
    if (setxattr(proc_path(*r.node).c_str(), name.c_str(), value->data(), value->size(),
                 static_cast<int>(compat->flags)) < 0) {
        return errno;
    }
    return 0;
}

int PassthroughFs::op_getxattr(Request& r, std::vector<uint8_t>& out, bool list) {
    std::optional<fuse_getxattr_in> in = r.args.read<fuse_getxattr_in>();
    if (!in) return EINVAL;
    std::string name;
    if (!list) {
        if (int err = read_xattr_name(r.args, name)) return err;
    }
    const Node& node = *r.node;
    if (node.is_symlink()) {
        if (!list) return ENODATA;
        if (in->size == 0) append_struct(out, fuse_getxattr_out{});
        return 0;
    }
    std::string path = proc_path(node);
    if (in->size == 0) {
        ssize_t n =
            list ? listxattr(path.c_str(), nullptr, 0) : getxattr(path.c_str(), name.c_str(), nullptr, 0);
        if (n < 0) return errno;
        fuse_getxattr_out o{};
        o.size = static_cast<uint32_t>(n);
        append_struct(out, o);
        return 0;
    }
    size_t cap = std::min<size_t>(in->size, kXattrSizeMax);
    size_t base = out.size();
    out.resize(base + cap);
    char* buf = reinterpret_cast<char*>(out.data() + base);
    ssize_t n = list ? listxattr(path.c_str(), buf, cap) : getxattr(path.c_str(), name.c_str(), buf, cap);
    if (n < 0) return errno;
    out.resize(base + static_cast<size_t>(n));
    return 0;
}

int PassthroughFs::op_removexattr(Request& r) {
    std::string name;
    if (int err = read_xattr_name(r.args, name)) return err;
    if (options_.read_only) return EROFS;
    if (r.node->is_symlink()) return ENODATA;
    if (removexattr(proc_path(*r.node).c_str(), name.c_str()) < 0) return errno;
    return 0;
}

// ---- directories ----

int PassthroughFs::op_readdir(Request& r, std::vector<uint8_t>& out, bool plus) {
    std::optional<fuse_read_in> in = r.args.read<fuse_read_in>();
    if (!in) return EINVAL;
    std::shared_ptr<Handle> h = handles_.get(in->fh);
    if (!h || !h->is_dir) return EBADF;
    const size_t limit = std::min<size_t>(in->size, kMaxIo);
    const size_t base = out.size();
    std::lock_guard lock(h->dir_mutex);
    int fd = h->fd.get();
    if (in->offset != h->dir_offset) {
        if (in->offset > kOffsetMax) return EINVAL;
        if (lseek(fd, static_cast<off_t>(in->offset), SEEK_SET) < 0) return errno;
        h->dir_offset = in->offset;
    }
    alignas(8) static thread_local uint8_t buf[32 * 1024];
    uint64_t last_offset = h->dir_offset;
    bool full = false, any = false;
    while (!full) {
        long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
        if (n < 0) {
            if (any) break;
            return errno;
        }
        if (n == 0) break;
        for (long pos = 0; pos < n;) {
            const auto* d = reinterpret_cast<const LinuxDirent64*>(buf + pos);
            if (d->d_reclen == 0 || pos + d->d_reclen > n) return EIO;
            pos += d->d_reclen;
            std::string_view name(d->d_name,
                                  strnlen(d->d_name, d->d_reclen - offsetof(LinuxDirent64, d_name)));
            size_t entry_size = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + name.size());
            if (plus) entry_size += sizeof(fuse_entry_out);
            if (out.size() - base + entry_size > limit) {
                full = true;
                break;
            }
            if (plus) {
                fuse_entry_out e{};  // nodeid 0: "no lookup done" (for "." and "..", or a vanished name)
                if (name != "." && name != "..") {
                    std::string child(name);
                    if (lookup_child(*h->node, child, e) != 0) e = {};
                }
                append_struct(out, e);
            }
            fuse_dirent dirent{};
            dirent.ino = d->d_ino;
            dirent.off = static_cast<uint64_t>(d->d_off);
            dirent.namelen = static_cast<uint32_t>(name.size());
            dirent.type = d->d_type;
            size_t start = out.size();
            append_struct(out, dirent);
            append_bytes(out, std::span(reinterpret_cast<const uint8_t*>(name.data()), name.size()));
            out.resize(start + FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + name.size()), 0);
            last_offset = static_cast<uint64_t>(d->d_off);
            any = true;
        }
    }
    if (full) {
        if (!any) return EINVAL;  // not even one entry fits; an empty reply would read as the end
        // Entries read but not sent are read again next time.
        if (lseek(fd, static_cast<off_t>(last_offset), SEEK_SET) < 0) return errno;
    }
    h->dir_offset = last_offset;
    return 0;
}

// ---- locks ----

std::shared_ptr<PassthroughFs::LockFile> PassthroughFs::lock_file(uint64_t node_id, const Node& node,
                                                                  uint64_t owner, bool create, int& error) {
    error = 0;
    LockKey key{node_id, owner};
    {
        std::lock_guard lock(lock_mutex_);
        if (auto it = lock_files_.find(key); it != lock_files_.end()) return it->second;
        if (!create) return nullptr;
        if (lock_files_.size() >= kMaxLockFiles) {
            error = ENOLCK;
            return nullptr;
        }
    }
    if (!node.is_regular()) {
        error = EINVAL;
        return nullptr;
    }
    auto file = std::make_shared<LockFile>();
    // Write locks need a writable fd; a read-only share (or file) gets what it can.
    int err = options_.read_only ? EROFS : reopen(node, O_RDWR | O_NONBLOCK, file->fd);
    if (err) err = reopen(node, O_RDONLY | O_NONBLOCK, file->fd);
    if (err) {
        error = err;
        return nullptr;
    }
    std::lock_guard lock(lock_mutex_);
    auto [it, inserted] = lock_files_.emplace(key, file);
    return it->second;
}

void PassthroughFs::drop_lock_file(uint64_t node_id, uint64_t owner) {
    std::shared_ptr<LockFile> dropped;  // closed (releasing its locks) outside the mutex
    std::lock_guard lock(lock_mutex_);
    if (auto it = lock_files_.find(LockKey{node_id, owner}); it != lock_files_.end()) {
        dropped = std::move(it->second);
        lock_files_.erase(it);
    }
}

bool PassthroughFs::interrupted(uint64_t unique) {
    std::lock_guard lock(lock_mutex_);
    auto it = lock_waiters_.find(unique);
    return it != lock_waiters_.end() && it->second;
}

int PassthroughFs::op_interrupt(Request& r) {
    std::optional<fuse_interrupt_in> in = r.args.read<fuse_interrupt_in>();
    if (!in) return kNoReply;
    std::lock_guard lock(lock_mutex_);
    if (auto it = lock_waiters_.find(in->unique); it != lock_waiters_.end()) it->second = true;
    return kNoReply;
}

int PassthroughFs::op_getlk(Request& r, std::vector<uint8_t>& out) {
    std::optional<fuse_lk_in> in = r.args.read<fuse_lk_in>();
    if (!in) return EINVAL;
    std::shared_ptr<Handle> h = handles_.get(in->fh);
    if (!h || h->is_dir) return EBADF;
    if (in->lk_flags & FUSE_LK_FLOCK) return EINVAL;
    struct flock fl;
    if (int err = to_flock(in->lk, fl)) return err;
    int error;
    std::shared_ptr<LockFile> file = lock_file(h->node_id, *h->node, in->owner, false, error);
    // An owner without a lock file holds no locks, and neither does the handle's fd (flock aside, which
    // POSIX locks do not see): testing on it finds exactly the other owners' locks.
    int fd = file ? file->fd.get() : h->fd.get();
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0) return errno;
    fuse_lk_out o{};
    o.lk.type = static_cast<uint32_t>(fl.l_type);
    if (fl.l_type != F_UNLCK) {
        o.lk.start = static_cast<uint64_t>(fl.l_start);
        o.lk.end = fl.l_len == 0 ? kOffsetMax : static_cast<uint64_t>(fl.l_start + fl.l_len - 1);
    }
    append_struct(out, o);
    return 0;
}

int PassthroughFs::op_setlk(Request& r, bool wait) {
    std::optional<fuse_lk_in> in = r.args.read<fuse_lk_in>();
    if (!in) return EINVAL;
    std::shared_ptr<Handle> h = handles_.get(in->fh);
    if (!h) return EBADF;
    // One attempt: 0, EAGAIN when the lock is taken, or another errno.
    std::function<int()> attempt;
    std::shared_ptr<LockFile> file;
    struct flock fl;
    if (in->lk_flags & FUSE_LK_FLOCK) {
        int op;
        switch (in->lk.type) {
            case F_RDLCK:
                op = LOCK_SH;
                break;
            case F_WRLCK:
                op = LOCK_EX;
                break;
            case F_UNLCK:
                op = LOCK_UN;
                break;
            default:
                return EINVAL;
        }
        int fd = h->fd.get();
        attempt = [fd, op] {
            if (flock(fd, op | LOCK_NB) == 0) return 0;
            return errno == EWOULDBLOCK ? EAGAIN : errno;
        };
    } else {
        if (h->is_dir) return EBADF;
        if (int err = to_flock(in->lk, fl)) return err;
        int error;
        file = lock_file(h->node_id, *h->node, in->owner, fl.l_type != F_UNLCK, error);
        if (!file) return error;  // 0 for an unlock by an owner that holds nothing
        int fd = file->fd.get();
        attempt = [fd, &fl] {
            struct flock copy = fl;
            if (fcntl(fd, F_OFD_SETLK, &copy) == 0) return 0;
            return errno == EACCES ? EAGAIN : errno;
        };
    }
    int err = attempt();
    if (err != EAGAIN || !wait) return err;
    // SETLKW: never park a serving thread on a lock indefinitely (the holder's unlock may need this very
    // thread). Poll with backoff until the lock is ours, the kernel interrupts the request, or the limit.
    {
        std::lock_guard lock(lock_mutex_);
        lock_waiters_[r.h.unique] = false;
    }
    auto deadline = std::chrono::steady_clock::now() + kLockWaitLimit;
    auto delay = std::chrono::milliseconds(1);
    while (err == EAGAIN) {
        if (interrupted(r.h.unique)) {
            err = EINTR;
            break;
        }
        if (std::chrono::steady_clock::now() >= deadline) break;
        std::this_thread::sleep_for(delay);
        delay = std::min(delay * 2, std::chrono::milliseconds(50));
        err = attempt();
    }
    std::lock_guard lock(lock_mutex_);
    lock_waiters_.erase(r.h.unique);
    return err;
}

}  // namespace sandlot::vmm::fs
