#include "vmm/devices/vsock/host_socket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <charconv>
#include <cstring>

#include "proto/base/unix_address.h"

namespace sandlot::vmm::vsock {

namespace {

Result<UniqueFd> unix_socket() {
    UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) return errno_error("socket(AF_UNIX)");
    return fd;
}

// If `path` holds a socket nobody listens on, removes it. Errors if it is live or not a socket.
Result<void> remove_stale_socket(const std::string& path) {
    struct stat st;
    if (lstat(path.c_str(), &st) < 0) {
        if (errno == ENOENT) return {};
        return errno_error("stat " + path);
    }
    if (!S_ISSOCK(st.st_mode)) return make_error("vsock socket path " + path + " exists and is not a socket");
    auto probe = connect_unix(path);
    if (probe) return make_error("vsock socket " + path + " is in use");
    // A listener with a full backlog (EAGAIN) is just as alive as one that accepts.
    if (probe.error().code != ECONNREFUSED)
        return make_error("vsock socket " + path + " is in use", probe.error().code);
    if (unlink(path.c_str()) < 0 && errno != ENOENT) return errno_error("unlink stale socket " + path);
    return {};
}

}  // namespace

Result<UniqueFd> connect_unix(const std::string& path) {
    auto addr = TRY(unix_address(path));
    auto fd = TRY(unix_socket());
    if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0)
        return errno_error("connect " + path);
    return fd;
}

Result<UniqueFd> listen_unix(const std::string& path) {
    auto addr = TRY(unix_address(path));
    TRY(remove_stale_socket(path));
    auto fd = TRY(unix_socket());
    if (bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0)
        return errno_error("bind " + path);
    if (listen(fd.get(), 128) < 0) {
        auto err = errno_error("listen " + path);
        unlink(path.c_str());
        return err;
    }
    return fd;
}

std::optional<uint32_t> parse_connect_line(std::string_view line) {
    if (line.ends_with('\r')) line.remove_suffix(1);
    constexpr std::string_view kPrefix = "CONNECT ";
    if (!line.starts_with(kPrefix)) return std::nullopt;
    line.remove_prefix(kPrefix.size());
    if (line.empty() || line.size() > 10) return std::nullopt;
    uint32_t port = 0;
    auto [end, ec] = std::from_chars(line.data(), line.data() + line.size(), port);
    if (ec != std::errc() || end != line.data() + line.size()) return std::nullopt;
    return port;
}

}  // namespace sandlot::vmm::vsock
