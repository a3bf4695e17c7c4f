// Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI finds its CPUs, the IOAPIC and
// the routing of ISA interrupts. Linux looks for the floating pointer in the last KiB of base memory.
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

// Everything but the processor entries: bus, IOAPIC, one IO interrupt per IOAPIC pin, two local interrupts.
inline constexpr uint64_t kMpFixedSize =
    kMpFloatingPointerSize + kMpConfigHeaderSize + (2 + layout::kIoapicPins + 2) * kMpSmallEntrySize;
// The most CPUs whose tables fit in [kEbdaStart, kBaseMemEnd).
inline constexpr uint32_t kMpMaxCpus =
    (layout::kBaseMemEnd - layout::kEbdaStart - kMpFixedSize) / kMpProcessorEntrySize;

// Writes an Intel MP floating pointer + MP config table at layout::kEbdaStart (0x9fc00) describing num_cpus
// processors (APIC IDs 0..n-1, CPU 0 is BSP), one ISA bus, the IOAPIC at layout::kIoapicBase (id = num_cpus),
// IO interrupt entries for all 24 IOAPIC pins (ISA bus irq i -> pin i, conforming polarity/trigger), and
// local interrupt entries (ExtINT->LINT0, NMI->LINT1). Checksums correct. Fails if it does not fit below
// 0xa0000 (more than kMpMaxCpus CPUs) or num_cpus is 0.
Result<void> write_mp_table(const GuestMemory& mem, uint32_t num_cpus);

}  // namespace sandlot::vmm::x86
