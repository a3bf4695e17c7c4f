#include "vmm/boot/elf_pvh.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>

#include "vmm/boot/bytes.h"
#include "vmm/memory/layout.h"

namespace sandlot::vmm::boot {

namespace {

// ELF64 constants and field offsets (System V gABI).
constexpr uint64_t kEhdrSize = 64;
constexpr uint64_t kPhdrSize = 56;
constexpr uint8_t kElfClass64 = 2;
constexpr uint8_t kElfDataLittle = 1;
constexpr uint16_t kElfTypeExec = 2;
constexpr uint16_t kElfMachineX86_64 = 62;
constexpr uint32_t kPtLoad = 1;
constexpr uint32_t kPtNote = 4;
constexpr uint16_t kPnXnum = 0xffff;  // "real count is in section 0": never used by vmlinux

struct ProgramHeader {
    uint32_t type;
    uint64_t offset;
    uint64_t paddr;
    uint64_t file_size;
    uint64_t mem_size;
    uint64_t align;
};

// The caller has checked the whole header lies in the file.
ProgramHeader read_program_header(std::span<const uint8_t> file, uint64_t at) {
    return ProgramHeader{
        .type = *load_le<uint32_t>(file, at + 0),
        .offset = *load_le<uint64_t>(file, at + 8),
        .paddr = *load_le<uint64_t>(file, at + 24),
        .file_size = *load_le<uint64_t>(file, at + 32),
        .mem_size = *load_le<uint64_t>(file, at + 40),
        .align = *load_le<uint64_t>(file, at + 48),
    };
}

// Walks the notes of one PT_NOTE segment and returns the PVH entry if one is there. Each note is a 12-byte
// header (namesz, descsz, type), then the name and the descriptor, each padded to the segment's alignment.
Result<std::optional<uint64_t>> find_pvh_entry_note(std::span<const uint8_t> notes, uint64_t align) {
    std::optional<uint64_t> entry;
    uint64_t pos = 0;
    while (range_fits(pos, 12, notes.size())) {
        uint32_t name_size = *load_le<uint32_t>(notes, pos);
        uint32_t desc_size = *load_le<uint32_t>(notes, pos + 4);
        uint32_t type = *load_le<uint32_t>(notes, pos + 8);
        uint64_t name_at = pos + 12;
        if (!range_fits(name_at, name_size, notes.size())) return make_error("truncated ELF note name");
        uint64_t desc_at = align_up(name_at + name_size, align);
        if (!range_fits(desc_at, desc_size, notes.size())) return make_error("truncated ELF note descriptor");

        bool is_xen = name_size == 4 && std::memcmp(notes.data() + name_at, "Xen", 4) == 0;
        if (is_xen && type == kXenElfNotePhys32Entry) {
            if (desc_size == 4) {
                entry = *load_le<uint32_t>(notes, desc_at);
            } else if (desc_size == 8) {
                entry = *load_le<uint64_t>(notes, desc_at);
            } else {
                return make_error(
                    fmt::format("PVH entry note has a {}-byte descriptor (expected 4 or 8)", desc_size));
            }
        }
        pos = align_up(desc_at + desc_size, align);
    }
    return entry;
}

}  // namespace

bool looks_like_elf(std::span<const uint8_t> file) {
    return file.size() >= 4 && std::memcmp(file.data(),
                                           "\x7f"
                                           "ELF",
                                           4) == 0;
}

Result<PvhImage> parse_pvh_elf(std::span<const uint8_t> file) {
    if (!looks_like_elf(file)) return make_error("not an ELF file");
    if (file.size() < kEhdrSize) return make_error("truncated ELF header");
    if (file[4] != kElfClass64) return make_error("not a 64-bit ELF");
    if (file[5] != kElfDataLittle) return make_error("not a little-endian ELF");
    uint16_t type = *load_le<uint16_t>(file, 16);
    uint16_t machine = *load_le<uint16_t>(file, 18);
    if (type != kElfTypeExec) return make_error(fmt::format("not an ELF executable (type {})", type));
    if (machine != kElfMachineX86_64)
        return make_error(fmt::format("not an x86-64 ELF (machine {})", machine));

    uint64_t ph_offset = *load_le<uint64_t>(file, 32);
    uint16_t ph_entry_size = *load_le<uint16_t>(file, 54);
    uint16_t ph_count = *load_le<uint16_t>(file, 56);
    if (ph_count == 0) return make_error("ELF has no program headers");
    if (ph_count == kPnXnum) return make_error("ELF has too many program headers");
    if (ph_entry_size < kPhdrSize)
        return make_error(fmt::format("bad ELF program header size {}", ph_entry_size));
    if (!range_fits(ph_offset, uint64_t{ph_count} * ph_entry_size, file.size())) {
        return make_error("truncated program header table");
    }

    PvhImage image;
    std::optional<uint64_t> entry;
    for (uint16_t i = 0; i < ph_count; i++) {
        ProgramHeader ph = read_program_header(file, ph_offset + uint64_t{i} * ph_entry_size);
        if (ph.type == kPtLoad) {
            if (ph.file_size > ph.mem_size) {
                return make_error(fmt::format("segment {}: file size {:#x} exceeds memory size {:#x}", i,
                                              ph.file_size, ph.mem_size));
            }
            if (!range_fits(ph.offset, ph.file_size, file.size())) {
                return make_error(
                    fmt::format("segment {}: data at {:#x}+{:#x} runs past the end of the file ({:#x})", i,
                                ph.offset, ph.file_size, file.size()));
            }
            if (ph.mem_size > std::numeric_limits<uint64_t>::max() - ph.paddr) {
                return make_error(
                    fmt::format("segment {}: address {:#x}+{:#x} overflows", i, ph.paddr, ph.mem_size));
            }
            if (ph.mem_size == 0) continue;
            image.segments.push_back({ph.paddr, ph.offset, ph.file_size, ph.mem_size});
            image.end = std::max(image.end, ph.paddr + ph.mem_size);
        } else if (ph.type == kPtNote) {
            if (!range_fits(ph.offset, ph.file_size, file.size())) {
                return make_error(fmt::format("segment {}: truncated note segment", i));
            }
            auto notes = file.subspan(ph.offset, ph.file_size);
            // ELF64 notes are usually 4-byte aligned; honour a segment that says 8.
            auto found = TRY(find_pvh_entry_note(notes, ph.align == 8 ? 8 : 4));
            if (found) entry = found;
        }
    }

    if (image.segments.empty()) return make_error("ELF has no loadable segments");
    if (!entry) {
        return make_error(
            "no PVH entry note (Xen ELF note 18); build the kernel with CONFIG_PVH=y or boot a bzImage");
    }
    if (*entry > std::numeric_limits<uint32_t>::max()) {
        return make_error(fmt::format("PVH entry {:#x} is above 4 GiB", *entry));
    }
    bool entry_loaded = std::ranges::any_of(image.segments, [&](const ElfSegment& s) {
        return *entry >= s.paddr && *entry - s.paddr < s.mem_size;
    });
    if (!entry_loaded)
        return make_error(fmt::format("PVH entry {:#x} is outside the loaded segments", *entry));
    image.entry = static_cast<uint32_t>(*entry);
    return image;
}

Result<void> load_pvh_image(const GuestMemory& mem, std::span<const uint8_t> file, const PvhImage& image) {
    for (const auto& seg : image.segments) {
        // The parser guarantees paddr + mem_size does not overflow and the file range is in bounds.
        uint64_t end = seg.paddr + seg.mem_size;
        if (seg.paddr < layout::kHighMemStart || end > mem.low_end()) {
            return make_error(fmt::format(
                "segment {:#x}-{:#x} lies outside guest RAM [{:#x}, {:#x}) available to the kernel",
                seg.paddr, end, layout::kHighMemStart, mem.low_end()));
        }
        auto dst = TRY(mem.slice(seg.paddr, seg.mem_size));
        auto src = file.subspan(seg.file_offset, seg.file_size);
        std::ranges::copy(src, dst.begin());
        // .bss: guest RAM starts zeroed, but a reused or rebooted guest must not see stale bytes.
        std::ranges::fill(dst.subspan(seg.file_size), uint8_t{0});
    }
    return {};
}

}  // namespace sandlot::vmm::boot
