#include "vmm/machine.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <system_error>

#include <fmt/format.h>

#include "vmm/arch/x86/cpuid.h"
#include "vmm/arch/x86/lapic.h"
#include "vmm/arch/x86/mptable.h"
#include "vmm/arch/x86/msrs.h"
#include "vmm/arch/x86/registers.h"
#include "vmm/arch/x86/reset_flag.h"
#include "vmm/devices/i8042/i8042.h"
#include "vmm/kvm/host_kvm.h"
#include "vmm/memory/layout.h"

namespace sandlot::vmm {

namespace {

// Sent to a vCPU thread to knock it out of KVM_RUN. Its handler does nothing: the point is that the signal
// interrupts the ioctl (EINTR), so it is installed without SA_RESTART.
int kick_signal() {
    return SIGRTMIN;
}
void on_kick_signal(int) {}

Result<void> install_kick_handler() {
    struct sigaction action {};
    action.sa_handler = on_kick_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;
    if (sigaction(kick_signal(), &action, nullptr) < 0) return errno_error("sigaction");
    return {};
}

// How many distinct unemulated addresses get a log line; past that, silence (a guest could probe thousands).
constexpr size_t kMaxUnhandledReported = 32;

// Legacy ports Linux touches on every boot although nothing is there, so they are ignored without a word:
// the CMOS/RTC index and data ports (an SMP boot writes the warm-reset code there before starting APs) and
// the POST port 0x80 (I/O delays, if a command line brings them back).
bool quietly_absent_port(uint64_t port) {
    return port == 0x70 || port == 0x71 || port == 0x80;
}

}  // namespace

Result<UniqueFd> open_console(const std::string& console) {
    if (console == "stdout") {
        UniqueFd fd(fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 0));
        if (!fd) return errno_error("console: dup stdout");
        return fd;
    }
    if (console == "none") return UniqueFd();
    if (console.starts_with("file:") && console.size() > 5) {
        std::string path = console.substr(5);
        UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
        if (!fd) return errno_error("console: open " + path);
        return fd;
    }
    return make_error("console must be stdout, none or file:PATH, not \"" + console + "\"");
}

Machine::Machine(MachineConfig config, Kvm kvm, GuestMemory memory, Vm vm, EventLoop event_loop)
    : config_(std::move(config)),
      kvm_(std::move(kvm)),
      memory_(std::move(memory)),
      vm_(std::move(vm)),
      event_loop_(std::move(event_loop)) {}

Machine::~Machine() = default;

Result<std::unique_ptr<Machine>> Machine::create(const MachineConfig& config) {
    switch (detect_host_kvm()) {
        case HostKvmKind::None:
            return make_error("/dev/kvm does not exist: this host offers no KVM");
        case HostKvmKind::Pvm:
            if (!config.allow_pvm) return make_error(std::string(kPvmRefusal));
            break;
        case HostKvmKind::Hardware:
            break;
    }
    if (config.memory_mib < layout::kMinMemoryMiB || config.memory_mib > layout::kMaxMemoryMiB) {
        return make_error(
            fmt::format("memory must be {}-{} MiB", layout::kMinMemoryMiB, layout::kMaxMemoryMiB));
    }

    Kvm kvm = TRY(Kvm::open());
    uint32_t max_vcpus = std::min(kvm.max_vcpus(), x86::kMpMaxCpus);
    if (config.vcpus < 1 || config.vcpus > max_vcpus) {
        return make_error(fmt::format("{} vCPUs requested; this host allows 1-{}", config.vcpus, max_vcpus));
    }
    GuestMemory memory = TRY(GuestMemory::create(config.memory_mib * layout::kMiB));
    Vm vm = TRY(Vm::create(kvm));
    TRY(vm.set_memory_regions(memory));
    EventLoop event_loop = TRY(EventLoop::create());

    std::unique_ptr<Machine> machine(
        new Machine(config, std::move(kvm), std::move(memory), std::move(vm), std::move(event_loop)));
    TRY(machine->create_devices());
    TRY(machine->create_vcpus());
    return machine;
}

Result<void> Machine::create_devices() {
    // Serial console on COM1, interrupting on ISA IRQ 4.
    UniqueFd console = TRY(open_console(config_.console));
    IrqLine serial_irq = TRY(IrqLine::create(layout::kSerialIrq));
    TRY(vm_.add_irqfd(serial_irq.fd(), serial_irq.gsi()));
    serial_ = std::make_shared<Serial>(std::move(serial_irq), std::move(console));
    TRY(pio_bus_.insert(layout::kSerialPort, Serial::kPortCount, serial_));

    // The keyboard controller's reset line: another way for the guest to restart (reboot=k).
    auto i8042 = std::make_shared<I8042>([this] { handle_reset_request(); });
    TRY(pio_bus_.insert(I8042::kBasePort, I8042::kPortCount, i8042));
    return {};
}

Result<void> Machine::create_vcpus() {
    for (uint32_t index = 0; index < config_.vcpus; ++index) {
        vcpus_.push_back(std::make_unique<Vcpu>(TRY(vm_.create_vcpu(index))));
    }
    return {};
}

Result<Machine::MmioSlot> Machine::allocate_virtio_mmio_slot() {
    uint32_t irq = layout::kFirstVirtioIrq + virtio_slots_;
    uint64_t base = layout::kVirtioMmioBase + uint64_t{virtio_slots_} * layout::kVirtioMmioSize;
    if (irq >= layout::kIoapicPins || base + layout::kVirtioMmioSize > layout::kIoapicBase) {
        return make_error("no free virtio-mmio slot: out of IOAPIC pins");
    }
    IrqLine irq_line = TRY(IrqLine::create(irq));
    TRY(vm_.add_irqfd(irq_line.fd(), irq));
    virtio_cmdline_ += fmt::format(" virtio_mmio.device=4K@{:#x}:{}", base, irq);
    ++virtio_slots_;
    return MmioSlot{base, irq, std::move(irq_line)};
}

Result<void> Machine::attach_mmio(uint64_t base, uint64_t len, std::shared_ptr<BusDevice> device) {
    return mmio_bus_.insert(base, len, std::move(device));
}

Result<void> Machine::add_mmio_notifier(uint64_t addr, uint32_t value, std::function<void()> on_kick) {
    UniqueFd fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!fd) return errno_error("eventfd for mmio notifier");
    TRY(vm_.add_ioeventfd(addr, sizeof(uint32_t), value, fd.get()));
    int raw_fd = fd.get();
    TRY(event_loop_.add(raw_fd, EPOLLIN, [raw_fd, on_kick = std::move(on_kick)](uint32_t) {
        uint64_t kicks;
        (void)!::read(raw_fd, &kicks, sizeof kicks);  // reset the counter, or level-triggered epoll spins
        on_kick();
    }));
    notifier_fds_.push_back(std::move(fd));
    return {};
}

std::string Machine::kernel_cmdline() const {
    std::string cmdline = std::string(kDefaultCmdline) + virtio_cmdline_;
    if (!config_.cmdline_extra.empty()) cmdline += " " + config_.cmdline_extra;
    return cmdline;
}

Result<void> Machine::setup_vcpus(const boot::BootSetup& boot) {
    std::vector<kvm_cpuid_entry2> supported_cpuid = TRY(kvm_.supported_cpuid());
    std::vector<uint32_t> msr_indices = TRY(kvm_.msr_index_list());
    bool tsc_deadline_timer = kvm_.check_extension(KVM_CAP_TSC_DEADLINE_TIMER) > 0;

    for (const auto& vcpu : vcpus_) {
        auto context = fmt::format("vCPU {}", vcpu->index());
        auto setup = [&]() -> Result<void> {
            TRY(vcpu->set_cpuid(x86::vcpu_cpuid(supported_cpuid, vcpu->index(), tsc_deadline_timer)));
            std::vector<uint32_t> refused = TRY(x86::setup_msrs(*vcpu, msr_indices));
            if (vcpu->index() == 0 && !refused.empty()) {
                std::string list;
                for (uint32_t msr : refused)
                    list += fmt::format(" {:#x}", msr);
                fmt::print(stderr, "sandlot-vmm: warning: KVM refused the reset value of MSR{}\n", list);
            }
            TRY(x86::setup_fpu(*vcpu));
            TRY(x86::setup_lapic(*vcpu));
            return {};
        };
        if (auto done = setup(); !done) return std::unexpected(with_context(done.error(), context));
    }

    // Only the boot vCPU starts at the kernel entry; the others wait for the guest's INIT/SIPI.
    const Vcpu& boot_vcpu = *vcpus_.front();
    switch (boot.mode) {
        case boot::EntryMode::Pvh32:
            return x86::setup_pvh_entry(boot_vcpu, boot.entry, boot.boot_info);
        case boot::EntryMode::Linux64:
            return x86::setup_linux64_entry(boot_vcpu, boot.entry, boot.boot_info);
    }
    return make_error("unknown kernel entry mode");
}

Result<int> Machine::run() {
    boot::BootConfig boot_config{config_.kernel, config_.initrds, kernel_cmdline()};
    boot::BootSetup boot = TRY(boot::load_kernel(memory_, boot_config));
    TRY(x86::write_mp_table(memory_, config_.vcpus));
    TRY(x86::arm_reset_flag(memory_));
    TRY(setup_vcpus(boot));
    TRY(install_kick_handler());

    std::thread event_thread([this] {
        pthread_setname_np(pthread_self(), "events");
        if (auto ran = event_loop_.run(); !ran) stop(1, "event loop failed: " + ran.error().to_string());
    });
    for (const auto& vcpu : vcpus_) {
        try {
            vcpu_threads_.emplace_back([this, v = vcpu.get()] { vcpu_thread(*v); });
        } catch (const std::system_error& e) {  // std::thread reports failure only this way
            stop(1, fmt::format("error: cannot start vCPU {} thread: {}", vcpu->index(), e.what()));
            break;
        }
    }

    // Sleep until someone ends the VM, then stop everyone: immediate_exit makes a vCPU that is about to
    // enter KVM_RUN return at once; the signal knocks out one that is already inside.
    {
        std::unique_lock lock(stop_mutex_);
        stop_cv_.wait(lock, [this] { return exit_status_.load() != -1; });
    }
    for (const auto& vcpu : vcpus_)
        vcpu->set_immediate_exit();
    for (auto& thread : vcpu_threads_)
        pthread_kill(thread.native_handle(), kick_signal());
    event_loop_.stop();
    for (auto& thread : vcpu_threads_)
        thread.join();
    event_thread.join();
    serial_->flush();
    return exit_status_.load();
}

void Machine::stop(int status, const std::string& message, const Vcpu* crashed_vcpu) {
    int running = -1;
    if (!exit_status_.compare_exchange_strong(running, status)) return;

    if (!message.empty()) {
        serial_->flush();  // the guest's last console lines come before our report
        std::string report = "sandlot-vmm: " + message + "\n";
        if (crashed_vcpu) {
            auto regs = crashed_vcpu->get_regs();
            auto sregs = crashed_vcpu->get_sregs();
            if (regs && sregs) {
                report += x86::format_registers(*regs, *sregs);
                // On AMD, KVM INITs a vCPU that triple-faults before it exits: the state is the reset
                // vector's.
                if (regs->rip == 0xfff0 && sregs->cs.base == 0xffff0000) {
                    report +=
                        "  (KVM reset this vCPU when it faulted: these are not the faulting registers)\n";
                }
            }
        }
        fmt::print(stderr, "{}", report);
    }
    // Taking the lock orders this wake-up after run()'s check of exit_status_, so it cannot be lost.
    { std::lock_guard lock(stop_mutex_); }
    stop_cv_.notify_all();
}

void Machine::vcpu_thread(Vcpu& vcpu) {
    pthread_setname_np(pthread_self(), fmt::format("vcpu{}", vcpu.index()).c_str());
    sigset_t kick;
    sigemptyset(&kick);
    sigaddset(&kick, kick_signal());
    pthread_sigmask(SIG_UNBLOCK, &kick, nullptr);

    while (exit_status_.load() == -1) {
        if (auto ran = vcpu.run(); !ran) {
            // EINTR: kicked (or some other signal); the loop condition says whether to go on. EAGAIN: retry.
            if (ran.error().code == EINTR || ran.error().code == EAGAIN) continue;
            stop(1, fmt::format("error: vCPU {}: {}", vcpu.index(), ran.error().to_string()), &vcpu);
            return;
        }
        if (!handle_exit(vcpu)) return;
    }
}

bool Machine::handle_exit(Vcpu& vcpu) {
    kvm_run& run = *vcpu.run_state();
    uint32_t index = vcpu.index();
    switch (run.exit_reason) {
        case KVM_EXIT_IO:
            handle_io(run);
            return true;
        case KVM_EXIT_MMIO:
            handle_mmio(run);
            return true;
        case KVM_EXIT_HLT:
            // The in-kernel LAPIC handles HLT; if KVM hands it to us nothing can ever wake this vCPU.
            stop(0);
            return false;
        case KVM_EXIT_SHUTDOWN:
            return handle_shutdown(vcpu);
        case KVM_EXIT_SYSTEM_EVENT:
            switch (run.system_event.type) {
                case KVM_SYSTEM_EVENT_SHUTDOWN:
                case KVM_SYSTEM_EVENT_RESET:
                    stop(0);
                    return false;
                case KVM_SYSTEM_EVENT_CRASH:
                    stop(1, fmt::format("guest crashed: vCPU {} reported a crash", index), &vcpu);
                    return false;
                default:
                    stop(1,
                         fmt::format("guest crashed: unexpected system event {} on vCPU {}",
                                     run.system_event.type, index),
                         &vcpu);
                    return false;
            }
        case KVM_EXIT_INTERNAL_ERROR:
            stop(1,
                 fmt::format("guest crashed: KVM internal error (suberror {}) on vCPU {}",
                             run.internal.suberror, index),
                 &vcpu);
            return false;
        case KVM_EXIT_FAIL_ENTRY:
            stop(1,
                 fmt::format("guest crashed: vCPU {} could not enter the guest (hardware reason {:#x})",
                             index, run.fail_entry.hardware_entry_failure_reason),
                 &vcpu);
            return false;
        default:
            stop(1, fmt::format("guest crashed: unexpected KVM exit {} on vCPU {}", run.exit_reason, index),
                 &vcpu);
            return false;
    }
}

void Machine::handle_io(kvm_run& run) {
    const auto& io = run.io;
    // KVM puts the data in the kvm_run mapping; check it stays inside, as cheap insurance.
    uint64_t data_len = uint64_t{io.size} * io.count;
    if (io.data_offset > kvm_.vcpu_mmap_size() || data_len > kvm_.vcpu_mmap_size() - io.data_offset) return;
    uint8_t* data = reinterpret_cast<uint8_t*>(&run) + io.data_offset;

    for (uint32_t i = 0; i < io.count; ++i) {
        std::span<uint8_t> item(data + uint64_t{i} * io.size, io.size);
        if (io.direction == KVM_EXIT_IO_OUT) {
            if (!pio_bus_.write(io.port, item)) report_unhandled(false, io.port);
        } else if (!pio_bus_.read(io.port, item)) {
            std::fill(item.begin(), item.end(), 0xff);  // an empty ISA bus floats high
            report_unhandled(false, io.port);
        }
    }
}

void Machine::handle_mmio(kvm_run& run) {
    auto& mmio = run.mmio;
    std::span<uint8_t> data(mmio.data, std::min<size_t>(mmio.len, sizeof(mmio.data)));
    if (mmio.is_write) {
        if (!mmio_bus_.write(mmio.phys_addr, data)) report_unhandled(true, mmio.phys_addr);
    } else if (!mmio_bus_.read(mmio.phys_addr, data)) {
        std::fill(data.begin(), data.end(), 0);
        report_unhandled(true, mmio.phys_addr);
    }
}

bool Machine::handle_shutdown(Vcpu& vcpu) {
    // A triple fault: Linux's way to restart (reboot=t), after an orderly reboot or a panic alike. The BIOS
    // reset flag in guest memory says which (see vmm/arch/x86/reset_flag.h for why not the vCPU state).
    switch (x86::read_reset_cause(memory_)) {
        case x86::ResetCause::OrderlyRestart:
            stop(0);
            break;
        case x86::ResetCause::Panic:
            stop(1, fmt::format("guest crashed: kernel panic (vCPU {} reset the machine)", vcpu.index()));
            break;
        case x86::ResetCause::Unexplained:
            stop(1, fmt::format("guest crashed: triple fault on vCPU {}", vcpu.index()), &vcpu);
            break;
    }
    return false;
}

void Machine::handle_reset_request() {
    // The guest pulsed the i8042 reset line. Linux's panic path marks the reset flag warm; anything else is a
    // reset the guest asked for.
    if (x86::read_reset_cause(memory_) == x86::ResetCause::Panic) {
        stop(1, "guest crashed: kernel panic (reset through the keyboard controller)");
    } else {
        stop(0);
    }
}

void Machine::report_unhandled(bool mmio, uint64_t addr) {
    if (!mmio && quietly_absent_port(addr)) return;
    std::lock_guard lock(unhandled_mutex_);
    uint64_t key = addr | (mmio ? 1ull << 63 : 0);
    if (unhandled_reported_.size() >= kMaxUnhandledReported || !unhandled_reported_.insert(key).second)
        return;
    if (mmio) {
        fmt::print(stderr, "sandlot-vmm: guest accessed unemulated MMIO address {:#x} (ignored)\n", addr);
    } else {
        fmt::print(stderr, "sandlot-vmm: guest accessed unemulated I/O port {:#x} (ignored)\n", addr);
    }
}

}  // namespace sandlot::vmm
