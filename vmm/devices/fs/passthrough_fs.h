// A FUSE server that passes requests through to a host directory (the share), confined to it.
//
// Confinement: every node is an O_PATH|O_NOFOLLOW fd reached from the root fd one validated name at a time
// (non-empty, no '/', not "." or ".."); no host path string is ever built from guest data; symlinks are
// never followed on the host (they are only read, created, renamed, linked and removed); a node is reopened
// for I/O only if it is a regular file (through /proc/self/fd/N, which names exactly its inode) or a
// directory (openat(node, ".")). FIFOs, sockets and device nodes are never opened on the host. Node ids and
// file handles are generation-checked table indices (node_table.h).
//
// Ownership: operations run with the VMM's credentials; new nodes get the request's uid/gid (or keep the
// parent's gid under a setgid directory) and exactly the requested mode (our umask is undone).
//
// Locks: POSIX locks (GETLK/SETLK/SETLKW) become OFD locks on one host fd per (node, guest lock owner), so
// one guest process's locks never conflict with each other and FLUSH (a close in the guest) drops them, as
// POSIX says. flock() becomes flock() on the handle's own fd. SETLKW never blocks a serving thread
// indefinitely: it retries a non-blocking lock with backoff, answers EINTR when the kernel interrupts the
// request, and EAGAIN after kLockWaitLimit.
//
// Threading: handle() is called concurrently; tables have their own mutexes and all I/O is done outside them.
#pragma once

#include <linux/fuse.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "proto/base/error.h"
#include "proto/base/unique_fd.h"
#include "vmm/devices/fs/fuse_handler.h"
#include "vmm/devices/fs/node_table.h"

namespace sandlot::vmm::fs {

struct PassthroughOptions {
    std::string root;
    bool read_only = false;
    // How long the guest kernel may cache names and attributes. The host may change the share behind the
    // guest's back; this bounds how stale the guest's view gets.
    std::chrono::milliseconds cache_timeout{1000};
};

// Largest READ/WRITE payload negotiated (FUSE_MAX_PAGES), and what max_io() reports.
inline constexpr uint32_t kMaxIo = 1u << 20;
inline constexpr size_t kMaxNodes = 1u << 20;
inline constexpr size_t kMaxHandles = 1u << 16;
inline constexpr size_t kMaxLockFiles = 4096;
inline constexpr std::chrono::seconds kLockWaitLimit{5};

class PassthroughFs : public FuseHandler {
  public:
    // `root` must be a directory. Raises RLIMIT_NOFILE's soft limit to the hard limit (every node is an fd).
    static Result<std::unique_ptr<PassthroughFs>> create(const PassthroughOptions& options);
    ~PassthroughFs() override;

    void handle(std::span<const uint8_t> request, std::vector<uint8_t>& reply) override;
    uint32_t max_io() const override { return kMaxIo; }

    // Diagnostics and tests: live nodes besides the root, open handles, per-owner lock files.
    size_t node_count() const { return nodes_.size(); }
    size_t handle_count() const { return handles_.size(); }
    size_t lock_file_count() const;

  private:
    struct Request;
    struct LockFile {
        UniqueFd fd;
    };
    using LockKey = std::pair<uint64_t, uint64_t>;  // (node id, lock owner)

    PassthroughFs(const PassthroughOptions& options, std::shared_ptr<Node> root, UniqueFd proc_fd);

    // Each returns 0 with the reply payload appended to `out`, an errno value, or kNoReply.
    int op_init(Request& r, std::vector<uint8_t>& out);
    int op_lookup(Request& r, std::vector<uint8_t>& out);
    int op_forget(Request& r);
    int op_batch_forget(Request& r);
    int op_getattr(Request& r, std::vector<uint8_t>& out);
    int op_setattr(Request& r, std::vector<uint8_t>& out);
    int op_readlink(Request& r, std::vector<uint8_t>& out);
    int op_symlink(Request& r, std::vector<uint8_t>& out);
    int op_mknod(Request& r, std::vector<uint8_t>& out);
    int op_mkdir(Request& r, std::vector<uint8_t>& out);
    int op_unlink(Request& r, bool dir);
    int op_rename(Request& r, bool v2);
    int op_link(Request& r, std::vector<uint8_t>& out);
    int op_open(Request& r, std::vector<uint8_t>& out, bool dir);
    int op_create(Request& r, std::vector<uint8_t>& out);
    int op_read(Request& r, std::vector<uint8_t>& out);
    int op_write(Request& r, std::vector<uint8_t>& out);
    int op_statfs(Request& r, std::vector<uint8_t>& out);
    int op_release(Request& r, bool dir);
    int op_flush(Request& r);
    int op_fsync(Request& r, bool dir);
    int op_setxattr(Request& r);
    int op_getxattr(Request& r, std::vector<uint8_t>& out, bool list);
    int op_removexattr(Request& r);
    int op_readdir(Request& r, std::vector<uint8_t>& out, bool plus);
    int op_getlk(Request& r, std::vector<uint8_t>& out);
    int op_setlk(Request& r, bool wait);
    int op_access(Request& r);
    int op_interrupt(Request& r);
    int op_fallocate(Request& r);
    int op_lseek(Request& r, std::vector<uint8_t>& out);
    int op_copy_file_range(Request& r, std::vector<uint8_t>& out);
    int op_syncfs();
    int op_destroy();

    // Helpers (errno-returning where fallible).
    int lookup_child(const Node& parent, std::string_view name, fuse_entry_out& entry);
    int finish_new_node(const Node& parent, const Request& r, uint32_t mode, UniqueFd fd,
                        fuse_entry_out& entry);
    int register_node(UniqueFd fd, fuse_entry_out& entry);
    int reopen(const Node& node, int flags, UniqueFd& out) const;
    int chmod_node(const Node& node, mode_t mode) const;
    void fill_entry(uint64_t id, const struct stat& st, fuse_entry_out& entry) const;
    void fill_attr(const struct stat& st, fuse_attr& attr) const;
    std::shared_ptr<LockFile> lock_file(uint64_t node_id, const Node& node, uint64_t owner, bool create,
                                        int& error);
    void drop_lock_file(uint64_t node_id, uint64_t owner);
    bool interrupted(uint64_t unique);
    void reset_session();

    PassthroughOptions options_;
    std::shared_ptr<Node> root_;
    UniqueFd proc_fd_;  // /proc/self/fd, for reopening nodes by number
    bool vmm_is_root_ = false;
    NodeTable nodes_;
    HandleTable handles_;

    std::atomic<bool> initialized_{false};

    mutable std::mutex lock_mutex_;
    std::map<LockKey, std::shared_ptr<LockFile>> lock_files_;
    std::map<uint64_t, bool> lock_waiters_;  // unique of a waiting SETLKW -> interrupted
};

}  // namespace sandlot::vmm::fs
