// The memory the VMM's I/O counters (proto/vmm_stats.h) live in, owned for the VMM's lifetime.
//
// create(PATH) backs them with a file the host can read (sandlot-vmm --stats-file PATH): a fresh file is
// built next to PATH (mode 0600), sized, mapped MAP_SHARED, initialised, and only then renamed over PATH, so
// a reader never sees a half-made file and a reader that still maps an earlier VMM's file keeps reading that
// one (it is never truncated under it). private_instance() is the same struct in private memory, for a VMM
// without --stats-file. Either way the counters start at zero.
//
// Threading: stats() may be used from any thread (the counters are atomics); the object itself is not shared
// across threads while being moved or destroyed. The mapping (and the file) outlive nothing they serve:
// destroy the devices first.
#pragma once

#include <string>
#include <utility>

#include "proto/base/error.h"
#include "proto/vmm_stats.h"

namespace sandlot::vmm {

class StatsFile {
  public:
    static Result<StatsFile> create(const std::string& path);
    static Result<StatsFile> private_instance();
    ~StatsFile();
    StatsFile(StatsFile&& other) noexcept : stats_(std::exchange(other.stats_, nullptr)) {}
    StatsFile& operator=(StatsFile&& other) noexcept;
    StatsFile(const StatsFile&) = delete;
    StatsFile& operator=(const StatsFile&) = delete;

    proto::VmmStats& stats() { return *stats_; }

  private:
    explicit StatsFile(proto::VmmStats* stats) : stats_(stats) {}
    void release();
    proto::VmmStats* stats_;  // a mapping of sizeof(VmmStats) bytes
};

}  // namespace sandlot::vmm
