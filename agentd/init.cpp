#include "agentd/init.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>

#include "agentd/log.h"
#include "proto/base/unique_fd.h"

namespace sandlot::agent {

namespace {

void log_errno(const std::string& what) {
    log_line(what + ": " + std::strerror(errno));
}

std::optional<uint32_t> parse_port(std::string_view text) {
    uint32_t value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    // VMADDR_PORT_ANY (0xffffffff) means "any port", never a real one.
    if (ec != std::errc() || end != text.data() + text.size() || value == UINT32_MAX) return std::nullopt;
    return value;
}

// stdio is already on the console when the initramfs has /dev/console; if not, open it ourselves.
bool attach_console() {
    bool all_open = true;
    for (int fd = 0; fd <= 2; ++fd)
        all_open = all_open && fcntl(fd, F_GETFD) >= 0;
    if (all_open) return true;
    UniqueFd console(open("/dev/console", O_RDWR | O_NOCTTY));
    if (!console) return false;
    for (int fd = 0; fd <= 2; ++fd) {
        if (fcntl(fd, F_GETFD) < 0) dup2(console.get(), fd);
    }
    if (console.get() <= 2) console.release();  // it became one of the stdio fds itself
    return true;
}

struct MountSpec {
    const char* source;
    const char* target;
    const char* fstype;
    unsigned long flags;
    const char* options;
    mode_t dir_mode;
};

constexpr MountSpec kMounts[] = {
    {"proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr, 0555},
    {"sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr, 0555},
    {"devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755", 0755},
    {"devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5",
     0755},
    {"tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", 01777},
    {"tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", 01777},
    {"tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755", 0755},
};

void mount_one(const MountSpec& m) {
    if (mkdir(m.target, m.dir_mode) != 0 && errno != EEXIST) {
        log_errno(std::string("mkdir ") + m.target);
        return;
    }
    if (mount(m.source, m.target, m.fstype, m.flags, m.options) != 0 && errno != EBUSY) {
        log_errno(std::string("mount ") + m.fstype + " on " + m.target);
    }
}

void write_file(const char* path, std::string_view text) {
    UniqueFd fd(open(path, O_WRONLY | O_CLOEXEC));
    if (!fd || write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
        log_errno(std::string("write ") + path);
    }
}

}  // namespace

BootOptions parse_kernel_cmdline(std::string_view cmdline) {
    BootOptions options;
    size_t pos = 0;
    while (pos < cmdline.size()) {
        size_t start = cmdline.find_first_not_of(" \t\n", pos);
        if (start == std::string_view::npos) break;
        size_t end = cmdline.find_first_of(" \t\n", start);
        if (end == std::string_view::npos) end = cmdline.size();
        std::string_view word = cmdline.substr(start, end - start);
        pos = end;

        if (word.starts_with("sandlot.port=")) {
            auto port = parse_port(word.substr(word.find('=') + 1));
            if (port) {
                options.port = *port;
            } else {
                log_line("ignoring bad " + std::string(word));
            }
        } else if (word.starts_with("sandlot.notify=")) {
            auto port = parse_port(word.substr(word.find('=') + 1));
            if (port) {
                options.notify_port = *port;
            } else {
                log_line("ignoring bad " + std::string(word));
            }
        }
    }
    return options;
}

std::string read_kernel_cmdline() {
    UniqueFd fd(open("/proc/cmdline", O_RDONLY | O_CLOEXEC));
    if (!fd) {
        log_errno("open /proc/cmdline");
        return "";
    }
    std::string text;
    char buf[4096];
    for (;;) {
        ssize_t n = read(fd.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        text.append(buf, static_cast<size_t>(n));
        if (text.size() > 1 << 20) break;  // the kernel caps it far lower; never read without bound
    }
    return text;
}

void setup_pid1() {
    bool have_console = attach_console();
    umask(022);
    if (chdir("/") != 0) log_errno("chdir /");

    for (const MountSpec& m : kMounts) {
        mount_one(m);
        // /dev/console may only exist once devtmpfs is up.
        if (!have_console && std::strcmp(m.target, "/dev") == 0) have_console = attach_console();
    }

    // With a private devpts instance, /dev/ptmx must lead to that instance's ptmx.
    struct stat st;
    if (lstat("/dev/ptmx", &st) != 0 && symlink("pts/ptmx", "/dev/ptmx") != 0) log_errno("symlink /dev/ptmx");

    // The agent is the only way to reach the guest: the OOM killer must pick something else.
    write_file("/proc/self/oom_score_adj", "-1000");
    // Nor may a fork bomb starve it of CPU: among thousands of runnable processes a normal-priority agent
    // gets a sliver of a vCPU and cannot even fire the timeout that would end the bomb. As the lowest
    // real-time priority it runs whenever it is runnable (it only ever waits in epoll, so it cannot hog a
    // CPU, and the kernel's RT throttling keeps 5% for everyone else). RESET_ON_FORK: the commands it starts
    // are ordinary processes again.
    sched_param param{};
    param.sched_priority = 1;
    if (sched_setscheduler(0, SCHED_RR | SCHED_RESET_ON_FORK, &param) != 0) log_errno("sched_setscheduler");

    // `uname -n` and shell prompts say where they are rather than "(none)".
    if (sethostname("sandlot", 7) != 0) log_errno("sethostname");

    // Commands started later inherit a usable PATH (the kernel gives init only HOME and TERM).
    setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/run/sandlot/bin", 0);
}

}  // namespace sandlot::agent
