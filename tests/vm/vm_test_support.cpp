#include "tests/vm/vm_test_support.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "host/lib/paths.h"
#include "vmm/kvm/host_kvm.h"

namespace sandlot::vmtest {

std::string kvm_unusable_reason() {
    switch (vmm::detect_host_kvm()) {
        case vmm::HostKvmKind::Hardware: return "";
        case vmm::HostKvmKind::Pvm:
            return "/dev/kvm is PVM (kvm_pvm), which cannot boot the stock guest kernel; run the VM suite in "
                   "the nested rig (make test does this by itself)";
        case vmm::HostKvmKind::None: return "no usable /dev/kvm on this host";
    }
    return "unknown KVM state";
}

host::SandboxOptions default_options() {
    host::SandboxOptions options;
    options.memory_mib = 256;
    options.ready_timeout = std::chrono::seconds(120);  // generous: nested virtualization under emulation
    return options;
}

CommandResult run_command(const std::vector<std::string>& argv, const std::string& input) {
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0) return {};
    pid_t pid = fork();
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        dup2(out[1], 2);
        std::vector<char*> cargv;
        for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
        cargv.push_back(nullptr);
        execvp(cargv[0], cargv.data());
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    (void)!write(in[1], input.data(), input.size());
    close(in[1]);
    CommandResult result;
    char buf[4096];
    ssize_t n;
    while ((n = read(out[0], buf, sizeof buf)) > 0) result.output.append(buf, n);
    close(out[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    result.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return result;
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
