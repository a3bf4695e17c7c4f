// virtio-vsock packet headers (virtio 1.x section 5.10.6): struct virtio_vsock_hdr, 44 bytes, little-endian.
// This is the one place guest vsock headers are parsed and ours are built.
#pragma once

#include <array>
#include <cstdint>
#include <span>

namespace sandlot::vmm::vsock {

inline constexpr size_t kHeaderSize = 44;
inline constexpr uint64_t kHostCid = 2;             // VMADDR_CID_HOST: the VMM's end of every connection
inline constexpr uint32_t kMaxPayload = 64 * 1024;  // largest payload we accept or send in one packet

inline constexpr uint16_t kTypeStream = 1;

enum class Op : uint16_t {
    Invalid = 0,
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
};

// SHUTDOWN flags: the sender will receive (RCV) / send (SEND) no more data.
inline constexpr uint32_t kShutdownRcv = 1;
inline constexpr uint32_t kShutdownSend = 2;
inline constexpr uint32_t kShutdownBoth = kShutdownRcv | kShutdownSend;

struct PacketHeader {
    uint64_t src_cid = 0;
    uint64_t dst_cid = 0;
    uint32_t src_port = 0;
    uint32_t dst_port = 0;
    uint32_t len = 0;  // payload bytes following the header
    uint16_t type = 0;
    uint16_t op = 0;  // an Op, but kept raw: the guest may send anything
    uint32_t flags = 0;
    uint32_t buf_alloc = 0;  // sender's receive buffer size
    uint32_t fwd_cnt = 0;    // bytes the sender has consumed from its receive buffer

    bool operator==(const PacketHeader&) const = default;
};

PacketHeader decode_header(std::span<const uint8_t, kHeaderSize> bytes);
std::array<uint8_t, kHeaderSize> encode_header(const PacketHeader& header);

}  // namespace sandlot::vmm::vsock
