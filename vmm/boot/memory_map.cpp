#include "vmm/boot/memory_map.h"

#include <fmt/format.h>

#include "vmm/memory/layout.h"

namespace sandlot::vmm::boot {

Result<std::vector<MemoryMapEntry>> guest_memory_map(const GuestMemory& mem) {
    uint64_t low_end = mem.low_end();
    if (low_end <= layout::kHighMemStart) {
        return make_error(
            fmt::format("guest memory ({} KiB) does not reach past 1 MiB", low_end / layout::kKiB));
    }
    std::vector<MemoryMapEntry> map = {
        {0, layout::kEbdaStart, kMemoryRam},
        {layout::kEbdaStart, layout::kHighMemStart - layout::kEbdaStart, kMemoryReserved},
        {layout::kHighMemStart, low_end - layout::kHighMemStart, kMemoryRam},
    };
    auto regions = mem.regions();
    for (size_t i = 1; i < regions.size(); i++)
        map.push_back({regions[i].gpa, regions[i].size, kMemoryRam});
    return map;
}

}  // namespace sandlot::vmm::boot
