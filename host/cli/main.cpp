// `sandlot`: the command-line front end of the host library.
#include <signal.h>

#include <cstdio>

#include "host/cli/commands.h"

int main(int argc, char** argv) {
    signal(SIGPIPE, SIG_IGN);
    CLI::App app{"sandlot: hardware-isolated microVM sandboxes"};
    app.require_subcommand(1);
    app.set_version_flag("--version", SANDLOT_VERSION);

    auto boot = sandlot::cli::add_boot_command(app);

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        std::fprintf(stderr, "sandlot: error: %s\n", e.what());
        return 2;
    }
    if (app.got_subcommand("boot")) return boot();
    return 2;
}
