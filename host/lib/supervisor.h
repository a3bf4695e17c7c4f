// The supervisor: one process per running named sandbox (the sandlot-supervisor binary), started by
// SandboxHome::start(). It
//   - holds the sandbox's lock file for its whole life (so "is it running?" has a true answer),
//   - boots the VMM (which dies with it: --parent-pid) and waits for the guest agent,
//   - writes the record's status, VMM identity and, at the end, the exit reason,
//   - copies the guest console into the sandbox's log, line by line (a console thread),
//   - runs `run -d`'s command with its output logged,
//   - carries out stop/kill/drain requests (written to the record; SIGUSR1 wakes it; SIGTERM = stop),
//   - enforces max-duration (drain, then stop) and idle-timeout, and in attached mode stops the sandbox
//     when its creator's end of the watchdog pipe closes.
// Its main thread runs one poll loop over the VMM's pidfd, a signalfd, the watchdog pipe and a timer.
#pragma once

#include <string>

namespace sandlot::host {

struct SupervisorArgs {
    std::string home;      // $SANDLOT_HOME
    std::string id;        // the sandbox's id
    int lock_fd = -1;      // the sandbox's lock file, locked (LOCK_EX) by the starter and handed over
    int ready_fd = -1;     // gets "ok\n" once the agent is ready, or "error: <why>\n"; then closed
    int watchdog_fd = -1;  // attached mode: the read end of the creator's pipe; EOF = the creator is gone
};

// Runs the sandbox until it stops; returns the process exit status (0 once the end was recorded).
int run_supervisor(const SupervisorArgs& args);

}  // namespace sandlot::host
