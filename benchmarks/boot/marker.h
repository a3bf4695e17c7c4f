// The line the boot benchmark's guest /init writes to the console the moment it runs. The harness stops the
// clock when it sees this line on the VMM's stdout.
#pragma once

namespace sandlot::bench {

inline constexpr char kInitMarker[] = "SANDLOT-BENCH-INIT-RUNNING";

}  // namespace sandlot::bench
