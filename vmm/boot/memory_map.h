// The guest's physical memory map, as presented to the kernel in both entry modes (e820 table in
// boot_params, or the PVH memmap). Both formats use the same type numbers.
#pragma once

#include <cstdint>
#include <vector>

#include "proto/base/error.h"
#include "vmm/memory/guest_memory.h"

namespace sandlot::vmm::boot {

inline constexpr uint32_t kMemoryRam = 1;
inline constexpr uint32_t kMemoryReserved = 2;

struct MemoryMapEntry {
    uint64_t addr = 0;
    uint64_t size = 0;
    uint32_t type = 0;
};

// RAM [0, 0x9fc00); reserved [0x9fc00, 1 MiB) for the MP table and the legacy ROM/VGA window; RAM from
// 1 MiB to the end of low memory; and every further region (RAM above 4 GiB). Fails when guest memory does
// not reach past 1 MiB.
Result<std::vector<MemoryMapEntry>> guest_memory_map(const GuestMemory& mem);

}  // namespace sandlot::vmm::boot
