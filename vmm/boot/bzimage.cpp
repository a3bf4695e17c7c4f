#include "vmm/boot/bzimage.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "vmm/boot/bytes.h"

namespace sandlot::vmm::boot {

using namespace bzimage;

bool looks_like_bzimage(std::span<const uint8_t> file) {
    return file.size() >= kHeaderMagic + 4 && std::memcmp(file.data() + kHeaderMagic, "HdrS", 4) == 0;
}

Result<BzImage> parse_bzimage(std::span<const uint8_t> file) {
    if (!looks_like_bzimage(file)) return make_error("no HdrS setup header: not a bzImage");
    if (file.size() < kMinHeaderEnd) return make_error("truncated setup header");
    if (*load_le<uint16_t>(file, kBootFlag) != 0xaa55)
        return make_error("bad boot sector flag (expected 0xaa55)");

    BzImage image;
    image.protocol = *load_le<uint16_t>(file, kVersion);
    if (image.protocol < kMinProtocol) {
        return make_error(fmt::format("boot protocol {}.{:02} is too old (need 2.12 for the 64-bit entry)",
                                      image.protocol >> 8, image.protocol & 0xff));
    }
    image.loadflags = file[kLoadFlags];
    image.xloadflags = *load_le<uint16_t>(file, kXLoadFlags);
    if (!(image.xloadflags & kXlfKernel64))
        return make_error("no 64-bit entry point (XLF_KERNEL_64 not set)");
    if (!(image.loadflags & kLoadedHigh))
        return make_error("kernel wants to load low (zImage), not supported");
    image.initrd_addr_max = *load_le<uint32_t>(file, kInitrdAddrMax);
    image.kernel_alignment = *load_le<uint32_t>(file, kKernelAlignment);
    image.relocatable = file[kRelocatable] != 0;
    image.cmdline_size = *load_le<uint32_t>(file, kCmdlineSize);
    image.pref_address = *load_le<uint64_t>(file, kPrefAddress);
    image.init_size = *load_le<uint32_t>(file, kInitSize);
    if (image.pref_address == 0) return make_error("no preferred load address in the setup header");

    // The byte after the 2-byte jump at 0x200 is the jump's target, i.e. the end of the header minus 0x202.
    uint64_t header_end = 0x202 + uint64_t{file[kJump + 1]};
    if (header_end < kMinHeaderEnd || header_end > kSetupHeaderLimit) {
        return make_error(fmt::format("corrupt setup header length (ends at {:#x})", header_end));
    }
    if (header_end > file.size()) return make_error("truncated setup header");
    image.setup_header = file.subspan(kSetupSects, header_end - kSetupSects);

    uint64_t setup_sects = file[kSetupSects] == 0 ? 4 : file[kSetupSects];
    uint64_t setup_size = (setup_sects + 1) * 512;
    if (setup_size >= file.size()) {
        return make_error(fmt::format("truncated: {} bytes of setup code but the file has {} bytes",
                                      setup_size, file.size()));
    }
    image.kernel = file.subspan(setup_size);
    return image;
}

Result<BootParams> build_boot_params(const BzImage& image, uint64_t cmdline_gpa,
                                     const std::optional<LoadedInitrd>& initrd,
                                     std::span<const MemoryMapEntry> memory_map) {
    if (memory_map.size() > kE820MaxEntries) return make_error("too many e820 entries for boot_params");
    if (image.setup_header.size() > kSetupHeaderLimit - kSetupSects)
        return make_error("setup header too long");

    BootParams params{};
    std::span<uint8_t> out(params);
    std::ranges::copy(image.setup_header, out.begin() + kSetupSects);

    out[kTypeOfLoader] = kLoaderUndefined;
    out[kLoadFlags] = image.loadflags | kCanUseHeap;
    store_le<uint16_t>(out, kHeapEndPtr, kHeapEnd);
    store_le<uint32_t>(out, kCmdLinePtr, static_cast<uint32_t>(cmdline_gpa));
    store_le<uint32_t>(out, kExtCmdLinePtr, static_cast<uint32_t>(cmdline_gpa >> 32));
    uint64_t ramdisk = initrd ? initrd->gpa : 0, ramdisk_size = initrd ? initrd->size : 0;
    store_le<uint32_t>(out, kRamdiskImage, static_cast<uint32_t>(ramdisk));
    store_le<uint32_t>(out, kExtRamdiskImage, static_cast<uint32_t>(ramdisk >> 32));
    store_le<uint32_t>(out, kRamdiskSize, static_cast<uint32_t>(ramdisk_size));
    store_le<uint32_t>(out, kExtRamdiskSize, static_cast<uint32_t>(ramdisk_size >> 32));

    out[kE820Entries] = static_cast<uint8_t>(memory_map.size());
    for (size_t i = 0; i < memory_map.size(); i++) {
        uint64_t at = kE820Table + i * kE820EntrySize;
        store_le<uint64_t>(out, at, memory_map[i].addr);
        store_le<uint64_t>(out, at + 8, memory_map[i].size);
        store_le<uint32_t>(out, at + 16, memory_map[i].type);
    }
    return params;
}

}  // namespace sandlot::vmm::boot
