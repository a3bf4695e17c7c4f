#include "vmm/arch/x86/cpuid.h"

namespace sandlot::vmm::x86 {

namespace {

constexpr uint32_t kLeafFeatures = 0x1;
constexpr uint32_t kLeafPerfMonitoring = 0xa;
constexpr uint32_t kLeafExtendedTopology = 0xb;
constexpr uint32_t kLeafExtendedTopologyV2 = 0x1f;

constexpr uint32_t kEcxHypervisor = 1u << 31;
constexpr uint32_t kEcxTscDeadlineTimer = 1u << 24;
constexpr int kEbxApicIdShift = 24;

}  // namespace

std::vector<kvm_cpuid_entry2> vcpu_cpuid(std::span<const kvm_cpuid_entry2> supported, uint32_t apic_id,
                                         bool tsc_deadline_timer) {
    std::vector<kvm_cpuid_entry2> entries(supported.begin(), supported.end());
    for (kvm_cpuid_entry2& entry : entries) {
        switch (entry.function) {
            case kLeafFeatures:
                entry.ebx = (entry.ebx & 0x00ff'ffff) | ((apic_id & 0xff) << kEbxApicIdShift);
                entry.ecx |= kEcxHypervisor;
                if (tsc_deadline_timer) entry.ecx |= kEcxTscDeadlineTimer;
                break;
            case kLeafPerfMonitoring:
                entry.eax = entry.ebx = entry.ecx = entry.edx = 0;
                break;
            case kLeafExtendedTopology:
            case kLeafExtendedTopologyV2:
                entry.edx = apic_id;
                break;
            default:
                break;
        }
    }
    return entries;
}

}  // namespace sandlot::vmm::x86
