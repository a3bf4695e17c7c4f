#include "vmm/boot/initrd.h"

#include <fmt/format.h>

#include "vmm/boot/bytes.h"
#include "vmm/boot/file_io.h"

namespace sandlot::vmm::boot {

namespace {

constexpr uint64_t kPageSize = 4096;

std::string describe_size(uint64_t bytes) {
    if (bytes < (1u << 20)) return fmt::format("{} bytes", bytes);
    return fmt::format("{} MiB", (bytes + (1u << 20) - 1) >> 20);
}

}  // namespace

std::optional<uint64_t> place_initrd(uint64_t size, uint64_t floor, uint64_t ceiling) {
    if (floor > ceiling) return std::nullopt;
    uint64_t lowest = align_up(floor, kPageSize);  // wraps to 0 only for floor near 2^64: caught below
    if (lowest < floor || size > ceiling) return std::nullopt;
    uint64_t start = align_down(ceiling - size, kPageSize);
    if (start < lowest) return std::nullopt;
    return start;
}

Result<LoadedInitrd> load_initrd(const GuestMemory& mem, std::span<const std::string> paths, uint64_t floor,
                                 uint64_t ceiling) {
    if (paths.empty()) return make_error("no initrd given");
    struct Part {
        OpenFile file;
        uint64_t padded = 0;
    };
    std::vector<Part> parts;
    uint64_t total = 0;
    for (const std::string& path : paths) {
        auto file = open_regular_file(path);
        if (!file) return std::unexpected(with_context(file.error(), "initrd " + path));
        if (file->size == 0) return make_error("initrd " + path + ": file is empty");
        // Every part but the last is padded so the next archive starts 4-byte aligned.
        uint64_t padded = &path == &paths.back() ? file->size : align_up(file->size, 4);
        if (padded < file->size || total + padded < total)
            return make_error("initrd " + path + ": too large");
        total += padded;
        parts.push_back({std::move(*file), padded});
    }

    std::string name = paths.size() == 1
                           ? paths.front()
                           : paths.front() + " (+" + std::to_string(paths.size() - 1) + " more)";
    auto gpa = place_initrd(total, floor, ceiling);
    if (!gpa) {
        return make_error(fmt::format("initrd {} ({}) does not fit below {:#x} above the kernel's end {:#x}",
                                      name, describe_size(total), ceiling, floor));
    }
    auto dst = TRY(mem.slice(*gpa, total));
    uint64_t offset = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
        Part& part = parts[i];
        auto into = dst.subspan(offset, part.file.size);
        if (auto read = read_exact(part.file.fd.get(), into); !read)
            return std::unexpected(with_context(read.error(), "initrd " + paths[i]));
        std::fill(dst.begin() + static_cast<ptrdiff_t>(offset + part.file.size),
                  dst.begin() + static_cast<ptrdiff_t>(offset + part.padded), uint8_t{0});
        offset += part.padded;
    }
    return LoadedInitrd{*gpa, total};
}

}  // namespace sandlot::vmm::boot
