// The virtio device model: what a device (vsock, ...) implements so a transport can present it to the guest.
// The transport owns the registers, feature negotiation, status state machine and the queues; the device
// owns what the queues carry.
//
// Threading: each device has one mutex (mutex()), shared with its transport. The transport holds it for every
// call it makes into the device (register accesses arrive on vCPU threads, queue notifications on the
// event-loop thread). A device's own host-side handlers (sockets on the event loop) take it too. So every
// Device method below runs with mutex() held, and the device must hold it whenever it touches its queues or
// calls ActiveQueues::signal_used.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <span>

#include "proto/base/error.h"
#include "vmm/devices/virtio/queue.h"
#include "vmm/memory/guest_memory.h"

namespace sandlot::vmm::virtio {

// Feature bits shared by all devices (virtio 1.x section 6).
inline constexpr uint64_t kFeatureVersion1 = 1ull << 32;

// Device status bits (virtio 1.x 2.1).
inline constexpr uint32_t kStatusAcknowledge = 1;
inline constexpr uint32_t kStatusDriver = 2;
inline constexpr uint32_t kStatusDriverOk = 4;
inline constexpr uint32_t kStatusFeaturesOk = 8;
inline constexpr uint32_t kStatusNeedsReset = 0x40;
inline constexpr uint32_t kStatusFailed = 0x80;

// What a device gets when the driver sets DRIVER_OK. Valid until the device's reset() is called.
struct Activation {
    const GuestMemory& memory;
    std::span<Queue> queues;  // one per entry of queue_max_sizes(), all validated and ready
    uint64_t features;        // negotiated (device and driver agree), VERSION_1 included
    // Tells the driver that `queue` has new used buffers (raises the interrupt unless the driver
    // suppressed it). Call with mutex() held.
    std::function<void(uint16_t queue)> signal_used;
};

class Device {
  public:
    virtual ~Device() = default;

    // virtio device ID (e.g. 19 for vsock).
    virtual uint32_t device_type() const = 0;
    // Device-specific feature bits the device offers; the transport adds VERSION_1 itself.
    virtual uint64_t features() const = 0;
    // Largest size the driver may give each queue; the number of entries is the number of queues.
    virtual std::span<const uint16_t> queue_max_sizes() const = 0;

    // Config space, at `offset` from its start; out-of-range bytes read as zero and writes to them are
    // ignored.
    virtual void read_config(uint64_t offset, std::span<uint8_t> data) = 0;
    virtual void write_config(uint64_t offset, std::span<const uint8_t> data) = 0;

    // The driver is ready: start using the queues. An error leaves the device inactive (the transport sets
    // DEVICE_NEEDS_RESET).
    virtual Result<void> activate(Activation activation) = 0;
    // The driver made buffers available on `queue` (only called while active).
    virtual void notify(uint16_t queue) = 0;
    // The driver reset the device: drop the queues and all in-flight state. Called even if never activated.
    virtual void reset() = 0;

    std::mutex& mutex() { return mutex_; }

  private:
    std::mutex mutex_;
};

}  // namespace sandlot::vmm::virtio
