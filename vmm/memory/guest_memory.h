// Guest RAM: anonymous host mappings laid out around the MMIO hole (see layout.h).
// Memory is mapped lazily (MAP_NORESERVE): the size is a limit, not a reservation.
//
// Every access the guest can influence goes through slice(), which bounds-checks the whole range against one
// region. Guest memory can change under us at any time (other vCPUs, the guest itself): callers copy what
// they validate before they use it.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

#include "proto/base/error.h"

namespace sandlot::vmm {

struct MemoryRegion {
    uint64_t gpa = 0;
    uint64_t size = 0;
    uint8_t* host = nullptr;
};

class GuestMemory {
  public:
    // Maps `bytes` of RAM: [0, min(bytes, hole start)) and, past 3 GiB, the rest from 4 GiB up.
    static Result<GuestMemory> create(uint64_t bytes);

    GuestMemory(GuestMemory&& other) noexcept;
    GuestMemory& operator=(GuestMemory&& other) noexcept;
    GuestMemory(const GuestMemory&) = delete;
    GuestMemory& operator=(const GuestMemory&) = delete;
    ~GuestMemory();

    std::span<const MemoryRegion> regions() const { return regions_; }
    uint64_t size() const { return size_; }
    // End of the RAM region that starts at 0 (below the MMIO hole).
    uint64_t low_end() const { return regions_.empty() ? 0 : regions_[0].size; }

    // The host view of [gpa, gpa+len), which must lie inside one region. len 0 is valid at any in-range gpa.
    Result<std::span<uint8_t>> slice(uint64_t gpa, uint64_t len) const;
    bool contains(uint64_t gpa, uint64_t len) const { return slice(gpa, len).has_value(); }

    template <class T>
    Result<T> read_obj(uint64_t gpa) const {
        static_assert(std::is_trivially_copyable_v<T>);
        auto bytes = TRY(slice(gpa, sizeof(T)));
        T value;
        std::memcpy(&value, bytes.data(), sizeof(T));
        return value;
    }

    template <class T>
    Result<void> write_obj(uint64_t gpa, const T& value) const {
        static_assert(std::is_trivially_copyable_v<T>);
        auto bytes = TRY(slice(gpa, sizeof(T)));
        std::memcpy(bytes.data(), &value, sizeof(T));
        return {};
    }

    Result<void> write(uint64_t gpa, std::span<const uint8_t> data) const;
    Result<void> read(uint64_t gpa, std::span<uint8_t> out) const;

  private:
    GuestMemory() = default;
    void unmap();

    std::vector<MemoryRegion> regions_;
    uint64_t size_ = 0;
};

}  // namespace sandlot::vmm
