#include "tests/vm/vm_test_support.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
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
    // SANDLOT_TEST_CONSOLE=FILE keeps the guest console (agentd logs there) past the runtime directory.
    if (const char* c = std::getenv("SANDLOT_TEST_CONSOLE")) options.console = std::string("file:") + c;
    return options;
}

void expect_clean_shutdown(host::Sandbox& sandbox) {
    auto status = sandbox.shutdown();
    ASSERT_TRUE(status) << status.error().to_string();
    EXPECT_EQ(*status, 0) << "an orderly guest power-off must end sandlot-vmm with status 0";
}

namespace {

// A "Vm...:" figure of a live process's /proc status in KiB; 0 once it is a zombie (its memory is gone).
uint64_t vm_status_kib(pid_t pid, const std::string& field) {
    // Read with read(2): libstdc++ streams throw when the process exits halfway through (ESRCH).
    std::string text;
    int fd = ::open(("/proc/" + std::to_string(pid) + "/status").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        char buf[4096];
        ssize_t n;
        while ((n = ::read(fd, buf, sizeof buf)) > 0)
            text.append(buf, static_cast<size_t>(n));
        ::close(fd);
    }
    std::istringstream status(text);
    std::string line;
    while (std::getline(status, line)) {
        if (line.starts_with(field + ":")) return std::strtoull(line.c_str() + field.size() + 1, nullptr, 10);
    }
    return 0;
}

uint64_t peak_rss_kib(pid_t pid) {
    return vm_status_kib(pid, "VmHWM");
}

}  // namespace

void exec_sandlot(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {host::bin_dir() + "/sandlot"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargv;
    for (auto& a : argv)
        cargv.push_back(a.data());
    cargv.push_back(nullptr);
    execv(cargv[0], cargv.data());
    _exit(127);
}

SandlotRun run_sandlot(const std::vector<std::string>& args, const SandlotRunOptions& options) {
    SandlotRun run;
    int in[2], out[2], err[2];
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
        run.err = "pipe failed";
        return run;
    }
    auto start = std::chrono::steady_clock::now();
    pid_t pid = fork();
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        dup2(err[1], 2);
        for (const auto& e : options.env)
            putenv(const_cast<char*>(e.c_str()));
        exec_sandlot(args);
    }
    close(in[0]);
    close(out[1]);
    close(err[1]);
    signal(SIGPIPE, SIG_IGN);
    fcntl(in[1], F_SETFL, O_NONBLOCK);

    size_t input_done = 0;
    if (options.input.empty()) {
        close(in[1]);
        in[1] = -1;
    }
    std::vector<char> buffer(256 * 1024);
    auto deadline = start + options.timeout;
    bool killed = false;
    std::optional<std::chrono::steady_clock::time_point> resume_reading;
    // After a kill, whatever still holds the pipes (a stuck grandchild) gets a few seconds, not forever: a
    // test must fail, never hang the suite.
    constexpr auto kGrace = std::chrono::seconds(10);
    while (out[0] >= 0 || err[0] >= 0) {
        if (killed && std::chrono::steady_clock::now() > deadline + kGrace) break;
        bool paused = resume_reading && std::chrono::steady_clock::now() < *resume_reading;
        pollfd fds[3] = {{paused ? -1 : out[0], POLLIN, 0}, {err[0], POLLIN, 0}, {in[1], POLLOUT, 0}};
        poll(fds, 3, 100);
        run.peak_rss_kib = std::max(run.peak_rss_kib, peak_rss_kib(pid));
        if (!killed && std::chrono::steady_clock::now() > deadline) {
            kill(pid, SIGKILL);
            killed = true;
        }
        if (fds[2].revents) {
            ssize_t n = write(in[1], options.input.data() + input_done, options.input.size() - input_done);
            if (n > 0) input_done += static_cast<size_t>(n);
            if (n < 0 || input_done == options.input.size()) {
                close(in[1]);
                in[1] = -1;
            }
        }
        for (int i = 0; i < 2; ++i) {
            if (!fds[i].revents) continue;
            int& fd = i == 0 ? out[0] : err[0];
            ssize_t n = read(fd, buffer.data(), buffer.size());
            if (n <= 0) {
                close(fd);
                fd = -1;
                continue;
            }
            if (i == 1) {
                run.err.append(buffer.data(), static_cast<size_t>(n));
                continue;
            }
            if (run.stdout_bytes == 0) {
                run.rss_at_first_output_kib = vm_status_kib(pid, "VmRSS");
                resume_reading = std::chrono::steady_clock::now() + options.pause_after_first_output;
            }
            run.stdout_bytes += static_cast<uint64_t>(n);
            if (options.keep_stdout) run.out.append(buffer.data(), static_cast<size_t>(n));
            if (options.on_stdout) options.on_stdout(pid, run.out);
        }
    }
    for (int fd : {in[1], out[0], err[0]})
        if (fd >= 0) close(fd);
    int status = 0;
    // The pipes are closed once sandlot exits: sample its memory until then.
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (killed && std::chrono::steady_clock::now() > deadline + 2 * kGrace) {
            ADD_FAILURE() << "sandlot (pid " << pid << ") does not die even after SIGKILL";
            break;
        }
        run.peak_rss_kib = std::max(run.peak_rss_kib, peak_rss_kib(pid));
        if (!killed && std::chrono::steady_clock::now() > deadline) {
            kill(pid, SIGKILL);
            killed = true;
        }
        usleep(20'000);
    }
    run.elapsed = std::chrono::steady_clock::now() - start;
    run.status = killed ? -1 : WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return run;
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
