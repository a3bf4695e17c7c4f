#include "vmm/boot/pvh_start_info.h"

#include "vmm/memory/layout.h"

namespace sandlot::vmm::boot {

namespace {
// The memory map must end before the page tables that follow it in low memory.
constexpr uint64_t kMaxMemmapEntries = (layout::kPml4 - layout::kPvhMemmap) / sizeof(HvmMemmapEntry);
static_assert(layout::kPvhStartInfo + sizeof(HvmStartInfo) <= layout::kPvhModList);
}  // namespace

Result<void> write_pvh_start_info(const GuestMemory& mem, uint64_t cmdline_gpa,
                                  const std::optional<LoadedInitrd>& initrd,
                                  std::span<const MemoryMapEntry> memory_map) {
    if (memory_map.size() > kMaxMemmapEntries) return make_error("too many memory map entries for PVH");
    for (size_t i = 0; i < memory_map.size(); i++) {
        const auto& e = memory_map[i];
        TRY(mem.write_obj(layout::kPvhMemmap + i * sizeof(HvmMemmapEntry),
                          HvmMemmapEntry{e.addr, e.size, e.type, 0}));
    }
    if (initrd) TRY(mem.write_obj(layout::kPvhModList, HvmModlistEntry{initrd->gpa, initrd->size, 0, 0}));

    HvmStartInfo info{
        .magic = kHvmStartMagic,
        .version = 1,
        .flags = 0,
        .nr_modules = initrd ? 1u : 0u,
        .modlist_paddr = initrd ? layout::kPvhModList : 0,
        .cmdline_paddr = cmdline_gpa,
        .rsdp_paddr = 0,  // no ACPI: Linux finds CPUs and the IOAPIC in the MP table
        .memmap_paddr = layout::kPvhMemmap,
        .memmap_entries = static_cast<uint32_t>(memory_map.size()),
        .reserved = 0,
    };
    return mem.write_obj(layout::kPvhStartInfo, info);
}

}  // namespace sandlot::vmm::boot
