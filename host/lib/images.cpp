#include "host/lib/images.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

#include "host/lib/paths.h"
#include "proto/base/unique_fd.h"

namespace sandlot::host {

namespace {

namespace fs = std::filesystem;

bool looks_like_path(const std::string& spec) {
    return spec.find('/') != std::string::npos || spec.starts_with(".");
}

template <class T>
T load_le(const uint8_t* p) {
    T value = 0;
    for (size_t i = 0; i < sizeof(T); ++i)
        value |= static_cast<T>(static_cast<T>(p[i]) << (8 * i));
    return value;
}

}  // namespace

Result<std::string> probe_disk_filesystem(const std::string& path) {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return errno_error("disk image " + path);
    struct stat st;
    if (fstat(fd.get(), &st) != 0) return errno_error("disk image " + path);
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        return make_error("disk image " + path + ": not a regular file or block device");

    uint8_t head[2048] = {};
    ssize_t n = pread(fd.get(), head, sizeof head, 0);
    if (n < 0) return errno_error("disk image " + path);
    if (n < static_cast<ssize_t>(sizeof head))
        return make_error("disk image " + path + ": too small to hold a filesystem");

    if (std::memcmp(head, "QFI\xfb", 4) == 0) {
        return make_error("disk image " + path +
                          " is qcow2, which sandlot does not read; convert it: qemu-img convert -O raw " +
                          path + " IMAGE.raw");
    }
    // ext2/3/4: the superblock is at 1024; s_magic at 56, s_log_block_size at 24, s_blocks_count_lo at 4.
    const uint8_t* sb = head + 1024;
    if (load_le<uint16_t>(sb + 56) == 0xef53) {
        uint32_t log_block = load_le<uint32_t>(sb + 24);
        uint64_t blocks = load_le<uint32_t>(sb + 4);
        if (log_block > 6) return make_error("disk image " + path + ": corrupt ext4 superblock (block size)");
        uint64_t block_size = 1024ull << log_block;
        if (S_ISREG(st.st_mode) && blocks * block_size > static_cast<uint64_t>(st.st_size)) {
            return make_error(
                fmt::format("disk image {}: truncated ext4 filesystem ({} bytes, the superblock says {})",
                            path, st.st_size, blocks * block_size));
        }
        return std::string("ext4");
    }
    std::string found;
    if (std::memcmp(head, "XFSB", 4) == 0) found = "xfs";
    if (std::memcmp(head, "hsqs", 4) == 0) found = "squashfs";
    if (load_le<uint32_t>(head + 1024) == 0xe0f5e1e2) found = "erofs";
    if (!found.empty())
        return make_error("disk image " + path + " holds " + found +
                          "; the sandlot guest kernel mounts ext4 images");
    return make_error("disk image " + path + ": no filesystem found (corrupt, or not a raw ext4 image)");
}

Result<ResolvedImage> resolve_image(const std::string& spec) {
    if (spec.empty()) return make_error("empty image name");
    if (!looks_like_path(spec)) {
        if (std::find(kBuiltinImages.begin(), kBuiltinImages.end(), spec) == kBuiltinImages.end()) {
            return make_error("unknown image \"" + spec +
                              "\": built-in images are base, debian and python; a directory or disk image "
                              "is given as a path (./" +
                              spec + ")");
        }
        std::string path = image_dir() + "/" + spec + ".ext4";
        std::error_code ec;
        if (!fs::exists(path, ec)) {
            return make_error("image " + spec + " is not built (" + path +
                              " is missing): run `make images`, or tools/build-image " + spec);
        }
        path = fs::canonical(path, ec).string();
        // Not TRY inside the braces: an early return from there leaks the members already built.
        std::string fstype = TRY(probe_disk_filesystem(path));
        return ResolvedImage{ResolvedImage::Kind::Disk, path, fstype};
    }

    struct stat st;
    if (stat(spec.c_str(), &st) != 0) return errno_error("image " + spec);
    std::error_code ec;
    std::string path = fs::canonical(spec, ec).string();
    if (ec) return make_error("image " + spec + ": " + ec.message());
    if (S_ISDIR(st.st_mode)) return ResolvedImage{ResolvedImage::Kind::Directory, path, ""};
    std::string fstype = TRY(probe_disk_filesystem(path));
    return ResolvedImage{ResolvedImage::Kind::Disk, path, fstype};
}

}  // namespace sandlot::host
