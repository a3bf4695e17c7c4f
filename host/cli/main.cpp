// `sandlot`: the command-line front end of the host library.
#include <signal.h>

#include <cstdio>
#include <map>
#include <string>

#include "host/cli/commands.h"

namespace sandlot::cli {

namespace {
std::vector<std::string> g_command_line;
}

const std::vector<std::string>& command_line() {
    return g_command_line;
}

void set_command_line(int argc, char** argv) {
    g_command_line.assign(argv + 1, argv + argc);
}

}  // namespace sandlot::cli

int main(int argc, char** argv) {
    signal(SIGPIPE, SIG_IGN);
    CLI::App app{"sandlot: hardware-isolated microVM sandboxes"};
    app.require_subcommand(1);
    app.set_version_flag("--version", SANDLOT_VERSION);

    std::map<std::string, sandlot::cli::CommandRunner> commands = {
        {"boot", sandlot::cli::add_boot_command(app)},
        {"run", sandlot::cli::add_run_command(app)},
        {"volume", sandlot::cli::add_volume_command(app)},
        {"cp", sandlot::cli::add_cp_command(app)},
    };
    for (auto& [name, run] : sandlot::cli::add_sandbox_commands(app))
        commands.emplace(name, std::move(run));
    for (auto& [name, run] : sandlot::cli::add_observe_commands(app))
        commands.emplace(name, std::move(run));
    for (auto& [name, run] : sandlot::cli::add_image_commands(app))
        commands.emplace(name, std::move(run));
    sandlot::cli::set_command_line(argc, argv);

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        // Like docker: 125 means sandlot itself failed (here: its command line), not a command in a sandbox.
        std::fprintf(stderr, "sandlot: error: %s\n", e.what());
        return 125;
    }
    for (auto& [name, run] : commands) {
        if (app.got_subcommand(name)) return run();
    }
    return 125;
}
