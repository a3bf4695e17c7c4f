#include "vmm/arch/x86/registers.h"

#include <fmt/format.h>

#include "vmm/memory/layout.h"

namespace sandlot::vmm::x86 {

namespace {

constexpr uint8_t kSegTypeCodeExecReadAccessed = 0xb;
constexpr uint8_t kSegTypeDataReadWriteAccessed = 0x3;
constexpr uint8_t kSegTypeTss32Busy = 0xb;
constexpr uint32_t kTssLimit = 0x67;  // a 104-byte 32-bit TSS

// A present, ring-0, flat (base 0, 4 GiB, page-granular) code or data segment.
kvm_segment flat_segment(uint16_t selector, uint8_t type) {
    kvm_segment seg{};
    seg.base = 0;
    seg.limit = 0xffff'ffff;
    seg.selector = selector;
    seg.type = type;
    seg.present = 1;
    seg.dpl = 0;
    seg.db = 1;
    seg.s = 1;  // code/data, not a system segment
    seg.l = 0;
    seg.g = 1;
    return seg;
}

kvm_segment boot_tss() {
    kvm_segment tr{};
    tr.selector = layout::kGdtTssSelector;
    tr.base = 0;
    tr.limit = kTssLimit;
    tr.type = kSegTypeTss32Busy;
    tr.present = 1;
    tr.s = 0;
    return tr;
}

void set_data_segments(kvm_sregs& sregs) {
    kvm_segment data = flat_segment(layout::kGdtDataSelector, kSegTypeDataReadWriteAccessed);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
}

void set_boot_gdt(kvm_sregs& sregs) {
    sregs.gdt.base = layout::kGdt;
    sregs.gdt.limit = static_cast<uint16_t>(layout::kGdtEntries * 8 - 1);
}

kvm_regs entry_regs(uint64_t entry) {
    kvm_regs regs{};
    regs.rip = entry;
    regs.rflags = kRflagsReserved;  // interrupts off
    return regs;
}

}  // namespace

Result<void> setup_fpu(const Vcpu& vcpu) {
    kvm_fpu fpu{};
    fpu.fcw = 0x37f;
    fpu.mxcsr = 0x1f80;
    return vcpu.set_fpu(fpu);
}

kvm_sregs pvh_entry_sregs(const kvm_sregs& reset) {
    kvm_sregs sregs = reset;
    sregs.cs = flat_segment(layout::kGdtCode32Selector, kSegTypeCodeExecReadAccessed);
    set_data_segments(sregs);
    sregs.tr = boot_tss();
    set_boot_gdt(sregs);
    sregs.cr0 = kCr0Pe | kCr0Et;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    return sregs;
}

kvm_sregs linux64_entry_sregs(const kvm_sregs& reset) {
    kvm_sregs sregs = reset;
    sregs.cs = flat_segment(layout::kGdtCode64Selector, kSegTypeCodeExecReadAccessed);
    sregs.cs.l = 1;
    sregs.cs.db = 0;  // must be 0 when L is 1
    set_data_segments(sregs);
    sregs.tr = boot_tss();
    set_boot_gdt(sregs);
    sregs.cr0 = kCr0Pe | kCr0Et | kCr0Pg;
    sregs.cr3 = layout::kPml4;
    sregs.cr4 = kCr4Pae;
    sregs.efer = kEferLme | kEferLma;
    return sregs;
}

Result<void> setup_pvh_entry(const Vcpu& vcpu, uint64_t entry, uint64_t start_info) {
    kvm_sregs reset = TRY(vcpu.get_sregs());
    TRY(vcpu.set_sregs(pvh_entry_sregs(reset)));
    kvm_regs regs = entry_regs(entry);
    regs.rbx = start_info;
    return vcpu.set_regs(regs);
}

Result<void> setup_linux64_entry(const Vcpu& vcpu, uint64_t entry, uint64_t boot_params) {
    kvm_sregs reset = TRY(vcpu.get_sregs());
    TRY(vcpu.set_sregs(linux64_entry_sregs(reset)));
    kvm_regs regs = entry_regs(entry);
    regs.rsi = boot_params;
    return vcpu.set_regs(regs);
}

namespace {

std::string format_segment(const char* name, const kvm_segment& s) {
    return fmt::format(
        "  {:<4} sel={:04x} base={:016x} limit={:08x} type={:x} p={} dpl={} db={} s={} l={} g={}\n", name,
        s.selector, s.base, s.limit, s.type, s.present, s.dpl, s.db, s.s, s.l, s.g);
}

}  // namespace

std::string format_registers(const kvm_regs& r, const kvm_sregs& s) {
    std::string out;
    out += fmt::format("  rip={:016x} rsp={:016x} rflags={:016x}\n", r.rip, r.rsp, r.rflags);
    out += fmt::format("  rax={:016x} rbx={:016x} rcx={:016x} rdx={:016x}\n", r.rax, r.rbx, r.rcx, r.rdx);
    out += fmt::format("  rsi={:016x} rdi={:016x} rbp={:016x}\n", r.rsi, r.rdi, r.rbp);
    out += fmt::format("  r8 ={:016x} r9 ={:016x} r10={:016x} r11={:016x}\n", r.r8, r.r9, r.r10, r.r11);
    out += fmt::format("  r12={:016x} r13={:016x} r14={:016x} r15={:016x}\n", r.r12, r.r13, r.r14, r.r15);
    out += fmt::format("  cr0={:016x} cr2={:016x} cr3={:016x} cr4={:016x}\n", s.cr0, s.cr2, s.cr3, s.cr4);
    out += fmt::format("  efer={:016x} apic_base={:016x}\n", s.efer, s.apic_base);
    out += fmt::format("  gdt base={:016x} limit={:04x}  idt base={:016x} limit={:04x}\n", s.gdt.base,
                       s.gdt.limit, s.idt.base, s.idt.limit);
    out += format_segment("cs", s.cs);
    out += format_segment("ss", s.ss);
    out += format_segment("ds", s.ds);
    out += format_segment("tr", s.tr);
    return out;
}

}  // namespace sandlot::vmm::x86
