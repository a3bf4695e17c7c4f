// bzImage (Linux x86 boot protocol, 64-bit entry): parsing the setup header and building boot_params.
// Offsets are those of Documentation/arch/x86/boot.rst and zero-page.rst.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <span>

#include "proto/base/error.h"
#include "vmm/boot/initrd.h"
#include "vmm/boot/memory_map.h"

namespace sandlot::vmm::boot {

// Setup header fields (offsets into the file, and into boot_params, which mirrors them).
namespace bzimage {
inline constexpr uint64_t kSetupSects = 0x1f1;    // u8; 0 means 4
inline constexpr uint64_t kBootFlag = 0x1fe;      // u16 0xaa55
inline constexpr uint64_t kJump = 0x200;          // u16; its second byte is the header length - 0x202 + 0x200
inline constexpr uint64_t kHeaderMagic = 0x202;   // "HdrS"
inline constexpr uint64_t kVersion = 0x206;       // u16 protocol version
inline constexpr uint64_t kTypeOfLoader = 0x210;  // u8
inline constexpr uint64_t kLoadFlags = 0x211;     // u8
inline constexpr uint64_t kRamdiskImage = 0x218;  // u32
inline constexpr uint64_t kRamdiskSize = 0x21c;   // u32
inline constexpr uint64_t kHeapEndPtr = 0x224;    // u16
inline constexpr uint64_t kCmdLinePtr = 0x228;    // u32
inline constexpr uint64_t kInitrdAddrMax = 0x22c;  // u32, highest byte the initrd may occupy
inline constexpr uint64_t kKernelAlignment = 0x230;
inline constexpr uint64_t kRelocatable = 0x234;   // u8
inline constexpr uint64_t kXLoadFlags = 0x236;    // u16
inline constexpr uint64_t kCmdlineSize = 0x238;   // u32, max length without the NUL
inline constexpr uint64_t kPrefAddress = 0x258;   // u64
inline constexpr uint64_t kInitSize = 0x260;      // u32
inline constexpr uint64_t kMinHeaderEnd = 0x264;  // we read up to init_size

// boot_params fields outside the setup header.
inline constexpr uint64_t kExtRamdiskImage = 0x0c0;
inline constexpr uint64_t kExtRamdiskSize = 0x0c4;
inline constexpr uint64_t kExtCmdLinePtr = 0x0c8;
inline constexpr uint64_t kE820Entries = 0x1e8;  // u8
inline constexpr uint64_t kE820Table = 0x2d0;    // 20-byte entries: addr u64, size u64, type u32
inline constexpr uint64_t kE820EntrySize = 20;
inline constexpr uint64_t kE820MaxEntries = 128;
inline constexpr uint64_t kBootParamsSize = 4096;
inline constexpr uint64_t kSetupHeaderLimit = 0x290;  // the header must end before edd_mbr_sig_buffer

inline constexpr uint16_t kMinProtocol = 0x20c;  // 2.12: xloadflags and the 64-bit entry
inline constexpr uint8_t kLoadedHigh = 0x01;
inline constexpr uint8_t kCanUseHeap = 0x80;
inline constexpr uint16_t kXlfKernel64 = 0x01;
inline constexpr uint64_t kEntry64Offset = 0x200;  // startup_64 from the protected-mode load address
inline constexpr uint8_t kLoaderUndefined = 0xff;  // type_of_loader for loaders without an assigned id
// End of the setup heap relative to the real-mode code, minus 0x200. Only the 16-bit setup code (which the
// 64-bit entry skips) uses the heap; this is the customary "whole 64 KiB segment" value.
inline constexpr uint16_t kHeapEnd = 0xfe00;
}  // namespace bzimage

struct BzImage {
    uint16_t protocol = 0;
    uint8_t loadflags = 0;
    uint16_t xloadflags = 0;
    uint32_t initrd_addr_max = 0;
    uint32_t kernel_alignment = 0;
    bool relocatable = false;
    uint32_t cmdline_size = 0;
    uint64_t pref_address = 0;
    uint32_t init_size = 0;
    std::span<const uint8_t> setup_header;  // file bytes [0x1f1, header end): copied into boot_params as is
    std::span<const uint8_t> kernel;        // the protected-mode kernel, loaded at pref_address

    // Memory the kernel needs from its load address before it reads the memory map.
    uint64_t load_size() const { return std::max<uint64_t>(init_size, kernel.size()); }
};

// True when the buffer carries the "HdrS" setup header magic.
bool looks_like_bzimage(std::span<const uint8_t> file);

using BootParams = std::array<uint8_t, bzimage::kBootParamsSize>;

// Checks the header: boot flag, magic, protocol >= 2.12, XLF_KERNEL_64, LOADED_HIGH, setup and kernel in the
// file. The returned spans point into `file`.
Result<BzImage> parse_bzimage(std::span<const uint8_t> file);

// The zero page for the 64-bit entry: the image's setup header at its own offsets, then the fields a boot
// loader fills in (loader type, heap, command line, initrd, e820 table).
Result<BootParams> build_boot_params(const BzImage& image, uint64_t cmdline_gpa,
                                     const std::optional<LoadedInitrd>& initrd,
                                     std::span<const MemoryMapEntry> memory_map);

}  // namespace sandlot::vmm::boot
