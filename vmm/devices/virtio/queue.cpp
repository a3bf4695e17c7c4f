#include "vmm/devices/virtio/queue.h"

#include <atomic>
#include <bit>
#include <cstring>

namespace sandlot::vmm::virtio {

static_assert(std::endian::native == std::endian::little,
              "virtio 1.x rings are little-endian, as is the host");

namespace {

// Ring layouts (virtio 1.x 2.7): struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; };
// avail { le16 flags; le16 idx; le16 ring[size]; le16 used_event; }; used { le16 flags; le16 idx;
// struct { le32 id; le32 len; } ring[size]; le16 avail_event; }.
constexpr uint64_t kDescSize = 16;
constexpr uint64_t kRingHeader = 4;  // flags + idx
constexpr uint64_t kUsedElemSize = 8;

struct Descriptor {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};
static_assert(sizeof(Descriptor) == kDescSize);

template <class T>
T load(std::span<const uint8_t> bytes, size_t offset) {
    T value;
    std::memcpy(&value, bytes.data() + offset, sizeof(T));
    return value;
}

template <class T>
void store(std::span<uint8_t> bytes, size_t offset, T value) {
    std::memcpy(bytes.data() + offset, &value, sizeof(T));
}

// The ring indexes are shared with the driver running on other CPUs; access them atomically so the compiler
// reads each exactly once. create() checked their alignment.
uint16_t load_index_acquire(std::span<uint8_t> ring) {
    return std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(ring.data() + 2))
        .load(std::memory_order_acquire);
}

std::string hex(uint64_t v) {
    char buf[24];
    snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
    return buf;
}

Result<std::span<uint8_t>> ring_area(const GuestMemory& memory, const char* what, uint64_t gpa, uint64_t len,
                                     uint64_t alignment) {
    if (gpa % alignment != 0) return make_error(std::string(what) + " at " + hex(gpa) + " is misaligned");
    auto area = memory.slice(gpa, len);
    if (!area) return make_error(std::string(what) + " at " + hex(gpa) + " is outside guest RAM");
    return *area;
}

}  // namespace

Result<Queue> Queue::create(const GuestMemory& memory, const QueueConfig& config, uint16_t max_size) {
    uint64_t size = config.size;
    if (size == 0 || !std::has_single_bit(size) || size > max_size) {
        return make_error("queue size " + std::to_string(size) + " is not a power of two in [1, " +
                          std::to_string(max_size) + "]");
    }
    Queue queue(memory, config);
    queue.desc_ = TRY(ring_area(memory, "descriptor table", config.desc_table, kDescSize * size, 16));
    // Include the trailing used_event/avail_event words: a driver may touch them even without EVENT_IDX.
    queue.avail_ = TRY(ring_area(memory, "avail ring", config.avail_ring, kRingHeader + 2 * size + 2, 2));
    queue.used_ =
        TRY(ring_area(memory, "used ring", config.used_ring, kRingHeader + kUsedElemSize * size + 2, 4));
    return queue;
}

void Queue::mark_broken(const std::string& why) {
    if (broken_) return;
    broken_ = true;
    if (on_broken_) on_broken_(why);
}

std::optional<uint16_t> Queue::read_avail_idx() {
    if (broken_) return std::nullopt;
    uint16_t avail_idx = load_index_acquire(avail_);
    uint16_t pending = static_cast<uint16_t>(avail_idx - last_avail_idx_);
    if (pending > config_.size) {
        mark_broken("avail index jumped by " + std::to_string(pending) + " in a queue of " +
                    std::to_string(config_.size));
        return std::nullopt;
    }
    return pending;
}

bool Queue::has_available() {
    auto pending = read_avail_idx();
    return pending && *pending > 0;
}

std::optional<Chain> Queue::pop() {
    auto pending = read_avail_idx();
    if (!pending || *pending == 0) return std::nullopt;
    // The acquire load of avail->idx orders these reads after it: the ring entry and descriptors are the
    // ones the driver published with that index.
    uint16_t slot = last_avail_idx_ % config_.size;
    uint16_t head = load<uint16_t>(avail_, kRingHeader + 2 * slot);
    auto chain = read_chain(head);
    if (!chain) return std::nullopt;
    ++last_avail_idx_;
    return chain;
}

std::optional<Chain> Queue::read_chain(uint16_t head) {
    Chain chain;
    chain.head = head;
    uint64_t readable = 0, writable = 0;
    uint16_t index = head;
    for (uint32_t count = 1;; ++count) {
        if (index >= config_.size) {
            mark_broken("descriptor index " + std::to_string(index) + " out of range");
            return std::nullopt;
        }
        // A chain can use each descriptor at most once, so one longer than the queue has a cycle.
        if (count > config_.size) {
            mark_broken("descriptor chain longer than the queue (a loop?)");
            return std::nullopt;
        }
        auto desc = load<Descriptor>(desc_, kDescSize * index);  // copied once; the guest may change it
        if (desc.flags & kDescFlagIndirect) {
            mark_broken("indirect descriptor, which was not negotiated");
            return std::nullopt;
        }
        bool device_writable = desc.flags & kDescFlagWrite;
        if (!device_writable && writable > 0) {
            mark_broken("device-readable descriptor after a device-writable one");
            return std::nullopt;
        }
        if (!memory_->contains(desc.addr, desc.len)) {
            mark_broken("descriptor buffer " + hex(desc.addr) + "+" + hex(desc.len) + " outside guest RAM");
            return std::nullopt;
        }
        (device_writable ? writable : readable) += desc.len;
        if (readable + writable > UINT32_MAX) {
            mark_broken("descriptor chain longer than 4 GiB");
            return std::nullopt;
        }
        // Zero-length descriptors carry nothing but are legal; keep them out of the segment list.
        if (desc.len > 0) chain.segments.push_back({desc.addr, desc.len, device_writable});
        if (!(desc.flags & kDescFlagNext)) break;
        index = desc.next;
    }
    chain.readable_len = static_cast<uint32_t>(readable);
    chain.writable_len = static_cast<uint32_t>(writable);
    return chain;
}

void Queue::undo_pop() {
    --last_avail_idx_;
}

void Queue::add_used(uint16_t head, uint32_t written) {
    if (broken_) return;
    uint16_t slot = next_used_idx_ % config_.size;
    uint64_t elem = kRingHeader + kUsedElemSize * slot;
    store<uint32_t>(used_, elem, head);
    store<uint32_t>(used_, elem + 4, written);
    ++next_used_idx_;
    // Release: the driver must see the element (and the data we wrote into its buffers) before the index.
    std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(used_.data() + 2))
        .store(next_used_idx_, std::memory_order_release);
}

bool Queue::interrupt_wanted() const {
    // Full fence: our used->idx store must be visible before we sample the driver's flag, or we could miss
    // the driver clearing NO_INTERRUPT just after it looked at an old used->idx.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    uint16_t flags = std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(avail_.data()))
                         .load(std::memory_order_relaxed);
    return !(flags & kAvailFlagNoInterrupt);
}

namespace {

// Walks the chosen part of a chain from `offset`, calling fn(host_span) for up to max_len bytes.
template <class Fn>
size_t for_each_span(const GuestMemory& memory, const Chain& chain, bool writable, size_t offset,
                     size_t max_len, Fn&& fn) {
    size_t done = 0;
    for (const auto& seg : chain.segments) {
        if (seg.device_writable != writable) continue;
        if (done == max_len) break;
        if (offset >= seg.len) {
            offset -= seg.len;
            continue;
        }
        size_t len = std::min<size_t>(seg.len - offset, max_len - done);
        auto host = memory.slice(seg.gpa + offset, len);
        if (!host) break;  // cannot happen for a validated chain; stop rather than trust it
        fn(*host);
        done += len;
        offset = 0;
    }
    return done;
}

}  // namespace

size_t read_from_chain(const GuestMemory& memory, const Chain& chain, size_t offset, std::span<uint8_t> out) {
    size_t copied = 0;
    return for_each_span(memory, chain, false, offset, out.size(), [&](std::span<uint8_t> host) {
        std::memcpy(out.data() + copied, host.data(), host.size());
        copied += host.size();
    });
}

size_t write_to_chain(const GuestMemory& memory, const Chain& chain, size_t offset,
                      std::span<const uint8_t> data) {
    size_t copied = 0;
    return for_each_span(memory, chain, true, offset, data.size(), [&](std::span<uint8_t> host) {
        std::memcpy(host.data(), data.data() + copied, host.size());
        copied += host.size();
    });
}

std::vector<iovec> chain_iovecs(const GuestMemory& memory, const Chain& chain, bool writable, size_t offset,
                                size_t max_len) {
    std::vector<iovec> iovs;
    for_each_span(memory, chain, writable, offset, max_len, [&](std::span<uint8_t> host) {
        iovs.push_back({host.data(), host.size()});
    });
    return iovs;
}

}  // namespace sandlot::vmm::virtio
