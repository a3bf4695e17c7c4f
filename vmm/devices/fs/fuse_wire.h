// Reading FUSE request arguments and building replies. Requests come from a hostile guest: every read is
// bounds-checked and copies (the bytes may be unaligned), strings must be NUL-terminated inside the request.
#pragma once

#include <linux/fuse.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string_view>
#include <type_traits>
#include <vector>

namespace sandlot::vmm::fs {

class RequestReader {
  public:
    explicit RequestReader(std::span<const uint8_t> bytes) : bytes_(bytes) {}

    template <class T>
    std::optional<T> read() {
        static_assert(std::is_trivially_copyable_v<T>);
        if (bytes_.size() < sizeof(T)) return std::nullopt;
        T value;
        std::memcpy(&value, bytes_.data(), sizeof(T));
        bytes_ = bytes_.subspan(sizeof(T));
        return value;
    }
    // A NUL-terminated string (the NUL is consumed, not returned); nullopt when no NUL is left.
    std::optional<std::string_view> read_string() {
        const void* nul = std::memchr(bytes_.data(), 0, bytes_.size());
        if (!nul) return std::nullopt;
        size_t n = static_cast<size_t>(static_cast<const uint8_t*>(nul) - bytes_.data());
        std::string_view s(reinterpret_cast<const char*>(bytes_.data()), n);
        bytes_ = bytes_.subspan(n + 1);
        return s;
    }
    std::optional<std::span<const uint8_t>> read_bytes(size_t n) {
        if (bytes_.size() < n) return std::nullopt;
        std::span<const uint8_t> out = bytes_.first(n);
        bytes_ = bytes_.subspan(n);
        return out;
    }
    std::span<const uint8_t> rest() const { return bytes_; }

  private:
    std::span<const uint8_t> bytes_;
};

template <class T>
void append_struct(std::vector<uint8_t>& out, const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    const auto* p = reinterpret_cast<const uint8_t*>(&value);
    out.insert(out.end(), p, p + sizeof(T));
}

inline void append_bytes(std::vector<uint8_t>& out, std::span<const uint8_t> bytes) {
    out.insert(out.end(), bytes.begin(), bytes.end());
}

}  // namespace sandlot::vmm::fs
