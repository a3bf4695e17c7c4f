// The VMM's one event-loop thread: an epoll set that owns every device's host-side I/O.
// Queue notifications (ioeventfds), vsock sockets and timers all arrive here; vCPU threads never block on it.
//
// add/modify/remove may be called from any thread (a device can be activated from a vCPU thread); handlers
// always run on the loop thread, one at a time.
#pragma once

#include <sys/epoll.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "proto/base/error.h"
#include "proto/base/unique_fd.h"

namespace sandlot::vmm {

class EventLoop {
  public:
    using Handler = std::function<void(uint32_t epoll_events)>;

    static Result<EventLoop> create();
    EventLoop(EventLoop&&) noexcept;
    EventLoop& operator=(EventLoop&&) = delete;
    ~EventLoop();

    // Level-triggered by default; pass EPOLLET in `events` for edge-triggered.
    Result<void> add(int fd, uint32_t events, Handler handler);
    Result<void> modify(int fd, uint32_t events);
    // Safe to call from inside a handler, including the fd's own handler.
    void remove(int fd);

    // Runs handlers until stop() is called. Returns an error only if epoll itself fails.
    Result<void> run();
    // Runs at most one batch of ready handlers, waiting up to timeout_ms (-1: forever). For tests.
    Result<void> run_once(int timeout_ms);
    // Thread-safe; wakes the loop.
    void stop();

  private:
    EventLoop() = default;

    struct State;
    std::unique_ptr<State> state_;
};

}  // namespace sandlot::vmm
