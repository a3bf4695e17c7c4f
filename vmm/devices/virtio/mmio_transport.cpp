#include "vmm/devices/virtio/mmio_transport.h"

#include <fmt/core.h>

#include <cstring>

namespace sandlot::vmm::virtio {

namespace {

uint64_t set_low(uint64_t value, uint32_t low) {
    return (value & ~0xffffffffull) | low;
}
uint64_t set_high(uint64_t value, uint32_t high) {
    return (value & 0xffffffffull) | (uint64_t{high} << 32);
}

}  // namespace

MmioTransport::MmioTransport(const GuestMemory& memory, std::shared_ptr<Device> device, IrqLine irq_line)
    : memory_(memory), device_(std::move(device)), irq_line_(std::move(irq_line)) {
    for (uint16_t max_size : device_->queue_max_sizes())
        queues_.emplace_back(max_size);
}

MmioTransport::~MmioTransport() {
    std::lock_guard lock(device_->mutex());
    device_->reset();
}

uint32_t MmioTransport::status() {
    std::lock_guard lock(device_->mutex());
    return status_;
}

void MmioTransport::read(uint64_t offset, std::span<uint8_t> data) {
    std::lock_guard lock(device_->mutex());
    std::memset(data.data(), 0, data.size());
    if (offset >= kConfigOffset) {
        // Config space may be read with any access size the device supports; the device bounds it.
        device_->read_config(offset - kConfigOffset, data);
        return;
    }
    // Registers are 32 bits wide and 32-bit aligned; anything else reads as zero.
    if (data.size() != 4 || offset % 4 != 0) return;
    uint32_t value = read_register(offset);
    std::memcpy(data.data(), &value, 4);
}

void MmioTransport::write(uint64_t offset, std::span<const uint8_t> data) {
    std::lock_guard lock(device_->mutex());
    if (offset >= kConfigOffset) {
        device_->write_config(offset - kConfigOffset, data);
        return;
    }
    if (data.size() != 4 || offset % 4 != 0) return;
    uint32_t value;
    std::memcpy(&value, data.data(), 4);
    write_register(offset, value);
}

void MmioTransport::notify_queue(uint16_t queue) {
    std::lock_guard lock(device_->mutex());
    notify_locked(queue);
}

void MmioTransport::notify_locked(uint16_t queue) {
    // A broken queue is ignored until the driver resets the device.
    if (!active_ || queue >= active_queues_.size() || active_queues_[queue].broken()) return;
    device_->notify(queue);
}

uint64_t MmioTransport::offered_features() const {
    return device_->features() | kFeatureVersion1;
}

MmioTransport::QueueRegisters* MmioTransport::selected_queue() {
    return queue_sel_ < queues_.size() ? &queues_[queue_sel_] : nullptr;
}

uint32_t MmioTransport::read_register(uint64_t offset) {
    QueueRegisters* queue = selected_queue();
    switch (offset) {
        case kMagicValueOffset:
            return kMmioMagic;
        case kVersionOffset:
            return kMmioVersion;
        case kDeviceIdOffset:
            return device_->device_type();
        case kVendorIdOffset:
            return kVendorId;
        case kDeviceFeaturesOffset:
            return device_features_sel_ < 2
                       ? static_cast<uint32_t>(offered_features() >> (32 * device_features_sel_))
                       : 0;
        case kQueueNumMaxOffset:
            return queue ? queue->max_size : 0;
        case kQueueReadyOffset:
            return queue && queue->ready ? 1 : 0;
        case kInterruptStatusOffset:
            return interrupt_status_;
        case kStatusOffset:
            return status_;
        case kShmLenLowOffset:
        case kShmLenHighOffset:
            return 0xffffffff;  // no shared memory regions: length ~0 means "none"
        case kConfigGenerationOffset:
            return 0;  // our config spaces never change while the driver reads them
        default:
            return 0;  // write-only and unknown registers
    }
}

void MmioTransport::write_register(uint64_t offset, uint32_t value) {
    QueueRegisters* queue = selected_queue();
    // Queue registers may only change while that queue is not ready and the device is not live.
    bool queue_writable = queue && !queue->ready && !(status_ & kStatusDriverOk);
    // Features are fixed once FEATURES_OK is set.
    bool features_writable = (status_ & kStatusDriver) && !(status_ & kStatusFeaturesOk);
    switch (offset) {
        case kDeviceFeaturesSelOffset:
            device_features_sel_ = value;
            break;
        case kDriverFeaturesOffset:
            if (features_writable && driver_features_sel_ < 2) {
                driver_features_ = driver_features_sel_ == 0 ? set_low(driver_features_, value)
                                                             : set_high(driver_features_, value);
            }
            break;
        case kDriverFeaturesSelOffset:
            driver_features_sel_ = value;
            break;
        case kQueueSelOffset:
            queue_sel_ = value;
            break;
        case kQueueNumOffset:
            if (queue_writable) queue->config.size = static_cast<uint16_t>(value > 0xffff ? 0 : value);
            break;
        case kQueueReadyOffset:
            if (queue && !(status_ & kStatusDriverOk)) set_queue_ready(*queue, value == 1);
            break;
        case kQueueNotifyOffset:
            if (value <= 0xffff) notify_locked(static_cast<uint16_t>(value));
            break;
        case kInterruptAckOffset:
            interrupt_status_ &= ~value;
            break;
        case kStatusOffset:
            write_status(value);
            break;
        case kQueueDescLowOffset:
            if (queue_writable) queue->config.desc_table = set_low(queue->config.desc_table, value);
            break;
        case kQueueDescHighOffset:
            if (queue_writable) queue->config.desc_table = set_high(queue->config.desc_table, value);
            break;
        case kQueueDriverLowOffset:
            if (queue_writable) queue->config.avail_ring = set_low(queue->config.avail_ring, value);
            break;
        case kQueueDriverHighOffset:
            if (queue_writable) queue->config.avail_ring = set_high(queue->config.avail_ring, value);
            break;
        case kQueueDeviceLowOffset:
            if (queue_writable) queue->config.used_ring = set_low(queue->config.used_ring, value);
            break;
        case kQueueDeviceHighOffset:
            if (queue_writable) queue->config.used_ring = set_high(queue->config.used_ring, value);
            break;
        case kShmSelOffset:
            shm_sel_ = value;
            break;
        default:
            break;  // read-only and unknown registers
    }
}

void MmioTransport::set_queue_ready(QueueRegisters& regs, bool ready) {
    regs.ready = false;
    regs.validated.reset();
    if (!ready) return;
    auto queue = Queue::create(memory_, regs.config, regs.max_size);
    if (!queue) {
        needs_reset("queue " + std::to_string(queue_sel_) + ": " + queue.error().to_string());
        return;
    }
    uint16_t index = static_cast<uint16_t>(queue_sel_);
    queue->set_broken_handler([this, index](const std::string& why) {
        needs_reset("queue " + std::to_string(index) + ": " + why);
    });
    regs.validated = std::move(*queue);
    regs.ready = true;
}

void MmioTransport::write_status(uint32_t value) {
    if (value == 0) {
        reset();
        return;
    }
    // NEEDS_RESET belongs to the device: keep ours, ignore the driver's.
    uint32_t current = status_ & ~kStatusNeedsReset;
    uint32_t requested = value & ~kStatusNeedsReset;
    // Drivers only ever add bits (virtio 1.x 3.1.1); clearing one other than by a reset is refused.
    if ((requested & current) != current) return;
    uint32_t next = current | (requested & (kStatusAcknowledge | kStatusFailed));
    if ((requested & kStatusDriver) && (next & kStatusAcknowledge)) next |= kStatusDriver;
    if ((requested & kStatusFeaturesOk) && (next & kStatusDriver) && !(current & kStatusFeaturesOk)) {
        // Accept only a subset of what we offered, and only with VERSION_1 (we are a modern-only device).
        bool subset = (driver_features_ & ~offered_features()) == 0;
        if (subset && (driver_features_ & kFeatureVersion1)) next |= kStatusFeaturesOk;
    } else if (current & kStatusFeaturesOk) {
        next |= kStatusFeaturesOk;
    }
    bool go_live =
        (requested & kStatusDriverOk) && (next & kStatusFeaturesOk) && !(current & kStatusDriverOk);
    if (go_live || (current & kStatusDriverOk)) next |= kStatusDriverOk;
    status_ = next | (status_ & kStatusNeedsReset);
    if (go_live) activate();
}

void MmioTransport::activate() {
    for (size_t i = 0; i < queues_.size(); ++i) {
        if (!queues_[i].ready) {
            needs_reset("DRIVER_OK with queue " + std::to_string(i) + " not ready");
            return;
        }
    }
    active_queues_.clear();
    for (auto& regs : queues_) {
        active_queues_.push_back(std::move(*regs.validated));
        regs.validated.reset();
    }
    Activation activation{
        .memory = memory_,
        .queues = active_queues_,
        .features = driver_features_,
        .signal_used =
            [this](uint16_t queue) {
                if (queue < active_queues_.size() && active_queues_[queue].interrupt_wanted()) {
                    raise(kInterruptUsedBuffer);
                }
            },
    };
    if (auto ok = device_->activate(std::move(activation)); !ok) {
        needs_reset("activating device: " + ok.error().to_string());
        return;
    }
    active_ = true;
}

void MmioTransport::reset() {
    device_->reset();
    active_ = false;
    active_queues_.clear();
    for (auto& regs : queues_) {
        // Field by field: assigning a fresh QueueRegisters trips GCC 12's -Wmaybe-uninitialized on the
        // optional.
        regs.config = {};
        regs.ready = false;
        regs.validated.reset();
    }
    status_ = 0;
    interrupt_status_ = 0;
    device_features_sel_ = 0;
    driver_features_sel_ = 0;
    driver_features_ = 0;
    queue_sel_ = 0;
    shm_sel_ = 0;
}

void MmioTransport::raise(uint32_t bits) {
    interrupt_status_ |= bits;
    irq_line_.trigger();
}

void MmioTransport::needs_reset(const std::string& why) {
    if (status_ & kStatusNeedsReset) return;  // said once; the guest could otherwise flood the log
    fmt::print(stderr, "virtio-mmio (device type {}): {}; device needs reset\n", device_->device_type(), why);
    status_ |= kStatusNeedsReset;
    // The driver looks at the status after a config-change interrupt.
    raise(kInterruptConfigChange);
}

}  // namespace sandlot::vmm::virtio
