// Guest filesystem operations: the agent reads, writes and manages files in the guest for the host. Each
// request opens a stream (a host-picked id, like EXEC_START) and ends with one terminal frame: FS_DONE on
// success, ERROR{failed, errno, "op path: reason"} otherwise. Streams of both kinds share the agent's limit
// of concurrent streams (Hello::max_streams). Since protocol 1.3 (kFeatureFs).
//
//   host  -> agent  FS_REQUEST{op, flags, path, path2, mode, uid, gid, offset, length, depth, user, window,
//                              mtime}
//
// One-shot operations (stat, lstat, mkdir, remove, remove_dir, rename, copy, exists, chmod, chown, symlink,
// realpath) answer at once:
//   agent -> host   [FS_ENTRY]  FS_DONE{value, text}        stat/lstat send the entry; exists: value 1 or 0;
//                                                           realpath: text is the resolved path
// Reading (read, list, get_tree): the agent sends within FsRequest::window bytes of FS_ENTRY + FS_DATA
// payload and more as the host grants it with FS_WINDOW{n}:
//   read      FS_ENTRY{the file} FS_DATA*  FS_DONE{bytes}
//   list      FS_ENTRY*                    FS_DONE{entries}       (paths relative to the listed directory)
//   get_tree  (FS_ENTRY FS_DATA*)*         FS_DONE{entries}       (pre-order; a regular file's entry is
//                                                                  followed by exactly entry.size bytes)
// Writing (write, put_tree): the agent prepares, then grants credit with FS_WINDOW; the host sends within it
// and ends with FS_COMMIT. The agent makes the result visible only then:
//   agent -> host   FS_WINDOW{n}    (first: ready; then as it has written what it got)
//   host  -> agent  write:    FS_DATA*                FS_COMMIT
//                   put_tree: (FS_ENTRY FS_DATA*)*    FS_COMMIT
//   agent -> host   FS_DONE{bytes or entries}
// A write goes to a temporary file in the target's directory which is fsynced and renamed over the target on
// FS_COMMIT, so readers see the old file or the new one, never a part. Any failure (a short write, ENOSPC,
// EDQUOT, EIO at fsync) ends the stream with ERROR and removes the temporary file. An append writes in place
// and, on failure, truncates the file back to its old size.
//
// Either side may end a stream early: the host with FS_CANCEL (the agent discards what it prepared and
// answers ERROR{ECANCELED}), the agent with ERROR. Frames for a stream that has just ended are ignored.
// Everything runs as FsRequest::user ("" = the sandbox's default user): the agent switches its filesystem
// identity (fsuid, fsgid, groups) around each step, so permissions are the user's own.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "proto/base/error.h"
#include "proto/messages.h"

namespace sandlot::proto {

enum class FsOp : uint32_t {
    Stat = 1,
    Lstat = 2,
    Read = 3,
    Write = 4,
    List = 5,
    Mkdir = 6,
    Remove = 7,     // a file, symlink or other non-directory
    RemoveDir = 8,  // kFsRecursive: with its contents
    Rename = 9,     // path -> path2
    Copy = 10,      // path -> path2 within the guest; kFsRecursive for directories
    Exists = 11,    // lstat succeeds
    Chmod = 12,
    Chown = 13,
    Symlink = 14,  // creates path pointing at path2
    Realpath = 15,
    GetTree = 16,
    PutTree = 17,
};

// "stat", "read", ... for messages; "op N" for an unknown one.
std::string fs_op_name(uint32_t op);

// FsRequest::flags
inline constexpr uint32_t kFsAppend = 1u << 0;         // write: append in place instead of replacing
inline constexpr uint32_t kFsExclusive = 1u << 1;      // write/mkdir/symlink: fail with EEXIST if it exists
inline constexpr uint32_t kFsParents = 1u << 2;        // mkdir -p; write/put_tree: create missing parents
inline constexpr uint32_t kFsRecursive = 1u << 3;      // remove_dir, copy
inline constexpr uint32_t kFsNoSync = 1u << 4;         // write/put_tree: skip the fsync before FS_DONE
inline constexpr uint32_t kFsPreserveOwner = 1u << 5;  // put_tree/copy: apply entries' uid/gid (root only)
inline constexpr uint32_t kFsSetMtime = 1u << 6;       // write: set FsRequest::mtime_ns on the result
inline constexpr uint32_t kFsNoFollow = 1u << 7;       // chmod/chown: act on a symlink itself (chown only)

// FsRequest::length for "to the end of the file".
inline constexpr uint64_t kFsToEnd = std::numeric_limits<uint64_t>::max();

struct FsRequest {
    static constexpr MessageType kType = MessageType::FsRequest;

    uint32_t op = 0;  // an FsOp
    uint32_t flags = 0;
    std::string path;
    std::string path2;       // rename/copy destination, symlink target
    uint32_t mode = 0;       // write/mkdir/chmod permission bits (07777)
    uint32_t uid = 0;        // chown (kFsUnchanged keeps it)
    uint32_t gid = 0;        //
    uint64_t offset = 0;     // read
    uint64_t length = 0;     // read: bytes wanted (kFsToEnd for all)
    uint32_t depth = 0;      // list: 1 = the directory's entries, 2 = and theirs, ...; 0 = unlimited
    std::string user;        // "" = the sandbox's default user; else as ExecStart::user
    uint32_t window = 0;     // read/list/get_tree: initial credit for FS_ENTRY + FS_DATA payload bytes
    int64_t mtime_ns = 0;    // write with kFsSetMtime
    uint64_t size_hint = 0;  // write: expected size (the agent may preallocate); 0 = unknown

    bool operator==(const FsRequest&) const = default;
};

inline constexpr uint32_t kFsUnchanged = std::numeric_limits<uint32_t>::max();  // chown: keep this id

enum class FsType : uint8_t {
    Unknown = 0,
    Regular = 1,
    Directory = 2,
    Symlink = 3,
    CharDevice = 4,
    BlockDevice = 5,
    Fifo = 6,
    Socket = 7,
    // Only in trees: another name for a file earlier in the same tree, whose relative path is link_target.
    Hardlink = 8,
};

// "file", "directory", "symlink", ...
std::string fs_type_name(FsType type);

// One file's metadata. In list/get_tree/put_tree, path is relative to the request's path ("" = that path
// itself, components separated by '/'); for stat/lstat it is the path asked for.
struct FsEntry {
    static constexpr MessageType kType = MessageType::FsEntry;

    std::string path;  // any bytes but NUL: names need not be UTF-8
    FsType type = FsType::Unknown;
    uint32_t mode = 0;  // permission bits (07777)
    uint32_t uid = 0;
    uint32_t gid = 0;
    uint64_t size = 0;
    int64_t mtime_ns = 0;
    int64_t atime_ns = 0;
    int64_t ctime_ns = 0;
    uint64_t ino = 0;
    uint32_t nlink = 0;
    uint64_t rdev = 0;        // devices
    std::string link_target;  // symlinks; hard links: the earlier entry's relative path

    bool operator==(const FsEntry&) const = default;
};

// FsEntry times (ns since the epoch, negative before it) as a timespec for utimensat/futimens.
timespec fs_timespec(int64_t ns);

// The entry for a stat result (link_target left empty).
FsEntry fs_entry_from_stat(const struct ::stat& st, std::string path);
FsType fs_type_of(uint32_t st_mode);

// FS_DATA: the payload is raw file bytes, nothing else (at most kMaxFramePayload).

// Credit: "you may send `bytes` more of FS_ENTRY + FS_DATA payload".
struct FsWindow {
    static constexpr MessageType kType = MessageType::FsWindow;
    uint32_t bytes = 0;
    bool operator==(const FsWindow&) const = default;
};

// FS_COMMIT and FS_CANCEL: empty payloads.

// The terminal success reply.
struct FsDone {
    static constexpr MessageType kType = MessageType::FsDone;
    uint64_t value = 0;  // bytes or entries transferred; exists: 1/0
    std::string text;    // realpath: the resolved path
    bool operator==(const FsDone&) const = default;
};

Result<std::vector<uint8_t>> encode_fs_request(const FsRequest& msg);
Result<std::vector<uint8_t>> encode_fs_entry(const FsEntry& msg);
std::vector<uint8_t> encode(const FsWindow& msg);
Result<std::vector<uint8_t>> encode_fs_done(const FsDone& msg);

Result<FsRequest> decode_fs_request(std::span<const uint8_t> payload);
Result<FsEntry> decode_fs_entry(std::span<const uint8_t> payload);
Result<FsWindow> decode_fs_window(std::span<const uint8_t> payload);
Result<FsDone> decode_fs_done(std::span<const uint8_t> payload);

// A relative tree path from the wire is safe to join under a directory: not absolute, no "." or ".."
// components, no empty components, no NUL. "" (the root itself) is safe.
bool fs_relative_path_ok(std::string_view path);

}  // namespace sandlot::proto
