// Root filesystem images: what `--image NAME|PATH` means.
//
// A built-in name (base, debian, python) is an ext4 image built by tools/build-image and linked into
// image_dir() as NAME.ext4. A path is a host directory (shared read-only through virtio-fs) or a disk image
// file (attached through virtio-blk), whose filesystem is probed here so that a corrupt or unsupported file
// is refused on the host with a clear message rather than failing to mount in the guest.
#pragma once

#include <array>
#include <string>
#include <string_view>

#include "proto/base/error.h"

namespace sandlot::host {

inline constexpr std::array<std::string_view, 3> kBuiltinImages = {"base", "debian", "python"};

struct ResolvedImage {
    enum class Kind { Directory, Disk };
    Kind kind = Kind::Disk;
    std::string path;
    std::string fstype;  // Disk: the probed filesystem type (ext4, xfs, btrfs, squashfs, erofs)
};

Result<ResolvedImage> resolve_image(const std::string& spec);

// The filesystem in a disk image, from its superblock magic. qcow2 and unknown contents are errors.
Result<std::string> probe_disk_filesystem(const std::string& path);

}  // namespace sandlot::host
