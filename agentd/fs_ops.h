// The guest filesystem operations behind proto/fs.h that finish in one step, plus the pieces the streaming
// operations (agentd/fs_service.h) share. Errors carry errno and a message naming the operation and path,
// "mkdir /a/b" (the reason is the errno).
//
// Nothing here follows a symlink it did not have to: removal and copying act on links themselves, and
// directory walks never descend through one.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include "agentd/exec_user.h"
#include "proto/base/error.h"
#include "proto/base/unique_fd.h"
#include "proto/fs.h"

namespace sandlot::agent {

// Error{errno, "<op> <path>"} with the errno of the call that just failed.
std::unexpected<Error> fs_errno(std::string_view op, std::string_view path);
std::unexpected<Error> fs_error(int code, std::string_view op, std::string_view path);

// Switches this thread's filesystem identity (fsuid, fsgid, supplementary groups) to `user` for its
// lifetime, and back to root's afterwards. A no-op for root. Permission checks, new files' owners and the
// capabilities that bypass them then are exactly the user's. The agent must be single-threaded root.
class FsIdentity {
  public:
    static Result<FsIdentity> become(const ExecUser& user);
    FsIdentity(FsIdentity&& other) noexcept : active_(std::exchange(other.active_, false)) {}
    FsIdentity& operator=(FsIdentity&&) = delete;
    ~FsIdentity();

  private:
    explicit FsIdentity(bool active) : active_(active) {}
    bool active_;
};

Result<proto::FsEntry> fs_stat(const std::string& path, bool follow);
// mode 0 means 0755. parents: create missing parents and accept an existing directory. exclusive: fail on an
// existing directory even with parents.
Result<void> fs_mkdir(const std::string& path, mode_t mode, bool parents, bool exclusive);
// Creates the missing directories above `path` (not path itself), mode 0755.
Result<void> fs_make_parents(const std::string& path);
// A non-directory (EISDIR for a directory).
Result<void> fs_remove(const std::string& path);
// A directory; with recursive its whole tree (symlinks are removed, never followed).
Result<void> fs_remove_dir(const std::string& path, bool recursive);
Result<void> fs_rename(const std::string& from, const std::string& to);
// Copies a file, symlink or (recursive) tree, keeping modes, mtimes and symlinks; the owner too when run by
// root. Refuses to copy a directory into itself.
Result<void> fs_copy(const std::string& from, const std::string& to, bool recursive);
Result<void> fs_chmod(const std::string& path, mode_t mode);
// kFsUnchanged for an id keeps it. no_follow: the link itself.
Result<void> fs_chown(const std::string& path, uint32_t uid, uint32_t gid, bool no_follow);
Result<void> fs_symlink(const std::string& target, const std::string& link_path);
Result<std::string> fs_realpath(const std::string& path);
Result<bool> fs_exists(const std::string& path);

// "/a/b" -> "/a", "b" -> ".", "/b" -> "/".
std::string fs_dirname(const std::string& path);
// Joins a relative tree path (proto::fs_relative_path_ok) under root ("" = root itself).
std::string fs_join(const std::string& root, const std::string& relative);

// A fresh, unused name next to `path` for a temporary file: "<dir>/.sandlot-<hex>.tmp".
std::string fs_temp_name(const std::string& path);
// write(2) until all of `data` is written; a short write that makes no progress is ENOSPC.
Result<void> fs_write_all(int fd, std::span<const uint8_t> data, std::string_view path);

}  // namespace sandlot::agent
