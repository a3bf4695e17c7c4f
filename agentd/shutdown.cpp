#include "agentd/shutdown.h"

#include <sys/reboot.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "agentd/log.h"

namespace sandlot::agent {

void power_off(std::string_view reason) {
    log_line("powering off: " + std::string(reason));
    sync();
    reboot(RB_AUTOBOOT);
    log_line(std::string("reboot failed: ") + std::strerror(errno));
    for (;;)
        pause();
}

}  // namespace sandlot::agent
