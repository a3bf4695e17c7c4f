// MMIO and port-I/O dispatch. A vCPU exit looks up the device covering the address and calls it with the
// offset from the device's base. Devices are tables of two operations; they must tolerate any offset and
// size.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>

#include "proto/base/error.h"

namespace sandlot::vmm {

class BusDevice {
  public:
    virtual ~BusDevice() = default;
    // Fill `data` (1, 2, 4 or 8 bytes). Called on vCPU threads, possibly concurrently.
    virtual void read(uint64_t offset, std::span<uint8_t> data) = 0;
    virtual void write(uint64_t offset, std::span<const uint8_t> data) = 0;
};

class Bus {
  public:
    // Ranges may not overlap. Set up before vCPUs start; lookups afterwards are lock-free reads.
    Result<void> insert(uint64_t base, uint64_t length, std::shared_ptr<BusDevice> device);

    // false when no device covers the address (the caller logs it once and ignores it).
    bool read(uint64_t addr, std::span<uint8_t> data) const;
    bool write(uint64_t addr, std::span<const uint8_t> data) const;

  private:
    struct Range {
        uint64_t length;
        std::shared_ptr<BusDevice> device;
    };
    const std::pair<uint64_t, const Range*> find(uint64_t addr, uint64_t len) const;
    std::map<uint64_t, Range> ranges_;  // by base
};

}  // namespace sandlot::vmm
