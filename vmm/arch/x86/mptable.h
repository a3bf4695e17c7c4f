// Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI finds its CPUs, the IOAPIC and
// the routing of ISA interrupts. Linux looks for the floating pointer in the last KiB of base memory; the
// config table it points to sits in the BIOS ROM window below 1 MiB, where there is room for many CPUs.
#pragma once

#include <cstdint>

#include "proto/base/error.h"
#include "vmm/memory/guest_memory.h"
#include "vmm/memory/layout.h"

namespace sandlot::vmm::x86 {

// Sizes of the structures written (floating pointer, config table header, and the entry kinds).
inline constexpr uint64_t kMpFloatingPointerSize = 16;
inline constexpr uint64_t kMpConfigHeaderSize = 44;
inline constexpr uint64_t kMpProcessorEntrySize = 20;
inline constexpr uint64_t kMpSmallEntrySize = 8;  // bus, IOAPIC, IO interrupt and local interrupt entries

// The config table less its processor entries: header, bus, IOAPIC, one IO interrupt per IOAPIC pin, two
// local interrupts.
inline constexpr uint64_t kMpConfigFixedSize =
    kMpConfigHeaderSize + (2 + layout::kIoapicPins + 2) * kMpSmallEntrySize;
// Local APIC IDs are 8 bits and 0xff means "all": CPUs take IDs 0..n-1 and the IOAPIC takes n, so n <= 254.
inline constexpr uint32_t kMpMaxCpus = 254;
inline constexpr uint64_t kMpConfigMaxSize = kMpConfigFixedSize + kMpMaxCpus * kMpProcessorEntrySize;

static_assert(layout::kEbdaStart + kMpFloatingPointerSize <= layout::kBaseMemEnd);
static_assert(layout::kMpConfigTable + kMpConfigMaxSize <= layout::kHighMemStart,
              "the MP config table for kMpMaxCpus CPUs must fit below 1 MiB");
static_assert(kMpConfigMaxSize <= UINT16_MAX, "the table length is a 16-bit field");

// Writes an Intel MP floating pointer at layout::kEbdaStart (0x9fc00) and the MP config table it points to
// at layout::kMpConfigTable (0xf0000), describing num_cpus processors (APIC IDs 0..n-1, CPU 0 is BSP), one
// ISA bus, the IOAPIC at layout::kIoapicBase (id = num_cpus), IO interrupt entries for all 24 IOAPIC pins
// (ISA bus irq i -> pin i, conforming polarity/trigger), and local interrupt entries (ExtINT->LINT0,
// NMI->LINT1). Checksums correct. Fails, writing nothing, if num_cpus is 0 or more than kMpMaxCpus.
Result<void> write_mp_table(const GuestMemory& mem, uint32_t num_cpus);

}  // namespace sandlot::vmm::x86
