// The x86 vCPU policy that needs no KVM: CPUID adjustments, MSR selection, entry registers, and how a triple
// fault is classified.
#include <gtest/gtest.h>

#include <algorithm>

#include "vmm/arch/x86/cpuid.h"
#include "vmm/arch/x86/lapic.h"
#include "vmm/arch/x86/msrs.h"
#include "vmm/arch/x86/registers.h"
#include "vmm/arch/x86/reset_flag.h"
#include "vmm/kvm/host_kvm.h"
#include "vmm/kvm/kvm_flex.h"
#include "vmm/memory/layout.h"

namespace sandlot::vmm::x86 {
namespace {

kvm_cpuid_entry2 leaf(uint32_t function, uint32_t index, uint32_t eax, uint32_t ebx, uint32_t ecx,
                      uint32_t edx) {
    kvm_cpuid_entry2 entry{};
    entry.function = function;
    entry.index = index;
    entry.eax = eax;
    entry.ebx = ebx;
    entry.ecx = ecx;
    entry.edx = edx;
    return entry;
}

const kvm_cpuid_entry2& find(const std::vector<kvm_cpuid_entry2>& entries, uint32_t function,
                             uint32_t index = 0) {
    auto it = std::find_if(entries.begin(), entries.end(),
                           [&](const auto& e) { return e.function == function && e.index == index; });
    EXPECT_NE(it, entries.end());
    return *it;
}

std::vector<kvm_cpuid_entry2> sample_supported() {
    return {
        leaf(0x0, 0, 0x1f, 0x756e6547, 0x6c65746e, 0x49656e69),
        leaf(0x1, 0, 0x000806f8, 0x07080800, 0x7efafbff, 0xbfebfbff),
        leaf(0xa, 0, 0x07300805, 0x11, 0, 0x603),
        leaf(0xb, 0, 1, 2, 0x100, 0x11),
        leaf(0xb, 1, 4, 8, 0x201, 0x11),
        leaf(0x1f, 0, 1, 2, 0x100, 0x11),
        leaf(0x40000000, 0, 0x40000001, 0x4b4d564b, 0x564b4d56, 0x4d),
        leaf(0x40000001, 0, 0x01007afb, 0, 0, 0),
    };
}

TEST(CpuidTest, Leaf1CarriesApicIdAndHypervisorBit) {
    auto entries = vcpu_cpuid(sample_supported(), 5, false);
    const auto& features = find(entries, 0x1);
    EXPECT_EQ(features.ebx >> 24, 5u);
    EXPECT_EQ(features.ebx & 0x00ffffff, 0x080800u);  // other fields untouched
    EXPECT_TRUE(features.ecx & (1u << 31));
    EXPECT_EQ(features.edx, 0xbfebfbffu);
}

TEST(CpuidTest, TscDeadlineTimerOnlyWhenKvmHasIt) {
    EXPECT_FALSE(find(vcpu_cpuid(sample_supported(), 0, false), 0x1).ecx & (1u << 24));
    EXPECT_TRUE(find(vcpu_cpuid(sample_supported(), 0, true), 0x1).ecx & (1u << 24));
}

TEST(CpuidTest, TopologyLeavesCarryX2ApicId) {
    auto entries = vcpu_cpuid(sample_supported(), 3, false);
    EXPECT_EQ(find(entries, 0xb, 0).edx, 3u);
    EXPECT_EQ(find(entries, 0xb, 1).edx, 3u);
    EXPECT_EQ(find(entries, 0x1f, 0).edx, 3u);
    EXPECT_EQ(find(entries, 0xb, 1).ebx, 8u);
}

TEST(CpuidTest, NoPerformanceMonitoring) {
    auto entries = vcpu_cpuid(sample_supported(), 0, false);
    const auto& pmu = find(entries, 0xa);
    EXPECT_EQ(pmu.eax | pmu.ebx | pmu.ecx | pmu.edx, 0u);
}

TEST(CpuidTest, KvmLeavesAndOthersKept) {
    auto supported = sample_supported();
    auto entries = vcpu_cpuid(supported, 1, false);
    ASSERT_EQ(entries.size(), supported.size());
    EXPECT_EQ(find(entries, 0x40000000).ebx, 0x4b4d564bu);
    EXPECT_EQ(find(entries, 0x40000001).eax, 0x01007afbu);
    EXPECT_EQ(find(entries, 0x0).eax, 0x1fu);
}

TEST(MsrTest, OnlyMsrsKvmKnowsPlusMtrrDefType) {
    std::vector<uint32_t> known = {kMsrIa32Tsc, kMsrLstar, kMsrMiscEnable, 0x12345};
    auto msrs = boot_msrs(known);
    std::vector<uint32_t> indices;
    for (const auto& m : msrs)
        indices.push_back(m.index);
    std::sort(indices.begin(), indices.end());
    std::vector<uint32_t> expected = {kMsrIa32Tsc, kMsrMiscEnable, kMsrMtrrDefType, kMsrLstar};
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(indices, expected);
    for (const auto& m : msrs) {
        uint64_t expected_value = 0;
        if (m.index == kMsrMiscEnable) expected_value = 1;
        if (m.index == kMsrMtrrDefType) expected_value = 0x806;
        EXPECT_EQ(m.data, expected_value) << std::hex << m.index;
    }
}

TEST(MsrTest, FullListWhenKvmKnowsEverything) {
    std::vector<uint32_t> known = {kMsrIa32Tsc,      kMsrSysenterCs, kMsrSysenterEsp, kMsrSysenterEip,
                                   kMsrStar,         kMsrLstar,      kMsrCstar,       kMsrSyscallMask,
                                   kMsrKernelGsBase, kMsrMiscEnable};
    EXPECT_EQ(boot_msrs(known).size(), known.size() + 1);
}

TEST(RegistersTest, PvhEntryIsFlatProtectedModeWithoutPaging) {
    kvm_sregs reset{};
    reset.idt.limit = 0xffff;
    kvm_sregs s = pvh_entry_sregs(reset);
    EXPECT_EQ(s.cr0, kCr0Pe | kCr0Et);
    EXPECT_EQ(s.cr4, 0u);
    EXPECT_EQ(s.efer, 0u);
    EXPECT_EQ(s.cs.selector, layout::kGdtCode32Selector);
    EXPECT_EQ(s.cs.base, 0u);
    EXPECT_EQ(s.cs.limit, 0xffffffffu);
    EXPECT_EQ(s.cs.type, 0xb);
    EXPECT_EQ(s.cs.db, 1);
    EXPECT_EQ(s.cs.l, 0);
    EXPECT_EQ(s.cs.g, 1);
    EXPECT_EQ(s.cs.s, 1);
    EXPECT_EQ(s.cs.present, 1);
    for (const kvm_segment* seg : {&s.ds, &s.es, &s.fs, &s.gs, &s.ss}) {
        EXPECT_EQ(seg->selector, layout::kGdtDataSelector);
        EXPECT_EQ(seg->type, 0x3);
        EXPECT_EQ(seg->db, 1);
        EXPECT_EQ(seg->g, 1);
        EXPECT_EQ(seg->present, 1);
    }
    EXPECT_EQ(s.tr.selector, layout::kGdtTssSelector);
    EXPECT_EQ(s.tr.type, 0xb);
    EXPECT_EQ(s.tr.present, 1);
    EXPECT_EQ(s.tr.s, 0);
    EXPECT_EQ(s.gdt.base, layout::kGdt);
    EXPECT_EQ(s.gdt.limit, 5 * 8 - 1);
    EXPECT_EQ(s.idt.limit, 0xffff);  // what KVM had is kept
}

TEST(RegistersTest, Linux64EntryIsLongModeWithIdentityMap) {
    kvm_sregs s = linux64_entry_sregs(kvm_sregs{});
    EXPECT_EQ(s.cr0, kCr0Pe | kCr0Et | kCr0Pg);
    EXPECT_EQ(s.cr3, layout::kPml4);
    EXPECT_EQ(s.cr4, kCr4Pae);
    EXPECT_EQ(s.efer, kEferLme | kEferLma);
    EXPECT_EQ(s.cs.selector, layout::kGdtCode64Selector);
    EXPECT_EQ(s.cs.l, 1);
    EXPECT_EQ(s.cs.db, 0);
    EXPECT_EQ(s.ss.selector, layout::kGdtDataSelector);
    EXPECT_EQ(s.tr.selector, layout::kGdtTssSelector);
}

TEST(RegistersTest, FormatNamesTheInterestingRegisters) {
    kvm_regs regs{};
    regs.rip = 0x1000000;
    kvm_sregs sregs{};
    sregs.cr3 = 0x9000;
    std::string text = format_registers(regs, sregs);
    EXPECT_NE(text.find("rip=0000000001000000"), std::string::npos);
    EXPECT_NE(text.find("cr3=0000000000009000"), std::string::npos);
}

TEST(LapicTest, RegisterAccessIsBoundsChecked) {
    kvm_lapic_state lapic{};
    set_lapic_reg(lapic, kApicLvtLint0, 0x700);
    EXPECT_EQ(lapic_reg(lapic, kApicLvtLint0), 0x700u);
    set_lapic_reg(lapic, 0x3fd, 0xffffffff);  // would run past the page: ignored
    EXPECT_EQ(lapic_reg(lapic, 0x3fd), 0u);
    EXPECT_EQ(lapic_reg(lapic, 0x10000), 0u);
}

TEST(ResetFlagTest, ColdIsOrderlyWarmIsPanicAnythingElseUnexplained) {
    EXPECT_EQ(classify_reset_flag(0x0000), ResetCause::OrderlyRestart);
    EXPECT_EQ(classify_reset_flag(0x1234), ResetCause::Panic);
    EXPECT_EQ(classify_reset_flag(kResetFlagSentinel), ResetCause::Unexplained);
    EXPECT_EQ(classify_reset_flag(0xffff), ResetCause::Unexplained);
}

TEST(ResetFlagTest, ArmedFlagReadsUnexplainedUntilTheGuestWritesIt) {
    auto memory = GuestMemory::create(64 * layout::kMiB);
    ASSERT_TRUE(memory);
    EXPECT_EQ(read_reset_cause(*memory), ResetCause::OrderlyRestart);  // fresh RAM is zero: why we arm it
    ASSERT_TRUE(arm_reset_flag(*memory));
    EXPECT_EQ(read_reset_cause(*memory), ResetCause::Unexplained);
    ASSERT_TRUE(memory->write_obj<uint16_t>(0x472, 0x1234));
    EXPECT_EQ(read_reset_cause(*memory), ResetCause::Panic);
    ASSERT_TRUE(memory->write_obj<uint16_t>(0x472, 0));
    EXPECT_EQ(read_reset_cause(*memory), ResetCause::OrderlyRestart);
}

TEST(HostKvmTest, NoDeviceMeansNoKvm) {
    HostKvmKind kind = detect_host_kvm();
    if (access("/dev/kvm", F_OK) != 0) {
        EXPECT_EQ(kind, HostKvmKind::None);
    } else {
        EXPECT_NE(kind, HostKvmKind::None);
    }
    if (access("/sys/module/kvm_pvm", F_OK) != 0) {
        EXPECT_NE(kind, HostKvmKind::Pvm);
    }
}

}  // namespace
}  // namespace sandlot::vmm::x86

namespace sandlot::vmm {
namespace {

// The ioctl numbers a C program gets from <linux/kvm.h> (the size of the fixed part is encoded in them).
TEST(KvmFlexTest, IoctlNumbersMatchTheKernelCAbi) {
    EXPECT_EQ(kIoctlGetMsrIndexList, 0xc004ae02ul);
    EXPECT_EQ(kIoctlGetSupportedCpuid, 0xc008ae05ul);
    EXPECT_EQ(kIoctlSetMsrs, 0x4008ae89ul);
    EXPECT_EQ(kIoctlSetCpuid2, 0x4008ae90ul);
}

TEST(KvmFlexTest, EntriesFollowTheHeaderDirectly) {
    KvmFlexBuffer<KvmMsrsHeader, kvm_msr_entry> msrs(2);
    kvm_msr_entry entries[2] = {};
    entries[0].index = 0x10;
    entries[1].index = 0x174;
    entries[1].data = 0x1122334455667788;
    msrs.set_header({.nmsrs = 2, .pad = 0});
    msrs.set_entries(entries);
    const auto* bytes = static_cast<const uint8_t*>(msrs.data());
    uint32_t second_index;
    std::memcpy(&second_index, bytes + 8 + 16, sizeof second_index);
    EXPECT_EQ(second_index, 0x174u);
    auto back = msrs.entries(5);  // clamped to capacity
    ASSERT_EQ(back.size(), 2u);
    EXPECT_EQ(back[1].data, 0x1122334455667788u);
}

}  // namespace
}  // namespace sandlot::vmm
