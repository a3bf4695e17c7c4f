#include "initramfs/compress.h"

#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <string>

namespace sandlot::initramfs {

namespace {

Result<std::vector<uint8_t>> gzip(std::span<const uint8_t> data) {
    z_stream zs{};
    // windowBits 15 + 16: deflate with a gzip header and trailer instead of the zlib wrapper.
    if (deflateInit2(&zs, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        return make_error("deflateInit2 failed");
    }
    std::vector<uint8_t> out;
    constexpr size_t kChunk = 256 * 1024;
    size_t in_offset = 0;
    int rc = Z_OK;
    while (rc != Z_STREAM_END) {
        // zlib counts in 32-bit units, so feed large inputs in pieces.
        if (zs.avail_in == 0 && in_offset < data.size()) {
            size_t n = std::min<size_t>(data.size() - in_offset, 1u << 30);
            zs.next_in = const_cast<Bytef*>(data.data() + in_offset);
            zs.avail_in = static_cast<uInt>(n);
            in_offset += n;
        }
        size_t old_size = out.size();
        out.resize(old_size + kChunk);
        zs.next_out = out.data() + old_size;
        zs.avail_out = static_cast<uInt>(kChunk);
        rc = deflate(&zs, in_offset == data.size() ? Z_FINISH : Z_NO_FLUSH);
        out.resize(out.size() - zs.avail_out);
        if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) {
            deflateEnd(&zs);
            return make_error("deflate failed: " + std::to_string(rc));
        }
    }
    deflateEnd(&zs);
    return out;
}

Result<std::vector<uint8_t>> zstd(std::span<const uint8_t> data) {
    std::vector<uint8_t> out(ZSTD_compressBound(data.size()));
    size_t n = ZSTD_compress(out.data(), out.size(), data.data(), data.size(), 19);
    if (ZSTD_isError(n)) return make_error(std::string("zstd compression failed: ") + ZSTD_getErrorName(n));
    out.resize(n);
    return out;
}

}  // namespace

Result<Compression> parse_compression(std::string_view name) {
    if (name == "none") return Compression::None;
    if (name == "gzip") return Compression::Gzip;
    if (name == "zstd") return Compression::Zstd;
    return make_error("unknown compression '" + std::string(name) + "': want none, gzip or zstd");
}

Result<std::vector<uint8_t>> compress(std::span<const uint8_t> data, Compression compression) {
    switch (compression) {
        case Compression::None:
            return std::vector<uint8_t>(data.begin(), data.end());
        case Compression::Gzip:
            return gzip(data);
        case Compression::Zstd:
            return zstd(data);
    }
    return make_error("unknown compression");
}

}  // namespace sandlot::initramfs
