// The host end of sandlot-vmm's vsock: a Unix socket speaking the Firecracker-compatible hybrid protocol.
//   host-initiated: connect to <uds>, send "CONNECT <port>\n", read "OK <hostport>\n", then a byte stream.
//   guest-initiated: the VMM connects to <uds>_<port> when the guest connects to CID 2, port <port>.
#pragma once

#include <cstdint>
#include <string>

#include "proto/base/error.h"
#include "proto/base/unique_fd.h"

namespace sandlot::host {

// One attempt: a connected stream to the guest's `port`, or an error (nobody listening yet, VMM gone, ...).
Result<UniqueFd> vsock_uds_connect(const std::string& uds_path, uint32_t port);

// Listens on <uds_path>_<port> for connections the guest makes to the host.
Result<UniqueFd> vsock_uds_listen(const std::string& uds_path, uint32_t port);

}  // namespace sandlot::host
