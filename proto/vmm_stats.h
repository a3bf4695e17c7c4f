// The VMM's I/O counters, shared with the host through a file (sandlot-vmm --stats-file PATH).
//
// The VMM creates the file (mode 0600), sizes it to sizeof(VmmStats), maps it MAP_SHARED and bumps the
// counters as devices complete requests; the host maps the same file read-only and loads them at any time,
// also after the VMM exited (the last values stay). Layout, little-endian as the host and VMM share the
// machine:
//
//   offset 0   u32 magic   kVmmStatsMagic (the bytes "SLST")
//   offset 4   u32 version kVmmStatsVersion
//   offset 8   u64 counters, in the order below
//
// Threading: every counter is a lock-free std::atomic<uint64_t> updated with relaxed fetch_add from any
// device thread; readers use relaxed loads (each value is exact, the set is not a snapshot). A new version
// may append counters; readers accept a file at least as large as the struct they know.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace sandlot::proto {

inline constexpr uint32_t kVmmStatsMagic = 0x54534c53;  // "SLST" in file order
inline constexpr uint32_t kVmmStatsVersion = 1;

struct VmmStats {
    uint32_t magic = kVmmStatsMagic;
    uint32_t version = kVmmStatsVersion;
    std::atomic<uint64_t> blk_read_bytes{0};   // virtio-blk IN requests completed OK: data bytes
    std::atomic<uint64_t> blk_write_bytes{0};  // OUT requests completed OK: data bytes
    std::atomic<uint64_t> blk_read_ops{0};
    std::atomic<uint64_t> blk_write_ops{0};
    std::atomic<uint64_t> blk_flush_ops{0};
    std::atomic<uint64_t> net_rx_bytes{0};  // reserved for a network device
    std::atomic<uint64_t> net_tx_bytes{0};
    std::atomic<uint64_t> fs_read_bytes{0};   // virtio-fs READ replies: data bytes
    std::atomic<uint64_t> fs_write_bytes{0};  // virtio-fs WRITE: bytes the server wrote
};

// Adds to a counter; for the device threads.
inline void count(std::atomic<uint64_t>& counter, uint64_t n) {
    counter.fetch_add(n, std::memory_order_relaxed);
}

static_assert(std::atomic<uint64_t>::is_always_lock_free, "VmmStats lives in shared memory");
static_assert(std::is_standard_layout_v<VmmStats>);
static_assert(sizeof(std::atomic<uint64_t>) == 8 && alignof(std::atomic<uint64_t>) == 8);
static_assert(offsetof(VmmStats, blk_read_bytes) == 8);
static_assert(offsetof(VmmStats, fs_write_bytes) == 8 + 8 * 8);
static_assert(sizeof(VmmStats) == 80);

}  // namespace sandlot::proto
