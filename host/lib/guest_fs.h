// Files in a running sandbox: the host side of proto/fs.h.
// (Members carry explicit initializers so designated initializers may leave them out under -Wextra.)
//
//   GuestFs fs = sandbox->fs();                       // or GuestFs(agent) for any AgentConnection
//   TRY(fs.write("/etc/motd", "hello\n"));            // atomic: temp file + fsync + rename in the guest
//   std::string text = TRY(fs.read("/etc/os-release"));
//   auto reader = TRY(fs.read_stream("/var/log/big"));
//   while (auto chunk = TRY(reader->next()); !chunk.empty()) { ... }
//   TRY(fs.copy_from_host("./src", "/work/src"));     // whole trees: modes, symlinks and mtimes kept
//
// Every operation runs in the guest as the GuestFs's user ("" = the sandbox's default user), with that
// user's permissions. Errors carry the guest's errno and name the operation and path:
// Error{ENOENT, "stat /nope"} prints as "stat /nope: No such file or directory".
//
// A GuestFs is a cheap handle on an AgentConnection (which must outlive it and every reader and writer it
// hands out); it is thread-safe, and any number of transfers run at once, alongside execs.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "host/lib/agent_connection.h"
#include "proto/base/error.h"
#include "proto/fs.h"

namespace sandlot::host {

using FileInfo = proto::FsEntry;
using proto::FsType;

struct WriteOptions {
    uint32_t mode = 0;       // permission bits; 0 keeps an existing file's mode (0644 for a new one)
    bool append = false;     // append in place (on failure the file is cut back to its old size)
    bool exclusive = false;  // fail with EEXIST if the file exists
    bool parents = false;    // create missing parent directories
    bool sync = true;        // fsync before reporting success (so ENOSPC/EIO at write-back is reported)
    std::optional<int64_t> mtime_ns{};  // set the file's mtime
    uint64_t size_hint = 0;
};

struct ListOptions {
    uint32_t depth = 1;  // 1 = the directory's entries; 2 = and their children; 0 = unlimited
};

struct TransferStats {
    uint64_t bytes = 0;    // file data moved
    uint64_t entries = 0;  // files, directories, symlinks, ...
};

struct CopyOptions {
    bool preserve_owner = false;  // apply the source's uid/gid (the guest user must be root to do so)
    bool sync = true;             // the destination is synced before success is reported
    bool follow_root = false;     // copy what a symlink at the source path points to, not the link
    // Called as data moves (from the calling thread), with totals so far.
    std::function<void(const TransferStats&)> progress{};
};

// One file being read. next() hands out chunks as they arrive; credit goes back to the agent as they do.
class FileReader {
  public:
    virtual ~FileReader() = default;  // cancels a read not yet finished
    // The file's metadata, as it was opened.
    virtual const FileInfo& info() const = 0;
    // The next chunk; empty at the end of the file (or of the requested range).
    virtual Result<std::vector<uint8_t>> next() = 0;
    // Reads into `buffer`; 0 at the end.
    virtual Result<size_t> read(std::span<uint8_t> buffer) = 0;
};

// One file being written. Nothing is visible in the guest until commit(); a writer destroyed (or aborted)
// before that leaves the old file as it was.
class FileWriter {
  public:
    virtual ~FileWriter() = default;
    // Blocks while the agent's window is full.
    virtual Result<void> write(std::span<const uint8_t> data) = 0;
    // Makes the file visible; returns the bytes written.
    virtual Result<uint64_t> commit() = 0;
    virtual void abort() = 0;
};

// A directory tree (or single file) read from the guest, in pre-order: each entry, and for a regular file
// exactly entry.size bytes of data before the next entry. Paths are relative to the root ("" = the root).
class TreeReader {
  public:
    virtual ~TreeReader() = default;
    // The next entry (after skipping any data of the previous file not yet read); nullopt at the end.
    virtual Result<std::optional<FileInfo>> next() = 0;
    // Data of the current regular file; empty once all of it was returned.
    virtual Result<std::vector<uint8_t>> data() = 0;
};

// A tree written into the guest under one root path. Entries (paths relative to the root, "" = the root
// itself) must come parents first; a regular file's add() is followed by exactly info.size bytes of
// write(). Each file appears whole (temp + rename); directories get their modes and times at commit().
class TreeWriter {
  public:
    virtual ~TreeWriter() = default;
    virtual Result<void> add(const FileInfo& info) = 0;
    virtual Result<void> write(std::span<const uint8_t> data) = 0;
    // Returns the entries created.
    virtual Result<uint64_t> commit() = 0;
    virtual void abort() = 0;
};

class GuestFs {
  public:
    explicit GuestFs(AgentConnection& agent, std::string user = {})
        : agent_(&agent), user_(std::move(user)) {}
    // The same sandbox, as another user (a name, "uid" or "uid:gid").
    GuestFs as(std::string user) const { return GuestFs(*agent_, std::move(user)); }
    const std::string& user() const { return user_; }

    Result<std::string> read(const std::string& path, uint64_t offset = 0, uint64_t length = proto::kFsToEnd);
    Result<void> write(const std::string& path, std::span<const uint8_t> data,
                       const WriteOptions& options = {});
    Result<void> write(const std::string& path, std::string_view data, const WriteOptions& options = {});
    Result<void> append(const std::string& path, std::string_view data);
    Result<std::unique_ptr<FileReader>> read_stream(const std::string& path, uint64_t offset = 0,
                                                    uint64_t length = proto::kFsToEnd);
    Result<std::unique_ptr<FileWriter>> write_stream(const std::string& path,
                                                     const WriteOptions& options = {});

    // Entries with paths relative to `path`, in directory order.
    Result<std::vector<FileInfo>> list(const std::string& path, const ListOptions& options = {});
    Result<FileInfo> stat(const std::string& path);   // follows a final symlink
    Result<FileInfo> lstat(const std::string& path);  // the symlink itself (link_target set)
    Result<bool> exists(const std::string& path);     // lstat succeeds
    Result<std::string> realpath(const std::string& path);

    Result<void> mkdir(const std::string& path, uint32_t mode = 0755, bool parents = false);
    Result<void> remove(const std::string& path);  // not a directory
    Result<void> remove_dir(const std::string& path, bool recursive = false);
    Result<void> rename(const std::string& from, const std::string& to);
    // Within the guest; keeps modes, times and symlinks.
    Result<void> copy(const std::string& from, const std::string& to, bool recursive = false);
    Result<void> chmod(const std::string& path, uint32_t mode);
    // proto::kFsUnchanged keeps an id.
    Result<void> chown(const std::string& path, uint32_t uid, uint32_t gid, bool no_follow = false);
    Result<void> symlink(const std::string& target, const std::string& link_path);

    Result<std::unique_ptr<TreeReader>> get_tree(const std::string& path);
    Result<std::unique_ptr<TreeWriter>> put_tree(const std::string& path, const CopyOptions& options = {});

    // Copies a host file, symlink or directory tree to guest_path (which becomes the copy, like `cp -r
    // SRC DST` with DST absent). Existing files at the destination are replaced, each atomically.
    Result<TransferStats> copy_from_host(const std::string& host_path, const std::string& guest_path,
                                         const CopyOptions& options = {});
    // The other way; host_path becomes the copy. Owners are applied only with preserve_owner (as root).
    Result<TransferStats> copy_to_host(const std::string& guest_path, const std::string& host_path,
                                       const CopyOptions& options = {});

  private:
    Result<proto::FsDone> one_shot(proto::FsRequest request, FileInfo* entry = nullptr);
    proto::FsRequest request(proto::FsOp op, const std::string& path) const;

    AgentConnection* agent_;
    std::string user_;
};

}  // namespace sandlot::host
