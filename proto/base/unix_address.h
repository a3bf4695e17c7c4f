// The sockaddr_un for a filesystem Unix socket path, shared by the VMM, the agent and the host library.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>

#include <cstring>
#include <string>

#include "proto/base/error.h"

namespace sandlot {

// Fails for an empty path or one too long for sun_path (with its NUL).
inline Result<sockaddr_un> unix_address(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
        return make_error("unix socket path too long or empty: " + path);
    }
    std::memcpy(addr.sun_path, path.data(), path.size());
    return addr;
}

}  // namespace sandlot
