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

Result<LoadedInitrd> load_initrd(const GuestMemory& mem, const std::string& path, uint64_t floor,
                                 uint64_t ceiling) {
    auto in_context = [&](Error e) { return std::unexpected(with_context(std::move(e), "initrd " + path)); };
    auto file = open_regular_file(path);
    if (!file) return in_context(file.error());
    if (file->size == 0) return make_error("initrd " + path + ": file is empty");

    auto gpa = place_initrd(file->size, floor, ceiling);
    if (!gpa) {
        return make_error(fmt::format("initrd {} ({}) does not fit below {:#x} above the kernel's end {:#x}",
                                      path, describe_size(file->size), ceiling, floor));
    }
    auto dst = mem.slice(*gpa, file->size);
    if (!dst) return in_context(dst.error());
    if (auto read = read_exact(file->fd.get(), *dst); !read) return in_context(read.error());
    return LoadedInitrd{*gpa, file->size};
}

}  // namespace sandlot::vmm::boot
