// An exec session of a named sandbox: an ExecStream that copies the output it hands out into the sandbox's
// log (stdout, stderr, or output for a PTY), logs the command's start and end as system events, and holds
// the sandbox's activity lock (shared) while it lives, so the supervisor counts it as activity.
#pragma once

#include <memory>
#include <string>

#include "host/lib/agent_connection.h"
#include "host/lib/exec.h"
#include "host/lib/sandbox_log.h"
#include "proto/base/unique_fd.h"

namespace sandlot::host {

// Takes the activity lock (shared, retrying briefly while the supervisor holds it for a moment) and touches
// its time. EBUSY when the sandbox is draining: the supervisor holds it to keep new commands out.
Result<UniqueFd> hold_activity(const std::string& activity_path);
// Marks "now" as the last activity (the file's mtime).
void touch_activity(int fd);

// A random session id: 12 hex characters.
std::string new_session_id();

// Wraps `stream`; `agent` (optional) is kept alive with it. Log write failures never fail the command.
std::unique_ptr<ExecStream> make_logged_exec(std::unique_ptr<ExecStream> stream,
                                             std::unique_ptr<AgentConnection> agent,
                                             std::shared_ptr<LogWriter> log, std::string session,
                                             UniqueFd activity);

}  // namespace sandlot::host
