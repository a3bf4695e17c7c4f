#include "vmm/devices/fs/node_table.h"

namespace sandlot::vmm::fs {

NodeTable::NodeTable(std::shared_ptr<Node> root, size_t capacity)
    : root_(std::move(root)), nodes_(capacity) {}

std::shared_ptr<Node> NodeTable::get(uint64_t id) const {
    std::lock_guard lock(mutex_);
    if (id == kRootId) return root_;
    return nodes_.get(id);
}

std::optional<std::pair<uint64_t, std::shared_ptr<Node>>> NodeTable::acquire(UniqueFd fd,
                                                                             const struct stat& st) {
    std::unique_lock lock(mutex_);
    if (st.st_dev == root_->dev && st.st_ino == root_->ino) return std::pair{kRootId, root_};
    InodeKey key{st.st_dev, st.st_ino};
    if (auto it = by_inode_.find(key); it != by_inode_.end()) {
        std::shared_ptr<Node> node = nodes_.get(it->second);
        if (node->lookups < UINT64_MAX) ++node->lookups;
        uint64_t id = it->second;
        lock.unlock();
        return std::pair{id, std::move(node)};  // `fd` closes here, outside the lock
    }
    auto node = std::make_shared<Node>();
    node->fd = std::move(fd);
    node->dev = st.st_dev;
    node->ino = st.st_ino;
    node->type = st.st_mode & S_IFMT;
    node->lookups = 1;
    std::optional<uint64_t> id = nodes_.insert(node);
    if (!id) return std::nullopt;
    by_inode_.emplace(key, *id);
    return std::pair{*id, std::move(node)};
}

bool NodeTable::add_lookup(uint64_t id) {
    std::lock_guard lock(mutex_);
    if (id == kRootId) return true;
    Node* node = nodes_.find(id);
    if (!node) return false;
    if (node->lookups < UINT64_MAX) ++node->lookups;
    return true;
}

void NodeTable::forget(uint64_t id, uint64_t count) {
    std::shared_ptr<Node> dropped;  // released after the lock
    std::lock_guard lock(mutex_);
    if (id == kRootId) return;
    Node* node = nodes_.find(id);
    if (!node) return;
    node->lookups -= std::min(count, node->lookups);
    if (node->lookups > 0) return;
    by_inode_.erase(InodeKey{node->dev, node->ino});
    dropped = nodes_.remove(id);
}

void NodeTable::reset() {
    std::lock_guard lock(mutex_);
    by_inode_.clear();
    nodes_.clear();
}

size_t NodeTable::size() const {
    std::lock_guard lock(mutex_);
    return nodes_.size();
}

std::optional<uint64_t> HandleTable::insert(std::shared_ptr<Handle> handle) {
    std::lock_guard lock(mutex_);
    return handles_.insert(std::move(handle));
}

std::shared_ptr<Handle> HandleTable::get(uint64_t fh) const {
    std::lock_guard lock(mutex_);
    return handles_.get(fh);
}

std::shared_ptr<Handle> HandleTable::remove(uint64_t fh) {
    std::lock_guard lock(mutex_);
    return handles_.remove(fh);
}

void HandleTable::reset() {
    std::lock_guard lock(mutex_);
    handles_.clear();
}

size_t HandleTable::size() const {
    std::lock_guard lock(mutex_);
    return handles_.size();
}

}  // namespace sandlot::vmm::fs
