#include "vmm/devices/virtio/attach.h"

#include "vmm/devices/virtio/mmio_transport.h"

namespace sandlot::vmm::virtio {

Result<void> attach_virtio_device(Machine& machine, std::shared_ptr<Device> device) {
    auto slot = TRY(machine.allocate_virtio_mmio_slot());
    auto transport =
        std::make_shared<MmioTransport>(machine.memory(), std::move(device), std::move(slot.irq_line));
    TRY(machine.attach_mmio(slot.base, kMmioSize, transport));
    for (uint16_t queue = 0; queue < transport->num_queues(); ++queue) {
        TRY(machine.add_mmio_notifier(slot.base + kQueueNotifyOffset, queue,
                                      [transport, queue] { transport->notify_queue(queue); }));
    }
    return {};
}

}  // namespace sandlot::vmm::virtio
