// Limits of the agent's exec sessions, advertised in HELLO (and the stdin window in EXEC_STARTED).
#pragma once

#include <cstddef>
#include <cstdint>

namespace sandlot::agent {

inline constexpr uint32_t kMaxStreams = 1024;          // open exec streams per connection
inline constexpr uint32_t kStdinWindow = 256 * 1024;   // STDIN credit per stream
inline constexpr size_t kMaxOutputChunk = 128 * 1024;  // largest STDOUT/STDERR payload the agent sends
inline constexpr int kExitLingerMs = 100;              // output pipes must stay empty this long after exit
inline constexpr int kBackgroundOutputMs = 1000;  // most output forwarded from background writers after exit

}  // namespace sandlot::agent
