#include "vmm/devices/blk/disk_image.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <climits>
#include <vector>

namespace sandlot::vmm::blk {

namespace {

// fallocate's ways of saying "this file system / device cannot do that mode". Our ranges are validated and
// sector-aligned, so EINVAL here means the mode (or a block device's larger logical block) is the problem.
bool unsupported(int error) {
    return error == EOPNOTSUPP || error == ENOSYS || error == EINVAL;
}

// preadv/pwritev until every byte of `iovs` moved. Takes a copy of the iovecs to advance over short
// transfers, and never passes more than IOV_MAX at once.
Result<void> transfer(int fd, std::span<const iovec> iovs, uint64_t offset, bool writing) {
    std::vector<iovec> rest(iovs.begin(), iovs.end());
    size_t next = 0;
    while (next < rest.size()) {
        if (rest[next].iov_len == 0) {
            ++next;
            continue;
        }
        int count = static_cast<int>(std::min<size_t>(rest.size() - next, IOV_MAX));
        auto pos = static_cast<off_t>(offset);
        ssize_t n = writing ? pwritev(fd, &rest[next], count, pos) : preadv(fd, &rest[next], count, pos);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error(writing ? "pwritev" : "preadv");
        if (n == 0) return make_error(writing ? "pwritev wrote nothing" : "preadv hit the end of the image");
        offset += static_cast<uint64_t>(n);
        auto left = static_cast<size_t>(n);
        while (left > 0) {
            size_t step = std::min(left, rest[next].iov_len);
            rest[next].iov_base = static_cast<uint8_t*>(rest[next].iov_base) + step;
            rest[next].iov_len -= step;
            left -= step;
            if (rest[next].iov_len == 0) ++next;
        }
    }
    return {};
}

}  // namespace

Result<DiskImage> DiskImage::open(const std::string& path, bool read_only) {
    // O_NONBLOCK so that a FIFO named by mistake fails below instead of hanging the open; it is cleared
    // again before any I/O.
    int flags = (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NONBLOCK;
    UniqueFd fd(::open(path.c_str(), flags));
    if (!fd) return errno_error("disk " + path);
    struct stat st {};
    if (fstat(fd.get(), &st) < 0) return errno_error("disk " + path);
    uint64_t size = 0;
    bool block_device = S_ISBLK(st.st_mode);
    if (block_device) {
        if (ioctl(fd.get(), BLKGETSIZE64, &size) < 0) return errno_error("disk " + path + ": BLKGETSIZE64");
    } else if (S_ISREG(st.st_mode)) {
        size = static_cast<uint64_t>(st.st_size);
    } else {
        return make_error("disk " + path + ": not a regular file or block device");
    }
    if (fcntl(fd.get(), F_SETFL, 0) < 0) return errno_error("disk " + path);
    // One writer or many readers per image, across VMs: two sandboxes writing one upper image (or one writing
    // what another reads) would corrupt it. The lock goes with the fd, so with the VMM.
    if (flock(fd.get(), (read_only ? LOCK_SH : LOCK_EX) | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK) {
            return make_error("disk " + path + " is in use by another sandbox" +
                              (read_only ? " that writes to it" : ""));
        }
        return errno_error("disk " + path + ": flock");
    }
    return DiskImage(std::move(fd), size, read_only, block_device);
}

Result<void> DiskImage::read(std::span<const iovec> iovs, uint64_t offset) const {
    return transfer(fd_.get(), iovs, offset, false);
}

Result<void> DiskImage::write(std::span<const iovec> iovs, uint64_t offset) const {
    if (read_only_) return make_error("image is read-only", EROFS);
    return transfer(fd_.get(), iovs, offset, true);
}

Result<void> DiskImage::flush() const {
    if (read_only_) return {};  // nothing of ours to make stable
    while (fdatasync(fd_.get()) < 0) {
        if (errno != EINTR) return errno_error("fdatasync");
    }
    return {};
}

Result<void> DiskImage::discard(uint64_t offset, uint64_t len) const {
    if (read_only_) return make_error("image is read-only", EROFS);
    if (len == 0) return {};
    if (fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                  static_cast<off_t>(len)) == 0) {
        return {};
    }
    if (unsupported(errno)) return {};  // a hint we cannot act on
    return errno_error("fallocate(PUNCH_HOLE)");
}

Result<void> DiskImage::write_zeroes(uint64_t offset, uint64_t len, bool may_unmap) const {
    if (read_only_) return make_error("image is read-only", EROFS);
    if (len == 0) return {};
    auto pos = static_cast<off_t>(offset);
    auto count = static_cast<off_t>(len);
    // Both modes keep the size: a file image never grows, and the range is inside it anyway.
    if (may_unmap) {
        if (fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, pos, count) == 0) return {};
        if (!unsupported(errno)) return errno_error("fallocate(PUNCH_HOLE)");
    }
    if (fallocate(fd_.get(), FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, pos, count) == 0) return {};
    if (!unsupported(errno)) return errno_error("fallocate(ZERO_RANGE)");
    return write_zero_bytes(offset, len);
}

Result<void> DiskImage::write_zero_bytes(uint64_t offset, uint64_t len) const {
    static constexpr size_t kChunk = 64 * 1024;
    static const std::array<uint8_t, kChunk> zeroes{};
    while (len > 0) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(len, kChunk));
        iovec iov{const_cast<uint8_t*>(zeroes.data()), n};  // pwritev only reads it
        TRY(transfer(fd_.get(), std::span(&iov, 1), offset, true));
        offset += n;
        len -= n;
    }
    return {};
}

}  // namespace sandlot::vmm::blk
