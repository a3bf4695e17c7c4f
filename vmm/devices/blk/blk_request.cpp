#include "vmm/devices/blk/blk_request.h"

#include <endian.h>

#include <vector>

namespace sandlot::vmm::blk {

namespace {

using Status = uint8_t;

constexpr uint32_t kHeaderSize = sizeof(virtio_blk_outhdr);  // type, reserved, sector
constexpr uint32_t kRangeSize = sizeof(virtio_blk_discard_write_zeroes);
static_assert(kHeaderSize == 16 && kRangeSize == 16);

// [sector, sector + count) lies inside the disk, without overflowing.
bool in_range(uint64_t sector, uint64_t count, uint64_t capacity) {
    return sector <= capacity && count <= capacity - sector;
}

// The data part of a read or write: `len` bytes of one direction of the chain, from `offset`, as host
// iovecs. Empty when the chain does not hold that many bytes there (cannot happen after the callers' length
// checks; the sum is checked rather than trusted).
std::vector<iovec> data_iovecs(const GuestMemory& memory, const virtio::Chain& chain, bool writable,
                               size_t offset, uint64_t len) {
    auto iovs = virtio::chain_iovecs(memory, chain, writable, offset, len);
    uint64_t total = 0;
    for (const auto& iov : iovs)
        total += iov.iov_len;
    if (total != len) iovs.clear();
    return iovs;
}

// VIRTIO_BLK_T_IN: header readable, then `data` and the status byte writable.
Status read_sectors(const GuestMemory& memory, const virtio::Chain& chain, const DiskImage& image,
                    uint64_t sector, const RequestOptions& options) {
    if (chain.readable_len != kHeaderSize) return VIRTIO_BLK_S_IOERR;  // data must be device-writable
    uint64_t len = chain.writable_len - 1;
    if (len % kSectorSize != 0) return VIRTIO_BLK_S_IOERR;
    if (!in_range(sector, len / kSectorSize, image.capacity_sectors())) return VIRTIO_BLK_S_IOERR;
    if (len > 0) {
        auto iovs = data_iovecs(memory, chain, true, 0, len);
        if (iovs.empty() || !image.read(iovs, sector * kSectorSize)) return VIRTIO_BLK_S_IOERR;
    }
    if (options.stats) {
        proto::count(options.stats->blk_read_bytes, len);
        proto::count(options.stats->blk_read_ops, 1);
    }
    return VIRTIO_BLK_S_OK;
}

// VIRTIO_BLK_T_OUT: header and `data` readable, then only the status byte writable.
Status write_sectors(const GuestMemory& memory, const virtio::Chain& chain, const DiskImage& image,
                     uint64_t sector, const RequestOptions& options) {
    if (image.read_only()) return VIRTIO_BLK_S_IOERR;
    if (chain.writable_len != 1) return VIRTIO_BLK_S_IOERR;  // data must be device-readable
    uint64_t len = chain.readable_len - kHeaderSize;
    if (len % kSectorSize != 0) return VIRTIO_BLK_S_IOERR;
    if (!in_range(sector, len / kSectorSize, image.capacity_sectors())) return VIRTIO_BLK_S_IOERR;
    if (len > 0) {
        auto iovs = data_iovecs(memory, chain, false, kHeaderSize, len);
        if (iovs.empty() || !image.write(iovs, sector * kSectorSize)) return VIRTIO_BLK_S_IOERR;
        if (options.write_through && !image.flush()) return VIRTIO_BLK_S_IOERR;
    }
    if (options.stats) {
        proto::count(options.stats->blk_write_bytes, len);
        proto::count(options.stats->blk_write_ops, 1);
    }
    return VIRTIO_BLK_S_OK;
}

// VIRTIO_BLK_T_FLUSH.
Status flush(const DiskImage& image, const RequestOptions& options) {
    if (!image.flush()) return VIRTIO_BLK_S_IOERR;
    if (options.stats) proto::count(options.stats->blk_flush_ops, 1);
    return VIRTIO_BLK_S_OK;
}

// VIRTIO_BLK_T_GET_ID: 20 bytes of ID into the writable part.
Status get_id(const GuestMemory& memory, const virtio::Chain& chain, const RequestOptions& options) {
    if (chain.writable_len - 1 < options.id.size()) return VIRTIO_BLK_S_IOERR;
    virtio::write_to_chain(memory, chain, 0, options.id);
    return VIRTIO_BLK_S_OK;
}

// VIRTIO_BLK_T_DISCARD and VIRTIO_BLK_T_WRITE_ZEROES: a readable array of ranges after the header.
Status zero_or_discard(const GuestMemory& memory, const virtio::Chain& chain, const DiskImage& image,
                       bool discard, const RequestOptions& options) {
    if (image.read_only()) return VIRTIO_BLK_S_IOERR;
    if (chain.writable_len != 1) return VIRTIO_BLK_S_IOERR;
    uint64_t len = chain.readable_len - kHeaderSize;
    uint32_t max_segments = discard ? kMaxDiscardSegments : kMaxWriteZeroesSegments;
    if (len == 0 || len % kRangeSize != 0 || len / kRangeSize > max_segments) return VIRTIO_BLK_S_IOERR;

    // Copied out once: the guest may rewrite its buffer while we work.
    std::vector<virtio_blk_discard_write_zeroes> ranges(len / kRangeSize);
    std::span<uint8_t> raw(reinterpret_cast<uint8_t*>(ranges.data()), len);
    if (virtio::read_from_chain(memory, chain, kHeaderSize, raw) != len) return VIRTIO_BLK_S_IOERR;

    // Unknown flags, and unmap on a discard, are UNSUPP (virtio 1.x 5.2.6.2); checked before anything runs.
    uint32_t allowed_flags = discard ? 0 : VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    for (const auto& range : ranges) {
        if (le32toh(range.flags) & ~allowed_flags) return VIRTIO_BLK_S_UNSUPP;
    }
    uint32_t max_sectors = discard ? kMaxDiscardSectors : kMaxWriteZeroesSectors;
    for (const auto& range : ranges) {
        uint32_t count = le32toh(range.num_sectors);
        if (count > max_sectors || !in_range(le64toh(range.sector), count, image.capacity_sectors())) {
            return VIRTIO_BLK_S_IOERR;
        }
    }
    for (const auto& range : ranges) {
        uint64_t offset = le64toh(range.sector) * kSectorSize;
        uint64_t bytes = uint64_t{le32toh(range.num_sectors)} * kSectorSize;
        bool unmap = le32toh(range.flags) & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
        auto done = discard ? image.discard(offset, bytes) : image.write_zeroes(offset, bytes, unmap);
        if (!done) return VIRTIO_BLK_S_IOERR;
    }
    if (options.write_through && !image.flush()) return VIRTIO_BLK_S_IOERR;
    return VIRTIO_BLK_S_OK;
}

Status execute(const GuestMemory& memory, const virtio::Chain& chain, const DiskImage& image,
               const RequestOptions& options) {
    virtio_blk_outhdr header{};
    std::span<uint8_t> raw(reinterpret_cast<uint8_t*>(&header), sizeof header);
    if (virtio::read_from_chain(memory, chain, 0, raw) != sizeof header) return VIRTIO_BLK_S_IOERR;
    uint64_t sector = le64toh(header.sector);
    switch (le32toh(header.type)) {
        case VIRTIO_BLK_T_IN:
            return read_sectors(memory, chain, image, sector, options);
        case VIRTIO_BLK_T_OUT:
            return write_sectors(memory, chain, image, sector, options);
        case VIRTIO_BLK_T_FLUSH:
            return flush(image, options);
        case VIRTIO_BLK_T_GET_ID:
            return get_id(memory, chain, options);
        case VIRTIO_BLK_T_DISCARD:
            return zero_or_discard(memory, chain, image, true, options);
        case VIRTIO_BLK_T_WRITE_ZEROES:
            return zero_or_discard(memory, chain, image, false, options);
        default:
            return VIRTIO_BLK_S_UNSUPP;
    }
}

}  // namespace

uint32_t serve_request(const GuestMemory& memory, const virtio::Chain& chain, const DiskImage& image,
                       const RequestOptions& options) {
    if (chain.writable_len == 0) return 0;  // nowhere to put a status: hand the buffers back untouched
    Status status = execute(memory, chain, image, options);
    virtio::write_to_chain(memory, chain, chain.writable_len - 1, std::span<const uint8_t>(&status, 1));
    return chain.writable_len;
}

}  // namespace sandlot::vmm::blk
