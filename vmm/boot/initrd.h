// Placing the initrd in guest memory: as high as it fits, so the kernel keeps the memory right after its
// image for early allocations.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "proto/base/error.h"
#include "vmm/memory/guest_memory.h"

namespace sandlot::vmm::boot {

// The highest page-aligned address A with floor <= A and A + size <= ceiling, if there is one.
std::optional<uint64_t> place_initrd(uint64_t size, uint64_t floor, uint64_t ceiling);

struct LoadedInitrd {
    uint64_t gpa = 0;
    uint64_t size = 0;
};

// Reads the files, one after the other, straight into guest memory at place_initrd(total, floor, ceiling).
// Each part is padded with zeros to a multiple of 4 bytes: the kernel unpacks concatenated (compressed or
// plain) cpio archives in turn, so a host can add a small per-sandbox archive to a shared one without copying
// it. Error messages name the file: "initrd /y (300 MiB) does not fit below 0x10000000 above the kernel's end
// 0x2000000".
Result<LoadedInitrd> load_initrd(const GuestMemory& mem, std::span<const std::string> paths, uint64_t floor,
                                 uint64_t ceiling);

}  // namespace sandlot::vmm::boot
