// A tiny virtio "driver" for unit tests: it lays out split virtqueues in fake guest RAM (a GuestMemory with
// no VM behind it) and programs a virtio-mmio transport through its registers, the way a guest kernel would.
#pragma once

#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <span>
#include <vector>

#include "vmm/devices/virtio/mmio_transport.h"
#include "vmm/devices/virtio/queue.h"
#include "vmm/memory/guest_memory.h"

namespace sandlot::vmm::virtio::test {

struct UsedElem {
    uint16_t id;
    uint32_t len;
    std::vector<std::pair<uint64_t, uint32_t>> buffers = {};  // the chain's (gpa, len), if add_chain built it
};

// One buffer of a chain the test driver builds. Readable buffers carry `data`; writable ones just `len`.
struct BufferSpec {
    uint32_t len = 0;
    bool writable = false;
    std::vector<uint8_t> data = {};
};

// The driver's side of one split virtqueue. Descriptor i, when the driver allocates it, points at a fixed
// data slot: buffers + i * slot_size.
class DriverQueue {
  public:
    DriverQueue(const GuestMemory& memory, uint16_t size, uint64_t rings, uint64_t buffers,
                uint32_t slot_size)
        : memory_(&memory), size_(size), buffers_(buffers), slot_size_(slot_size) {
        desc = rings;
        avail = desc + 16ull * size;
        used = (avail + 6 + 2ull * size + 3) & ~3ull;
        for (uint16_t i = 0; i < size; ++i)
            free_.push_back(static_cast<uint16_t>(size - 1 - i));
        // Fresh rings: zero them (tests reuse RAM across queues).
        std::vector<uint8_t> zeros(used + 6 + 8ull * size - desc);
        EXPECT_TRUE(memory.write(desc, zeros));
    }

    QueueConfig config() const { return {size_, desc, avail, used}; }
    uint16_t size() const { return size_; }
    uint64_t slot(uint16_t desc_index) const { return buffers_ + uint64_t{desc_index} * slot_size_; }
    size_t free_descriptors() const { return free_.size(); }

    void write_desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
        uint8_t raw[16];
        std::memcpy(raw, &addr, 8);
        std::memcpy(raw + 8, &len, 4);
        std::memcpy(raw + 12, &flags, 2);
        std::memcpy(raw + 14, &next, 2);
        ASSERT_TRUE(memory_->write(desc + 16ull * i, raw));
    }

    // Puts `head` in the next avail slot and bumps avail->idx.
    void publish(uint16_t head) {
        ASSERT_TRUE(memory_->write_obj<uint16_t>(avail + 4 + 2ull * (avail_idx_ % size_), head));
        set_avail_idx(static_cast<uint16_t>(avail_idx_ + 1));
    }
    void set_avail_idx(uint16_t idx) {
        avail_idx_ = idx;
        std::atomic_thread_fence(std::memory_order_release);
        ASSERT_TRUE(memory_->write_obj<uint16_t>(avail + 2, idx));
    }
    uint16_t avail_idx() const { return avail_idx_; }
    void set_avail_flags(uint16_t flags) { ASSERT_TRUE(memory_->write_obj<uint16_t>(avail, flags)); }

    // Builds a chain from free descriptors (data copied into their slots) and publishes it. nullopt when the
    // queue is out of descriptors.
    std::optional<uint16_t> add_chain(const std::vector<BufferSpec>& buffers) {
        if (buffers.empty() || buffers.size() > free_.size()) return std::nullopt;
        std::vector<uint16_t> ids;
        for (size_t i = 0; i < buffers.size(); ++i) {
            ids.push_back(free_.back());
            free_.pop_back();
        }
        for (size_t i = 0; i < buffers.size(); ++i) {
            const auto& b = buffers[i];
            EXPECT_LE(b.len, slot_size_);
            if (!b.writable && !b.data.empty()) {
                EXPECT_TRUE(memory_->write(slot(ids[i]), b.data));
            }
            uint16_t flags = (b.writable ? kDescFlagWrite : 0) | (i + 1 < buffers.size() ? kDescFlagNext : 0);
            write_desc(ids[i], slot(ids[i]), b.len, flags, i + 1 < buffers.size() ? ids[i + 1] : 0);
        }
        auto& entry = chains_[ids[0]];
        for (size_t i = 0; i < ids.size(); ++i)
            entry.push_back({ids[i], slot(ids[i]), buffers[i].len});
        publish(ids[0]);
        return ids[0];
    }

    // Next used element the device published, freeing its descriptors.
    std::optional<UsedElem> pop_used() {
        auto idx = memory_->read_obj<uint16_t>(used + 2);
        if (!idx || *idx == last_used_) return std::nullopt;
        std::atomic_thread_fence(std::memory_order_acquire);
        uint64_t elem = used + 4 + 8ull * (last_used_ % size_);
        UsedElem e{static_cast<uint16_t>(*memory_->read_obj<uint32_t>(elem)),
                   *memory_->read_obj<uint32_t>(elem + 4)};
        ++last_used_;
        auto it = chains_.find(e.id);
        if (it != chains_.end()) {
            for (const auto& d : it->second) {
                free_.push_back(d.id);
                e.buffers.push_back({d.gpa, d.len});
            }
            chains_.erase(it);
        }
        return e;
    }
    uint16_t used_idx() const { return *memory_->read_obj<uint16_t>(used + 2); }

    // The descriptor ids of an outstanding chain (for reading back what the device wrote).
    std::vector<uint16_t> chain(uint16_t head) const {
        std::vector<uint16_t> ids;
        for (const auto& d : chains_.at(head))
            ids.push_back(d.id);
        return ids;
    }

    uint64_t desc = 0, avail = 0, used = 0;

  private:
    const GuestMemory* memory_;
    uint16_t size_;
    uint64_t buffers_;
    uint32_t slot_size_;
    std::vector<uint16_t> free_;
    struct Desc {
        uint16_t id;
        uint64_t gpa;
        uint32_t len;
    };
    std::map<uint16_t, std::vector<Desc>> chains_;  // outstanding chains by head
    uint16_t avail_idx_ = 0;
    uint16_t last_used_ = 0;
};

// Register access to a transport, as the guest's MMIO accesses would arrive.
class MmioDriver {
  public:
    explicit MmioDriver(MmioTransport& transport) : transport_(transport) {}

    uint32_t read32(uint64_t offset) {
        uint8_t b[4];
        transport_.read(offset, b);
        uint32_t v;
        std::memcpy(&v, b, 4);
        return v;
    }
    void write32(uint64_t offset, uint32_t value) {
        uint8_t b[4];
        std::memcpy(b, &value, 4);
        transport_.write(offset, b);
    }

    // ACKNOWLEDGE, DRIVER, features, FEATURES_OK. Returns whether the device accepted the features.
    bool negotiate(uint64_t features) {
        write32(kStatusOffset, 0);
        write32(kStatusOffset, kStatusAcknowledge);
        write32(kStatusOffset, kStatusAcknowledge | kStatusDriver);
        write32(kDriverFeaturesSelOffset, 0);
        write32(kDriverFeaturesOffset, static_cast<uint32_t>(features));
        write32(kDriverFeaturesSelOffset, 1);
        write32(kDriverFeaturesOffset, static_cast<uint32_t>(features >> 32));
        write32(kStatusOffset, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
        return read32(kStatusOffset) & kStatusFeaturesOk;
    }

    void setup_queue(uint16_t index, const QueueConfig& q) {
        write32(kQueueSelOffset, index);
        write32(kQueueNumOffset, q.size);
        write32(kQueueDescLowOffset, static_cast<uint32_t>(q.desc_table));
        write32(kQueueDescHighOffset, static_cast<uint32_t>(q.desc_table >> 32));
        write32(kQueueDriverLowOffset, static_cast<uint32_t>(q.avail_ring));
        write32(kQueueDriverHighOffset, static_cast<uint32_t>(q.avail_ring >> 32));
        write32(kQueueDeviceLowOffset, static_cast<uint32_t>(q.used_ring));
        write32(kQueueDeviceHighOffset, static_cast<uint32_t>(q.used_ring >> 32));
        write32(kQueueReadyOffset, 1);
    }

    void driver_ok() {
        write32(kStatusOffset, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
    }

    void notify(uint16_t queue) { write32(kQueueNotifyOffset, queue); }

  private:
    MmioTransport& transport_;
};

// Reads (and so clears) an IrqLine's eventfd: how many times it fired since the last call.
inline uint64_t irq_count(int fd) {
    uint64_t n = 0;
    if (::read(fd, &n, sizeof n) != sizeof n) return 0;
    return n;
}

}  // namespace sandlot::vmm::virtio::test
