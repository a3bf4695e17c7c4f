// One virtual machine, start to finish: KVM, guest memory, the in-kernel irqchip, the legacy devices (serial
// console, i8042 reset), virtio-mmio plumbing for device models, the vCPU threads and the event-loop thread.
//
// Lifetime:   create()  ->  allocate_virtio_mmio_slot() / attach_mmio() / add_mmio_notifier() per device
//             ->  run() (blocks until the guest restarts, crashes, or KVM fails)
//
// The guest kernel command line is kDefaultCmdline, then one virtio_mmio.device=... per slot, then
// MachineConfig::cmdline_extra. The defaults:
//   console=ttyS0       kernel messages go to the emulated 16550A (the VMM's console output)
//   reboot=t,c,panic_w  restart by triple fault (a KVM_EXIT_SHUTDOWN the VMM sees at once; there is no BIOS
//                       to reset into), marking an orderly restart "cold" and a panic "warm" in the BIOS
//                       reset flag, which is how the VMM tells them apart (vmm/arch/x86/reset_flag.h)
//   panic=-1            reboot immediately on panic, so a crashed guest ends the VM instead of hanging
//   io_delay=none       no port-0x80 writes for I/O delays: each would be a VM exit
//   8250.nr_uarts=1     only ttyS0 exists; no probing of ports nobody emulates
// A guest reboot ends the VM; there is no reset-and-continue. reboot(RB_AUTOBOOT) is how a guest ends the VM
// in an orderly way: without ACPI there is nothing to power off, so Linux turns a power-off into a halt, and
// a halted guest sleeps in the in-kernel LAPIC forever without the VMM seeing an exit.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "proto/base/error.h"
#include "proto/base/unique_fd.h"
#include "vmm/boot/loader.h"
#include "vmm/devices/bus.h"
#include "vmm/devices/irq_line.h"
#include "vmm/devices/serial/serial.h"
#include "vmm/event_loop.h"
#include "vmm/kvm/kvm.h"
#include "vmm/kvm/vcpu.h"
#include "vmm/memory/guest_memory.h"

namespace sandlot::vmm {

struct MachineConfig {
    std::string kernel;                // ELF vmlinux (PVH) or bzImage
    std::vector<std::string> initrds;  // initramfs images, concatenated in order
    std::string cmdline_extra;         // appended to the default command line
    uint64_t memory_mib = 256;
    uint32_t vcpus = 1;
    std::string console = "stdout";  // stdout | none | file:PATH
    bool allow_pvm = false;          // boot on a PVM /dev/kvm anyway (the kernel must be PVM-enabled)
};

// The default kernel command line, before virtio_mmio devices and the caller's additions.
inline constexpr const char* kDefaultCmdline =
    "console=ttyS0 reboot=t,c,panic_w panic=-1 io_delay=none 8250.nr_uarts=1";

// Opens the console output: a dup of stdout, a file (created or truncated), or an invalid fd for "none".
Result<UniqueFd> open_console(const std::string& console);

class Machine {
  public:
    // Checks the host's KVM, maps guest memory, creates the VM with its irqchip, the vCPUs, the serial
    // console and the i8042.
    static Result<std::unique_ptr<Machine>> create(const MachineConfig& config);
    ~Machine();

    Machine(const Machine&) = delete;
    Machine& operator=(const Machine&) = delete;

    const GuestMemory& memory() const { return memory_; }
    EventLoop& event_loop() { return event_loop_; }

    // Generic virtio-mmio plumbing for device models.
    struct MmioSlot {
        uint64_t base;     // guest-physical base of the device's 4 KiB register window
        uint32_t irq;      // IOAPIC pin / GSI
        IrqLine irq_line;  // already bound to `irq` with KVM_IRQFD
    };
    // The next 4 KiB slot at layout::kVirtioMmioBase and the next IRQ from layout::kFirstVirtioIrq; adds
    // "virtio_mmio.device=4K@0x<base>:<irq>" to the kernel command line. Before run() only.
    Result<MmioSlot> allocate_virtio_mmio_slot();
    // Guest accesses to [base, base+len) go to `device` (on vCPU threads). Before run() only.
    Result<void> attach_mmio(uint64_t base, uint64_t len, std::shared_ptr<BusDevice> device);
    // A 4-byte guest write of `value` to `addr` is caught by KVM (ioeventfd) and `on_kick` runs on the
    // event-loop thread. Before run() only.
    Result<void> add_mmio_notifier(uint64_t addr, uint32_t value, std::function<void()> on_kick);

    // Loads the kernel (with the final command line) and the MP table, sets up the vCPUs, runs one thread
    // per vCPU plus the event-loop thread, and blocks until the guest ends. Returns the process exit status:
    // 0 when the guest restarted or powered off in an orderly way, 1 when it crashed (a message and the
    // registers go to stderr). Call once.
    Result<int> run();

    // The final kernel command line (for tests and diagnostics).
    std::string kernel_cmdline() const;

  private:
    Machine(MachineConfig config, Kvm kvm, GuestMemory memory, Vm vm, EventLoop event_loop);

    Result<void> create_devices();
    Result<void> create_vcpus();
    Result<void> setup_vcpus(const boot::BootSetup& boot);

    void vcpu_thread(Vcpu& vcpu);
    // Handles one exit. Returns false when the vCPU must stop.
    bool handle_exit(Vcpu& vcpu);
    void handle_io(kvm_run& run);
    void handle_mmio(kvm_run& run);
    bool handle_shutdown(Vcpu& vcpu);
    void handle_reset_request();

    // Ends the VM with exit status `status`; callable from any thread. The first call wins: it prints
    // `message` (with "sandlot-vmm: " in front, and `crashed_vcpu`'s registers if given; call from that
    // vCPU's thread then) and wakes run(), which stops the vCPUs and the event loop. Later calls do nothing.
    void stop(int status, const std::string& message = {}, const Vcpu* crashed_vcpu = nullptr);
    // Unemulated port or MMIO address: reported once per address, for the first few addresses.
    void report_unhandled(bool mmio, uint64_t addr);

    MachineConfig config_;
    Kvm kvm_;
    GuestMemory memory_;  // declared before vm_: the VM (and its memory slots) goes away first
    Vm vm_;
    EventLoop event_loop_;
    Bus pio_bus_;
    Bus mmio_bus_;
    std::shared_ptr<Serial> serial_;
    std::vector<std::unique_ptr<Vcpu>> vcpus_;

    std::string virtio_cmdline_;  // " virtio_mmio.device=..." per slot
    uint32_t virtio_slots_ = 0;
    std::vector<UniqueFd> notifier_fds_;  // ioeventfds; kept open for the VM's life

    std::atomic<int> exit_status_{-1};  // -1 while running; set once, by stop()
    std::mutex stop_mutex_;             // with stop_cv_: run() sleeps until exit_status_ is set
    std::condition_variable stop_cv_;
    std::vector<std::thread> vcpu_threads_;  // touched by run() only

    std::mutex unhandled_mutex_;
    std::unordered_set<uint64_t> unhandled_reported_;  // "log once" memory, capped
};

}  // namespace sandlot::vmm
