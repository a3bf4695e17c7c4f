#include "host/lib/vsock_uds.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "proto/base/unix_address.h"

namespace sandlot::host {

Result<UniqueFd> vsock_uds_connect(const std::string& uds_path, uint32_t port) {
    auto addr = TRY(unix_address(uds_path));
    UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) return errno_error("socket");
    if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0)
        return errno_error("connect " + uds_path);
    std::string request = "CONNECT " + std::to_string(port) + "\n";
    if (send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size()))
        return errno_error("send CONNECT");
    // Read the reply a byte at a time: nothing after the newline belongs to us yet.
    std::string line;
    for (;;) {
        char c;
        ssize_t n = read(fd.get(), &c, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("read CONNECT reply");
        if (n == 0)
            return make_error("vsock port " + std::to_string(port) + ": connection refused by the guest",
                              ECONNREFUSED);
        if (c == '\n') break;
        line.push_back(c);
        if (line.size() > 64) return make_error("vsock: malformed CONNECT reply");
    }
    if (!line.starts_with("OK ")) return make_error("vsock: unexpected CONNECT reply: " + line);
    return fd;
}

Result<UniqueFd> vsock_uds_listen(const std::string& uds_path, uint32_t port) {
    std::string path = uds_path + "_" + std::to_string(port);
    auto addr = TRY(unix_address(path));
    UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) return errno_error("socket");
    ::unlink(path.c_str());
    if (bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0)
        return errno_error("bind " + path);
    if (listen(fd.get(), 16) < 0) return errno_error("listen " + path);
    return fd;
}

}  // namespace sandlot::host
