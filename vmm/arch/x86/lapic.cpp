#include "vmm/arch/x86/lapic.h"

#include <cstring>

namespace sandlot::vmm::x86 {

namespace {

uint32_t with_delivery_mode(uint32_t lvt, uint32_t mode) {
    return (lvt & ~kApicDeliveryModeMask) | mode;
}

}  // namespace

uint32_t lapic_reg(const kvm_lapic_state& lapic, uint32_t offset) {
    uint32_t value = 0;
    if (offset <= sizeof(lapic.regs) - sizeof(value)) std::memcpy(&value, lapic.regs + offset, sizeof(value));
    return value;
}

void set_lapic_reg(kvm_lapic_state& lapic, uint32_t offset, uint32_t value) {
    if (offset <= sizeof(lapic.regs) - sizeof(value)) std::memcpy(lapic.regs + offset, &value, sizeof(value));
}

Result<void> setup_lapic(const Vcpu& vcpu) {
    kvm_lapic_state lapic = TRY(vcpu.get_lapic());
    set_lapic_reg(lapic, kApicLvtLint0,
                  with_delivery_mode(lapic_reg(lapic, kApicLvtLint0), kApicDeliveryModeExtInt));
    set_lapic_reg(lapic, kApicLvtLint1,
                  with_delivery_mode(lapic_reg(lapic, kApicLvtLint1), kApicDeliveryModeNmi));
    return vcpu.set_lapic(lapic);
}

}  // namespace sandlot::vmm::x86
