// Each `sandlot` subcommand registers its options on the CLI11 app and returns the function that runs it.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace sandlot::cli {

using CommandRunner = std::function<int()>;

CommandRunner add_boot_command(CLI::App& app);
CommandRunner add_run_command(CLI::App& app);
CommandRunner add_volume_command(CLI::App& app);

}  // namespace sandlot::cli
