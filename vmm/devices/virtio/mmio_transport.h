// virtio-mmio transport, version 2 (virtio 1.x section 4.2): the register window a virtio device shows the
// guest at one 4 KiB MMIO slot. It runs feature negotiation and the device-status state machine, validates
// and owns the virtqueues, and raises the device's interrupt.
//
// Threading: register reads/writes come from vCPU threads (several at once), notify_queue() from the
// event-loop thread (KVM ioeventfd on QueueNotify). Every entry point takes the device's mutex
// (Device::mutex()), the one lock shared by transport and device, so the device sees one caller at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "vmm/devices/bus.h"
#include "vmm/devices/irq_line.h"
#include "vmm/devices/virtio/device.h"
#include "vmm/devices/virtio/queue.h"
#include "vmm/memory/guest_memory.h"

namespace sandlot::vmm::virtio {

inline constexpr uint64_t kMmioSize = 0x1000;

// Register offsets (virtio 1.x 4.2.2). All registers are 32 bits wide; config space starts at kConfigOffset.
inline constexpr uint64_t kMagicValueOffset = 0x000;
inline constexpr uint64_t kVersionOffset = 0x004;
inline constexpr uint64_t kDeviceIdOffset = 0x008;
inline constexpr uint64_t kVendorIdOffset = 0x00c;
inline constexpr uint64_t kDeviceFeaturesOffset = 0x010;
inline constexpr uint64_t kDeviceFeaturesSelOffset = 0x014;
inline constexpr uint64_t kDriverFeaturesOffset = 0x020;
inline constexpr uint64_t kDriverFeaturesSelOffset = 0x024;
inline constexpr uint64_t kQueueSelOffset = 0x030;
inline constexpr uint64_t kQueueNumMaxOffset = 0x034;
inline constexpr uint64_t kQueueNumOffset = 0x038;
inline constexpr uint64_t kQueueReadyOffset = 0x044;
inline constexpr uint64_t kQueueNotifyOffset = 0x050;
inline constexpr uint64_t kInterruptStatusOffset = 0x060;
inline constexpr uint64_t kInterruptAckOffset = 0x064;
inline constexpr uint64_t kStatusOffset = 0x070;
inline constexpr uint64_t kQueueDescLowOffset = 0x080;
inline constexpr uint64_t kQueueDescHighOffset = 0x084;
inline constexpr uint64_t kQueueDriverLowOffset = 0x090;
inline constexpr uint64_t kQueueDriverHighOffset = 0x094;
inline constexpr uint64_t kQueueDeviceLowOffset = 0x0a0;
inline constexpr uint64_t kQueueDeviceHighOffset = 0x0a4;
inline constexpr uint64_t kShmSelOffset = 0x0ac;
inline constexpr uint64_t kShmLenLowOffset = 0x0b0;
inline constexpr uint64_t kShmLenHighOffset = 0x0b4;
inline constexpr uint64_t kShmBaseLowOffset = 0x0b8;
inline constexpr uint64_t kShmBaseHighOffset = 0x0bc;
inline constexpr uint64_t kConfigGenerationOffset = 0x0fc;
inline constexpr uint64_t kConfigOffset = 0x100;

inline constexpr uint32_t kMmioMagic = 0x74726976;  // "virt"
inline constexpr uint32_t kMmioVersion = 2;
inline constexpr uint32_t kVendorId = 0x4c444e53;  // "SNDL"

// InterruptStatus bits.
inline constexpr uint32_t kInterruptUsedBuffer = 1;
inline constexpr uint32_t kInterruptConfigChange = 2;

class MmioTransport : public BusDevice {
  public:
    // `memory` must outlive the transport.
    MmioTransport(const GuestMemory& memory, std::shared_ptr<Device> device, IrqLine irq_line);
    // Resets the device, so it stops using queues this transport owns.
    ~MmioTransport() override;
    MmioTransport(const MmioTransport&) = delete;
    MmioTransport& operator=(const MmioTransport&) = delete;

    void read(uint64_t offset, std::span<uint8_t> data) override;
    void write(uint64_t offset, std::span<const uint8_t> data) override;

    // The driver wrote `queue` to QueueNotify (event-loop thread, via ioeventfd; or a plain MMIO write).
    void notify_queue(uint16_t queue);

    uint16_t num_queues() const { return static_cast<uint16_t>(queues_.size()); }
    // The Status register as the driver would read it.
    uint32_t status();

  private:
    // Per-queue registers, plus the validated queue once the driver sets QueueReady.
    struct QueueRegisters {
        explicit QueueRegisters(uint16_t max) : max_size(max) {}
        uint16_t max_size;
        QueueConfig config;
        bool ready = false;              // what QueueReady reads
        std::optional<Queue> validated;  // set with `ready` until activation moves it to active_queues_
    };

    uint32_t read_register(uint64_t offset);
    void write_register(uint64_t offset, uint32_t value);
    void write_status(uint32_t value);
    void set_queue_ready(QueueRegisters& regs, bool ready);
    void activate();
    void reset();
    void notify_locked(uint16_t queue);
    uint64_t offered_features() const;
    QueueRegisters* selected_queue();
    // Raises an interrupt: sets `bits` in InterruptStatus and pulses the IRQ line.
    void raise(uint32_t bits);
    // An error the driver must reset the device to recover from (virtio 1.x 2.1.2).
    void needs_reset(const std::string& why);

    const GuestMemory& memory_;
    std::shared_ptr<Device> device_;
    IrqLine irq_line_;

    // All below guarded by device_->mutex().
    std::vector<QueueRegisters> queues_;
    std::vector<Queue> active_queues_;  // handed to the device at DRIVER_OK; stable until reset
    bool active_ = false;
    uint32_t status_ = 0;
    uint32_t interrupt_status_ = 0;
    uint32_t device_features_sel_ = 0;
    uint32_t driver_features_sel_ = 0;
    uint64_t driver_features_ = 0;
    uint32_t queue_sel_ = 0;
    uint32_t shm_sel_ = 0;
};

}  // namespace sandlot::vmm::virtio
