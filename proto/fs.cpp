#include "proto/fs.h"

#include <string_view>

#include "proto/codec.h"
#include "proto/exec.h"

namespace sandlot::proto {

namespace {

bool has_nul(std::string_view s) {
    return s.find('\0') != std::string_view::npos;
}

Result<std::string> path_field(Reader& r, const char* what) {
    std::string s = TRY(r.string());
    if (s.size() > kMaxPath)
        return make_error(std::string(what) + " longer than " + std::to_string(kMaxPath));
    if (has_nul(s)) return make_error(std::string(what) + " contains a NUL byte");
    return s;
}

Result<void> check_path(std::string_view s, const char* what) {
    if (s.size() > kMaxPath)
        return make_error(std::string(what) + " longer than " + std::to_string(kMaxPath));
    if (has_nul(s)) return make_error(std::string(what) + " contains a NUL byte");
    return {};
}

Result<FsRequest> decode_fs_request_fields(std::span<const uint8_t> payload) {
    Reader r(payload);
    FsRequest msg;
    msg.op = TRY(r.u32());
    msg.flags = TRY(r.u32());
    msg.path = TRY(path_field(r, "path"));
    msg.path2 = TRY(path_field(r, "second path"));
    msg.mode = TRY(r.u32());
    msg.uid = TRY(r.u32());
    msg.gid = TRY(r.u32());
    msg.offset = TRY(r.u64());
    msg.length = TRY(r.u64());
    msg.depth = TRY(r.u32());
    msg.user = TRY(r.string());
    if (msg.user.size() > kMaxShortString || has_nul(msg.user)) return make_error("bad user");
    msg.window = TRY(r.u32());
    msg.mtime_ns = static_cast<int64_t>(TRY(r.u64()));
    msg.size_hint = TRY(r.u64());
    return msg;
}

Result<FsEntry> decode_fs_entry_fields(std::span<const uint8_t> payload) {
    Reader r(payload);
    FsEntry msg;
    msg.path = TRY(path_field(r, "path"));
    msg.type = static_cast<FsType>(TRY(r.u8()));
    msg.mode = TRY(r.u32());
    msg.uid = TRY(r.u32());
    msg.gid = TRY(r.u32());
    msg.size = TRY(r.u64());
    msg.mtime_ns = static_cast<int64_t>(TRY(r.u64()));
    msg.atime_ns = static_cast<int64_t>(TRY(r.u64()));
    msg.ctime_ns = static_cast<int64_t>(TRY(r.u64()));
    msg.ino = TRY(r.u64());
    msg.nlink = TRY(r.u32());
    msg.rdev = TRY(r.u64());
    msg.link_target = TRY(path_field(r, "link target"));
    return msg;
}

}  // namespace

std::string fs_op_name(uint32_t op) {
    switch (static_cast<FsOp>(op)) {
        case FsOp::Stat:
            return "stat";
        case FsOp::Lstat:
            return "lstat";
        case FsOp::Read:
            return "read";
        case FsOp::Write:
            return "write";
        case FsOp::List:
            return "list";
        case FsOp::Mkdir:
            return "mkdir";
        case FsOp::Remove:
            return "remove";
        case FsOp::RemoveDir:
            return "remove_dir";
        case FsOp::Rename:
            return "rename";
        case FsOp::Copy:
            return "copy";
        case FsOp::Exists:
            return "exists";
        case FsOp::Chmod:
            return "chmod";
        case FsOp::Chown:
            return "chown";
        case FsOp::Symlink:
            return "symlink";
        case FsOp::Realpath:
            return "realpath";
        case FsOp::GetTree:
            return "get_tree";
        case FsOp::PutTree:
            return "put_tree";
    }
    return "op " + std::to_string(op);
}

std::string fs_type_name(FsType type) {
    switch (type) {
        case FsType::Regular:
            return "file";
        case FsType::Directory:
            return "directory";
        case FsType::Symlink:
            return "symlink";
        case FsType::CharDevice:
            return "character device";
        case FsType::BlockDevice:
            return "block device";
        case FsType::Fifo:
            return "fifo";
        case FsType::Socket:
            return "socket";
        case FsType::Hardlink:
            return "hard link";
        case FsType::Unknown:
            break;
    }
    return "unknown";
}

Result<std::vector<uint8_t>> encode_fs_request(const FsRequest& msg) {
    TRY(check_path(msg.path, "fs: path"));
    TRY(check_path(msg.path2, "fs: second path"));
    if (msg.user.size() > kMaxShortString || has_nul(msg.user)) return make_error("fs: bad user name");
    Writer w;
    w.u32(msg.op);
    w.u32(msg.flags);
    w.string(msg.path);
    w.string(msg.path2);
    w.u32(msg.mode);
    w.u32(msg.uid);
    w.u32(msg.gid);
    w.u64(msg.offset);
    w.u64(msg.length);
    w.u32(msg.depth);
    w.string(msg.user);
    w.u32(msg.window);
    w.u64(static_cast<uint64_t>(msg.mtime_ns));
    w.u64(msg.size_hint);
    return std::move(w).finish();
}

Result<std::vector<uint8_t>> encode_fs_entry(const FsEntry& msg) {
    TRY(check_path(msg.path, "fs: path"));
    TRY(check_path(msg.link_target, "fs: link target"));
    Writer w;
    w.string(msg.path);
    w.u8(static_cast<uint8_t>(msg.type));
    w.u32(msg.mode);
    w.u32(msg.uid);
    w.u32(msg.gid);
    w.u64(msg.size);
    w.u64(static_cast<uint64_t>(msg.mtime_ns));
    w.u64(static_cast<uint64_t>(msg.atime_ns));
    w.u64(static_cast<uint64_t>(msg.ctime_ns));
    w.u64(msg.ino);
    w.u32(msg.nlink);
    w.u64(msg.rdev);
    w.string(msg.link_target);
    return std::move(w).finish();
}

std::vector<uint8_t> encode(const FsWindow& msg) {
    Writer w;
    w.u32(msg.bytes);
    return finish_small(std::move(w));
}

Result<std::vector<uint8_t>> encode_fs_done(const FsDone& msg) {
    TRY(check_path(msg.text, "fs: result text"));
    Writer w;
    w.u64(msg.value);
    w.string(msg.text);
    return std::move(w).finish();
}

Result<FsRequest> decode_fs_request(std::span<const uint8_t> payload) {
    return decoding("FS_REQUEST", decode_fs_request_fields(payload));
}

Result<FsEntry> decode_fs_entry(std::span<const uint8_t> payload) {
    return decoding("FS_ENTRY", decode_fs_entry_fields(payload));
}

Result<FsWindow> decode_fs_window(std::span<const uint8_t> payload) {
    Reader r(payload);
    auto bytes = decoding("FS_WINDOW", r.u32());
    if (!bytes) return std::unexpected(bytes.error());
    return FsWindow{*bytes};
}

Result<FsDone> decode_fs_done(std::span<const uint8_t> payload) {
    Reader r(payload);
    auto decode = [&]() -> Result<FsDone> {
        FsDone msg;
        msg.value = TRY(r.u64());
        msg.text = TRY(path_field(r, "text"));
        return msg;
    };
    return decoding("FS_DONE", decode());
}

timespec fs_timespec(int64_t ns) {
    timespec ts{};
    ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    if (ts.tv_nsec < 0) {
        ts.tv_nsec += 1'000'000'000;
        ts.tv_sec -= 1;
    }
    return ts;
}

FsType fs_type_of(uint32_t st_mode) {
    switch (st_mode & S_IFMT) {
        case S_IFREG:
            return FsType::Regular;
        case S_IFDIR:
            return FsType::Directory;
        case S_IFLNK:
            return FsType::Symlink;
        case S_IFCHR:
            return FsType::CharDevice;
        case S_IFBLK:
            return FsType::BlockDevice;
        case S_IFIFO:
            return FsType::Fifo;
        case S_IFSOCK:
            return FsType::Socket;
    }
    return FsType::Unknown;
}

FsEntry fs_entry_from_stat(const struct ::stat& st, std::string path) {
    auto ns = [](const timespec& ts) { return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec; };
    FsEntry entry;
    entry.path = std::move(path);
    entry.type = fs_type_of(st.st_mode);
    entry.mode = st.st_mode & 07777;
    entry.uid = st.st_uid;
    entry.gid = st.st_gid;
    entry.size = static_cast<uint64_t>(st.st_size);
    entry.mtime_ns = ns(st.st_mtim);
    entry.atime_ns = ns(st.st_atim);
    entry.ctime_ns = ns(st.st_ctim);
    entry.ino = st.st_ino;
    entry.nlink = static_cast<uint32_t>(st.st_nlink);
    entry.rdev = st.st_rdev;
    return entry;
}

bool fs_relative_path_ok(std::string_view path) {
    if (path.empty()) return true;
    if (path.size() > kMaxPath || has_nul(path) || path.front() == '/') return false;
    size_t start = 0;
    for (;;) {
        size_t slash = path.find('/', start);
        std::string_view part = path.substr(start, slash == std::string_view::npos ? slash : slash - start);
        if (part.empty() || part == "." || part == "..") return false;
        if (slash == std::string_view::npos) return true;
        start = slash + 1;
    }
}

}  // namespace sandlot::proto
