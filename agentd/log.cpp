#include "agentd/log.h"

#include <unistd.h>

#include <string>

namespace sandlot::agent {

void log_line(std::string_view message) {
    std::string line = "agentd: ";
    line.append(message);
    line.push_back('\n');
    // Best effort: there is nowhere else to report a failing console.
    (void)!::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace sandlot::agent
