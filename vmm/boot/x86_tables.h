// The boot GDT and the identity page tables the loader writes into low guest memory (see layout.h).
// The vCPU setup loads segment registers with the same descriptors it finds here.
#pragma once

#include <array>
#include <cstdint>

#include "proto/base/error.h"
#include "vmm/memory/guest_memory.h"
#include "vmm/memory/layout.h"

namespace sandlot::vmm::boot {

// Flat descriptors: base 0, limit 0xfffff with 4 KiB granularity (4 GiB).
inline constexpr uint64_t kGdtCode32 = 0x00cf'9b00'0000'ffff;  // present, DPL 0, code exec/read, D=1
inline constexpr uint64_t kGdtCode64 = 0x00af'9b00'0000'ffff;  // same, with L=1 (64-bit) and D=0
inline constexpr uint64_t kGdtData = 0x00cf'9300'0000'ffff;    // present, DPL 0, data read/write, B=1
// A present busy 32/64-bit TSS at base 0, limit 0x67: VMX requires TR to hold a usable busy TSS even though
// Linux loads its own before it could fault through this one.
inline constexpr uint64_t kGdtTss = 0x0000'8b00'0000'0067;

inline constexpr std::array<uint64_t, layout::kGdtEntries> kBootGdt = {0, kGdtCode32, kGdtCode64, kGdtData,
                                                                       kGdtTss};
static_assert(layout::kGdtCode32Selector == 1 * 8 && layout::kGdtCode64Selector == 2 * 8 &&
              layout::kGdtDataSelector == 3 * 8 && layout::kGdtTssSelector == 4 * 8);

// Page-table entry bits.
inline constexpr uint64_t kPtePresent = 1ull << 0;
inline constexpr uint64_t kPteWritable = 1ull << 1;
inline constexpr uint64_t kPteLarge = 1ull << 7;  // PS: a 2 MiB page in a PD entry
inline constexpr uint64_t kIdentityMapPds = 4;    // 4 PDs x 512 x 2 MiB = 4 GiB

Result<void> write_boot_gdt(const GuestMemory& mem);

// PML4[0] -> PDPT; PDPT[0..3] -> the four PDs; each PD maps 512 2 MiB pages: an identity map of the first
// 4 GiB for the 64-bit entry. All other entries are zeroed.
Result<void> write_identity_page_tables(const GuestMemory& mem);

}  // namespace sandlot::vmm::boot
