#include "vmm/kvm/vcpu.h"

#include <sys/ioctl.h>
#include <sys/mman.h>

#include <algorithm>

#include "vmm/kvm/kvm_flex.h"

namespace sandlot::vmm {

Vcpu::Vcpu(Vcpu&& other) noexcept
    : fd_(std::move(other.fd_)),
      run_(std::exchange(other.run_, nullptr)),
      run_size_(other.run_size_),
      index_(other.index_) {}

Vcpu::~Vcpu() {
    if (run_) munmap(run_, run_size_);
}

Result<void> Vcpu::run() const {
    if (ioctl(fd_.get(), KVM_RUN, 0) < 0) return errno_error("KVM_RUN");
    return {};
}

void Vcpu::set_immediate_exit() const {
    // Another thread writes this byte while the vCPU thread may be inside KVM_RUN; KVM reads it on entry.
    __atomic_store_n(&run_->immediate_exit, 1, __ATOMIC_SEQ_CST);
}

Result<kvm_regs> Vcpu::get_regs() const {
    kvm_regs regs{};
    if (ioctl(fd_.get(), KVM_GET_REGS, &regs) < 0) return errno_error("KVM_GET_REGS");
    return regs;
}

Result<void> Vcpu::set_regs(const kvm_regs& regs) const {
    if (ioctl(fd_.get(), KVM_SET_REGS, &regs) < 0) return errno_error("KVM_SET_REGS");
    return {};
}

Result<kvm_sregs> Vcpu::get_sregs() const {
    kvm_sregs sregs{};
    if (ioctl(fd_.get(), KVM_GET_SREGS, &sregs) < 0) return errno_error("KVM_GET_SREGS");
    return sregs;
}

Result<void> Vcpu::set_sregs(const kvm_sregs& sregs) const {
    if (ioctl(fd_.get(), KVM_SET_SREGS, &sregs) < 0) return errno_error("KVM_SET_SREGS");
    return {};
}

Result<void> Vcpu::set_fpu(const kvm_fpu& fpu) const {
    if (ioctl(fd_.get(), KVM_SET_FPU, &fpu) < 0) return errno_error("KVM_SET_FPU");
    return {};
}

Result<kvm_lapic_state> Vcpu::get_lapic() const {
    kvm_lapic_state lapic{};
    if (ioctl(fd_.get(), KVM_GET_LAPIC, &lapic) < 0) return errno_error("KVM_GET_LAPIC");
    return lapic;
}

Result<void> Vcpu::set_lapic(const kvm_lapic_state& lapic) const {
    if (ioctl(fd_.get(), KVM_SET_LAPIC, &lapic) < 0) return errno_error("KVM_SET_LAPIC");
    return {};
}

Result<void> Vcpu::set_cpuid(std::span<const kvm_cpuid_entry2> entries) const {
    KvmFlexBuffer<KvmCpuid2Header, kvm_cpuid_entry2> cpuid(entries.size());
    cpuid.set_header({.nent = static_cast<uint32_t>(entries.size()), .padding = 0});
    cpuid.set_entries(entries);
    if (ioctl(fd_.get(), kIoctlSetCpuid2, cpuid.data()) < 0) return errno_error("KVM_SET_CPUID2");
    return {};
}

Result<size_t> Vcpu::set_msrs(std::span<const kvm_msr_entry> entries) const {
    KvmFlexBuffer<KvmMsrsHeader, kvm_msr_entry> msrs(entries.size());
    msrs.set_header({.nmsrs = static_cast<uint32_t>(entries.size()), .pad = 0});
    msrs.set_entries(entries);
    int set = ioctl(fd_.get(), kIoctlSetMsrs, msrs.data());
    if (set < 0) return errno_error("KVM_SET_MSRS");
    return static_cast<size_t>(set);
}

}  // namespace sandlot::vmm
