// Whole-buffer compression for the initramfs, in formats the kernel can unpack (CONFIG_RD_GZIP / RD_ZSTD).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "proto/base/error.h"

namespace sandlot::initramfs {

enum class Compression { None, Gzip, Zstd };

// "none", "gzip", "zstd".
Result<Compression> parse_compression(std::string_view name);

// gzip: deflate level 9 in a gzip wrapper (mtime 0). zstd: level 19, a single standard frame with the
// content size recorded. Both are deterministic for the same input.
Result<std::vector<uint8_t>> compress(std::span<const uint8_t> data, Compression compression);

}  // namespace sandlot::initramfs
