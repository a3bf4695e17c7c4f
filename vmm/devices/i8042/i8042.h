// The part of the i8042 keyboard controller a kernel uses to reset the machine: ports 0x60 (data) and 0x64
// (status/command). There is no keyboard: every read returns 0 (no data, input buffer empty, so a kernel
// waiting to send a command proceeds at once). Writing command 0xFE ("pulse reset line") to 0x64 reports
// a reset request through the callback; everything else is ignored.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "vmm/devices/bus.h"

namespace sandlot::vmm {

class I8042 final : public BusDevice {
  public:
    // The device covers ports [kBasePort, kBasePort + kPortCount): 0x60 through 0x64. Port 0x61 (system
    // control) inside that range is answered by KVM's PIT and never reaches this device.
    static constexpr uint16_t kBasePort = 0x60;
    static constexpr uint64_t kPortCount = 5;
    static constexpr uint8_t kCommandPulseReset = 0xfe;

    explicit I8042(std::function<void()> on_reset_request) : on_reset_request_(std::move(on_reset_request)) {}

    void read(uint64_t offset, std::span<uint8_t> data) override;
    void write(uint64_t offset, std::span<const uint8_t> data) override;

  private:
    std::function<void()> on_reset_request_;
};

}  // namespace sandlot::vmm
