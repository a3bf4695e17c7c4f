#include "vmm/boot/loader.h"

#include <fmt/format.h>

#include <algorithm>

#include "vmm/boot/bytes.h"
#include "vmm/boot/bzimage.h"
#include "vmm/boot/elf_pvh.h"
#include "vmm/boot/file_io.h"
#include "vmm/boot/initrd.h"
#include "vmm/boot/memory_map.h"
#include "vmm/boot/pvh_start_info.h"
#include "vmm/boot/x86_tables.h"
#include "vmm/memory/layout.h"

namespace sandlot::vmm::boot {

namespace {

// Passes a result through, prefixing its error with what was being loaded ("kernel /x").
template <class T>
Result<T> in_context(Result<T> result, const std::string& what) {
    if (!result) return std::unexpected(with_context(std::move(result).error(), what));
    return result;
}

Result<void> check_cmdline(const std::string& cmdline, uint64_t max_length) {
    if (cmdline.find('\0') != std::string::npos) return make_error("command line contains a NUL byte");
    if (cmdline.size() > max_length) {
        return make_error(fmt::format("command line is {} bytes; the kernel accepts at most {}",
                                      cmdline.size(), max_length));
    }
    return {};
}

Result<void> write_cmdline(const GuestMemory& mem, const std::string& cmdline) {
    auto dst = TRY(mem.slice(layout::kCmdline, cmdline.size() + 1));
    std::ranges::copy(cmdline, dst.begin());
    dst.back() = 0;
    return {};
}

BootSetup with_initrd(BootSetup setup, const std::optional<LoadedInitrd>& initrd) {
    if (initrd) {
        setup.initrd_gpa = initrd->gpa;
        setup.initrd_size = initrd->size;
    }
    return setup;
}

Result<BootSetup> load_pvh(const GuestMemory& mem, const BootConfig& config, std::span<const uint8_t> file,
                           std::span<const MemoryMapEntry> memory_map) {
    const std::string what = "kernel " + config.kernel_path;
    auto image = TRY(in_context(parse_pvh_elf(file), what));
    TRY(in_context(load_pvh_image(mem, file, image), what));
    TRY(write_cmdline(mem, config.cmdline));

    std::optional<LoadedInitrd> initrd;
    if (!config.initrd_paths.empty())
        initrd = TRY(load_initrd(mem, config.initrd_paths, image.end, mem.low_end()));
    TRY(write_pvh_start_info(mem, layout::kCmdline, initrd, memory_map));
    return with_initrd({.mode = EntryMode::Pvh32,
                        .entry = image.entry,
                        .boot_info = layout::kPvhStartInfo,
                        .kernel_end = image.end},
                       initrd);
}

Result<BootSetup> load_linux64(const GuestMemory& mem, const BootConfig& config,
                               std::span<const uint8_t> file, std::span<const MemoryMapEntry> memory_map) {
    const std::string what = "kernel " + config.kernel_path;
    auto image = TRY(in_context(parse_bzimage(file), what));
    TRY(in_context(check_cmdline(config.cmdline, image.cmdline_size), what));

    // A relocatable kernel could go elsewhere, but its preferred address (16 MiB by default) is always free.
    uint64_t load = image.pref_address;
    if (load < layout::kHighMemStart || !range_fits(load, image.load_size(), mem.low_end())) {
        return make_error(
            fmt::format("{}: needs {:#x}-{:#x} (preferred address + init_size), guest RAM is "
                        "[{:#x}, {:#x})",
                        what, load, load + image.load_size(), layout::kHighMemStart, mem.low_end()));
    }
    TRY(mem.write(load, image.kernel));
    uint64_t kernel_end = load + image.load_size();

    std::optional<LoadedInitrd> initrd;
    if (!config.initrd_paths.empty()) {
        // initrd_addr_max is the highest byte the initrd may occupy.
        uint64_t ceiling = std::min<uint64_t>(mem.low_end(), uint64_t{image.initrd_addr_max} + 1);
        initrd = TRY(load_initrd(mem, config.initrd_paths, kernel_end, ceiling));
    }
    TRY(write_cmdline(mem, config.cmdline));
    auto params = TRY(in_context(build_boot_params(image, layout::kCmdline, initrd, memory_map), what));
    TRY(mem.write(layout::kZeroPage, params));
    TRY(write_identity_page_tables(mem));
    return with_initrd({.mode = EntryMode::Linux64,
                        .entry = load + bzimage::kEntry64Offset,
                        .boot_info = layout::kZeroPage,
                        .kernel_end = kernel_end},
                       initrd);
}

}  // namespace

Result<BootSetup> load_kernel(const GuestMemory& mem, const BootConfig& config) {
    const std::string what = "kernel " + config.kernel_path;
    TRY(check_cmdline(config.cmdline, layout::kCmdlineMax - 1));
    auto memory_map = TRY(guest_memory_map(mem));
    auto file = TRY(in_context(read_whole_file(config.kernel_path, kMaxKernelFileSize), what));
    TRY(write_boot_gdt(mem));

    if (looks_like_elf(file.bytes())) return load_pvh(mem, config, file.bytes(), memory_map);
    if (looks_like_bzimage(file.bytes())) return load_linux64(mem, config, file.bytes(), memory_map);
    return make_error(what + ": not an ELF vmlinux or bzImage");
}

}  // namespace sandlot::vmm::boot
