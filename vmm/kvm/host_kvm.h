// What kind of KVM this host offers. Hardware KVM (VMX/SVM) boots stock Linux kernels; PVM (the kvm_pvm
// module: KVM without hardware virtualization) boots only guest kernels built for it, so the VMM refuses it
// unless asked. One function, shared by the VMM and the host library.
#pragma once

#include <string_view>

namespace sandlot::vmm {

enum class HostKvmKind {
    None,      // no /dev/kvm
    Hardware,  // VMX or SVM
    Pvm,       // kvm_pvm loaded and the CPU shows no VMX/SVM flag
};

HostKvmKind detect_host_kvm();

// The one-line explanation printed when the VMM refuses a PVM host (without the "sandlot-vmm: error: "
// prefix).
inline constexpr std::string_view kPvmRefusal =
    "this host's /dev/kvm is PVM (kvm_pvm), which boots only PVM-enabled guest kernels; stock Linux kernels "
    "will not boot here. Use a hardware-KVM host, or run inside the nested rig (tools/rig). Pass --allow-pvm "
    "if your kernel is PVM-enabled.";

}  // namespace sandlot::vmm
