// A split virtqueue (virtio 1.x, section 2.7), as seen from the device side. Every virtio device uses this.
//
// The guest is the attacker: the queue's rings and descriptors live in guest memory, which the guest may
// rewrite at any moment. Every value is copied out of guest memory once and validated before use. A queue
// that sees a malformed ring or chain becomes "broken": it reports it once through its broken handler (the
// transport sets DEVICE_NEEDS_RESET) and yields nothing more until the driver resets the device.
//
// Not thread-safe: the owning transport serializes all use under its device mutex.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "proto/base/error.h"
#include "vmm/memory/guest_memory.h"

namespace sandlot::vmm::virtio {

// Descriptor flags (struct virtq_desc.flags).
inline constexpr uint16_t kDescFlagNext = 1;
inline constexpr uint16_t kDescFlagWrite = 2;
inline constexpr uint16_t kDescFlagIndirect = 4;
// struct virtq_avail.flags: the driver asks not to be interrupted for used buffers.
inline constexpr uint16_t kAvailFlagNoInterrupt = 1;

// One buffer of a descriptor chain, already checked to lie inside guest RAM.
struct Segment {
    uint64_t gpa = 0;
    uint32_t len = 0;
    bool device_writable = false;
};

// A validated descriptor chain: device-readable segments first, then device-writable ones.
struct Chain {
    uint16_t head = 0;
    std::vector<Segment> segments;
    uint32_t readable_len = 0;  // total bytes of the readable segments
    uint32_t writable_len = 0;  // total bytes of the writable segments
};

// Where the driver placed the queue (the QueueDesc/QueueDriver/QueueDevice registers) and its size.
struct QueueConfig {
    uint16_t size = 0;
    uint64_t desc_table = 0;
    uint64_t avail_ring = 0;  // "driver area"
    uint64_t used_ring = 0;   // "device area"
};

class Queue {
  public:
    // Checks the driver's configuration: size a non-zero power of two no larger than max_size, and the
    // descriptor table (16-aligned), avail ring (2-aligned) and used ring (4-aligned) wholly inside RAM.
    // `memory` must outlive the queue.
    static Result<Queue> create(const GuestMemory& memory, const QueueConfig& config, uint16_t max_size);

    // Called once, when the queue first turns broken (with the reason, for a log line).
    void set_broken_handler(std::function<void(const std::string& why)> handler) {
        on_broken_ = std::move(handler);
    }

    // The next available chain, or nullopt when there is none or the queue is broken.
    std::optional<Chain> pop();
    // Gives back the chain returned by the last pop() so the next pop() returns it again (re-read and
    // re-validated). For a device that took a buffer and then found it had nothing to put in it.
    void undo_pop();
    // True when the driver has made at least one chain available that pop() has not returned yet.
    bool has_available();
    // Returns a chain to the driver: `written` bytes were written into its writable part.
    void add_used(uint16_t head, uint32_t written);
    // Whether the driver wants an interrupt for used buffers now (VRING_AVAIL_F_NO_INTERRUPT is clear).
    bool interrupt_wanted() const;

    bool broken() const { return broken_; }
    uint16_t size() const { return config_.size; }
    const QueueConfig& config() const { return config_; }

  private:
    Queue(const GuestMemory& memory, const QueueConfig& config) : memory_(&memory), config_(config) {}
    void mark_broken(const std::string& why);
    std::optional<uint16_t> read_avail_idx();
    std::optional<Chain> read_chain(uint16_t head);

    const GuestMemory* memory_;
    QueueConfig config_;
    // Host views of the rings, validated once in create(); guest memory never moves.
    std::span<uint8_t> desc_;
    std::span<uint8_t> avail_;
    std::span<uint8_t> used_;
    uint16_t last_avail_idx_ = 0;  // next avail ring entry we will consume
    uint16_t next_used_idx_ = 0;   // our own used index; never read back from guest memory
    bool broken_ = false;
    std::function<void(const std::string&)> on_broken_;
};

// Scatter/gather over a chain. Each works on the readable or the writable part of the chain as one run of
// bytes, starting `offset` bytes into it; each is bounded by that part and by the caller's buffer.

// Copies readable bytes into `out`; returns how many were copied (fewer if the readable part ends first).
size_t read_from_chain(const GuestMemory& memory, const Chain& chain, size_t offset, std::span<uint8_t> out);
// Copies `data` into the writable part; returns how many bytes fitted.
size_t write_to_chain(const GuestMemory& memory, const Chain& chain, size_t offset,
                      std::span<const uint8_t> data);
// Host iovecs for up to `max_len` bytes of one part, for readv()/writev() straight to or from guest memory.
std::vector<iovec> chain_iovecs(const GuestMemory& memory, const Chain& chain, bool writable, size_t offset,
                                size_t max_len);

}  // namespace sandlot::vmm::virtio
