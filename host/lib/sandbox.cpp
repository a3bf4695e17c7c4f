#include "host/lib/sandbox.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "host/lib/paths.h"
#include "host/lib/vsock_uds.h"

namespace sandlot::host {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

Result<std::string> make_runtime_dir() {
    const char* base = std::getenv("XDG_RUNTIME_DIR");
    std::string templ = std::string(base && *base ? base : "/tmp") + "/sandlot-XXXXXX";
    if (!mkdtemp(templ.data())) return errno_error("mkdtemp " + templ);
    return templ;
}

Result<void> require_file(const std::string& what, const std::string& path) {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) return make_error(what + " not found: " + path);
    return {};
}

}  // namespace

Result<std::unique_ptr<Sandbox>> Sandbox::boot(SandboxOptions options) {
    if (options.kernel.empty()) options.kernel = guest_dir() + "/vmlinux";
    if (options.initrd.empty()) options.initrd = guest_dir() + "/initramfs.cpio.gz";
    if (options.vmm.empty()) options.vmm = bin_dir() + "/sandlot-vmm";
    TRY(require_file("guest kernel", options.kernel));
    TRY(require_file("guest initramfs", options.initrd));
    TRY(require_file("sandlot-vmm", options.vmm));

    std::unique_ptr<Sandbox> sandbox(new Sandbox);
    sandbox->options_ = options;
    if (options.runtime_dir.empty()) {
        sandbox->runtime_dir_ = TRY(make_runtime_dir());
        sandbox->own_runtime_dir_ = true;
    } else {
        sandbox->runtime_dir_ = options.runtime_dir;
    }
    sandbox->vsock_uds_ = sandbox->runtime_dir_ + "/vsock.sock";
    sandbox->storage_ = TRY(prepare_storage(options.storage, sandbox->runtime_dir_));
    TRY(sandbox->wait_for_agent());
    return sandbox;
}

Result<void> Sandbox::wait_for_agent() {
    // Listen for the agent's boot notification before the VMM exists, so it cannot be missed.
    UniqueFd notify_listener;
    std::string cmdline = "quiet";
    if (!options_.wait_by_polling) {
        notify_listener = TRY(vsock_uds_listen(vsock_uds_, kAgentNotifyPort));
        cmdline += " sandlot.notify=" + std::to_string(kAgentNotifyPort);
    }
    if (!options_.cmdline.empty()) cmdline += " " + options_.cmdline;

    std::string console = options_.console;
    if (console == "none") console = "file:" + console_log();
    std::vector<std::string> argv = {options_.vmm,
                                     "--kernel",
                                     options_.kernel,
                                     "--initrd",
                                     options_.initrd,
                                     "--initrd",
                                     storage_.boot_initrd,
                                     "--memory",
                                     std::to_string(options_.memory_mib),
                                     "--cpus",
                                     std::to_string(options_.cpus),
                                     "--vsock-uds",
                                     vsock_uds_,
                                     "--console",
                                     console,
                                     "--cmdline",
                                     cmdline};
    argv.insert(argv.end(), storage_.vmm_args.begin(), storage_.vmm_args.end());
    argv.insert(argv.end(), options_.vmm_args.begin(), options_.vmm_args.end());
    auto start = Clock::now();
    vmm_ = TRY(ChildProcess::spawn(argv, options_.vmm_log));
    auto deadline = start + options_.ready_timeout;

    auto vmm_gone = [&]() -> std::optional<Error> {
        auto status = vmm_->wait(std::chrono::milliseconds(0));
        if (!status) return std::nullopt;
        std::string message =
            "sandlot-vmm exited with status " + std::to_string(*status) + " before the guest agent was ready";
        if (auto words = agent_last_words(); !words.empty()) message += ": " + words;
        return Error{0, message};
    };
    auto timed_out = [&] {
        return Error{ETIMEDOUT, "guest agent not ready within " +
                                    std::to_string(options_.ready_timeout.count()) + " ms"};
    };

    UniqueFd stream;
    if (!options_.wait_by_polling) {
        pollfd fds[2] = {{notify_listener.get(), POLLIN, 0}, {vmm_->pidfd(), POLLIN, 0}};
        for (;;) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            if (left.count() <= 0) return std::unexpected(timed_out());
            int n = poll(fds, 2, static_cast<int>(left.count()));
            if (n < 0 && errno != EINTR) return errno_error("poll");
            if (n <= 0) continue;
            if (fds[0].revents & POLLIN) break;
            if (auto gone = vmm_gone()) return std::unexpected(*gone);
        }
        stream = UniqueFd(accept4(notify_listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (!stream) return errno_error("accept agent notification");
    } else {
        // The guest refuses CONNECT until agentd listens; retry until it does or the VMM dies.
        for (;;) {
            auto attempt = vsock_uds_connect(vsock_uds_, kAgentPort);
            if (attempt) {
                stream = std::move(*attempt);
                break;
            }
            if (auto gone = vmm_gone()) return std::unexpected(*gone);
            if (Clock::now() >= deadline) return std::unexpected(timed_out());
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }
    agent_ = TRY(AgentConnection::open(std::move(stream)));
    boot_to_agent_ = Clock::now() - start;
    return {};
}

std::string Sandbox::console_log() const {
    if (options_.console.starts_with("file:")) return options_.console.substr(5);
    return runtime_dir_ + "/console.log";
}

std::string Sandbox::agent_last_words() const {
    // agentd's fatal boot errors are one console line: "agentd: storage: ...". Read the log's tail.
    // Only a regular file: a console that is a FIFO belongs to its reader (the supervisor).
    UniqueFd fd(open(console_log().c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    struct stat st {};
    if (!fd || fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return "";
    off_t size = lseek(fd.get(), 0, SEEK_END);
    std::string text(static_cast<size_t>(std::min<off_t>(std::max<off_t>(size, 0), 16384)), '\0');
    ssize_t n = pread(fd.get(), text.data(), text.size(), size - static_cast<off_t>(text.size()));
    text.resize(n > 0 ? static_cast<size_t>(n) : 0);
    std::string last;
    size_t start = 0;
    while (start < text.size()) {
        size_t end = text.find('\n', start);
        if (end == std::string::npos) end = text.size();
        std::string line = text.substr(start, end - start);
        while (!line.empty() && line.back() == '\r')
            line.pop_back();
        // The reason, not the "powering off" line that follows it.
        auto at = line.find("agentd: ");
        if (at != std::string::npos &&
            (last.empty() || line.find("agentd: powering off") == std::string::npos))
            last = line.substr(at);
        start = end + 1;
    }
    return last;
}

Sandbox::~Sandbox() {
    agent_.reset();
    vmm_.reset();  // kills a VMM that is still running
    if (own_runtime_dir_) {
        std::error_code ec;
        fs::remove_all(runtime_dir_, ec);
    }
}

Result<std::unique_ptr<AgentConnection>> Sandbox::connect() {
    return AgentConnection::open(TRY(vsock_uds_connect(vsock_uds_, kAgentPort)));
}

Result<int> Sandbox::shutdown(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    TRY(agent_->shutdown(timeout));
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    return wait(std::max(left, std::chrono::milliseconds(0)));
}

Result<int> Sandbox::wait(std::chrono::milliseconds timeout) {
    auto status = vmm_->wait(timeout);
    if (!status)
        return make_error("sandlot-vmm did not exit within " + std::to_string(timeout.count()) + " ms");
    return status;
}

void Sandbox::kill() {
    vmm_->kill(SIGKILL);
}

}  // namespace sandlot::host
