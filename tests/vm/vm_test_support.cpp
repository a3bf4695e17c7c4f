#include "tests/vm/vm_test_support.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "host/lib/paths.h"
#include "vmm/kvm/host_kvm.h"

namespace sandlot::vmtest {

std::string kvm_unusable_reason() {
    switch (vmm::detect_host_kvm()) {
        case vmm::HostKvmKind::Hardware:
            return "";
        case vmm::HostKvmKind::Pvm:
            return "/dev/kvm is PVM (kvm_pvm), which cannot boot the stock guest kernel; run the VM suite in "
                   "the nested rig (make test does this by itself)";
        case vmm::HostKvmKind::None:
            return "no usable /dev/kvm on this host";
    }
    return "unknown KVM state";
}

host::SandboxOptions default_options() {
    host::SandboxOptions options;
    options.memory_mib = 256;
    options.ready_timeout = std::chrono::seconds(120);  // generous: nested virtualization under emulation
    return options;
}

void expect_clean_shutdown(host::Sandbox& sandbox) {
    auto status = sandbox.shutdown();
    ASSERT_TRUE(status) << status.error().to_string();
    EXPECT_EQ(*status, 0) << "an orderly guest power-off must end sandlot-vmm with status 0";
}

std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

std::string temp_dir() {
    std::string templ = std::filesystem::temp_directory_path().string() + "/sandlot-vmtest-XXXXXX";
    if (!mkdtemp(templ.data())) return "/tmp";
    return templ;
}

}  // namespace sandlot::vmtest
