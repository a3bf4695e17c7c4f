// Protocol and agent versions.
//
// The protocol major changes only when an existing message changes meaning; peers with different majors
// must not talk (the host checks HELLO). The minor grows when messages or appended fields are added; a peer
// can rely on something new only if the other side's minor (or a features bit in HELLO) says it is there.
#pragma once

#include <cstdint>
#include <string_view>

#ifndef SANDLOT_VERSION
#error "SANDLOT_VERSION must be defined by the build (the CMake project version)"
#endif

namespace sandlot::proto {

inline constexpr uint16_t kProtocolMajor = 1;
// 1.1: exec sessions, HELLO limits, ERROR kind. 1.2: STATS_REQUEST / STATS. 1.3: filesystem streams.
inline constexpr uint16_t kProtocolMinor = 3;

// The sandlot release the agent was built from, e.g. "0.1.0".
inline constexpr std::string_view kAgentVersion = SANDLOT_VERSION;

}  // namespace sandlot::proto
