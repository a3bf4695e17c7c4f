#include "vmm/arch/x86/mptable.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <span>
#include <vector>

namespace sandlot::vmm::x86 {

namespace {

// Entry type codes and field values from the MP specification.
constexpr uint8_t kEntryProcessor = 0;
constexpr uint8_t kEntryBus = 1;
constexpr uint8_t kEntryIoapic = 2;
constexpr uint8_t kEntryIoInterrupt = 3;
constexpr uint8_t kEntryLocalInterrupt = 4;

constexpr uint8_t kSpecRev = 4;  // MP spec 1.4
constexpr uint8_t kCpuEnabled = 0x01;
constexpr uint8_t kCpuBootstrap = 0x02;
constexpr uint8_t kIoapicEnabled = 0x01;
constexpr uint8_t kLapicVersion = 0x14;  // integrated APIC
constexpr uint8_t kIoapicVersion = 0x11;
// Family 6, model 15, stepping 1 with FPU and APIC feature bits: plausible values; Linux does not use them.
constexpr uint32_t kCpuSignature = (6 << 8) | (15 << 4) | 1;
constexpr uint32_t kCpuFeatures = (1 << 0) | (1 << 9);

constexpr uint8_t kIntTypeInt = 0;  // vectored interrupt through the IOAPIC
constexpr uint8_t kIntTypeNmi = 1;
constexpr uint8_t kIntTypeExtInt = 3;        // 8259-compatible
constexpr uint16_t kIntFlagsConforming = 0;  // polarity and trigger mode "conform to the bus"
constexpr uint8_t kIsaBusId = 0;
constexpr uint8_t kAllLapics = 0xff;

// Little-endian appends to the table being built.
struct TableWriter {
    std::vector<uint8_t> bytes;

    void u8(uint8_t v) { bytes.push_back(v); }
    void u16(uint16_t v) { append(&v, sizeof v); }
    void u32(uint32_t v) { append(&v, sizeof v); }
    void text(const char* s, size_t width) {  // space-padded, not NUL-terminated
        size_t n = std::min(std::strlen(s), width);
        append(s, n);
        bytes.insert(bytes.end(), width - n, ' ');
    }
    void zeros(size_t n) { bytes.insert(bytes.end(), n, 0); }
    void append(const void* p, size_t n) {
        auto b = static_cast<const uint8_t*>(p);
        bytes.insert(bytes.end(), b, b + n);
    }
};

// The value that makes the bytes sum to zero (mod 256).
uint8_t checksum(std::span<const uint8_t> bytes) {
    return static_cast<uint8_t>(-std::accumulate(bytes.begin(), bytes.end(), 0u));
}

void add_interrupt(TableWriter& t, uint8_t entry_type, uint8_t int_type, uint8_t src_irq, uint8_t dest_id,
                   uint8_t dest_pin) {
    t.u8(entry_type);
    t.u8(int_type);
    t.u16(kIntFlagsConforming);
    t.u8(kIsaBusId);
    t.u8(src_irq);
    t.u8(dest_id);
    t.u8(dest_pin);
}

std::vector<uint8_t> build_config_table(uint32_t num_cpus) {
    const uint8_t ioapic_id = static_cast<uint8_t>(num_cpus);
    TableWriter t;
    // Header; length, checksum and entry count are filled in at the end.
    t.text("PCMP", 4);
    t.u16(0);  // base table length
    t.u8(kSpecRev);
    t.u8(0);  // checksum
    t.text("SANDLOT", 8);
    t.text("MICROVM", 12);
    t.u32(0);  // OEM table pointer
    t.u16(0);  // OEM table size
    t.u16(0);  // entry count
    t.u32(static_cast<uint32_t>(layout::kLapicBase));
    t.u16(0);  // extended table length
    t.u8(0);   // extended table checksum
    t.u8(0);   // reserved
    uint16_t entries = 0;

    for (uint32_t cpu = 0; cpu < num_cpus; cpu++, entries++) {
        t.u8(kEntryProcessor);
        t.u8(static_cast<uint8_t>(cpu));  // local APIC id
        t.u8(kLapicVersion);
        t.u8(kCpuEnabled | (cpu == 0 ? kCpuBootstrap : 0));
        t.u32(kCpuSignature);
        t.u32(kCpuFeatures);
        t.zeros(8);
    }

    t.u8(kEntryBus);
    t.u8(kIsaBusId);
    t.text("ISA", 6);
    entries++;

    t.u8(kEntryIoapic);
    t.u8(ioapic_id);
    t.u8(kIoapicVersion);
    t.u8(kIoapicEnabled);
    t.u32(static_cast<uint32_t>(layout::kIoapicBase));
    entries++;

    for (uint32_t pin = 0; pin < layout::kIoapicPins; pin++, entries++) {
        add_interrupt(t, kEntryIoInterrupt, kIntTypeInt, static_cast<uint8_t>(pin), ioapic_id,
                      static_cast<uint8_t>(pin));
    }
    add_interrupt(t, kEntryLocalInterrupt, kIntTypeExtInt, 0, kAllLapics, 0);  // LINT0
    add_interrupt(t, kEntryLocalInterrupt, kIntTypeNmi, 0, kAllLapics, 1);     // LINT1
    entries += 2;

    uint16_t length = static_cast<uint16_t>(t.bytes.size());
    std::memcpy(&t.bytes[4], &length, 2);
    std::memcpy(&t.bytes[34], &entries, 2);
    t.bytes[7] = checksum(t.bytes);
    return t.bytes;
}

std::vector<uint8_t> build_floating_pointer(uint32_t table_gpa) {
    TableWriter t;
    t.text("_MP_", 4);
    t.u32(table_gpa);
    t.u8(1);  // length in 16-byte units
    t.u8(kSpecRev);
    t.u8(0);     // checksum
    t.zeros(5);  // feature bytes: 0 = the config table is present, no default configuration, no IMCR
    t.bytes[10] = checksum(t.bytes);
    return t.bytes;
}

}  // namespace

Result<void> write_mp_table(const GuestMemory& mem, uint32_t num_cpus) {
    if (num_cpus == 0) return make_error("MP table: need at least one CPU");
    if (num_cpus > kMpMaxCpus) {
        return make_error(fmt::format("MP table: {} CPUs is too many; 8-bit APIC IDs allow at most {}",
                                      num_cpus, kMpMaxCpus));
    }
    auto pointer = build_floating_pointer(static_cast<uint32_t>(layout::kMpConfigTable));
    auto table = build_config_table(num_cpus);
    // Guards the size arithmetic in the header (and its static_asserts) against the bytes actually built.
    if (table.size() != kMpConfigFixedSize + num_cpus * kMpProcessorEntrySize)
        return make_error("MP table: config table size does not match its layout");
    TRY(mem.write(layout::kEbdaStart, pointer));
    TRY(mem.write(layout::kMpConfigTable, table));
    return {};
}

}  // namespace sandlot::vmm::x86
