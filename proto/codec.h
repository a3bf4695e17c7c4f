// Payload encoding: little-endian integers and length-prefixed byte strings.
//
//   u8 / u16 / u32 / u64 / i32   fixed width, little-endian
//   bytes / string               u32 length, then that many bytes (strings are not NUL-terminated)
//
// Compatibility rule: a message's fields are only ever appended to. Decoders read the fields they know and
// ignore any trailing bytes after them, so an older peer accepts messages from a newer one. A newer decoder
// that wants an appended field must treat its absence (Reader::remaining() == 0) as "old peer".
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "proto/base/error.h"

namespace sandlot::proto {

inline void store_le16(uint8_t* p, uint16_t v) {
    p[0] = static_cast<uint8_t>(v);
    p[1] = static_cast<uint8_t>(v >> 8);
}
inline void store_le32(uint8_t* p, uint32_t v) {
    for (int i = 0; i < 4; ++i)
        p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline void store_le64(uint8_t* p, uint64_t v) {
    for (int i = 0; i < 8; ++i)
        p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline uint16_t load_le16(const uint8_t* p) {
    return static_cast<uint16_t>(p[0] | (p[1] << 8));
}
inline uint32_t load_le32(const uint8_t* p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i)
        v = (v << 8) | p[i];
    return v;
}
inline uint64_t load_le64(const uint8_t* p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i)
        v = (v << 8) | p[i];
    return v;
}

// Appends fields to a payload that may not grow past `limit` bytes. A write that would cross the limit is
// dropped and marks the writer overflowed; finish() then fails, so one check at the end covers every field.
class Writer {
  public:
    explicit Writer(size_t limit);
    Writer();  // limit = kMaxFramePayload

    void u8(uint8_t v);
    void u16(uint16_t v);
    void u32(uint32_t v);
    void u64(uint64_t v);
    void i32(int32_t v);
    void bytes(std::span<const uint8_t> data);
    void string(std::string_view s);

    size_t size() const { return buffer_.size(); }
    bool overflowed() const { return overflowed_; }
    // The payload, or an error if any write crossed the limit.
    Result<std::vector<uint8_t>> finish() &&;

  private:
    bool reserve(size_t n);

    std::vector<uint8_t> buffer_;
    size_t limit_;
    bool overflowed_ = false;
};

// Reads fields from a received payload. Every read is bounds-checked: running past the end returns an
// Error naming the offset, and the reader consumes nothing on failure.
class Reader {
  public:
    explicit Reader(std::span<const uint8_t> data) : data_(data) {}

    Result<uint8_t> u8();
    Result<uint16_t> u16();
    Result<uint32_t> u32();
    Result<uint64_t> u64();
    Result<int32_t> i32();
    // A view into the payload; valid as long as the payload is.
    Result<std::span<const uint8_t>> bytes();
    Result<std::string> string();

    size_t offset() const { return offset_; }
    size_t remaining() const { return data_.size() - offset_; }

  private:
    Result<std::span<const uint8_t>> take(size_t n);

    std::span<const uint8_t> data_;
    size_t offset_ = 0;
};

// Names the message in a decode error: "decode EXEC_START: read past end ...".
template <class T>
Result<T> decoding(const char* message_name, Result<T> result) {
    if (!result) return std::unexpected(with_context(result.error(), std::string("decode ") + message_name));
    return result;
}

// The payload of a message whose encoder writes a bounded amount, far below the frame limit.
inline std::vector<uint8_t> finish_small(Writer&& writer) {
    return std::move(writer).finish().value();
}

}  // namespace sandlot::proto
