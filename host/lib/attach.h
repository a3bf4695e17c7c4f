// Bridging the caller's terminal (or plain fds) to a running exec session, like `docker run -it`.
//
//   ExecRequest req{.argv = {"sh"}, .pty = true, .stdin_open = true};
//   if (auto size = terminal_size(STDOUT_FILENO)) std::tie(req.rows, req.cols) = *size;
//   auto proc = TRY(agent.exec_stream(req));
//   ExitStatus status = TRY(attach(*proc, STDIN_FILENO, STDOUT_FILENO));
//
// While attached:
//   - in_fd is forwarded to the process's stdin until EOF, then stdin is closed (in_fd = -1: no input; a
//     stream with stdin open gets it closed at once);
//   - stdout goes to out_fd, stderr to err_fd (a PTY session only has stdout);
//   - for a PTY session whose in_fd is a terminal, that terminal is in raw mode (keys such as ^C and ^D go
//     to the remote terminal), and it is restored on every way out of attach();
//   - SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to this process are forwarded to the process group instead of
//     killing us, and SIGWINCH turns into a resize of the PTY (from out_fd's size, else in_fd's).
// If out_fd stops accepting output (EPIPE), the process is sent SIGPIPE, as a pipe would, and the rest of
// its output is discarded.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>

#include "host/lib/exec.h"
#include "proto/base/error.h"

namespace sandlot::host {

struct AttachOptions {
    int err_fd = -1;              // where stderr goes; -1 = out_fd
    bool raw_mode = true;         // a PTY session with a terminal on in_fd puts it in raw mode
    bool forward_signals = true;  // install the signal forwarding above for the duration of attach()
};

// Returns the exit status once the process has exited and its output is written out. Errors: the
// connection broke, or the signal forwarding could not be set up (another attach() holds it).
Result<ExitStatus> attach(ExecStream& stream, int in_fd, int out_fd, const AttachOptions& options = {});

// {rows, cols} of the terminal on fd, or std::nullopt if it is not a terminal (or reports 0x0).
std::optional<std::pair<uint16_t, uint16_t>> terminal_size(int fd);

}  // namespace sandlot::host
