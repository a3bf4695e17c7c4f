#include "agentd/fs_service.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <map>
#include <optional>

#include "agentd/exec_limits.h"
#include "agentd/fs_ops.h"
#include "agentd/log.h"
#include "proto/fs.h"

namespace sandlot::agent {

namespace {

constexpr size_t kRecentlyEndedMax = 4096;
constexpr uint64_t kMaxCredit = uint64_t{1} << 40;  // FS_WINDOWs add up; cap so nothing can overflow
constexpr size_t kMaxHardlinks = 1 << 20;           // get_tree remembers this many multi-link files

struct DirCloser {
    void operator()(DIR* dir) const { closedir(dir); }
};
using DirPtr = std::unique_ptr<DIR, DirCloser>;

bool is_dot(const char* name) {
    return name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0));
}

Result<DirPtr> open_dir_at(int dir_fd, const char* name, const std::string& path) {
    UniqueFd fd(openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) return fs_errno("open", path);
    DirPtr dir(fdopendir(fd.get()));
    if (!dir) return fs_errno("opendir", path);
    (void)fd.release();  // owned by the DIR now
    return dir;
}

bool is_producer(proto::FsOp op) {
    return op == proto::FsOp::Read || op == proto::FsOp::List || op == proto::FsOp::GetTree;
}

}  // namespace

struct FsService::Stream {
    struct Level {
        DirPtr dir;
        std::string rel;     // path of this directory relative to the request's
        uint32_t depth = 0;  // 1 for the request's directory
    };
    struct PendingDir {
        std::string path;
        proto::FsEntry entry;
    };

    uint32_t id = 0;
    proto::FsOp op = proto::FsOp::Stat;
    proto::FsRequest request;
    ExecUser user;

    // Producers (read, list, get_tree).
    uint64_t credit = 0;  // payload bytes the host allows us to send
    std::optional<std::vector<uint8_t>> pending_entry;
    UniqueFd file;  // the file whose data is being sent
    std::string file_path;
    uint64_t offset = 0;
    uint64_t remaining = 0;
    bool exact_size = false;  // get_tree: exactly `remaining` bytes must follow the entry
    std::vector<Level> levels;
    std::map<std::pair<uint64_t, uint64_t>, std::string>
        linked;  // get_tree: (dev, ino) of linked files -> path
    uint64_t bytes = 0;
    uint64_t entries = 0;

    // Consumers (write, put_tree).
    uint64_t granted = 0;   // payload bytes the host may still send
    uint64_t consumed = 0;  // written but not yet granted back
    UniqueFd out;
    std::string target;     // final name of the file being written
    std::string temp;       // its temporary name, "" when written in place
    bool created = false;   // target was created by us (removed on failure)
    uint64_t old_size = 0;  // append: truncated back to this on failure
    proto::FsEntry entry;   // put_tree: the file being written
    uint64_t entry_left = 0;
    std::vector<PendingDir> dirs;  // put_tree: modes and times applied at commit, deepest first
    std::string last_parent;       // put_tree: parents known to exist

    // Undoes what a failed or abandoned write prepared.
    void discard() {
        if (op == proto::FsOp::Write && (request.flags & proto::kFsAppend) && out) {
            if (ftruncate(out.get(), static_cast<off_t>(old_size)) != 0)
                log_line("fs: cannot truncate " + target + " back after a failed append");
        }
        out.reset();
        if (!temp.empty())
            unlink(temp.c_str());
        else if (created && !target.empty())
            unlink(target.c_str());
        temp.clear();
        created = false;
    }
};

std::unique_ptr<FsService> FsService::install(Server& server, FsConfig config) {
    std::unique_ptr<FsService> service(new FsService(server, std::move(config)));
    FsService* self = service.get();
    server.set_handler(
        proto::MessageType::FsRequest,
        [self](Server&, Connection& conn, const proto::Frame& f) { return self->on_request(conn, f); });
    for (auto type : {proto::MessageType::FsEntry, proto::MessageType::FsData, proto::MessageType::FsWindow,
                      proto::MessageType::FsCommit, proto::MessageType::FsCancel}) {
        server.set_handler(type, [self](Server&, Connection& conn, const proto::Frame& f) {
            return self->on_stream_frame(conn, f);
        });
    }
    server.add_connection_hooks(
        self, [self](Connection& conn) { self->on_connection_closed(conn); },
        [self](Connection& conn) { self->on_output_drained(conn); });
    return service;
}

FsService::FsService(Server& server, FsConfig config)
    : server_(server), config_(std::move(config)), buffer_(kFsDataChunk) {}

FsService::~FsService() {
    for (auto type :
         {proto::MessageType::FsRequest, proto::MessageType::FsEntry, proto::MessageType::FsData,
          proto::MessageType::FsWindow, proto::MessageType::FsCommit, proto::MessageType::FsCancel})
        server_.remove_handler(type);
    server_.remove_connection_hooks(this);
    for (auto& [id, state] : connections_)
        for (auto& [stream_id, stream] : state.streams)
            stream->discard();
}

namespace {

void send_done(Connection& conn, uint32_t stream, uint64_t value, std::string text = {}) {
    auto payload = proto::encode_fs_done({value, std::move(text)});
    if (!payload) payload = proto::encode_fs_done({value, {}});
    conn.send(proto::make_frame(proto::MessageType::FsDone, stream, std::move(*payload)));
}

void send_error(Connection& conn, uint32_t stream, const Error& error) {
    conn.send_error(stream, proto::ErrorCode::Failed, error.code, error.message);
}

// The one-shot operations. Returns the FS_DONE value and text, having sent an FS_ENTRY where one is due.
Result<std::pair<uint64_t, std::string>> run_one_shot(Connection& conn, const proto::FsRequest& req,
                                                      uint32_t stream) {
    const std::string& path = req.path;
    switch (static_cast<proto::FsOp>(req.op)) {
        case proto::FsOp::Stat:
        case proto::FsOp::Lstat: {
            auto entry = TRY(fs_stat(path, req.op == static_cast<uint32_t>(proto::FsOp::Stat)));
            auto payload = TRY(proto::encode_fs_entry(entry));
            conn.send(proto::make_frame(proto::MessageType::FsEntry, stream, std::move(payload)));
            return std::pair<uint64_t, std::string>{1, {}};
        }
        case proto::FsOp::Mkdir:
            TRY(fs_mkdir(path, req.mode, req.flags & proto::kFsParents, req.flags & proto::kFsExclusive));
            break;
        case proto::FsOp::Remove:
            TRY(fs_remove(path));
            break;
        case proto::FsOp::RemoveDir:
            TRY(fs_remove_dir(path, req.flags & proto::kFsRecursive));
            break;
        case proto::FsOp::Rename:
            TRY(fs_rename(path, req.path2));
            break;
        case proto::FsOp::Copy:
            TRY(fs_copy(path, req.path2, req.flags & proto::kFsRecursive));
            break;
        case proto::FsOp::Exists:
            return std::pair<uint64_t, std::string>{TRY(fs_exists(path)) ? 1u : 0u, {}};
        case proto::FsOp::Chmod:
            TRY(fs_chmod(path, req.mode));
            break;
        case proto::FsOp::Chown:
            TRY(fs_chown(path, req.uid, req.gid, req.flags & proto::kFsNoFollow));
            break;
        case proto::FsOp::Symlink:
            TRY(fs_symlink(req.path2, path));
            break;
        case proto::FsOp::Realpath:
            return std::pair<uint64_t, std::string>{0, TRY(fs_realpath(path))};
        default:
            return fs_error(EINVAL, "unknown operation", proto::fs_op_name(req.op));
    }
    return std::pair<uint64_t, std::string>{0, {}};
}

// A write stream: the temporary file (or, appending, the file itself) is open after this.
Result<void> start_write(FsService::Stream& s) {
    const proto::FsRequest& req = s.request;
    s.target = req.path;
    if (req.flags & proto::kFsParents) TRY(fs_make_parents(req.path));
    struct stat st;
    bool exists = stat(req.path.c_str(), &st) == 0;
    if (!exists && errno != ENOENT) return fs_errno("write", req.path);
    if (exists && S_ISDIR(st.st_mode)) return fs_error(EISDIR, "write", req.path);
    if (exists && (req.flags & proto::kFsExclusive)) return fs_error(EEXIST, "write", req.path);
    mode_t mode = req.mode != 0 ? req.mode & 07777 : (exists ? st.st_mode & 07777 : 0644);
    if (req.flags & proto::kFsAppend) {
        s.out = UniqueFd(open(req.path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, mode));
        if (!s.out) return fs_errno("open", req.path);
        struct stat now;
        if (fstat(s.out.get(), &now) != 0) return fs_errno("stat", req.path);
        s.old_size = static_cast<uint64_t>(now.st_size);
        s.created = !exists;
        return {};
    }
    // Not a regular file (a device, a FIFO): written in place, there is nothing to replace atomically.
    if (exists && !S_ISREG(st.st_mode)) {
        s.out = UniqueFd(open(req.path.c_str(), O_WRONLY | O_CLOEXEC));
        if (!s.out) return fs_errno("open", req.path);
        return {};
    }
    s.temp = fs_temp_name(req.path);
    s.out = UniqueFd(open(s.temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!s.out) {
        int saved = errno;
        s.temp.clear();
        return fs_error(saved, "write", req.path);
    }
    if (fchmod(s.out.get(), mode) != 0) return fs_errno("chmod", req.path);
    // Root replacing a file keeps its owner (a user's file stays the user's).
    if (exists && setfsuid(static_cast<uid_t>(-1)) == 0 && (st.st_uid != 0 || st.st_gid != 0)) {
        if (fchown(s.out.get(), st.st_uid, st.st_gid) != 0) return fs_errno("chown", req.path);
    }
    return {};
}

Result<void> commit_write(FsService::Stream& s) {
    const proto::FsRequest& req = s.request;
    if (!(req.flags & proto::kFsNoSync) && fsync(s.out.get()) != 0) return fs_errno("write", s.target);
    if (req.flags & proto::kFsSetMtime) {
        timespec times[2] = {{0, UTIME_OMIT}, proto::fs_timespec(req.mtime_ns)};
        if (futimens(s.out.get(), times) != 0) return fs_errno("set times of", s.target);
    }
    if (close(s.out.release()) != 0) return fs_errno("write", s.target);
    if (!s.temp.empty()) {
        if (rename(s.temp.c_str(), s.target.c_str()) != 0) return fs_errno("rename to", s.target);
        s.temp.clear();
        if (!(req.flags & proto::kFsNoSync)) {
            UniqueFd dir(open(fs_dirname(s.target).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
            if (dir) fsync(dir.get());
        }
    }
    s.created = false;
    return {};
}

Result<void> finish_tree_file(FsService::Stream& s) {
    const proto::FsEntry& e = s.entry;
    bool owner = s.request.flags & proto::kFsPreserveOwner;
    if (owner && fchown(s.out.get(), e.uid, e.gid) != 0) return fs_errno("chown", s.target);
    if (fchmod(s.out.get(), e.mode & 07777) != 0) return fs_errno("chmod", s.target);
    timespec times[2] = {proto::fs_timespec(e.atime_ns != 0 ? e.atime_ns : e.mtime_ns),
                         proto::fs_timespec(e.mtime_ns)};
    if (futimens(s.out.get(), times) != 0) return fs_errno("set times of", s.target);
    if (close(s.out.release()) != 0) return fs_errno("write", s.target);
    if (!s.temp.empty()) {
        if (rename(s.temp.c_str(), s.target.c_str()) != 0) return fs_errno("rename to", s.target);
        s.temp.clear();
    }
    s.created = false;
    return {};
}

// Creates one put_tree entry; a regular file is left open for its data.
Result<void> put_entry(FsService::Stream& s, proto::FsEntry entry) {
    if (s.out) return fs_error(EPROTO, "put_tree: an entry arrived before the data of", s.target);
    if (!proto::fs_relative_path_ok(entry.path))
        return fs_error(EINVAL, "put_tree: unsafe path in the tree:", entry.path);
    const std::string full = fs_join(s.request.path, entry.path);
    std::string parent = fs_dirname(full);
    if (parent != s.last_parent) {
        if (!entry.path.empty() || (s.request.flags & proto::kFsParents)) TRY(fs_make_parents(full));
        s.last_parent = parent;
    }
    bool owner = s.request.flags & proto::kFsPreserveOwner;
    ++s.entries;
    struct stat st;
    switch (entry.type) {
        case proto::FsType::Directory:
            if (mkdir(full.c_str(), 0700) != 0) {
                if (errno != EEXIST) return fs_errno("mkdir", full);
                if (lstat(full.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
                    return fs_error(ENOTDIR, "mkdir", full);
            }
            s.dirs.push_back({full, std::move(entry)});
            return {};
        case proto::FsType::Regular: {
            s.target = full;
            s.out = UniqueFd(open(full.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
            if (s.out) {
                s.created = true;
            } else {
                if (errno != EEXIST) return fs_errno("create", full);
                if (lstat(full.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
                    return fs_error(EISDIR, "write", full);
                s.temp = fs_temp_name(full);
                s.out = UniqueFd(open(s.temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
                if (!s.out) {
                    int saved = errno;
                    s.temp.clear();
                    return fs_error(saved, "write", full);
                }
            }
            s.entry = std::move(entry);
            s.entry_left = s.entry.size;
            if (s.entry_left == 0) return finish_tree_file(s);
            return {};
        }
        case proto::FsType::Symlink: {
            std::string made = full;
            if (symlink(entry.link_target.c_str(), full.c_str()) != 0) {
                if (errno != EEXIST) return fs_errno("symlink", full);
                if (lstat(full.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
                    return fs_error(EISDIR, "symlink", full);
                made = fs_temp_name(full);
                if (symlink(entry.link_target.c_str(), made.c_str()) != 0) return fs_errno("symlink", full);
            }
            auto finish = [&]() -> Result<void> {
                if (owner && lchown(made.c_str(), entry.uid, entry.gid) != 0) return fs_errno("chown", full);
                timespec times[2] = {proto::fs_timespec(entry.mtime_ns), proto::fs_timespec(entry.mtime_ns)};
                utimensat(AT_FDCWD, made.c_str(), times, AT_SYMLINK_NOFOLLOW);
                if (made != full && rename(made.c_str(), full.c_str()) != 0)
                    return fs_errno("rename to", full);
                return {};
            };
            auto done = finish();
            if (!done && made != full) unlink(made.c_str());
            return done;
        }
        case proto::FsType::Fifo:
        case proto::FsType::CharDevice:
        case proto::FsType::BlockDevice: {
            mode_t kind = entry.type == proto::FsType::Fifo         ? S_IFIFO
                          : entry.type == proto::FsType::CharDevice ? S_IFCHR
                                                                    : S_IFBLK;
            // Made under a temporary name and renamed over whatever non-directory is there.
            if (lstat(full.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return fs_error(EISDIR, "mknod", full);
            std::string temp = fs_temp_name(full);
            if (mknod(temp.c_str(), kind | (entry.mode & 07777), static_cast<dev_t>(entry.rdev)) != 0)
                return fs_errno("mknod", full);
            auto finish = [&]() -> Result<void> {
                if (owner && lchown(temp.c_str(), entry.uid, entry.gid) != 0) return fs_errno("chown", full);
                if (chmod(temp.c_str(), entry.mode & 07777) != 0) return fs_errno("chmod", full);
                if (rename(temp.c_str(), full.c_str()) != 0) return fs_errno("rename to", full);
                return {};
            };
            auto done = finish();
            if (!done) unlink(temp.c_str());
            return done;
        }
        case proto::FsType::Hardlink: {
            if (entry.link_target.empty() || !proto::fs_relative_path_ok(entry.link_target))
                return fs_error(EINVAL, "put_tree: unsafe hard link target for", full);
            std::string existing = fs_join(s.request.path, entry.link_target);
            if (link(existing.c_str(), full.c_str()) == 0) return {};
            if (errno != EEXIST) return fs_errno("link", full);
            std::string temp = fs_temp_name(full);
            if (link(existing.c_str(), temp.c_str()) != 0) return fs_errno("link", full);
            if (rename(temp.c_str(), full.c_str()) != 0) {
                int saved = errno;
                unlink(temp.c_str());
                return fs_error(saved, "rename to", full);
            }
            return {};
        }
        case proto::FsType::Socket:
        case proto::FsType::Unknown:
            return {};  // nothing meaningful to create
    }
    return {};
}

Result<void> commit_tree(FsService::Stream& s) {
    if (s.out) return fs_error(EPROTO, "put_tree: data missing for", s.target);
    bool owner = s.request.flags & proto::kFsPreserveOwner;
    // Deepest first, so setting a directory's mtime is not undone by changes inside it.
    for (auto it = s.dirs.rbegin(); it != s.dirs.rend(); ++it) {
        const proto::FsEntry& e = it->entry;
        if (owner && lchown(it->path.c_str(), e.uid, e.gid) != 0) return fs_errno("chown", it->path);
        if (chmod(it->path.c_str(), e.mode & 07777) != 0) return fs_errno("chmod", it->path);
        timespec times[2] = {proto::fs_timespec(e.atime_ns != 0 ? e.atime_ns : e.mtime_ns),
                             proto::fs_timespec(e.mtime_ns)};
        if (utimensat(AT_FDCWD, it->path.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0)
            return fs_errno("set times of", it->path);
    }
    if (!(s.request.flags & proto::kFsNoSync)) {
        // One syncfs for the whole tree; it reports write-back errors of the file system.
        std::string root = s.request.path;
        UniqueFd fd(open(root.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
        if (!fd) fd = UniqueFd(open(fs_dirname(root).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (fd && syncfs(fd.get()) != 0) return fs_errno("sync", root);
    }
    return {};
}

// The next entry of a list/get_tree walk, or nullopt at the end. Opens a get_tree file for its data.
Result<std::optional<proto::FsEntry>> walk_next(FsService::Stream& s) {
    bool tree = s.op == proto::FsOp::GetTree;
    while (!s.levels.empty()) {
        auto& top = s.levels.back();
        errno = 0;
        dirent* ent = readdir(top.dir.get());
        if (!ent) {
            if (errno != 0) return fs_errno("readdir", fs_join(s.request.path, top.rel));
            s.levels.pop_back();
            continue;
        }
        if (is_dot(ent->d_name)) continue;
        std::string rel = top.rel.empty() ? std::string(ent->d_name) : top.rel + "/" + ent->d_name;
        std::string full = fs_join(s.request.path, rel);
        int dir_fd = dirfd(top.dir.get());
        struct stat st;
        if (fstatat(dir_fd, ent->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno == ENOENT) continue;  // removed while we walk
            return fs_errno("stat", full);
        }
        proto::FsEntry entry = proto::fs_entry_from_stat(st, rel);
        if (S_ISLNK(st.st_mode)) {
            std::string target(PATH_MAX, '\0');
            ssize_t n = readlinkat(dir_fd, ent->d_name, target.data(), target.size());
            if (n < 0) return fs_errno("readlink", full);
            target.resize(static_cast<size_t>(n));
            entry.link_target = std::move(target);
        } else if (S_ISREG(st.st_mode) && tree && st.st_nlink > 1 && s.linked.size() < kMaxHardlinks) {
            auto [it, inserted] = s.linked.emplace(std::pair<uint64_t, uint64_t>(st.st_dev, st.st_ino), rel);
            if (!inserted) {
                entry.type = proto::FsType::Hardlink;
                entry.size = 0;
                entry.link_target = it->second;
                return entry;
            }
        }
        if (S_ISREG(st.st_mode) && tree) {
            s.file = UniqueFd(openat(dir_fd, ent->d_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
            if (!s.file) return fs_errno("open", full);
            s.file_path = full;
            s.offset = 0;
            s.remaining = entry.size;
            s.exact_size = true;
        } else if (S_ISDIR(st.st_mode)) {
            uint32_t max_depth = tree ? 0 : s.request.depth;
            uint32_t depth = top.depth;
            if (max_depth == 0 || depth < max_depth) {
                DirPtr sub = TRY(open_dir_at(dir_fd, ent->d_name, full));
                s.levels.push_back({std::move(sub), rel, depth + 1});  // `top` is invalid from here
            }
        }
        return entry;
    }
    return std::nullopt;
}

// Opens what a producer stream reads; queues its first entry where it has one.
Result<void> start_producer(FsService::Stream& s) {
    const proto::FsRequest& req = s.request;
    if (req.window < kFsMinWindow)
        return fs_error(EINVAL, "window under " + std::to_string(kFsMinWindow) + " bytes for", req.path);
    s.credit = req.window;
    if (s.op == proto::FsOp::Read) {
        s.file = UniqueFd(open(req.path.c_str(), O_RDONLY | O_CLOEXEC));
        if (!s.file) return fs_errno("open", req.path);
        struct stat st;
        if (fstat(s.file.get(), &st) != 0) return fs_errno("stat", req.path);
        if (S_ISDIR(st.st_mode)) return fs_error(EISDIR, "read", req.path);
        s.file_path = req.path;
        s.offset = req.offset;
        s.remaining = req.length;
        s.pending_entry = TRY(proto::encode_fs_entry(proto::fs_entry_from_stat(st, req.path)));
        return {};
    }
    struct stat st;
    if (lstat(req.path.c_str(), &st) != 0) {
        if (s.op == proto::FsOp::List || errno != ENOENT)
            return fs_errno(proto::fs_op_name(req.op), req.path);
        return fs_errno("get_tree", req.path);
    }
    // list follows a symlink to a directory; get_tree copies the link itself.
    if (s.op == proto::FsOp::List && S_ISLNK(st.st_mode) && stat(req.path.c_str(), &st) != 0)
        return fs_errno("list", req.path);
    if (s.op == proto::FsOp::List) {
        if (!S_ISDIR(st.st_mode)) return fs_error(ENOTDIR, "list", req.path);
        s.levels.push_back({TRY(open_dir_at(AT_FDCWD, req.path.c_str(), req.path)), "", 1});
        return {};
    }
    proto::FsEntry root = proto::fs_entry_from_stat(st, "");
    if (S_ISLNK(st.st_mode)) {
        auto full = TRY(fs_stat(req.path, false));
        root.link_target = full.link_target;
    } else if (S_ISREG(st.st_mode)) {
        s.file = UniqueFd(open(req.path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
        if (!s.file) return fs_errno("open", req.path);
        s.file_path = req.path;
        s.remaining = root.size;
        s.exact_size = true;
    } else if (S_ISDIR(st.st_mode)) {
        s.levels.push_back({TRY(open_dir_at(AT_FDCWD, req.path.c_str(), req.path)), "", 1});
    }
    s.entries = 1;
    s.pending_entry = TRY(proto::encode_fs_entry(root));
    return {};
}

}  // namespace

Result<void> FsService::on_request(Connection& conn, const proto::Frame& frame) {
    uint32_t id = frame.stream_id;
    auto request = proto::decode_fs_request(frame.payload);
    if (!request) {
        conn.send_error(id, proto::ErrorCode::Malformed, 0, request.error().to_string());
        return {};
    }
    ConnectionState& state = connections_[conn.id()];
    if (id == proto::kControlStream || state.streams.contains(id)) {
        conn.send_error(id, proto::ErrorCode::Malformed, EINVAL,
                        "FS_REQUEST on stream " + std::to_string(id) + ", which is not free");
        return {};
    }
    std::erase(state.recently_ended, id);
    auto stream = std::make_unique<Stream>();
    stream->id = id;
    stream->op = static_cast<proto::FsOp>(request->op);
    stream->request = std::move(*request);
    Stream& s = *stream;

    const std::string& spec = s.request.user.empty() ? config_.default_user : s.request.user;
    auto user = resolve_user(spec, config_.user_db);
    if (!user) {
        send_error(conn, id, Error{EINVAL, "unknown user \"" + spec + "\": " + user.error().to_string()});
        return {};
    }
    s.user = std::move(*user);
    auto identity = FsIdentity::become(s.user);
    if (!identity) {
        send_error(conn, id, identity.error());
        return {};
    }
    bool streaming = is_producer(s.op) || s.op == proto::FsOp::Write || s.op == proto::FsOp::PutTree;
    if (!streaming) {
        auto result = run_one_shot(conn, s.request, id);
        if (result)
            send_done(conn, id, result->first, std::move(result->second));
        else
            send_error(conn, id, result.error());
        return {};
    }
    if (state.streams.size() >= kMaxStreams) {
        send_error(conn, id, Error{EAGAIN, "too many file streams open on this connection"});
        return {};
    }
    Result<void> started;
    if (is_producer(s.op)) {
        started = start_producer(s);
    } else if (s.op == proto::FsOp::Write) {
        started = start_write(s);
    } else {
        started = {};
        // put_tree: an empty request path would resolve entries against the agent's cwd.
        if (s.request.path.empty()) started = fs_error(EINVAL, "put_tree", "(empty path)");
    }
    if (!started) {
        s.discard();
        send_error(conn, id, started.error());
        // The host may already be sending data for it: drop that quietly.
        state.recently_ended.push_back(id);
        if (state.recently_ended.size() > kRecentlyEndedMax) state.recently_ended.pop_front();
        return {};
    }
    state.streams.emplace(id, std::move(stream));
    if (is_producer(s.op)) {
        pump(conn, s);
    } else {
        s.granted = kFsWriteWindow;
        conn.send(proto::make_frame(proto::FsWindow{kFsWriteWindow}, id));
    }
    return {};
}

Result<void> FsService::on_stream_frame(Connection& conn, const proto::Frame& frame) {
    ConnectionState& state = connections_[conn.id()];
    auto it = state.streams.find(frame.stream_id);
    if (it == state.streams.end()) {
        if (std::find(state.recently_ended.begin(), state.recently_ended.end(), frame.stream_id) ==
            state.recently_ended.end()) {
            conn.send_error(frame.stream_id, proto::ErrorCode::Malformed, EBADF,
                            proto::message_type_name(frame.type) + " for a stream with no file operation");
        }
        return {};
    }
    Stream& s = *it->second;
    auto type = static_cast<proto::MessageType>(frame.type);
    bool consumer = !is_producer(s.op);

    if (type == proto::MessageType::FsCancel) {
        Error cancelled{ECANCELED, proto::fs_op_name(s.request.op) + " " + s.request.path};
        end(conn, s, &cancelled);
        return {};
    }
    if (type == proto::MessageType::FsWindow) {
        auto window = proto::decode_fs_window(frame.payload);
        if (!window || !consumer) {
            if (window) s.credit = std::min(s.credit + window->bytes, kMaxCredit);
            if (!consumer) pump(conn, s);
            return {};
        }
    }
    if (!consumer || type == proto::MessageType::FsWindow) {
        Error error{EPROTO, proto::message_type_name(frame.type) + " does not belong in a " +
                                proto::fs_op_name(s.request.op) + " stream"};
        end(conn, s, &error);
        return {};
    }

    auto identity = FsIdentity::become(s.user);
    if (!identity) {
        end(conn, s, &identity.error());
        return {};
    }
    auto step = [&]() -> Result<bool> {  // true: the stream is finished (FS_DONE sent)
        bool tree = s.op == proto::FsOp::PutTree;
        if (type == proto::MessageType::FsCommit) {
            if (tree) {
                TRY(commit_tree(s));
                send_done(conn, s.id, s.entries);
            } else {
                TRY(commit_write(s));
                send_done(conn, s.id, s.bytes);
            }
            return true;
        }
        size_t size = frame.payload.size();
        if (size > s.granted)
            return fs_error(EPROTO, "more data than the window allowed for", s.request.path);
        s.granted -= size;
        if (type == proto::MessageType::FsEntry) {
            if (!tree) return fs_error(EPROTO, "FS_ENTRY in a write of", s.request.path);
            TRY(put_entry(s, TRY(proto::decode_fs_entry(frame.payload))));
        } else {
            if (tree && (!s.out || size > s.entry_left))
                return fs_error(EPROTO, "put_tree: more data than the entry's size for", s.target);
            TRY(fs_write_all(s.out.get(), frame.payload, s.target));
            s.bytes += size;
            if (tree) {
                s.entry_left -= size;
                if (s.entry_left == 0) TRY(finish_tree_file(s));
            }
        }
        s.consumed += size;
        if (s.consumed >= kFsWriteWindow / 4) {
            s.granted += s.consumed;
            conn.send(proto::make_frame(proto::FsWindow{static_cast<uint32_t>(s.consumed)}, s.id));
            s.consumed = 0;
        }
        return false;
    };
    auto finished = step();
    if (!finished)
        end(conn, s, &finished.error());
    else if (*finished)
        end(conn, s, nullptr);
    return {};
}

void FsService::pump(Connection& conn, Stream& s) {
    auto identity = FsIdentity::become(s.user);
    if (!identity) {
        end(conn, s, &identity.error());
        return;
    }
    auto run = [&]() -> Result<bool> {  // true: finished
        while (!conn.congested()) {
            if (s.pending_entry) {
                if (s.credit < s.pending_entry->size()) return false;
                s.credit -= s.pending_entry->size();
                conn.send_data(proto::MessageType::FsEntry, s.id, *s.pending_entry);
                s.pending_entry.reset();
                continue;
            }
            if (s.file) {
                size_t want =
                    static_cast<size_t>(std::min<uint64_t>({s.remaining, s.credit, buffer_.size()}));
                if (s.remaining == 0) {
                    s.file.reset();
                    continue;
                }
                if (want == 0) return false;
                ssize_t got = pread(s.file.get(), buffer_.data(), want, static_cast<off_t>(s.offset));
                if (got < 0 && errno == EINTR) continue;
                if (got < 0) return fs_errno("read", s.file_path);
                if (got == 0) {
                    if (s.exact_size)
                        return fs_error(EIO, "read (the file shrank while it was copied)", s.file_path);
                    s.remaining = 0;
                    continue;
                }
                size_t n = static_cast<size_t>(got);
                conn.send_data(proto::MessageType::FsData, s.id, std::span(buffer_.data(), n));
                s.credit -= n;
                s.remaining -= n;
                s.offset += n;
                s.bytes += n;
                continue;
            }
            if (s.op == proto::FsOp::Read) {
                send_done(conn, s.id, s.bytes);
                return true;
            }
            auto entry = TRY(walk_next(s));
            if (!entry) {
                send_done(conn, s.id, s.entries);
                return true;
            }
            ++s.entries;
            s.pending_entry = TRY(proto::encode_fs_entry(*entry));
        }
        return false;
    };
    auto finished = run();
    if (!finished)
        end(conn, s, &finished.error());
    else if (*finished)
        end(conn, s, nullptr);
}

void FsService::end(Connection& conn, Stream& s, const Error* error) {
    if (error) {
        s.discard();
        send_error(conn, s.id, *error);
    }
    ConnectionState& state = connections_[conn.id()];
    uint32_t id = s.id;
    state.streams.erase(id);  // destroys s
    state.recently_ended.push_back(id);
    if (state.recently_ended.size() > kRecentlyEndedMax) state.recently_ended.pop_front();
}

void FsService::on_connection_closed(Connection& conn) {
    auto it = connections_.find(conn.id());
    if (it == connections_.end()) return;
    for (auto& [id, stream] : it->second.streams)
        stream->discard();
    connections_.erase(it);
}

void FsService::on_output_drained(Connection& conn) {
    auto it = connections_.find(conn.id());
    if (it == connections_.end()) return;
    std::vector<uint32_t> ids;
    for (auto& [id, stream] : it->second.streams)
        if (is_producer(stream->op) && stream->credit > 0) ids.push_back(id);
    for (uint32_t id : ids) {
        if (conn.congested()) return;
        auto& streams = connections_[conn.id()].streams;
        auto found = streams.find(id);
        if (found != streams.end()) pump(conn, *found->second);
    }
}

}  // namespace sandlot::agent
