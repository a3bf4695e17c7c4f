// Kernel loading: puts a guest kernel, its initrd, command line and boot-time tables into guest memory and
// says how to enter it. Two kinds of kernel image are understood:
//   - an ELF vmlinux with a PVH entry note: entered in 32-bit protected mode (paging off) at the note's
//     address, %ebx = hvm_start_info. No decompression, so this is the fast path.
//   - a bzImage: entered through the 64-bit boot protocol at load address + 0x200, %rsi = boot_params,
//     with the identity page tables written here.
// Both get the boot GDT (layout.h) and the same memory map (memory_map.h).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "proto/base/error.h"
#include "vmm/memory/guest_memory.h"

namespace sandlot::vmm::boot {

enum class EntryMode { Pvh32, Linux64 };

struct BootConfig {
    std::string kernel_path;                // ELF vmlinux with a PVH note, or a bzImage
    std::vector<std::string> initrd_paths;  // concatenated in this order; empty: none
    std::string cmdline;                    // full command line
};

struct BootSetup {
    EntryMode mode;
    uint64_t entry;       // guest-physical entry point (PVH: 32-bit entry from the note; Linux64: load+0x200)
    uint64_t boot_info;   // PVH: gpa of hvm_start_info (goes in RBX); Linux64: gpa of boot_params (RSI)
    uint64_t kernel_end;  // first byte after the loaded kernel image (for diagnostics/tests)
    uint64_t initrd_gpa = 0, initrd_size = 0;
};

// Largest kernel image file accepted (uncompressed vmlinux with debug info can be big; this is a sanity
// bound).
inline constexpr uint64_t kMaxKernelFileSize = 1ull << 30;

// Loads everything into guest memory for the detected mode. Errors are one-line messages naming the file
// and the problem, e.g. "kernel /x: not an ELF vmlinux or bzImage".
Result<BootSetup> load_kernel(const GuestMemory& mem, const BootConfig& config);

}  // namespace sandlot::vmm::boot
