// The passthrough FUSE server's tables: nodes (inodes the guest kernel knows, by node id) and open handles
// (by fh). Ids handed to the guest are never pointers: an id is (generation << 32) | (slot + 1), checked on
// every use, so an unknown, forged or stale id is simply not found.
//
// A node owns an O_PATH|O_NOFOLLOW fd to its host inode. Nodes are shared_ptrs: request handlers take a
// reference under the table mutex and do their I/O outside it, and the fd closes when the last one is done.
// Nodes are deduplicated by (st_dev, st_ino), which stays unambiguous because an open fd pins the inode.
//
// Threading: every method is thread-safe (one mutex per table, held only for table bookkeeping).
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "proto/base/unique_fd.h"

namespace sandlot::vmm::fs {

// A fixed-capacity table of shared_ptr<T> with generation-checked 64-bit ids (never 0 or 1). Not
// thread-safe: its owner locks.
template <class T>
class SlotTable {
  public:
    explicit SlotTable(size_t capacity) : capacity_(capacity) {}

    // The new entry's id, or nullopt when the table is full.
    std::optional<uint64_t> insert(std::shared_ptr<T> value) {
        uint32_t index;
        if (!free_.empty()) {
            index = free_.back();
            free_.pop_back();
        } else {
            if (slots_.size() >= capacity_) return std::nullopt;
            index = static_cast<uint32_t>(slots_.size());
            slots_.emplace_back();
        }
        Slot& slot = slots_[index];
        slot.generation = slot.generation == UINT32_MAX ? 1 : slot.generation + 1;
        slot.value = std::move(value);
        ++size_;
        return (uint64_t{slot.generation} << 32) | (uint64_t{index} + 1);
    }

    T* find(uint64_t id) const {
        const Slot* slot = lookup(id);
        return slot ? slot->value.get() : nullptr;
    }
    std::shared_ptr<T> get(uint64_t id) const {
        const Slot* slot = lookup(id);
        return slot ? slot->value : nullptr;
    }
    std::shared_ptr<T> remove(uint64_t id) {
        Slot* slot = const_cast<Slot*>(lookup(id));
        if (!slot) return nullptr;
        std::shared_ptr<T> value = std::move(slot->value);
        slot->value.reset();
        free_.push_back(static_cast<uint32_t>((id & 0xffffffffu) - 1));
        --size_;
        return value;
    }
    // Calls f(id, T&) for every entry.
    template <class F>
    void for_each(F&& f) const {
        for (size_t i = 0; i < slots_.size(); ++i)
            if (slots_[i].value) f((uint64_t{slots_[i].generation} << 32) | (i + 1), *slots_[i].value);
    }
    // Drops every entry (ids stay unique: generations are kept).
    void clear() {
        free_.clear();
        for (size_t i = slots_.size(); i-- > 0;) {
            slots_[i].value.reset();
            free_.push_back(static_cast<uint32_t>(i));
        }
        size_ = 0;
    }
    size_t size() const { return size_; }

  private:
    struct Slot {
        std::shared_ptr<T> value;
        uint32_t generation = 0;
    };
    const Slot* lookup(uint64_t id) const {
        uint64_t low = id & 0xffffffffu;
        uint32_t generation = static_cast<uint32_t>(id >> 32);
        if (low == 0 || low > slots_.size() || generation == 0) return nullptr;
        const Slot& slot = slots_[low - 1];
        if (!slot.value || slot.generation != generation) return nullptr;
        return &slot;
    }

    size_t capacity_;
    size_t size_ = 0;
    std::vector<Slot> slots_;
    std::vector<uint32_t> free_;
};

// One host inode the guest kernel holds a reference to.
struct Node {
    UniqueFd fd;    // O_PATH|O_NOFOLLOW|O_CLOEXEC
    dev_t dev = 0;  // identity, fixed for the node's life
    ino_t ino = 0;
    mode_t type = 0;       // st_mode & S_IFMT, fixed for an inode's life
    uint64_t lookups = 0;  // guarded by the NodeTable's mutex

    bool is_dir() const { return S_ISDIR(type); }
    bool is_regular() const { return S_ISREG(type); }
    bool is_symlink() const { return S_ISLNK(type); }
};

class NodeTable {
  public:
    static constexpr uint64_t kRootId = 1;  // FUSE_ROOT_ID

    NodeTable(std::shared_ptr<Node> root, size_t capacity);

    // The node for `id` (the root for kRootId), or nullptr when unknown or forgotten.
    std::shared_ptr<Node> get(uint64_t id) const;
    // Counts one more guest lookup of the inode `st` describes, reusing its node if known (then `fd` is just
    // closed) or making one from `fd`. nullopt when the table is full.
    std::optional<std::pair<uint64_t, std::shared_ptr<Node>>> acquire(UniqueFd fd, const struct stat& st);
    // Counts one more lookup of a known node (LINK). False when `id` is unknown.
    bool add_lookup(uint64_t id);
    // Drops `count` lookups; the node goes when none are left. Unknown ids and the root are ignored.
    void forget(uint64_t id, uint64_t count);
    // Drops every node but the root (a new FUSE session).
    void reset();
    size_t size() const;  // nodes besides the root

  private:
    struct InodeKey {
        dev_t dev;
        ino_t ino;
        bool operator==(const InodeKey&) const = default;
    };
    struct InodeKeyHash {
        size_t operator()(const InodeKey& k) const { return std::hash<uint64_t>()(k.ino * 31 + k.dev); }
    };

    mutable std::mutex mutex_;
    std::shared_ptr<Node> root_;
    SlotTable<Node> nodes_;
    std::unordered_map<InodeKey, uint64_t, InodeKeyHash> by_inode_;
};

// An open file or directory of the guest.
struct Handle {
    UniqueFd fd;  // opened for I/O (never O_PATH)
    uint64_t node_id = 0;
    std::shared_ptr<Node> node;
    bool is_dir = false;
    int access_mode = 0;  // O_RDONLY / O_WRONLY / O_RDWR

    // Directories: getdents64 moves the fd's position, so READDIR on one handle is serialized.
    std::mutex dir_mutex;
    uint64_t dir_offset = 0;  // the cookie the fd is positioned at
};

class HandleTable {
  public:
    explicit HandleTable(size_t capacity) : handles_(capacity) {}
    std::optional<uint64_t> insert(std::shared_ptr<Handle> handle);
    std::shared_ptr<Handle> get(uint64_t fh) const;
    std::shared_ptr<Handle> remove(uint64_t fh);
    void reset();
    size_t size() const;

  private:
    mutable std::mutex mutex_;
    SlotTable<Handle> handles_;
};

}  // namespace sandlot::vmm::fs
