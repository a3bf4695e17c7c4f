// Real KVM, tiny guests: hand-written machine code run on a vCPU set up by the VMM's own code. The first
// tests drive a bare Vm + Vcpu in both entry modes; the last ones boot a minimal PVH "kernel" through
// Machine and check how the guest's end becomes the exit status. Skipped where /dev/kvm is missing.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "vmm/arch/x86/cpuid.h"
#include "vmm/arch/x86/lapic.h"
#include "vmm/arch/x86/msrs.h"
#include "vmm/arch/x86/registers.h"
#include "vmm/arch/x86/reset_flag.h"
#include "vmm/boot/x86_tables.h"
#include "vmm/kvm/host_kvm.h"
#include "vmm/kvm/kvm.h"
#include "vmm/machine.h"
#include "vmm/memory/layout.h"

namespace sandlot::vmm {
namespace {

#define SKIP_WITHOUT_KVM()                                                         \
    do {                                                                           \
        if (detect_host_kvm() == HostKvmKind::None) GTEST_SKIP() << "no /dev/kvm"; \
    } while (0)

constexpr uint64_t kCodeAddr = 0x100000;

struct BareVm {
    Kvm kvm;
    GuestMemory memory;
    Vm vm;
    Vcpu vcpu;
};

// A VM with 64 MiB, the boot GDT and page tables, and one vCPU set up the way Machine does it.
Result<BareVm> make_bare_vm() {
    Kvm kvm = TRY(Kvm::open());
    GuestMemory memory = TRY(GuestMemory::create(64 * layout::kMiB));
    Vm vm = TRY(Vm::create(kvm));
    TRY(vm.set_memory_regions(memory));
    Vcpu vcpu = TRY(vm.create_vcpu(0));
    TRY(vcpu.set_cpuid(x86::vcpu_cpuid(TRY(kvm.supported_cpuid()), 0, true)));
    TRY(x86::setup_msrs(vcpu, TRY(kvm.msr_index_list())));
    TRY(x86::setup_fpu(vcpu));
    TRY(x86::setup_lapic(vcpu));
    TRY(boot::write_boot_gdt(memory));
    TRY(boot::write_identity_page_tables(memory));
    return BareVm{std::move(kvm), std::move(memory), std::move(vm), std::move(vcpu)};
}

struct PortWrite {
    uint16_t port;
    uint8_t size;
    uint32_t value;
};

// Runs until the next exit and expects it to be a port write.
PortWrite next_port_write(const Vcpu& vcpu) {
    auto ran = vcpu.run();
    EXPECT_TRUE(ran) << ran.error().to_string();
    const kvm_run& run = *vcpu.run_state();
    EXPECT_EQ(run.exit_reason, KVM_EXIT_IO);
    if (run.exit_reason != KVM_EXIT_IO) return {};
    EXPECT_EQ(run.io.direction, KVM_EXIT_IO_OUT);
    PortWrite write{run.io.port, run.io.size, 0};
    std::memcpy(&write.value, reinterpret_cast<const uint8_t*>(&run) + run.io.data_offset,
                std::min<size_t>(run.io.size, sizeof write.value));
    return write;
}

TEST(KvmSmokeTest, PvhEntryRunsProtectedModeCode) {
    SKIP_WITHOUT_KVM();
    auto vm = make_bare_vm();
    ASSERT_TRUE(vm) << vm.error().to_string();
    const std::vector<uint8_t> code = {
        0xb0, 0x42,        // mov al, 0x42
        0xe6, 0x10,        // out 0x10, al
        0x89, 0xd8,        // mov eax, ebx     (start_info pointer)
        0xe7, 0x11,        // out 0x11, eax
        0x0f, 0x20, 0xc0,  // mov eax, cr0
        0xe7, 0x12,        // out 0x12, eax
        0xeb, 0xfe,        // jmp $
    };
    ASSERT_TRUE(vm->memory.write(kCodeAddr, code));
    ASSERT_TRUE(x86::setup_pvh_entry(vm->vcpu, kCodeAddr, layout::kPvhStartInfo));

    PortWrite first = next_port_write(vm->vcpu);
    EXPECT_EQ(first.port, 0x10);
    EXPECT_EQ(first.size, 1);
    EXPECT_EQ(first.value, 0x42u);
    PortWrite rbx = next_port_write(vm->vcpu);
    EXPECT_EQ(rbx.port, 0x11);
    EXPECT_EQ(rbx.size, 4);
    EXPECT_EQ(rbx.value, layout::kPvhStartInfo);
    PortWrite cr0 = next_port_write(vm->vcpu);
    EXPECT_EQ(cr0.value & (x86::kCr0Pe | x86::kCr0Pg), x86::kCr0Pe);
}

TEST(KvmSmokeTest, Linux64EntryRunsLongModeCode) {
    SKIP_WITHOUT_KVM();
    auto vm = make_bare_vm();
    ASSERT_TRUE(vm) << vm.error().to_string();
    const std::vector<uint8_t> program = {
        0x48, 0x89, 0xf0,              // mov rax, rsi     (boot_params pointer)
        0xe7, 0x13,                    // out 0x13, eax
        0xb9, 0x80, 0x00, 0x00, 0xc0,  // mov ecx, 0xc0000080 (EFER)
        0x0f, 0x32,                    // rdmsr
        0xe7, 0x14,                    // out 0x14, eax
        0xeb, 0xfe,                    // jmp $
    };
    // Above 2 MiB, inside the identity map, like a real kernel.
    const uint64_t entry = 0x200000;
    ASSERT_TRUE(vm->memory.write(entry, program));
    ASSERT_TRUE(x86::setup_linux64_entry(vm->vcpu, entry, layout::kZeroPage));

    PortWrite rsi = next_port_write(vm->vcpu);
    EXPECT_EQ(rsi.port, 0x13);
    EXPECT_EQ(rsi.value, layout::kZeroPage);
    PortWrite efer = next_port_write(vm->vcpu);
    EXPECT_EQ(efer.port, 0x14);
    EXPECT_EQ(efer.value & (x86::kEferLme | x86::kEferLma), x86::kEferLme | x86::kEferLma);
}

// A minimal ELF executable with a PVH entry note: `code` loaded and entered at kCodeAddr.
std::vector<uint8_t> make_pvh_elf(const std::vector<uint8_t>& code) {
    constexpr uint64_t kEhdr = 64, kPhdr = 56, kNoteOffset = kEhdr + 2 * kPhdr, kNoteSize = 12 + 4 + 4;
    constexpr uint64_t kCodeOffset = 0x1000;
    std::vector<uint8_t> elf(kCodeOffset + code.size());
    auto put = [&](uint64_t at, auto value) { std::memcpy(elf.data() + at, &value, sizeof value); };
    const uint8_t ident[] = {0x7f, 'E', 'L', 'F', 2, 1, 1};
    std::memcpy(elf.data(), ident, sizeof ident);
    put(16, uint16_t{2});   // ET_EXEC
    put(18, uint16_t{62});  // EM_X86_64
    put(20, uint32_t{1});
    put(24, kCodeAddr);
    put(32, kEhdr);  // program headers right after the ELF header
    put(52, uint16_t{kEhdr});
    put(54, uint16_t{kPhdr});
    put(56, uint16_t{2});
    // PT_LOAD
    put(kEhdr + 0, uint32_t{1});
    put(kEhdr + 4, uint32_t{5});
    put(kEhdr + 8, kCodeOffset);
    put(kEhdr + 16, kCodeAddr);
    put(kEhdr + 24, kCodeAddr);
    put(kEhdr + 32, uint64_t{code.size()});
    put(kEhdr + 40, uint64_t{code.size()});
    put(kEhdr + 48, uint64_t{0x1000});
    // PT_NOTE: Xen note 18 (PHYS32_ENTRY)
    put(kEhdr + kPhdr + 0, uint32_t{4});
    put(kEhdr + kPhdr + 8, kNoteOffset);
    put(kEhdr + kPhdr + 32, kNoteSize);
    put(kEhdr + kPhdr + 40, kNoteSize);
    put(kEhdr + kPhdr + 48, uint64_t{4});
    put(kNoteOffset + 0, uint32_t{4});
    put(kNoteOffset + 4, uint32_t{4});
    put(kNoteOffset + 8, uint32_t{18});
    std::memcpy(elf.data() + kNoteOffset + 12, "Xen", 4);
    put(kNoteOffset + 16, static_cast<uint32_t>(kCodeAddr));
    std::memcpy(elf.data() + kCodeOffset, code.data(), code.size());
    return elf;
}

// Machine code pieces (32-bit protected mode).
void append(std::vector<uint8_t>& code, std::initializer_list<uint8_t> bytes) {
    code.insert(code.end(), bytes);
}

void print_to_serial(std::vector<uint8_t>& code, const std::string& text) {
    append(code, {0x66, 0xba, 0xf8, 0x03});  // mov dx, 0x3f8
    for (char c : text)
        append(code, {0xb0, static_cast<uint8_t>(c), 0xee});  // mov al, c; out dx, al
}

// lidt with a zero limit, then int3: #GP, double fault, triple fault.
void triple_fault(std::vector<uint8_t>& code) {
    uint32_t idtr = static_cast<uint32_t>(kCodeAddr + code.size() + 7 + 1 + 2);
    append(code, {0x0f, 0x01, 0x1d});  // lidt [disp32]
    for (int i = 0; i < 4; ++i)
        code.push_back(static_cast<uint8_t>(idtr >> (8 * i)));
    append(code, {0xcc, 0xeb, 0xfe});  // int3; jmp $
    append(code, {0, 0, 0, 0, 0, 0});  // the IDTR image: limit 0, base 0
}

// What Linux's native_machine_emergency_restart does before it resets: the BIOS reset flag at 0x472.
void write_reset_flag(std::vector<uint8_t>& code, uint16_t value) {
    append(code, {0x66, 0xc7, 0x05, 0x72, 0x04, 0x00, 0x00});  // mov word [0x472], imm16
    append(code, {static_cast<uint8_t>(value), static_cast<uint8_t>(value >> 8)});
}

void i8042_reset(std::vector<uint8_t>& code) {
    append(code, {0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe});  // mov al, 0xfe; out 0x64, al; jmp $
}

class MachineBootTest : public ::testing::Test {
  protected:
    void SetUp() override {
        SKIP_WITHOUT_KVM();
        char dir_template[] = "/tmp/sandlot-machine-test-XXXXXX";
        ASSERT_NE(mkdtemp(dir_template), nullptr);
        dir_ = dir_template;
    }
    void TearDown() override {
        if (!dir_.empty()) std::system(("rm -rf " + dir_).c_str());
    }

    // Boots `code` as a PVH kernel; returns run()'s exit status, or -1 on error.
    int boot(const std::vector<uint8_t>& code, uint32_t vcpus = 1) {
        auto elf = make_pvh_elf(code);
        std::string kernel = dir_ + "/kernel";
        std::ofstream(kernel, std::ios::binary).write(reinterpret_cast<const char*>(elf.data()), elf.size());
        MachineConfig config;
        config.kernel = kernel;
        config.memory_mib = 64;
        config.vcpus = vcpus;
        config.console = "file:" + dir_ + "/console";
        config.allow_pvm = true;  // test code, not a Linux kernel
        auto machine = Machine::create(config);
        EXPECT_TRUE(machine) << machine.error().to_string();
        if (!machine) return -1;
        alarm(60);  // a wedged guest must not hang the test run
        auto status = (*machine)->run();
        alarm(0);
        EXPECT_TRUE(status) << status.error().to_string();
        return status ? *status : -1;
    }
    std::string console() {
        std::ifstream in(dir_ + "/console");
        std::stringstream text;
        text << in.rdbuf();
        return text.str();
    }

    std::string dir_;
};

TEST_F(MachineBootTest, KeyboardControllerResetEndsCleanly) {
    std::vector<uint8_t> code;
    print_to_serial(code, "hi\n");
    i8042_reset(code);
    testing::internal::CaptureStderr();
    int status = boot(code);
    EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
    EXPECT_EQ(status, 0);
    EXPECT_EQ(console(), "hi\n");
}

TEST_F(MachineBootTest, KeyboardControllerResetAfterPanicIsACrash) {
    std::vector<uint8_t> code;
    write_reset_flag(code, x86::kResetFlagWarm);
    i8042_reset(code);
    testing::internal::CaptureStderr();
    int status = boot(code);
    std::string report = testing::internal::GetCapturedStderr();
    EXPECT_EQ(status, 1);
    EXPECT_NE(report.find("sandlot-vmm: guest crashed: kernel panic"), std::string::npos) << report;
}

TEST_F(MachineBootTest, SecondVcpuWaitsAndIsStoppedWithTheMachine) {
    // Two vCPUs: the second never gets a SIPI, so its thread sits in KVM_RUN until the stop kicks it out.
    std::vector<uint8_t> code;
    print_to_serial(code, "smp\n");
    i8042_reset(code);
    EXPECT_EQ(boot(code, 2), 0);
    EXPECT_EQ(console(), "smp\n");
}

#define SKIP_ON_PVM()                                                                                   \
    do {                                                                                                \
        if (detect_host_kvm() == HostKvmKind::Pvm)                                                      \
            GTEST_SKIP() << "PVM reports a guest triple fault as an emulation failure, not a shutdown"; \
    } while (0)

TEST_F(MachineBootTest, UnexplainedTripleFaultIsACrash) {
    SKIP_ON_PVM();
    std::vector<uint8_t> code;
    print_to_serial(code, "x");
    triple_fault(code);
    testing::internal::CaptureStderr();
    int status = boot(code);
    std::string report = testing::internal::GetCapturedStderr();
    EXPECT_EQ(status, 1);
    EXPECT_NE(report.find("sandlot-vmm: guest crashed: triple fault on vCPU 0\n"), std::string::npos)
        << report;
    EXPECT_NE(report.find("rip="), std::string::npos) << report;
    EXPECT_EQ(console(), "x");  // flushed at the end though no newline came
}

TEST_F(MachineBootTest, TripleFaultAfterColdResetFlagIsAnOrderlyRestart) {
    SKIP_ON_PVM();
    std::vector<uint8_t> code;
    write_reset_flag(code, x86::kResetFlagCold);
    triple_fault(code);
    testing::internal::CaptureStderr();
    int status = boot(code);
    EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
    EXPECT_EQ(status, 0);
}

TEST_F(MachineBootTest, TripleFaultAfterWarmResetFlagIsAPanic) {
    SKIP_ON_PVM();
    std::vector<uint8_t> code;
    write_reset_flag(code, x86::kResetFlagWarm);
    triple_fault(code);
    testing::internal::CaptureStderr();
    int status = boot(code);
    std::string report = testing::internal::GetCapturedStderr();
    EXPECT_EQ(status, 1);
    EXPECT_NE(report.find("sandlot-vmm: guest crashed: kernel panic"), std::string::npos) << report;
}

TEST_F(MachineBootTest, KernelCommandLineListsVirtioSlots) {
    MachineConfig config;
    config.kernel = "/nonexistent";
    config.memory_mib = 64;
    config.console = "none";
    config.allow_pvm = true;
    config.cmdline_extra = "quiet";
    auto machine = Machine::create(config);
    ASSERT_TRUE(machine) << machine.error().to_string();
    auto first = (*machine)->allocate_virtio_mmio_slot();
    ASSERT_TRUE(first) << first.error().to_string();
    auto second = (*machine)->allocate_virtio_mmio_slot();
    ASSERT_TRUE(second);
    EXPECT_EQ(first->base, layout::kVirtioMmioBase);
    EXPECT_EQ(first->irq, layout::kFirstVirtioIrq);
    EXPECT_EQ(second->base, layout::kVirtioMmioBase + layout::kVirtioMmioSize);
    EXPECT_EQ(second->irq, layout::kFirstVirtioIrq + 1);
    EXPECT_EQ((*machine)->kernel_cmdline(),
              std::string(kDefaultCmdline) +
                  " virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 quiet");
    auto run = (*machine)->run();  // the kernel does not exist: an error, not a crash
    ASSERT_FALSE(run);
    EXPECT_NE(run.error().to_string().find("/nonexistent"), std::string::npos);
}

}  // namespace
}  // namespace sandlot::vmm
