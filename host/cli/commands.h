// Each `sandlot` subcommand registers its options on the CLI11 app and returns the function that runs it.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace sandlot::cli {

using CommandRunner = std::function<int()>;

CommandRunner add_boot_command(CLI::App& app);
CommandRunner add_run_command(CLI::App& app);
CommandRunner add_volume_command(CLI::App& app);
// Named sandboxes: create, start, stop, kill, rm, ls, ps, inspect, exec.
std::vector<std::pair<std::string, CommandRunner>> add_sandbox_commands(CLI::App& app);
// logs, metrics.
std::vector<std::pair<std::string, CommandRunner>> add_observe_commands(CLI::App& app);
// cp: files between the host and a running sandbox.
CommandRunner add_cp_command(CLI::App& app);
// Images: pull, images, rmi, image ls|pull|inspect|import|rm|prune; registry login|logout.
std::vector<std::pair<std::string, CommandRunner>> add_image_commands(CLI::App& app);

// The command line as main() got it (without the program name), for commands that need to see where `--` was.
const std::vector<std::string>& command_line();
void set_command_line(int argc, char** argv);

}  // namespace sandlot::cli
