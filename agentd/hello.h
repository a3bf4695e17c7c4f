// What the agent tells the host about itself in HELLO: versions, boot timestamps and the guest's size.
#pragma once

#include <cstdint>

#include "proto/messages.h"

namespace sandlot::agent {

// CLOCK_BOOTTIME in nanoseconds. Counts from kernel start, so agentd's start time ≈ kernel boot time.
uint64_t boottime_ns();

struct AgentTimes {
    uint64_t start_ns = 0;  // when main() began
    uint64_t ready_ns = 0;  // when the first listening socket was up
};

// A HELLO for a new connection, stamped with the current time.
proto::Hello build_hello(const AgentTimes& times);

}  // namespace sandlot::agent
