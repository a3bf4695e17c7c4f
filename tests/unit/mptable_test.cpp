// MP table (vmm/arch/x86/mptable): written into guest memory, then found and parsed back the way Linux's
// mpparse does it, using the MP specification's byte offsets rather than the writer's code.
#include "vmm/arch/x86/mptable.h"

#include <gtest/gtest.h>

#include <cctype>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "vmm/boot/memory_map.h"
#include "vmm/memory/guest_memory.h"
#include "vmm/memory/layout.h"

namespace sandlot::vmm::x86 {
namespace {

using Bytes = std::vector<uint8_t>;

template <class T>
T get(const Bytes& b, size_t offset) {
    T value;
    std::memcpy(&value, b.data() + offset, sizeof(T));
    return value;
}

uint8_t byte_sum(const Bytes& b, size_t offset, size_t len) {
    uint8_t sum = 0;
    for (size_t i = 0; i < len; i++)
        sum = static_cast<uint8_t>(sum + b[offset + i]);
    return sum;
}

struct Processor {
    uint8_t apic_id, apic_version, flags;
};
struct Interrupt {
    uint8_t entry_type, int_type;
    uint16_t flags;
    uint8_t src_bus, src_irq, dest_id, dest_pin;
};

struct ParsedMpTable {
    uint64_t table_gpa = 0;
    uint16_t length = 0;
    uint16_t declared_entries = 0;
    uint32_t lapic_address = 0;
    std::vector<Processor> cpus;
    std::vector<std::string> buses;
    uint8_t ioapic_id = 0, ioapic_version = 0, ioapic_flags = 0;
    uint32_t ioapic_address = 0;
    int ioapics = 0;
    std::vector<Interrupt> io_interrupts, local_interrupts;
};

// Scans base memory's last KiB in 16-byte steps for "_MP_" (as Linux does), follows its physical pointer to
// the config table wherever it is, checks both checksums and walks the entries; any inconsistency fails the
// test.
std::optional<ParsedMpTable> parse_mp_table(const GuestMemory& mem) {
    Bytes ebda(layout::kBaseMemEnd - layout::kEbdaStart);
    if (!mem.read(layout::kEbdaStart, ebda)) return std::nullopt;
    std::optional<size_t> fp;
    for (size_t off = 0; off + 16 <= ebda.size(); off += 16) {
        if (std::memcmp(ebda.data() + off, "_MP_", 4) == 0 && byte_sum(ebda, off, 16) == 0) {
            fp = off;
            break;
        }
    }
    EXPECT_TRUE(fp.has_value()) << "no floating pointer with a good checksum";
    if (!fp) return std::nullopt;
    EXPECT_EQ(ebda[*fp + 8], 1) << "floating pointer length (16-byte units)";
    EXPECT_EQ(ebda[*fp + 9], 4) << "spec revision 1.4";
    for (int i = 11; i < 16; i++)
        EXPECT_EQ(ebda[*fp + i], 0) << "feature byte " << i - 10;

    ParsedMpTable t;
    t.table_gpa = get<uint32_t>(ebda, *fp + 4);
    Bytes header(44);
    auto header_read = mem.read(t.table_gpa, header);
    EXPECT_TRUE(header_read.has_value())
        << "config table pointer " << t.table_gpa << " is outside guest memory";
    if (!header_read) return std::nullopt;
    EXPECT_EQ(std::memcmp(header.data(), "PCMP", 4), 0);
    uint16_t length = get<uint16_t>(header, 4);
    EXPECT_GE(length, 44u);
    if (length < 44) return std::nullopt;
    Bytes table(length);
    auto table_read = mem.read(t.table_gpa, table);
    EXPECT_TRUE(table_read.has_value()) << "config table runs past guest memory";
    if (!table_read) return std::nullopt;
    EXPECT_EQ(table[6], 4) << "spec revision";
    EXPECT_EQ(byte_sum(table, 0, length), 0) << "config table checksum";
    for (size_t i = 8; i < 28; i++)
        EXPECT_TRUE(isprint(table[i])) << "OEM/product id byte " << i;
    t.length = length;
    t.declared_entries = get<uint16_t>(table, 34);
    t.lapic_address = get<uint32_t>(table, 36);
    EXPECT_EQ(get<uint16_t>(table, 40), 0) << "no extended table";

    size_t pos = 44, end = length;
    uint16_t walked = 0;
    while (pos < end) {
        uint8_t type = table[pos];
        size_t size = type == 0 ? 20 : 8;
        EXPECT_LE(type, 4) << "unknown entry type at " << pos;
        if (type > 4 || pos + size > end) return std::nullopt;
        switch (type) {
            case 0:
                t.cpus.push_back({table[pos + 1], table[pos + 2], table[pos + 3]});
                break;
            case 1:
                t.buses.emplace_back(reinterpret_cast<const char*>(table.data() + pos + 2), 6);
                EXPECT_EQ(table[pos + 1], t.buses.size() - 1) << "bus ids count from 0";
                break;
            case 2:
                t.ioapics++;
                t.ioapic_id = table[pos + 1];
                t.ioapic_version = table[pos + 2];
                t.ioapic_flags = table[pos + 3];
                t.ioapic_address = get<uint32_t>(table, pos + 4);
                break;
            default: {
                Interrupt irq{type,           table[pos + 1], get<uint16_t>(table, pos + 2),
                              table[pos + 4], table[pos + 5], table[pos + 6],
                              table[pos + 7]};
                (type == 3 ? t.io_interrupts : t.local_interrupts).push_back(irq);
            }
        }
        pos += size;
        walked++;
    }
    EXPECT_EQ(pos, end) << "entries end exactly at the table length";
    EXPECT_EQ(walked, t.declared_entries);
    return t;
}

// True if [gpa, gpa + size) lies inside one reserved entry of the guest's memory map, so the kernel leaves
// it alone.
bool in_reserved_memory(const GuestMemory& mem, uint64_t gpa, uint64_t size) {
    auto map = boot::guest_memory_map(mem);
    if (!map) return false;
    for (const auto& entry : *map) {
        if (entry.type == boot::kMemoryReserved && gpa >= entry.addr && gpa + size <= entry.addr + entry.size)
            return true;
    }
    return false;
}

class MpTableTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(MpTableTest, DescribesCpusIoapicAndInterrupts) {
    const uint32_t cpus = GetParam();
    auto mem = GuestMemory::create(64 * layout::kMiB);
    ASSERT_TRUE(mem.has_value());
    auto written = write_mp_table(*mem, cpus);
    ASSERT_TRUE(written.has_value()) << written.error().to_string();

    auto t = parse_mp_table(*mem);
    ASSERT_TRUE(t.has_value());
    EXPECT_EQ(t->table_gpa, layout::kMpConfigTable);
    EXPECT_EQ(t->length, kMpConfigFixedSize + cpus * kMpProcessorEntrySize);
    EXPECT_TRUE(in_reserved_memory(*mem, layout::kEbdaStart, kMpFloatingPointerSize));
    EXPECT_TRUE(in_reserved_memory(*mem, t->table_gpa, t->length)) << "config table is in reserved memory";
    EXPECT_EQ(t->lapic_address, 0xfee00000u);
    EXPECT_EQ(t->declared_entries, cpus + 1 + 1 + 24 + 2);

    ASSERT_EQ(t->cpus.size(), cpus);
    for (uint32_t i = 0; i < cpus; i++) {
        EXPECT_EQ(t->cpus[i].apic_id, i);
        EXPECT_EQ(t->cpus[i].apic_version, 0x14);
        EXPECT_EQ(t->cpus[i].flags & 1, 1) << "cpu " << i << " enabled";
        EXPECT_EQ((t->cpus[i].flags & 2) != 0, i == 0) << "only cpu 0 is the bootstrap processor";
    }

    ASSERT_EQ(t->buses.size(), 1u);
    EXPECT_EQ(t->buses[0], "ISA   ");

    ASSERT_EQ(t->ioapics, 1);
    EXPECT_EQ(t->ioapic_id, cpus);
    EXPECT_EQ(t->ioapic_version, 0x11);
    EXPECT_EQ(t->ioapic_flags, 1);
    EXPECT_EQ(t->ioapic_address, 0xfec00000u);

    ASSERT_EQ(t->io_interrupts.size(), 24u);
    for (uint32_t pin = 0; pin < 24; pin++) {
        const auto& irq = t->io_interrupts[pin];
        EXPECT_EQ(irq.int_type, 0) << "vectored INT";
        EXPECT_EQ(irq.flags, 0) << "conforming polarity and trigger";
        EXPECT_EQ(irq.src_bus, 0);
        EXPECT_EQ(irq.src_irq, pin);
        EXPECT_EQ(irq.dest_id, cpus) << "routed to the IOAPIC";
        EXPECT_EQ(irq.dest_pin, pin);
    }

    ASSERT_EQ(t->local_interrupts.size(), 2u);
    EXPECT_EQ(t->local_interrupts[0].int_type, 3) << "ExtINT";
    EXPECT_EQ(t->local_interrupts[0].dest_id, 0xff);
    EXPECT_EQ(t->local_interrupts[0].dest_pin, 0) << "LINT0";
    EXPECT_EQ(t->local_interrupts[1].int_type, 1) << "NMI";
    EXPECT_EQ(t->local_interrupts[1].dest_id, 0xff);
    EXPECT_EQ(t->local_interrupts[1].dest_pin, 1) << "LINT1";
}

INSTANTIATE_TEST_SUITE_P(CpuCounts, MpTableTest, ::testing::Values(1u, 2u, 4u, 64u, kMpMaxCpus));

TEST(MpTable, MaxCpusLeavesAnApicIdForTheIoapicAndFitsBelow1MiB) {
    // CPUs take APIC IDs 0..n-1, the IOAPIC takes n, and 0xff is the broadcast ID.
    EXPECT_EQ(kMpMaxCpus, 254u);
    EXPECT_LE(layout::kMpConfigTable + kMpConfigFixedSize + kMpMaxCpus * kMpProcessorEntrySize,
              layout::kHighMemStart);
    // The guest kernel's CONFIG_NR_CPUS (64), which the VMM's --cpus allows, must be describable.
    EXPECT_GE(kMpMaxCpus, 64u);
}

TEST(MpTable, RejectsZeroAndTooManyCpus) {
    auto mem = GuestMemory::create(64 * layout::kMiB);
    ASSERT_TRUE(mem.has_value());
    auto none = write_mp_table(*mem, 0);
    ASSERT_FALSE(none.has_value());
    EXPECT_NE(none.error().message.find("at least one CPU"), std::string::npos);
    auto too_many = write_mp_table(*mem, kMpMaxCpus + 1);
    ASSERT_FALSE(too_many.has_value());
    EXPECT_NE(too_many.error().message.find("255 CPUs is too many"), std::string::npos)
        << too_many.error().message;
    EXPECT_NE(too_many.error().message.find("at most 254"), std::string::npos) << too_many.error().message;
    // Nothing was written by the failed calls: neither the floating pointer nor the config table.
    Bytes ebda(layout::kBaseMemEnd - layout::kEbdaStart);
    ASSERT_TRUE(mem->read(layout::kEbdaStart, ebda).has_value());
    EXPECT_EQ(ebda, Bytes(ebda.size(), 0));
    Bytes rom(layout::kHighMemStart - layout::kMpConfigTable);
    ASSERT_TRUE(mem->read(layout::kMpConfigTable, rom).has_value());
    EXPECT_EQ(rom, Bytes(rom.size(), 0));
}

}  // namespace
}  // namespace sandlot::vmm::x86
