// One virtio-blk request (virtio 1.x 5.2.6), served start to finish: parse the chain the guest built, check
// it against the disk, do the I/O straight between the image and guest memory, and write the status byte.
//
// This is the one place guest-controlled request bytes are interpreted. The chain was validated by
// virtio::Queue (every segment lies in guest RAM, readable before writable); everything else — the header,
// sector ranges and their overflow, data directions and lengths, discard/write-zeroes segments — is checked
// here, and anything wrong becomes a status (IOERR, or UNSUPP for what we do not implement), never a crash.
//
// Threading: pure function of its arguments; the device's worker threads call it concurrently, without the
// device mutex. Guest memory can change under it at any time: the header and segment descriptors are copied
// out once before they are used.
#pragma once

#include <linux/virtio_blk.h>

#include <array>
#include <cstdint>

#include "proto/vmm_stats.h"
#include "vmm/devices/blk/disk_image.h"
#include "vmm/devices/virtio/queue.h"
#include "vmm/memory/guest_memory.h"

namespace sandlot::vmm::blk {

// Request limits we advertise in config space (and enforce).
// Largest sector count of one discard / write-zeroes segment (2 GiB).
inline constexpr uint32_t kMaxDiscardSectors = 1u << 22;
inline constexpr uint32_t kMaxWriteZeroesSectors = 1u << 22;
// Segments per discard / write-zeroes request (Linux never sends more than 256).
inline constexpr uint32_t kMaxDiscardSegments = 256;
inline constexpr uint32_t kMaxWriteZeroesSegments = 256;
// Discards are best aligned to the host's 4 KiB blocks (a hint; any alignment works).
inline constexpr uint32_t kDiscardSectorAlignment = 8;

struct RequestOptions {
    // GET_ID answer: the serial, NUL-padded to 20 bytes (no terminator when it is exactly 20).
    std::array<uint8_t, VIRTIO_BLK_ID_BYTES> id = {};
    // The driver did not negotiate FLUSH although we offered it: every write must be stable before it
    // completes (virtio 1.x 5.2.6.2), so each one is followed by an fdatasync.
    bool write_through = false;
    // Where completed requests are counted (reads and writes that succeeded: bytes and ops; flushes); not
    // counted when null. Must outlive the requests.
    proto::VmmStats* stats = nullptr;
};

// Serves `chain` and writes its status byte (the last device-writable byte). Returns the length to report
// in the used ring: the whole writable part, or 0 when the chain has no writable byte to put a status in
// (the request is then not executed; the guest just gets its buffers back).
uint32_t serve_request(const GuestMemory& memory, const virtio::Chain& chain, const DiskImage& image,
                       const RequestOptions& options);

}  // namespace sandlot::vmm::blk
