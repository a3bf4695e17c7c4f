// Kernel loading (vmm/boot): synthetic ELF/PVH and bzImage images built here, loaded into real GuestMemory,
// and read back field by field. Corrupt images must fail with a message naming the problem, never crash.
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "vmm/boot/bzimage.h"
#include "vmm/boot/elf_pvh.h"
#include "vmm/boot/initrd.h"
#include "vmm/boot/loader.h"
#include "vmm/boot/memory_map.h"
#include "vmm/boot/pvh_start_info.h"
#include "vmm/boot/x86_tables.h"
#include "vmm/memory/guest_memory.h"
#include "vmm/memory/layout.h"

namespace sandlot::vmm::boot {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

constexpr uint64_t kMiB = layout::kMiB;

template <class T>
void put(Bytes& b, uint64_t offset, T value) {
    if (b.size() < offset + sizeof(T)) b.resize(offset + sizeof(T));
    std::memcpy(b.data() + offset, &value, sizeof(T));
}

template <class T>
T get(const Bytes& b, uint64_t offset) {
    T value;
    std::memcpy(&value, b.data() + offset, sizeof(T));
    return value;
}

Bytes pattern(size_t n, uint8_t seed) {
    Bytes b(n);
    for (size_t i = 0; i < n; i++)
        b[i] = static_cast<uint8_t>(seed + i * 7 + (i >> 8));
    return b;
}

// --- Synthetic ELF vmlinux ------------------------------------------------------------------------------
// Layout: ELF header (64) | 2 program headers at 64 (PT_LOAD, PT_NOTE) | notes at 176 (a GNU note, then
// the Xen PVH note) | segment data at 0x1000.
constexpr uint64_t kElfLoadPhdr = 64;
constexpr uint64_t kElfNotePhdr = 64 + 56;
constexpr uint64_t kElfNotes = 176;
constexpr uint64_t kElfXenNote = kElfNotes + 20;  // after the 20-byte GNU note
constexpr uint64_t kElfData = 0x1000;

struct ElfSpec {
    uint64_t paddr = 0x100'0000;
    uint64_t file_size = 0x2000;
    uint64_t mem_size = 0x5000;  // 0x3000 of .bss
    uint64_t entry = 0x100'0040;
    uint32_t entry_desc_size = 4;
};

Bytes make_elf(const ElfSpec& spec = {}) {
    Bytes f(kElfData);
    std::memcpy(f.data(),
                "\x7f"
                "ELF",
                4);
    f[4] = 2;                  // ELFCLASS64
    f[5] = 1;                  // little-endian
    f[6] = 1;                  // EV_CURRENT
    put<uint16_t>(f, 16, 2);   // ET_EXEC
    put<uint16_t>(f, 18, 62);  // EM_X86_64
    put<uint32_t>(f, 20, 1);
    put<uint64_t>(f, 24, 0xffffffff81000000);  // e_entry (virtual, unused by PVH)
    put<uint64_t>(f, 32, kElfLoadPhdr);        // e_phoff
    put<uint16_t>(f, 52, 64);                  // e_ehsize
    put<uint16_t>(f, 54, 56);                  // e_phentsize
    put<uint16_t>(f, 56, 2);                   // e_phnum

    put<uint32_t>(f, kElfLoadPhdr + 0, 1);  // PT_LOAD
    put<uint32_t>(f, kElfLoadPhdr + 4, 5);  // R+X
    put<uint64_t>(f, kElfLoadPhdr + 8, kElfData);
    put<uint64_t>(f, kElfLoadPhdr + 16, 0xffffffff81000000);
    put<uint64_t>(f, kElfLoadPhdr + 24, spec.paddr);
    put<uint64_t>(f, kElfLoadPhdr + 32, spec.file_size);
    put<uint64_t>(f, kElfLoadPhdr + 40, spec.mem_size);
    put<uint64_t>(f, kElfLoadPhdr + 48, 0x200000);

    uint64_t notes_size = 20 + 12 + 4 + spec.entry_desc_size;
    put<uint32_t>(f, kElfNotePhdr + 0, 4);  // PT_NOTE
    put<uint64_t>(f, kElfNotePhdr + 8, kElfNotes);
    put<uint64_t>(f, kElfNotePhdr + 32, notes_size);
    put<uint64_t>(f, kElfNotePhdr + 40, notes_size);
    put<uint64_t>(f, kElfNotePhdr + 48, 4);

    // A GNU build-id-like note first, so the walker has to step over it.
    put<uint32_t>(f, kElfNotes + 0, 4);
    put<uint32_t>(f, kElfNotes + 4, 4);
    put<uint32_t>(f, kElfNotes + 8, 3);
    std::memcpy(f.data() + kElfNotes + 12, "GNU", 4);
    put<uint32_t>(f, kElfNotes + 16, 0xdeadbeef);

    put<uint32_t>(f, kElfXenNote + 0, 4);
    put<uint32_t>(f, kElfXenNote + 4, spec.entry_desc_size);
    put<uint32_t>(f, kElfXenNote + 8, kXenElfNotePhys32Entry);
    std::memcpy(f.data() + kElfXenNote + 12, "Xen", 4);
    if (spec.entry_desc_size == 8) {
        put<uint64_t>(f, kElfXenNote + 16, spec.entry);
    } else {
        put<uint32_t>(f, kElfXenNote + 16, static_cast<uint32_t>(spec.entry));
    }

    f.resize(kElfData);
    Bytes data = pattern(spec.file_size, 0x11);
    f.insert(f.end(), data.begin(), data.end());
    return f;
}

// --- Synthetic bzImage ----------------------------------------------------------------------------------
constexpr uint8_t kBzSetupSects = 3;
constexpr uint64_t kBzSetupSize = (kBzSetupSects + 1) * 512;

struct BzSpec {
    uint16_t protocol = 0x020f;
    uint16_t xloadflags = 0x0003;  // XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
    uint32_t initrd_addr_max = 0x7fffffff;
    uint32_t cmdline_size = 2047;
    uint64_t pref_address = 0x100'0000;
    uint32_t init_size = 0x80'0000;
    uint64_t kernel_size = 0x3000;
};

Bytes make_bzimage(const BzSpec& spec = {}) {
    Bytes f(kBzSetupSize, 0);
    f[0x1f1] = kBzSetupSects;
    put<uint16_t>(f, 0x1fa, 0xffff);  // vid_mode "normal": checks the header is copied as is
    put<uint16_t>(f, 0x1fe, 0xaa55);
    f[0x200] = 0xeb;  // jmp short
    f[0x201] = 0x66;  // header ends at 0x268
    std::memcpy(f.data() + 0x202, "HdrS", 4);
    put<uint16_t>(f, 0x206, spec.protocol);
    f[0x211] = 0x01;  // LOADED_HIGH
    put<uint32_t>(f, 0x214, 0x100000);
    put<uint32_t>(f, 0x22c, spec.initrd_addr_max);
    put<uint32_t>(f, 0x230, 0x200000);
    f[0x234] = 1;
    f[0x235] = 21;
    put<uint16_t>(f, 0x236, spec.xloadflags);
    put<uint32_t>(f, 0x238, spec.cmdline_size);
    put<uint64_t>(f, 0x258, spec.pref_address);
    put<uint32_t>(f, 0x260, spec.init_size);
    Bytes kernel = pattern(spec.kernel_size, 0x5a);
    f.insert(f.end(), kernel.begin(), kernel.end());
    return f;
}

// --- Fixture --------------------------------------------------------------------------------------------

class BootLoaderTest : public ::testing::Test {
  protected:
    void SetUp() override {
        char tmpl[] = "/tmp/sandlot-boot-test-XXXXXX";
        ASSERT_NE(mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
    }
    void TearDown() override { fs::remove_all(dir_); }

    std::string write_file(const std::string& name, const Bytes& bytes) {
        std::string path = (dir_ / name).string();
        std::ofstream(path, std::ios::binary)
            .write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
        return path;
    }

    static GuestMemory make_memory(uint64_t bytes = 256 * kMiB) {
        auto mem = GuestMemory::create(bytes);
        EXPECT_TRUE(mem.has_value());
        return std::move(*mem);
    }

    static Bytes read_guest(const GuestMemory& mem, uint64_t gpa, uint64_t len) {
        Bytes out(len);
        EXPECT_TRUE(mem.read(gpa, out).has_value()) << "read " << std::hex << gpa;
        return out;
    }

    template <class T>
    static T guest(const GuestMemory& mem, uint64_t gpa) {
        auto v = mem.read_obj<T>(gpa);
        EXPECT_TRUE(v.has_value());
        return v.value_or(T{});
    }

    static std::string read_cmdline(const GuestMemory& mem) {
        auto bytes = read_guest(mem, layout::kCmdline, layout::kCmdlineMax);
        return std::string(reinterpret_cast<const char*>(bytes.data()),
                           strnlen(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
    }

    // Loads and expects an error whose message contains `needle`.
    void expect_load_error(const BootConfig& config, const std::string& needle,
                           uint64_t mem_bytes = 256 * kMiB) {
        auto mem = make_memory(mem_bytes);
        auto setup = load_kernel(mem, config);
        ASSERT_FALSE(setup.has_value()) << "expected an error containing \"" << needle << "\"";
        EXPECT_NE(setup.error().to_string().find(needle), std::string::npos)
            << "error was: " << setup.error().to_string();
    }

    void expect_kernel_error(const Bytes& image, const std::string& needle) {
        std::string path = write_file("kernel", image);
        expect_load_error({.kernel_path = path, .initrd_paths = {}, .cmdline = "console=ttyS0"}, needle);
    }

    fs::path dir_;
};

void expect_memory_map(std::span<const MemoryMapEntry> map, uint64_t low_end) {
    ASSERT_EQ(map.size(), 3u);
    EXPECT_EQ(map[0].addr, 0u);
    EXPECT_EQ(map[0].size, 0x9fc00u);
    EXPECT_EQ(map[0].type, kMemoryRam);
    EXPECT_EQ(map[1].addr, 0x9fc00u);
    EXPECT_EQ(map[1].size, 0x100000u - 0x9fc00u);
    EXPECT_EQ(map[1].type, kMemoryReserved);
    EXPECT_EQ(map[2].addr, 0x100000u);
    EXPECT_EQ(map[2].size, low_end - 0x100000u);
    EXPECT_EQ(map[2].type, kMemoryRam);
}

void expect_boot_gdt(const GuestMemory& mem) {
    auto gdt = mem.read_obj<std::array<uint64_t, 5>>(layout::kGdt);
    ASSERT_TRUE(gdt.has_value());
    EXPECT_EQ((*gdt)[0], 0u);
    EXPECT_EQ((*gdt)[layout::kGdtCode32Selector / 8], 0x00cf9b000000ffffu);
    EXPECT_EQ((*gdt)[layout::kGdtCode64Selector / 8], 0x00af9b000000ffffu);
    EXPECT_EQ((*gdt)[layout::kGdtDataSelector / 8], 0x00cf93000000ffffu);
    uint64_t tss = (*gdt)[layout::kGdtTssSelector / 8];
    EXPECT_EQ((tss >> 40) & 0xff, 0x8bu) << "present, busy 64-bit TSS";
    EXPECT_NE(tss & 0xffff, 0u) << "TSS limit";
}

// --- PVH ------------------------------------------------------------------------------------------------

TEST_F(BootLoaderTest, LoadsPvhElfWithInitrdAndCmdline) {
    ElfSpec spec;
    Bytes elf = make_elf(spec);
    Bytes initrd = pattern(100'000, 0x33);
    BootConfig config{.kernel_path = write_file("vmlinux", elf),
                      .initrd_paths = {write_file("initrd", initrd)},
                      .cmdline = "console=ttyS0 quiet virtio_mmio.device=4K@0xd0000000:5"};
    auto mem = make_memory();
    // Stale bytes where .bss goes: the loader must zero them.
    ASSERT_TRUE(
        mem.write(spec.paddr + spec.file_size, Bytes(spec.mem_size - spec.file_size, 0xaa)).has_value());

    auto setup = load_kernel(mem, config);
    ASSERT_TRUE(setup.has_value()) << setup.error().to_string();
    EXPECT_EQ(setup->mode, EntryMode::Pvh32);
    EXPECT_EQ(setup->entry, spec.entry);
    EXPECT_EQ(setup->boot_info, layout::kPvhStartInfo);
    EXPECT_EQ(setup->kernel_end, spec.paddr + spec.mem_size);

    // Segment data and zeroed .bss.
    EXPECT_EQ(read_guest(mem, spec.paddr, spec.file_size), Bytes(elf.begin() + kElfData, elf.end()));
    EXPECT_EQ(read_guest(mem, spec.paddr + spec.file_size, spec.mem_size - spec.file_size),
              Bytes(spec.mem_size - spec.file_size, 0));

    auto info = guest<HvmStartInfo>(mem, layout::kPvhStartInfo);
    EXPECT_EQ(info.magic, 0x336ec578u);
    EXPECT_EQ(info.version, 1u);
    EXPECT_EQ(info.flags, 0u);
    EXPECT_EQ(info.nr_modules, 1u);
    EXPECT_EQ(info.modlist_paddr, layout::kPvhModList);
    EXPECT_EQ(info.cmdline_paddr, layout::kCmdline);
    EXPECT_EQ(info.rsdp_paddr, 0u);
    EXPECT_EQ(info.memmap_paddr, layout::kPvhMemmap);
    ASSERT_EQ(info.memmap_entries, 3u);

    std::vector<MemoryMapEntry> map;
    for (uint32_t i = 0; i < info.memmap_entries; i++) {
        auto e = guest<HvmMemmapEntry>(mem, layout::kPvhMemmap + i * 24);
        EXPECT_EQ(e.reserved, 0u);
        map.push_back({e.addr, e.size, e.type});
    }
    expect_memory_map(map, 256 * kMiB);

    auto module = guest<HvmModlistEntry>(mem, layout::kPvhModList);
    EXPECT_EQ(module.paddr, setup->initrd_gpa);
    EXPECT_EQ(module.size, initrd.size());
    EXPECT_EQ(module.cmdline_paddr, 0u);
    EXPECT_EQ(module.reserved, 0u);

    // Initrd: page-aligned, as high as it fits in RAM, above the kernel, intact.
    EXPECT_EQ(setup->initrd_size, initrd.size());
    EXPECT_EQ(setup->initrd_gpa % 4096, 0u);
    EXPECT_LE(setup->initrd_gpa + initrd.size(), 256 * kMiB);
    EXPECT_GT(setup->initrd_gpa + initrd.size() + 4096, 256 * kMiB);
    EXPECT_GE(setup->initrd_gpa, setup->kernel_end);
    EXPECT_EQ(read_guest(mem, setup->initrd_gpa, initrd.size()), initrd);

    EXPECT_EQ(read_cmdline(mem), config.cmdline);
    expect_boot_gdt(mem);
}

TEST_F(BootLoaderTest, PvhWithoutInitrdAndEightByteEntryNote) {
    ElfSpec spec{.entry = 0x100'1000, .entry_desc_size = 8};
    BootConfig config{
        .kernel_path = write_file("vmlinux", make_elf(spec)), .initrd_paths = {}, .cmdline = ""};
    auto mem = make_memory();
    auto setup = load_kernel(mem, config);
    ASSERT_TRUE(setup.has_value()) << setup.error().to_string();
    EXPECT_EQ(setup->entry, 0x100'1000u);
    EXPECT_EQ(setup->initrd_gpa, 0u);
    EXPECT_EQ(setup->initrd_size, 0u);
    auto info = guest<HvmStartInfo>(mem, layout::kPvhStartInfo);
    EXPECT_EQ(info.nr_modules, 0u);
    EXPECT_EQ(info.modlist_paddr, 0u);
    EXPECT_EQ(read_cmdline(mem), "");
}

TEST_F(BootLoaderTest, MemoryAboveTheHoleAppearsInTheMap) {
    BootConfig config{.kernel_path = write_file("vmlinux", make_elf()),
                      .initrd_paths = {write_file("initrd", pattern(5000, 1))},
                      .cmdline = "x"};
    auto mem = make_memory(4 * layout::kGiB);  // 3 GiB low + 1 GiB from 4 GiB (reserved lazily)
    auto setup = load_kernel(mem, config);
    ASSERT_TRUE(setup.has_value()) << setup.error().to_string();
    auto info = guest<HvmStartInfo>(mem, layout::kPvhStartInfo);
    ASSERT_EQ(info.memmap_entries, 4u);
    auto high = guest<HvmMemmapEntry>(mem, layout::kPvhMemmap + 3 * 24);
    EXPECT_EQ(high.addr, 4 * layout::kGiB);
    EXPECT_EQ(high.size, 1 * layout::kGiB);
    EXPECT_EQ(high.type, kMemoryRam);
    // The initrd stays below the hole, where a 32-bit entry can reach it.
    EXPECT_LE(setup->initrd_gpa + setup->initrd_size, layout::kMmioHoleStart);
    EXPECT_GT(setup->initrd_gpa, layout::kMmioHoleStart - 2 * 4096 - 5000);
}

// --- bzImage --------------------------------------------------------------------------------------------

TEST_F(BootLoaderTest, LoadsBzImageWithBootParamsAndPageTables) {
    BzSpec spec;
    Bytes image = make_bzimage(spec);
    Bytes initrd = pattern(3 * kMiB + 123, 0x44);
    BootConfig config{.kernel_path = write_file("bzImage", image),
                      .initrd_paths = {write_file("initrd", initrd)},
                      .cmdline = "console=ttyS0 panic=-1"};
    auto mem = make_memory();
    auto setup = load_kernel(mem, config);
    ASSERT_TRUE(setup.has_value()) << setup.error().to_string();
    EXPECT_EQ(setup->mode, EntryMode::Linux64);
    EXPECT_EQ(setup->entry, spec.pref_address + 0x200);
    EXPECT_EQ(setup->boot_info, layout::kZeroPage);
    EXPECT_EQ(setup->kernel_end, spec.pref_address + spec.init_size);
    EXPECT_EQ(read_guest(mem, spec.pref_address, spec.kernel_size),
              Bytes(image.begin() + kBzSetupSize, image.end()));

    Bytes zp = read_guest(mem, layout::kZeroPage, 4096);
    // The setup header is copied at its own offsets, up to its end (0x268).
    EXPECT_EQ(Bytes(zp.begin() + 0x1f1, zp.begin() + 0x210),
              Bytes(image.begin() + 0x1f1, image.begin() + 0x210));
    EXPECT_EQ(get<uint16_t>(zp, 0x1fa), 0xffffu);
    EXPECT_EQ(std::memcmp(zp.data() + 0x202, "HdrS", 4), 0);
    EXPECT_EQ(get<uint16_t>(zp, 0x206), spec.protocol);
    EXPECT_EQ(get<uint64_t>(zp, 0x258), spec.pref_address);
    EXPECT_EQ(get<uint32_t>(zp, 0x260), spec.init_size);
    EXPECT_EQ(zp[0x1ef], 0u) << "sentinel must stay 0 or the kernel discards fields";
    // Loader-written fields.
    EXPECT_EQ(zp[0x210], 0xffu);
    EXPECT_EQ(zp[0x211], 0x81u);  // LOADED_HIGH | CAN_USE_HEAP
    EXPECT_EQ(get<uint16_t>(zp, 0x224), 0xfe00u);
    EXPECT_EQ(get<uint32_t>(zp, 0x228), layout::kCmdline);
    EXPECT_EQ(get<uint32_t>(zp, 0x0c8), 0u);
    EXPECT_EQ(get<uint32_t>(zp, 0x218), setup->initrd_gpa);
    EXPECT_EQ(get<uint32_t>(zp, 0x21c), initrd.size());
    EXPECT_EQ(get<uint32_t>(zp, 0x0c0), 0u);
    EXPECT_EQ(get<uint32_t>(zp, 0x0c4), 0u);
    ASSERT_EQ(zp[0x1e8], 3u);
    std::vector<MemoryMapEntry> map;
    for (int i = 0; i < 3; i++) {
        uint64_t at = 0x2d0 + i * 20;
        map.push_back({get<uint64_t>(zp, at), get<uint64_t>(zp, at + 8), get<uint32_t>(zp, at + 16)});
    }
    expect_memory_map(map, 256 * kMiB);
    EXPECT_EQ(get<uint64_t>(zp, 0x2d0 + 3 * 20), 0u) << "nothing past the last e820 entry";

    EXPECT_EQ(read_guest(mem, setup->initrd_gpa, initrd.size()), initrd);
    EXPECT_GE(setup->initrd_gpa, setup->kernel_end);
    EXPECT_EQ(setup->initrd_gpa % 4096, 0u);
    EXPECT_EQ(read_cmdline(mem), config.cmdline);

    // Identity map of 4 GiB with 2 MiB pages.
    EXPECT_EQ(guest<uint64_t>(mem, layout::kPml4), layout::kPdpt | 0x3);
    EXPECT_EQ(guest<uint64_t>(mem, layout::kPml4 + 8), 0u);
    for (uint64_t i = 0; i < 4; i++) {
        EXPECT_EQ(guest<uint64_t>(mem, layout::kPdpt + i * 8), (layout::kPd + i * 4096) | 0x3);
    }
    EXPECT_EQ(guest<uint64_t>(mem, layout::kPdpt + 4 * 8), 0u);
    for (uint64_t page : {0ull, 1ull, 8ull, 511ull, 512ull, 1536ull, 2047ull}) {
        EXPECT_EQ(guest<uint64_t>(mem, layout::kPd + page * 8), (page << 21) | 0x83) << "2 MiB page " << page;
    }
    expect_boot_gdt(mem);
}

TEST_F(BootLoaderTest, BzImageInitrdStaysBelowInitrdAddrMax) {
    BzSpec spec{.initrd_addr_max = 0x7ff'ffff};  // 128 MiB - 1 in a 256 MiB guest
    BootConfig config{.kernel_path = write_file("bzImage", make_bzimage(spec)),
                      .initrd_paths = {write_file("initrd", pattern(10'000, 9))},
                      .cmdline = ""};
    auto mem = make_memory();
    auto setup = load_kernel(mem, config);
    ASSERT_TRUE(setup.has_value()) << setup.error().to_string();
    EXPECT_LE(setup->initrd_gpa + setup->initrd_size, 0x800'0000u);
    EXPECT_GT(setup->initrd_gpa + setup->initrd_size + 4096, 0x800'0000u);
}

// --- Pure helpers ---------------------------------------------------------------------------------------

TEST(InitrdPlacement, HighestPageAlignedFit) {
    EXPECT_EQ(place_initrd(4096, 0x100000, 0x200000), 0x1ff000u);
    EXPECT_EQ(place_initrd(4097, 0x100000, 0x200000), 0x1fe000u);
    EXPECT_EQ(place_initrd(100, 0x100000, 0x200001), 0x1ff000u);
    EXPECT_EQ(place_initrd(0x100000, 0x100000, 0x200000), 0x100000u);
    EXPECT_EQ(place_initrd(0x100001, 0x100000, 0x200000), std::nullopt);
    EXPECT_EQ(place_initrd(10, 0x100001, 0x101000), std::nullopt);  // floor rounds up to the ceiling
    EXPECT_EQ(place_initrd(10, 0x200000, 0x100000), std::nullopt);
    EXPECT_EQ(place_initrd(UINT64_MAX, 0, 0x100000), std::nullopt);
    EXPECT_EQ(place_initrd(10, UINT64_MAX - 5, UINT64_MAX), std::nullopt);
}

TEST(MemoryMap, TooSmallGuestIsAnError) {
    auto mem = GuestMemory::create(1 * kMiB);
    ASSERT_TRUE(mem.has_value());
    auto map = guest_memory_map(*mem);
    ASSERT_FALSE(map.has_value());
    EXPECT_NE(map.error().message.find("1 MiB"), std::string::npos) << map.error().message;
}

// Every truncation of a valid ELF fails cleanly (the file ends exactly at the segment data's end).
TEST(ElfPvhParse, EveryTruncationIsAnError) {
    Bytes elf = make_elf();
    ASSERT_TRUE(parse_pvh_elf(elf).has_value());
    for (size_t len = 0; len < elf.size(); len++) {
        auto parsed = parse_pvh_elf(std::span(elf).first(len));
        ASSERT_FALSE(parsed.has_value()) << "truncated to " << len;
    }
}

TEST(BzImageParse, TruncationsIntoTheSetupAreErrors) {
    Bytes image = make_bzimage();
    ASSERT_TRUE(parse_bzimage(image).has_value());
    for (size_t len = 0; len <= kBzSetupSize; len++) {
        ASSERT_FALSE(parse_bzimage(std::span(image).first(len)).has_value()) << "truncated to " << len;
    }
    auto parsed = parse_bzimage(std::span(image).first(kBzSetupSize + 1));
    ASSERT_TRUE(parsed.has_value());
    EXPECT_EQ(parsed->kernel.size(), 1u);
}

// Random corruption of the header area: the parsers and the loader must return (value or error) without
// reading out of bounds. Run under ASan/UBSan to make that a strong check.
TEST(BootParsers, RandomCorruptionNeverCrashes) {
    auto mem = GuestMemory::create(64 * kMiB);
    ASSERT_TRUE(mem.has_value());
    std::mt19937_64 rng(12345);
    const Bytes elf = make_elf(), bz = make_bzimage();
    int elf_ok = 0, bz_ok = 0;
    for (int iter = 0; iter < 3000; iter++) {
        Bytes e = elf, b = bz;
        int flips = 1 + static_cast<int>(rng() % 4);
        for (int i = 0; i < flips; i++) {
            e[rng() % 0x100] = static_cast<uint8_t>(rng());         // headers and notes
            b[0x1f0 + rng() % 0x80] = static_cast<uint8_t>(rng());  // the setup header
        }
        if (auto image = parse_pvh_elf(e)) {
            elf_ok++;
            // Huge .bss sizes only cost time zero-filling; the bounds logic is the same for small ones.
            bool small = std::ranges::all_of(image->segments, [](auto& s) { return s.mem_size <= kMiB; });
            if (small) (void)load_pvh_image(*mem, e, *image);
        }
        if (auto image = parse_bzimage(b)) {
            bz_ok++;
            (void)build_boot_params(*image, layout::kCmdline, std::nullopt, {});
        }
    }
    // Some mutations hit bytes that do not matter: the loop did exercise the success paths too.
    EXPECT_GT(elf_ok, 0);
    EXPECT_GT(bz_ok, 0);
}

// --- Corrupt and unusable inputs through load_kernel ----------------------------------------------------

TEST_F(BootLoaderTest, MissingKernelFile) {
    expect_load_error({.kernel_path = (dir_ / "nope").string(), .initrd_paths = {}, .cmdline = ""},
                      "kernel " + (dir_ / "nope").string() + ": open: No such file");
}

TEST_F(BootLoaderTest, KernelIsADirectory) {
    expect_load_error({.kernel_path = dir_.string(), .initrd_paths = {}, .cmdline = ""},
                      "not a regular file");
}

TEST_F(BootLoaderTest, EmptyKernel) {
    expect_kernel_error({}, "empty");
}

TEST_F(BootLoaderTest, BadMagic) {
    Bytes junk = pattern(8192, 3);
    std::string path = write_file("junk", junk);
    expect_load_error({.kernel_path = path, .initrd_paths = {}, .cmdline = ""},
                      "kernel " + path + ": not an ELF vmlinux or bzImage");
}

TEST_F(BootLoaderTest, TruncatedElfHeader) {
    Bytes elf = make_elf();
    elf.resize(40);
    expect_kernel_error(elf, "truncated ELF header");
}

TEST_F(BootLoaderTest, TruncatedProgramHeaders) {
    Bytes elf = make_elf();
    elf.resize(kElfLoadPhdr + 56 + 10);
    expect_kernel_error(elf, "truncated program header");
}

TEST_F(BootLoaderTest, ProgramHeaderTableOffsetPastEnd) {
    Bytes elf = make_elf();
    put<uint64_t>(elf, 32, UINT64_MAX - 16);
    expect_kernel_error(elf, "truncated program header");
}

TEST_F(BootLoaderTest, TruncatedSegmentData) {
    Bytes elf = make_elf();
    elf.resize(elf.size() - 1);
    expect_kernel_error(elf, "runs past the end of the file");
}

TEST_F(BootLoaderTest, SegmentOffsetOverflows) {
    Bytes elf = make_elf();
    put<uint64_t>(elf, kElfLoadPhdr + 8, UINT64_MAX - 0x100);
    expect_kernel_error(elf, "runs past the end of the file");
}

TEST_F(BootLoaderTest, SegmentFileSizeBeyondMemorySize) {
    Bytes elf = make_elf();
    put<uint64_t>(elf, kElfLoadPhdr + 40, 0x1000);
    expect_kernel_error(elf, "exceeds memory size");
}

TEST_F(BootLoaderTest, SegmentOutsideRam) {
    ElfSpec spec{.paddr = 0x2000'0000, .entry = 0x2000'0000};  // 512 MiB in a 256 MiB guest
    expect_kernel_error(make_elf(spec), "outside guest RAM");
}

TEST_F(BootLoaderTest, SegmentInLowBootArea) {
    ElfSpec spec{.paddr = 0x8000, .entry = 0x8000};  // would overwrite the page tables and start info
    expect_kernel_error(make_elf(spec), "outside guest RAM");
}

TEST_F(BootLoaderTest, SegmentAddressOverflows) {
    Bytes elf = make_elf();
    put<uint64_t>(elf, kElfLoadPhdr + 24, UINT64_MAX - 0x1000);
    expect_kernel_error(elf, "overflows");
}

TEST_F(BootLoaderTest, MissingPvhNote) {
    Bytes elf = make_elf();
    put<uint32_t>(elf, kElfXenNote + 8, 17);  // some other Xen note
    expect_kernel_error(elf, "no PVH entry note");
}

TEST_F(BootLoaderTest, NoNoteSegment) {
    Bytes elf = make_elf();
    put<uint16_t>(elf, 56, 1);  // only the PT_LOAD header remains
    expect_kernel_error(elf, "no PVH entry note");
}

TEST_F(BootLoaderTest, TruncatedNote) {
    Bytes elf = make_elf();
    put<uint32_t>(elf, kElfXenNote + 4, 0x1000);  // descriptor larger than the note segment
    expect_kernel_error(elf, "truncated ELF note");
}

TEST_F(BootLoaderTest, OddEntryNoteSize) {
    Bytes elf = make_elf({.entry_desc_size = 2});
    expect_kernel_error(elf, "2-byte descriptor");
}

TEST_F(BootLoaderTest, EntryOutsideSegments) {
    expect_kernel_error(make_elf({.entry = 0x200'0000}), "outside the loaded segments");
}

TEST_F(BootLoaderTest, NotA64BitElf) {
    Bytes elf = make_elf();
    elf[4] = 1;
    expect_kernel_error(elf, "not a 64-bit ELF");
}

TEST_F(BootLoaderTest, NotX86_64) {
    Bytes elf = make_elf();
    put<uint16_t>(elf, 18, 183);  // aarch64
    expect_kernel_error(elf, "not an x86-64 ELF");
}

TEST_F(BootLoaderTest, BzImageOldProtocol) {
    expect_kernel_error(make_bzimage({.protocol = 0x020b}), "2.11 is too old");
}

TEST_F(BootLoaderTest, BzImageWithout64BitEntry) {
    expect_kernel_error(make_bzimage({.xloadflags = 0x0002}), "XLF_KERNEL_64");
}

TEST_F(BootLoaderTest, BzImageTruncatedSetup) {
    Bytes image = make_bzimage();
    image.resize(0x600);
    expect_kernel_error(image, "2048 bytes of setup code");
}

TEST_F(BootLoaderTest, BzImageTruncatedHeader) {
    Bytes image = make_bzimage();
    image.resize(0x230);
    expect_kernel_error(image, "truncated setup header");
}

TEST_F(BootLoaderTest, BzImageBadBootFlag) {
    Bytes image = make_bzimage();
    put<uint16_t>(image, 0x1fe, 0x1234);
    expect_kernel_error(image, "boot sector flag");
}

TEST_F(BootLoaderTest, BzImageBadHeaderLength) {
    Bytes image = make_bzimage();
    image[0x201] = 0xff;  // header would run into the EDD area of boot_params
    expect_kernel_error(image, "corrupt setup header length");
}

TEST_F(BootLoaderTest, BzImageDoesNotFitInRam) {
    expect_kernel_error(make_bzimage({.init_size = 0xf000'0000}), "preferred address + init_size");
}

TEST_F(BootLoaderTest, BzImageLoadAddressInLowArea) {
    expect_kernel_error(make_bzimage({.pref_address = 0x1000}), "preferred address + init_size");
}

TEST_F(BootLoaderTest, OversizedCmdline) {
    std::string path = write_file("vmlinux", make_elf());
    expect_load_error(
        {.kernel_path = path, .initrd_paths = {}, .cmdline = std::string(layout::kCmdlineMax, 'a')},
        "command line is 65536 bytes; the kernel accepts at most 65535");
    // The longest accepted one fits, with its NUL.
    auto mem = make_memory();
    std::string longest(layout::kCmdlineMax - 1, 'b');
    ASSERT_TRUE(load_kernel(mem, {.kernel_path = path, .initrd_paths = {}, .cmdline = longest}).has_value());
    EXPECT_EQ(read_cmdline(mem), longest);
}

TEST_F(BootLoaderTest, CmdlineLongerThanBzImageAllows) {
    std::string path = write_file("bzImage", make_bzimage({.cmdline_size = 100}));
    expect_load_error({.kernel_path = path, .initrd_paths = {}, .cmdline = std::string(101, 'a')},
                      "command line is 101 bytes; the kernel accepts at most 100");
}

TEST_F(BootLoaderTest, CmdlineWithNul) {
    std::string path = write_file("vmlinux", make_elf());
    expect_load_error({.kernel_path = path, .initrd_paths = {}, .cmdline = std::string("a\0b", 3)}, "NUL");
}

TEST_F(BootLoaderTest, ConcatenatesInitrdsPaddedToFourBytes) {
    Bytes first = pattern(1001, 0x11), second = pattern(40, 0x22);
    BootConfig config{.kernel_path = write_file("vmlinux", make_elf()),
                      .initrd_paths = {write_file("first", first), write_file("second", second)},
                      .cmdline = ""};
    auto mem = make_memory();
    auto setup = load_kernel(mem, config);
    ASSERT_TRUE(setup.has_value()) << setup.error().to_string();
    ASSERT_EQ(setup->initrd_size, 1004u + 40u);  // the last part is not padded
    Bytes expected = first;
    expected.resize(1004, 0);  // zero padding up to the next 4-byte boundary
    expected.insert(expected.end(), second.begin(), second.end());
    EXPECT_EQ(read_guest(mem, setup->initrd_gpa, setup->initrd_size), expected);
}

TEST_F(BootLoaderTest, EmptyInitrdPartIsAnError) {
    std::string kernel = write_file("vmlinux", make_elf());
    std::string empty = write_file("empty", Bytes{});
    expect_load_error(
        {.kernel_path = kernel, .initrd_paths = {write_file("ok", pattern(10, 1)), empty}, .cmdline = ""},
        "initrd " + empty + ": file is empty");
}

TEST_F(BootLoaderTest, InitrdTooBig) {
    std::string initrd = (dir_ / "big-initrd").string();
    {
        int fd = ::open(initrd.c_str(), O_CREAT | O_WRONLY, 0600);
        ASSERT_GE(fd, 0);
        ASSERT_EQ(ftruncate(fd, 300 * kMiB), 0);  // sparse: takes no disk space
        close(fd);
    }
    std::string kernel = write_file("vmlinux", make_elf());
    expect_load_error({.kernel_path = kernel, .initrd_paths = {initrd}, .cmdline = ""},
                      "initrd " + initrd + " (300 MiB) does not fit below 0x10000000");
}

TEST_F(BootLoaderTest, InitrdAboveBzImageLimit) {
    // 100 MiB initrd, 64 MiB limit.
    std::string initrd = (dir_ / "initrd").string();
    {
        int fd = ::open(initrd.c_str(), O_CREAT | O_WRONLY, 0600);
        ASSERT_GE(fd, 0);
        ASSERT_EQ(ftruncate(fd, 100 * kMiB), 0);
        close(fd);
    }
    std::string kernel = write_file("bzImage", make_bzimage({.initrd_addr_max = 0x3ff'ffff}));
    expect_load_error({.kernel_path = kernel, .initrd_paths = {initrd}, .cmdline = ""},
                      "does not fit below 0x4000000");
}

TEST_F(BootLoaderTest, MissingInitrd) {
    std::string kernel = write_file("vmlinux", make_elf());
    std::string initrd = (dir_ / "missing").string();
    expect_load_error({.kernel_path = kernel, .initrd_paths = {initrd}, .cmdline = ""},
                      "initrd " + initrd + ": open: No such file");
}

TEST_F(BootLoaderTest, EmptyInitrd) {
    std::string kernel = write_file("vmlinux", make_elf());
    std::string initrd = write_file("initrd", {});
    expect_load_error({.kernel_path = kernel, .initrd_paths = {initrd}, .cmdline = ""},
                      "initrd " + initrd + ": file is empty");
}

TEST_F(BootLoaderTest, GuestTooSmall) {
    std::string kernel = write_file("vmlinux", make_elf());
    expect_load_error({.kernel_path = kernel, .initrd_paths = {}, .cmdline = ""}, "does not reach past 1 MiB",
                      kMiB);
}

// --- The real guest kernel, when it has been built ------------------------------------------------------

// The build puts the guest kernel next to bin/ (the guest-kernel target runs before the tests).
std::optional<std::string> find_guest_artifact(const std::string& name) {
    std::string path = std::string(SANDLOT_BIN_DIR) + "/../guest/" + name;
    if (fs::exists(path)) return path;
    return std::nullopt;
}

TEST_F(BootLoaderTest, RealVmlinuxHasPvhEntry) {
    auto path = find_guest_artifact("vmlinux");
    if (!path) GTEST_SKIP() << "no guest vmlinux in build/guest; build the guest-kernel target";
    auto mem = make_memory();
    BootConfig config{.kernel_path = *path,
                      .initrd_paths = {write_file("initrd", pattern(4096, 2))},
                      .cmdline = "console=ttyS0"};
    auto setup = load_kernel(mem, config);
    ASSERT_TRUE(setup.has_value()) << setup.error().to_string();
    EXPECT_EQ(setup->mode, EntryMode::Pvh32);
    // Linux loads at LOAD_PHYSICAL_ADDR (16 MiB by default); pvh_start_xen is in its first segment.
    EXPECT_GE(setup->entry, 0x100'0000u);
    EXPECT_LT(setup->entry, setup->kernel_end);
    EXPECT_LT(setup->kernel_end, 256 * kMiB);
    EXPECT_GE(setup->initrd_gpa, setup->kernel_end);
    EXPECT_EQ(guest<HvmStartInfo>(mem, layout::kPvhStartInfo).magic, kHvmStartMagic);
}

TEST_F(BootLoaderTest, RealBzImageHas64BitEntry) {
    auto path = find_guest_artifact("bzImage");
    if (!path) GTEST_SKIP() << "no guest bzImage in build/guest; build the guest-kernel target";
    auto mem = make_memory();
    BootConfig config{.kernel_path = *path,
                      .initrd_paths = {write_file("initrd", pattern(4096, 2))},
                      .cmdline = "console=ttyS0"};
    auto setup = load_kernel(mem, config);
    ASSERT_TRUE(setup.has_value()) << setup.error().to_string();
    EXPECT_EQ(setup->mode, EntryMode::Linux64);
    EXPECT_EQ(setup->entry % 0x1000, 0x200u);
    EXPECT_GE(setup->entry, 0x100'0200u);
    Bytes zp = read_guest(mem, layout::kZeroPage, 4096);
    EXPECT_EQ(std::memcmp(zp.data() + 0x202, "HdrS", 4), 0);
    EXPECT_GE(get<uint16_t>(zp, 0x206), 0x20cu);
    EXPECT_EQ(get<uint32_t>(zp, 0x218), setup->initrd_gpa);
    // The first instructions at the 64-bit entry are real code, not zeroes.
    EXPECT_NE(read_guest(mem, setup->entry, 16), Bytes(16, 0));
}

}  // namespace
}  // namespace sandlot::vmm::boot
