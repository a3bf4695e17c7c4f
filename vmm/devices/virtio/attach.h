// Plugs a virtio device model into a machine: a virtio-mmio slot (registers + IRQ), the transport on the MMIO
// bus, and one KVM ioeventfd per queue so queue kicks reach the event loop without a vCPU exit to user space.
// Every virtio device (vsock today; blk, net, fs later) is attached through this one function.
#pragma once

#include <memory>

#include "proto/base/error.h"
#include "vmm/devices/virtio/device.h"
#include "vmm/machine.h"

namespace sandlot::vmm::virtio {

Result<void> attach_virtio_device(Machine& machine, std::shared_ptr<Device> device);

}  // namespace sandlot::vmm::virtio
