#include "vmm/kvm/host_kvm.h"

#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

namespace sandlot::vmm {

namespace {

// True when any "flags" line of /proc/cpuinfo lists vmx or svm.
bool cpu_has_hardware_virtualization() {
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::string line;
    while (std::getline(cpuinfo, line)) {
        if (!line.starts_with("flags")) continue;
        std::istringstream words(line.substr(line.find(':') + 1));
        std::string flag;
        while (words >> flag) {
            if (flag == "vmx" || flag == "svm") return true;
        }
    }
    return false;
}

}  // namespace

HostKvmKind detect_host_kvm() {
    if (access("/dev/kvm", F_OK) != 0) return HostKvmKind::None;
    if (access("/sys/module/kvm_pvm", F_OK) == 0 && !cpu_has_hardware_virtualization())
        return HostKvmKind::Pvm;
    return HostKvmKind::Hardware;
}

}  // namespace sandlot::vmm
