// sandlot-supervisor: the per-sandbox supervisor process (host/lib/supervisor.h). Started by the host
// library, never by hand:
//
//   sandlot-supervisor --home DIR --id ID --lock-fd N --ready-fd N [--watchdog-fd N]
//
// It detaches at once: the process its starter waits for exits as soon as the supervisor proper (a forked
// child in a new session) runs, so a long-lived library user never collects zombies and a terminal's signals
// never reach a detached sandbox.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>

#include "host/lib/supervisor.h"

int main(int argc, char** argv) {
    signal(SIGPIPE, SIG_IGN);
    sandlot::host::SupervisorArgs args;
    CLI::App app{"sandlot-supervisor: runs one sandbox (started by sandlot)"};
    app.add_option("--home", args.home)->required();
    app.add_option("--id", args.id)->required();
    app.add_option("--lock-fd", args.lock_fd)->required();
    app.add_option("--ready-fd", args.ready_fd)->required();
    app.add_option("--watchdog-fd", args.watchdog_fd);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }
    pid_t child = fork();
    if (child < 0) {
        std::perror("sandlot-supervisor: fork");
        return 1;
    }
    if (child > 0) _exit(0);
    setsid();
    return sandlot::host::run_supervisor(args);
}
