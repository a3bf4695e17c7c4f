// Runs a program to completion for tests: its stdin from a string, stdout+stderr captured together.
#pragma once

#include <string>
#include <vector>

namespace sandlot::testing {

struct CommandResult {
    int status = -1;     // exit status, or 128+N for signal N
    std::string output;  // stdout and stderr together
};

CommandResult run_command(const std::vector<std::string>& argv, const std::string& input = "");

}  // namespace sandlot::testing
