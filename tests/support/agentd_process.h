// agentd as an ordinary host process (`agentd --listen-unix <tmp>/a.sock`) for tests of the host library
// against the real agent, killed when the test ends.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "host/lib/agent_connection.h"

namespace sandlot::test {

// Every socket a test reads from gives up after this long, so a broken peer fails the test instead of hanging
// it (for AgentConnection: its reader then reports the connection broken, waking every waiter).
void set_socket_timeout(int fd, int seconds = 20);

class Agentd {
  public:
    // extra_args go after --listen-unix (e.g. {"--boot-config", path}).
    explicit Agentd(std::vector<std::string> extra_args = {});
    ~Agentd();
    Agentd(const Agentd&) = delete;
    Agentd& operator=(const Agentd&) = delete;

    const std::string& dir() const { return dir_; }
    void kill_now();
    // A new connection, retrying while agentd starts; nullptr (with a test failure) if none.
    std::unique_ptr<host::AgentConnection> connect();

  private:
    std::string dir_;
    std::string socket_path_;
    pid_t pid_ = -1;
};

}  // namespace sandlot::test
