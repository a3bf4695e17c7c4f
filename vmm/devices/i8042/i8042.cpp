#include "vmm/devices/i8042/i8042.h"

#include <algorithm>

#include "vmm/memory/layout.h"

namespace sandlot::vmm {

static_assert(I8042::kBasePort + I8042::kPortCount - 1 == layout::kI8042CommandPort);

void I8042::read(uint64_t, std::span<uint8_t> data) {
    std::fill(data.begin(), data.end(), 0);
}

void I8042::write(uint64_t offset, std::span<const uint8_t> data) {
    bool command_port = offset == layout::kI8042CommandPort - kBasePort;
    if (command_port && data.size() == 1 && data[0] == kCommandPulseReset) on_reset_request_();
}

}  // namespace sandlot::vmm
