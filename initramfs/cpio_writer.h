// Builds a "newc" cpio archive, the format the kernel unpacks into its initial root filesystem.
//
// Each entry is a 110-byte ASCII header ("070701" then 13 fields of 8 hex digits: ino, mode, uid, gid,
// nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check), the NUL-terminated
// name padded to a multiple of 4 bytes (counting the header), then the data padded to 4. A "TRAILER!!!"
// entry ends the archive.
//
// Output is deterministic: entries are written sorted by path (so every parent directory precedes its
// children; missing parents are created 0755), inode numbers count up from 1, uid/gid are 0 unless
// set_owner() says otherwise, and every mtime is the one given to the constructor.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "proto/base/error.h"

namespace sandlot::initramfs {

class CpioWriter {
  public:
    explicit CpioWriter(uint32_t mtime = 0) : mtime_(mtime) {}

    // Paths are absolute or relative to the archive root ("/dev/console" and "dev/console" are the same);
    // empty, ".", ".." components are rejected. `mode` holds permission bits only (07777 at most).
    //
    // Adding a directory that exists again updates its mode; any other duplicate path is an error, as is
    // an entry below something that is not a directory.
    Result<void> add_directory(std::string_view path, uint32_t mode);
    Result<void> add_file(std::string_view path, std::span<const uint8_t> data, uint32_t mode);
    // Reads a regular file (following symlinks); its permission bits are used when mode is -1.
    Result<void> add_file_from_path(std::string_view path, const std::string& source, int mode = -1);
    Result<void> add_symlink(std::string_view path, std::string_view target);
    Result<void> add_char_device(std::string_view path, uint32_t mode, uint32_t major, uint32_t minor);
    // Adds everything below `source_dir` under `path`: directories, regular files, symlinks (kept as links)
    // and character devices, with their permission bits. Other file types are an error. `path` may be "/".
    Result<void> add_tree(std::string_view path, const std::string& source_dir);

    // Gives an entry already added a numeric owner (every entry is root's otherwise).
    Result<void> set_owner(std::string_view path, uint32_t uid, uint32_t gid);

    // The whole archive, trailer included.
    std::vector<uint8_t> finish() const;

  private:
    struct Entry {
        uint32_t mode = 0;          // file type and permission bits
        std::vector<uint8_t> data;  // file contents or symlink target
        uint32_t rdev_major = 0;
        uint32_t rdev_minor = 0;
        uint32_t uid = 0;
        uint32_t gid = 0;
        bool implicit = false;  // a parent directory nobody asked for
    };

    Result<void> add(std::string_view path, Entry entry);

    uint32_t mtime_;
    std::map<std::string, Entry> entries_;  // key: normalized path, no leading '/'
};

// "dev//console" -> "dev/console"; fails for "", "/", or any "." / ".." component.
Result<std::string> normalize_archive_path(std::string_view path);

// "0755" / "755" -> 0755; fails unless it is 1-4 octal digits.
Result<uint32_t> parse_mode(std::string_view text);

}  // namespace sandlot::initramfs
