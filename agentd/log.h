// One-line diagnostics from the agent. As PID 1 stderr is the guest console, so keep it terse: one line per
// event, written with a single write() so lines from different places never interleave.
#pragma once

#include <string_view>

namespace sandlot::agent {

// Writes "agentd: <message>\n" to stderr.
void log_line(std::string_view message);

}  // namespace sandlot::agent
