// The host side of vsock: Unix stream sockets speaking the Firecracker-compatible "hybrid vsock" protocol.
//
//   Host connects to the guest: connect to <uds_path>, send "CONNECT <port>\n", read "OK <host_port>\n",
//   then the socket is a byte stream to guest port <port>.
//   Guest connects to the host port P: the VMM connects to <uds_path>_P, which a host program listens on.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "proto/base/error.h"
#include "proto/base/unique_fd.h"

namespace sandlot::vmm::vsock {

// Longest CONNECT line we accept, newline included ("CONNECT 4294967295\n" is 19 bytes).
inline constexpr size_t kMaxConnectLine = 32;

// Binds and listens on `path` (non-blocking, CLOEXEC). A socket already there that accepts a connection is
// in use (error); one that refuses is a stale leftover and is replaced; any other file is an error.
Result<UniqueFd> listen_unix(const std::string& path);

// Connects to the Unix socket at `path` without blocking. An error when nothing accepts it right now.
Result<UniqueFd> connect_unix(const std::string& path);

// Parses one CONNECT line without its '\n' ("CONNECT 52"; a trailing '\r' is tolerated).
std::optional<uint32_t> parse_connect_line(std::string_view line);

}  // namespace sandlot::vmm::vsock
