// One KVM vCPU: its fd and its shared kvm_run page (mapped, unmapped on destruction).
// Register accessors are one ioctl each. All calls but kick() belong on the thread that runs the vCPU.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <span>
#include <vector>

#include "proto/base/error.h"
#include "proto/base/unique_fd.h"

namespace sandlot::vmm {

class Vcpu {
  public:
    Vcpu(Vcpu&& other) noexcept;
    Vcpu& operator=(Vcpu&&) = delete;
    Vcpu(const Vcpu&) = delete;
    Vcpu& operator=(const Vcpu&) = delete;
    ~Vcpu();

    uint32_t index() const { return index_; }
    // The exit information KVM writes before KVM_RUN returns.
    kvm_run* run_state() const { return run_; }

    // KVM_RUN. An error with code EINTR means a signal (or immediate_exit) interrupted it.
    Result<void> run() const;
    // Makes the next and any current KVM_RUN return EINTR once the caller also signals the thread. Safe to
    // call from any thread.
    void set_immediate_exit() const;

    Result<kvm_regs> get_regs() const;
    Result<void> set_regs(const kvm_regs& regs) const;
    Result<kvm_sregs> get_sregs() const;
    Result<void> set_sregs(const kvm_sregs& sregs) const;
    Result<void> set_fpu(const kvm_fpu& fpu) const;
    Result<kvm_lapic_state> get_lapic() const;
    Result<void> set_lapic(const kvm_lapic_state& lapic) const;
    Result<void> set_cpuid(std::span<const kvm_cpuid_entry2> entries) const;
    // KVM_SET_MSRS stops at the first MSR it rejects; returns how many (from the front) were set.
    Result<size_t> set_msrs(std::span<const kvm_msr_entry> entries) const;

  private:
    friend class Vm;
    Vcpu(UniqueFd fd, kvm_run* run, size_t run_size, uint32_t index)
        : fd_(std::move(fd)), run_(run), run_size_(run_size), index_(index) {}

    UniqueFd fd_;
    kvm_run* run_ = nullptr;
    size_t run_size_ = 0;
    uint32_t index_ = 0;
};

}  // namespace sandlot::vmm
