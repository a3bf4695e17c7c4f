#include "proto/codec.h"

#include "proto/frame.h"

namespace sandlot::proto {

Writer::Writer(size_t limit) : limit_(limit) {}
Writer::Writer() : Writer(kMaxFramePayload) {}

bool Writer::reserve(size_t n) {
    if (overflowed_ || n > limit_ - buffer_.size()) {
        overflowed_ = true;
        return false;
    }
    return true;
}

void Writer::u8(uint8_t v) {
    if (reserve(1)) buffer_.push_back(v);
}

void Writer::u16(uint16_t v) {
    if (!reserve(2)) return;
    uint8_t b[2];
    store_le16(b, v);
    buffer_.insert(buffer_.end(), b, b + 2);
}

void Writer::u32(uint32_t v) {
    if (!reserve(4)) return;
    uint8_t b[4];
    store_le32(b, v);
    buffer_.insert(buffer_.end(), b, b + 4);
}

void Writer::u64(uint64_t v) {
    if (!reserve(8)) return;
    uint8_t b[8];
    store_le64(b, v);
    buffer_.insert(buffer_.end(), b, b + 8);
}

void Writer::i32(int32_t v) {
    u32(static_cast<uint32_t>(v));
}

void Writer::bytes(std::span<const uint8_t> data) {
    // Check the whole field up front so an overflowing field leaves no length prefix behind.
    if (data.size() > UINT32_MAX || !reserve(4 + data.size())) {
        overflowed_ = true;
        return;
    }
    u32(static_cast<uint32_t>(data.size()));
    buffer_.insert(buffer_.end(), data.begin(), data.end());
}

void Writer::string(std::string_view s) {
    bytes(std::span(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}

Result<std::vector<uint8_t>> Writer::finish() && {
    if (overflowed_) return make_error("payload exceeds " + std::to_string(limit_) + " bytes");
    return std::move(buffer_);
}

Result<std::span<const uint8_t>> Reader::take(size_t n) {
    if (n > remaining()) {
        return make_error("truncated payload: need " + std::to_string(n) + " bytes at offset " +
                          std::to_string(offset_) + ", have " + std::to_string(remaining()));
    }
    auto out = data_.subspan(offset_, n);
    offset_ += n;
    return out;
}

Result<uint8_t> Reader::u8() {
    return TRY(take(1))[0];
}
Result<uint16_t> Reader::u16() {
    return load_le16(TRY(take(2)).data());
}
Result<uint32_t> Reader::u32() {
    return load_le32(TRY(take(4)).data());
}
Result<uint64_t> Reader::u64() {
    return load_le64(TRY(take(8)).data());
}
Result<int32_t> Reader::i32() {
    return static_cast<int32_t>(TRY(u32()));
}

Result<std::span<const uint8_t>> Reader::bytes() {
    size_t start = offset_;
    uint32_t length = TRY(u32());
    auto data = take(length);
    if (!data) offset_ = start;  // consume nothing on failure
    return data;
}

Result<std::string> Reader::string() {
    auto data = TRY(bytes());
    return std::string(reinterpret_cast<const char*>(data.data()), data.size());
}

}  // namespace sandlot::proto
