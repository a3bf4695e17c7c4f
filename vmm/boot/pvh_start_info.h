// The Xen PVH start-of-day structures (xen/include/public/arch-x86/hvm/start_info.h), version 1: the
// kernel finds the command line, the initrd (as module 0) and the memory map through hvm_start_info, whose
// address it gets in %ebx.
#pragma once

#include <cstdint>
#include <optional>
#include <span>

#include "proto/base/error.h"
#include "vmm/boot/initrd.h"
#include "vmm/boot/memory_map.h"
#include "vmm/memory/guest_memory.h"

namespace sandlot::vmm::boot {

inline constexpr uint32_t kHvmStartMagic = 0x336ec578;  // "xEn3" with the 0x80 bit of the "E" set

struct HvmStartInfo {
    uint32_t magic;
    uint32_t version;  // 1: has the memory map fields
    uint32_t flags;
    uint32_t nr_modules;
    uint64_t modlist_paddr;
    uint64_t cmdline_paddr;
    uint64_t rsdp_paddr;
    uint64_t memmap_paddr;
    uint32_t memmap_entries;
    uint32_t reserved;
};
static_assert(sizeof(HvmStartInfo) == 56);

struct HvmModlistEntry {
    uint64_t paddr;
    uint64_t size;
    uint64_t cmdline_paddr;
    uint64_t reserved;
};
static_assert(sizeof(HvmModlistEntry) == 32);

struct HvmMemmapEntry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;  // same numbers as e820
    uint32_t reserved;
};
static_assert(sizeof(HvmMemmapEntry) == 24);

// Writes the memory map at layout::kPvhMemmap, the module list (the initrd, if any) at layout::kPvhModList
// and hvm_start_info at layout::kPvhStartInfo.
Result<void> write_pvh_start_info(const GuestMemory& mem, uint64_t cmdline_gpa,
                                  const std::optional<LoadedInitrd>& initrd,
                                  std::span<const MemoryMapEntry> memory_map);

}  // namespace sandlot::vmm::boot
