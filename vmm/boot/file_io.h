// Reading the host files the loader boots from (kernel, initrd), with errors that carry no path: the
// caller knows what the file is for and prefixes that ("kernel /x/vmlinux: ...").
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "proto/base/error.h"
#include "proto/base/unique_fd.h"

namespace sandlot::vmm::boot {

struct OpenFile {
    UniqueFd fd;
    uint64_t size = 0;
};

// Opens a regular file read-only and reports its size.
Result<OpenFile> open_regular_file(const std::string& path);

// Fills `out` with the file's bytes from offset 0; fails if the file turns out shorter.
Result<void> read_exact(int fd, std::span<uint8_t> out);

// A whole file in memory (not zero-filled first: it is read over completely).
struct FileBytes {
    std::unique_ptr<uint8_t[]> data;
    uint64_t size = 0;
    std::span<const uint8_t> bytes() const { return {data.get(), size}; }
};

// Reads a whole regular file of at most max_size bytes.
Result<FileBytes> read_whole_file(const std::string& path, uint64_t max_size);

}  // namespace sandlot::vmm::boot
