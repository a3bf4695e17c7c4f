#include "vmm/devices/vsock/packet.h"

#include <cstring>

namespace sandlot::vmm::vsock {

namespace {

// Field offsets of struct virtio_vsock_hdr (packed).
constexpr size_t kSrcCid = 0, kDstCid = 8, kSrcPort = 16, kDstPort = 20, kLen = 24, kType = 28, kOp = 30,
                 kFlags = 32, kBufAlloc = 36, kFwdCnt = 40;

template <class T>
T load_le(std::span<const uint8_t> bytes, size_t offset) {
    T value = 0;
    for (size_t i = 0; i < sizeof(T); ++i)
        value |= static_cast<T>(static_cast<T>(bytes[offset + i]) << (8 * i));
    return value;
}

template <class T>
void store_le(std::span<uint8_t> bytes, size_t offset, T value) {
    for (size_t i = 0; i < sizeof(T); ++i)
        bytes[offset + i] = static_cast<uint8_t>(value >> (8 * i));
}

}  // namespace

PacketHeader decode_header(std::span<const uint8_t, kHeaderSize> bytes) {
    return PacketHeader{
        .src_cid = load_le<uint64_t>(bytes, kSrcCid),
        .dst_cid = load_le<uint64_t>(bytes, kDstCid),
        .src_port = load_le<uint32_t>(bytes, kSrcPort),
        .dst_port = load_le<uint32_t>(bytes, kDstPort),
        .len = load_le<uint32_t>(bytes, kLen),
        .type = load_le<uint16_t>(bytes, kType),
        .op = load_le<uint16_t>(bytes, kOp),
        .flags = load_le<uint32_t>(bytes, kFlags),
        .buf_alloc = load_le<uint32_t>(bytes, kBufAlloc),
        .fwd_cnt = load_le<uint32_t>(bytes, kFwdCnt),
    };
}

std::array<uint8_t, kHeaderSize> encode_header(const PacketHeader& header) {
    std::array<uint8_t, kHeaderSize> bytes{};
    store_le(bytes, kSrcCid, header.src_cid);
    store_le(bytes, kDstCid, header.dst_cid);
    store_le(bytes, kSrcPort, header.src_port);
    store_le(bytes, kDstPort, header.dst_port);
    store_le(bytes, kLen, header.len);
    store_le(bytes, kType, header.type);
    store_le(bytes, kOp, header.op);
    store_le(bytes, kFlags, header.flags);
    store_le(bytes, kBufAlloc, header.buf_alloc);
    store_le(bytes, kFwdCnt, header.fwd_cnt);
    return bytes;
}

}  // namespace sandlot::vmm::vsock
