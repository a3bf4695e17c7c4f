// The in-kernel local APIC: the wiring firmware leaves for the kernel.
#pragma once

#include <linux/kvm.h>

#include <cstdint>

#include "proto/base/error.h"
#include "vmm/kvm/vcpu.h"

namespace sandlot::vmm::x86 {

inline constexpr uint32_t kApicLvtLint0 = 0x350;
inline constexpr uint32_t kApicLvtLint1 = 0x360;

inline constexpr uint32_t kApicDeliveryModeMask = 0x700;
inline constexpr uint32_t kApicDeliveryModeNmi = 0x400;
inline constexpr uint32_t kApicDeliveryModeExtInt = 0x700;

// Registers of a KVM_GET_LAPIC snapshot, by offset in the APIC page. Offsets past the page read 0.
uint32_t lapic_reg(const kvm_lapic_state& lapic, uint32_t offset);
void set_lapic_reg(kvm_lapic_state& lapic, uint32_t offset, uint32_t value);

// LINT0 delivers ExtINT (the 8259 PIC's output) and LINT1 delivers NMI: the "virtual wire" wiring that the
// MP specification says firmware sets up. Other LVT bits (the masks) keep their reset values.
Result<void> setup_lapic(const Vcpu& vcpu);

}  // namespace sandlot::vmm::x86
