// A raw disk image on the host, as the virtio-blk device sees it: a regular file or a block device, opened
// once, addressed in bytes. The device model (blk_device.h) does the bounds checks against the guest's
// requests; this layer only moves bytes and reports the kernel's errors.
//
// Threading: every method is const and thread-safe (positional I/O on one fd, no shared file offset), so the
// device's worker threads use one DiskImage concurrently.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <span>
#include <string>

#include "proto/base/error.h"
#include "proto/base/unique_fd.h"

namespace sandlot::vmm::blk {

// The guest's logical sector: virtio-blk addresses everything in 512-byte units.
inline constexpr uint64_t kSectorSize = 512;

class DiskImage {
  public:
    // Opens `path` read-only or read-write (O_CLOEXEC). It must be a regular file or a block device (a block
    // device's size comes from BLKGETSIZE64). Errors are one line naming the path:
    // "disk PATH: No such file or directory".
    static Result<DiskImage> open(const std::string& path, bool read_only);

    // Whole 512-byte sectors; a trailing partial sector is not part of the disk.
    uint64_t capacity_sectors() const { return size_bytes_ / kSectorSize; }
    uint64_t size_bytes() const { return size_bytes_; }
    bool read_only() const { return read_only_; }
    bool is_block_device() const { return block_device_; }

    // Fill / write every byte of `iovs` from / to [offset, offset + total). A read that meets the end of
    // the file (it shrank under us) is an error, as is any error the kernel reports.
    Result<void> read(std::span<const iovec> iovs, uint64_t offset) const;
    Result<void> write(std::span<const iovec> iovs, uint64_t offset) const;
    // fdatasync: everything written so far is on stable storage.
    Result<void> flush() const;
    // The guest no longer needs [offset, offset + len): punch a hole (sparse files shrink, block devices
    // discard). Where the backing store cannot, nothing happens: a discard is only a hint.
    Result<void> discard(uint64_t offset, uint64_t len) const;
    // [offset, offset + len) reads back as zeroes afterwards. `may_unmap` lets the range be deallocated
    // (punched) instead of zero-filled; failing both, zeroes are written.
    Result<void> write_zeroes(uint64_t offset, uint64_t len, bool may_unmap) const;

  private:
    DiskImage(UniqueFd fd, uint64_t size_bytes, bool read_only, bool block_device)
        : fd_(std::move(fd)), size_bytes_(size_bytes), read_only_(read_only), block_device_(block_device) {}
    Result<void> write_zero_bytes(uint64_t offset, uint64_t len) const;

    UniqueFd fd_;
    uint64_t size_bytes_;
    bool read_only_;
    bool block_device_;
};

}  // namespace sandlot::vmm::blk
