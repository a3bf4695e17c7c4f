// The guest-physical address map sandlot builds. One place, so boot code, devices and docs agree.
//
//   0x0000_0500  GDT used at entry                      0x0000_7000  boot_params (zero page, bzImage)
//   0x0000_6000  hvm_start_info + module list (PVH)     0x0000_8000  PVH memory map
//   0x0000_9000  PML4, 0xa000 PDPT, 0xb000-0xefff PDs   (identity map of the first 4 GiB, bzImage path)
//   0x0002_0000  kernel command line (up to 64 KiB)
//   0x0009_fc00  MP floating pointer (top of base memory, where Linux scans; reserved in e820)
//   0x000f_0000  MP config table (the BIOS ROM window, also reserved in e820)
//   0x0010_0000  start of high RAM; kernels load at their preferred address (16 MiB for bzImage)
//   RAM ..       up to 3 GiB, then the MMIO hole, then the rest of RAM from 4 GiB
//   0xd000_0000  virtio-mmio devices, 4 KiB apart
//   0xfec0_0000  IOAPIC, 0xfee0_0000 local APIC (in-kernel irqchip)
#pragma once

#include <cstdint>

namespace sandlot::vmm::layout {

inline constexpr uint64_t kKiB = 1024, kMiB = 1024 * kKiB, kGiB = 1024 * kMiB;

// Boot GDT at kGdt, written by the kernel loader for both entry modes. Selectors index into it.
inline constexpr uint64_t kGdt = 0x500;
inline constexpr uint16_t kGdtCode32Selector = 0x08;  // flat 32-bit code (PVH entry)
inline constexpr uint16_t kGdtCode64Selector = 0x10;  // 64-bit code (Linux 64-bit boot protocol)
inline constexpr uint16_t kGdtDataSelector = 0x18;    // flat data
inline constexpr uint16_t kGdtTssSelector = 0x20;     // a TSS descriptor (VMX insists on a usable TR)
inline constexpr uint64_t kGdtEntries = 5;
inline constexpr uint64_t kPvhStartInfo = 0x6000;
inline constexpr uint64_t kPvhModList = 0x6800;
inline constexpr uint64_t kZeroPage = 0x7000;
inline constexpr uint64_t kPvhMemmap = 0x8000;
inline constexpr uint64_t kPml4 = 0x9000;
inline constexpr uint64_t kPdpt = 0xa000;
inline constexpr uint64_t kPd = 0xb000;  // 4 pages
inline constexpr uint64_t kCmdline = 0x20000;
inline constexpr uint64_t kCmdlineMax = 64 * kKiB;
inline constexpr uint64_t kEbdaStart = 0x9fc00;   // MP floating pointer lives here
inline constexpr uint64_t kBaseMemEnd = 0xa0000;  // 640 KiB
// The MP config table: the floating pointer points here. [kEbdaStart, kHighMemStart) is reserved in the
// guest memory map, and this 64 KiB window below 1 MiB has room for a table listing 254 CPUs (the last KiB
// of base memory holds only 37).
inline constexpr uint64_t kMpConfigTable = 0xf0000;
inline constexpr uint64_t kHighMemStart = 0x100000;
inline constexpr uint64_t kBootStack = 0x8ff0;  // unused by Linux entry points, kept sane anyway

inline constexpr uint64_t kMmioHoleStart = 3 * kGiB;
inline constexpr uint64_t kMmioHoleEnd = 4 * kGiB;
inline constexpr uint64_t kVirtioMmioBase = 0xd000'0000;
inline constexpr uint64_t kVirtioMmioSize = 0x1000;
inline constexpr uint64_t kIoapicBase = 0xfec0'0000;
inline constexpr uint64_t kLapicBase = 0xfee0'0000;
// KVM needs three pages for Intel's real-mode TSS and one for the identity map; placed under the APICs.
inline constexpr uint64_t kKvmTssAddr = 0xfffb'd000;
inline constexpr uint64_t kKvmIdentityMapAddr = 0xfffb'c000;

// Legacy ISA IRQs: the serial port keeps 4; virtio-mmio devices take 5 and up (IOAPIC pins, also GSIs).
inline constexpr uint32_t kSerialIrq = 4;
inline constexpr uint32_t kFirstVirtioIrq = 5;
inline constexpr uint32_t kIoapicPins = 24;

inline constexpr uint16_t kSerialPort = 0x3f8;
inline constexpr uint16_t kI8042CommandPort = 0x64;

// Guest memory sizes we accept, in MiB. The upper bound is a sanity limit, not a reservation.
inline constexpr uint64_t kMinMemoryMiB = 64;
inline constexpr uint64_t kMaxMemoryMiB = 1024 * 1024;

}  // namespace sandlot::vmm::layout
