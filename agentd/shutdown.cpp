#include "agentd/shutdown.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "agentd/log.h"
#include "proto/base/unique_fd.h"

namespace sandlot::agent {

namespace {

std::vector<UniqueFd>& filesystems_to_freeze() {
    static std::vector<UniqueFd> fds;
    return fds;
}

}  // namespace

void freeze_at_power_off(const std::string& path, const std::string& device) {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    struct stat dir {
    }, dev{};
    if (!fd || fstat(fd.get(), &dir) != 0 || stat(device.c_str(), &dev) != 0 || dir.st_dev != dev.st_rdev) {
        log_line("cannot keep " + path + " for a clean power-off; its journal may need replaying next boot");
        return;
    }
    filesystems_to_freeze().push_back(std::move(fd));
}

void power_off(std::string_view reason) {
    log_line("powering off: " + std::string(reason));
    if (getpid() == 1) {
        kill(-1, SIGKILL);  // nothing may write after the freeze
        while (waitpid(-1, nullptr, WNOHANG) > 0) {
        }
    }
    sync();
    for (const UniqueFd& fd : filesystems_to_freeze()) {
        if (ioctl(fd.get(), FIFREEZE, 0) != 0) log_line(std::string("FIFREEZE: ") + std::strerror(errno));
    }
    reboot(RB_AUTOBOOT);
    log_line(std::string("reboot failed: ") + std::strerror(errno));
    for (;;)
        pause();
}

}  // namespace sandlot::agent
