// Bounds-checked little-endian reads from a byte buffer (a kernel file, a table read back from guest memory).
// Every read names its offset; one that would run past the buffer yields nullopt instead of reading it.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <type_traits>

namespace sandlot::vmm::boot {

static_assert(std::endian::native == std::endian::little,
              "boot structures are little-endian, as is the host");

// True when [offset, offset+size) lies inside a buffer of `total` bytes; written so no sum can overflow.
inline bool range_fits(uint64_t offset, uint64_t size, uint64_t total) {
    return offset <= total && size <= total - offset;
}

template <class T>
std::optional<T> load_le(std::span<const uint8_t> buf, uint64_t offset) {
    static_assert(std::is_trivially_copyable_v<T>);
    if (!range_fits(offset, sizeof(T), buf.size())) return std::nullopt;
    T value;
    std::memcpy(&value, buf.data() + offset, sizeof(T));
    return value;
}

template <class T>
void store_le(std::span<uint8_t> buf, uint64_t offset, T value) {
    static_assert(std::is_trivially_copyable_v<T>);
    // Callers write fixed offsets into buffers they sized themselves; a miss is a programming error.
    if (!range_fits(offset, sizeof(T), buf.size())) __builtin_trap();
    std::memcpy(buf.data() + offset, &value, sizeof(T));
}

inline uint64_t align_up(uint64_t value, uint64_t alignment) {
    return (value + alignment - 1) & ~(alignment - 1);
}
inline uint64_t align_down(uint64_t value, uint64_t alignment) {
    return value & ~(alignment - 1);
}

}  // namespace sandlot::vmm::boot
