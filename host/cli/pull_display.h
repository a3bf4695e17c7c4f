// Per-layer pull progress on a terminal (`sandlot pull`, and `sandlot run` when it pulls): one line per
// layer, redrawn in place at most ten times a second.
#pragma once

#include <chrono>
#include <cstddef>
#include <vector>

#include "host/lib/image_store.h"

namespace sandlot::cli {

class PullDisplay {
  public:
    void update(const host::PullProgress& progress);

  private:
    void draw();
    std::vector<host::PullProgress> lines_;
    size_t drawn_ = 0;
    std::chrono::steady_clock::time_point last_draw_{};
};

}  // namespace sandlot::cli
