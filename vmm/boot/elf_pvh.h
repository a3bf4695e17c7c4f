// ELF64 vmlinux with a PVH entry note (Xen's XEN_ELFNOTE_PHYS32_ENTRY): parsing and loading.
// The parser works on the whole file as a byte buffer and checks every offset it follows.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "proto/base/error.h"
#include "vmm/memory/guest_memory.h"

namespace sandlot::vmm::boot {

// A PT_LOAD segment: file bytes [file_offset, file_offset+file_size) go to guest-physical paddr, and the
// rest up to mem_size is zeroed (.bss).
struct ElfSegment {
    uint64_t paddr = 0;
    uint64_t file_offset = 0;
    uint64_t file_size = 0;
    uint64_t mem_size = 0;
};

struct PvhImage {
    uint32_t entry = 0;  // 32-bit protected-mode entry point (guest-physical)
    std::vector<ElfSegment> segments;
    uint64_t end = 0;  // first byte after the highest segment
};

inline constexpr uint32_t kXenElfNotePhys32Entry = 18;

// True when the buffer starts with the ELF magic (the caller then expects parse_pvh_elf to succeed).
bool looks_like_elf(std::span<const uint8_t> file);

// Checks the image is an x86-64 ELF executable with a PVH entry note and sane segments. Addresses are not
// checked against guest memory here; see load_pvh_image.
Result<PvhImage> parse_pvh_elf(std::span<const uint8_t> file);

// Copies the segments into guest memory. Each must lie in RAM at or above 1 MiB (the low boot area belongs
// to the loader) and below the MMIO hole (the entry is 32-bit).
Result<void> load_pvh_image(const GuestMemory& mem, std::span<const uint8_t> file, const PvhImage& image);

}  // namespace sandlot::vmm::boot
