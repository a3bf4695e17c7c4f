#include "vmm/event_loop.h"

#include <sys/eventfd.h>

#include <array>

namespace sandlot::vmm {

struct EventLoop::State {
    UniqueFd epoll;
    UniqueFd wake;  // eventfd written by stop()
    std::atomic<bool> stopping{false};
    std::mutex mutex;  // guards handlers
    std::unordered_map<int, std::shared_ptr<Handler>> handlers;
};

Result<EventLoop> EventLoop::create() {
    EventLoop loop;
    loop.state_ = std::make_unique<State>();
    loop.state_->epoll = UniqueFd(epoll_create1(EPOLL_CLOEXEC));
    if (!loop.state_->epoll) return errno_error("epoll_create1");
    loop.state_->wake = UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!loop.state_->wake) return errno_error("eventfd");
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = loop.state_->wake.get();
    if (epoll_ctl(loop.state_->epoll.get(), EPOLL_CTL_ADD, ev.data.fd, &ev) < 0)
        return errno_error("epoll_ctl");
    return loop;
}

EventLoop::EventLoop(EventLoop&&) noexcept = default;
EventLoop::~EventLoop() {
    if (!state_) return;
    // Handlers can own devices whose destructors call remove(): destroy them outside the map and the lock.
    std::unordered_map<int, std::shared_ptr<Handler>> doomed;
    {
        std::lock_guard lock(state_->mutex);
        doomed.swap(state_->handlers);
    }
    doomed.clear();
}

Result<void> EventLoop::add(int fd, uint32_t events, Handler handler) {
    std::lock_guard lock(state_->mutex);
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    if (epoll_ctl(state_->epoll.get(), EPOLL_CTL_ADD, fd, &ev) < 0) return errno_error("epoll_ctl add");
    state_->handlers[fd] = std::make_shared<Handler>(std::move(handler));
    return {};
}

Result<void> EventLoop::modify(int fd, uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    if (epoll_ctl(state_->epoll.get(), EPOLL_CTL_MOD, fd, &ev) < 0) return errno_error("epoll_ctl mod");
    return {};
}

void EventLoop::remove(int fd) {
    std::lock_guard lock(state_->mutex);
    epoll_ctl(state_->epoll.get(), EPOLL_CTL_DEL, fd, nullptr);
    state_->handlers.erase(fd);
}

Result<void> EventLoop::run_once(int timeout_ms) {
    std::array<epoll_event, 64> events;
    int n = epoll_wait(state_->epoll.get(), events.data(), events.size(), timeout_ms);
    if (n < 0) {
        if (errno == EINTR) return {};
        return errno_error("epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
        int fd = events[i].data.fd;
        if (fd == state_->wake.get()) {
            uint64_t v;
            (void)!read(fd, &v, sizeof v);
            continue;
        }
        std::shared_ptr<Handler> handler;
        {
            std::lock_guard lock(state_->mutex);
            auto it = state_->handlers.find(fd);
            if (it == state_->handlers.end()) continue;  // removed by an earlier handler in this batch
            handler = it->second;
        }
        (*handler)(events[i].events);
    }
    return {};
}

Result<void> EventLoop::run() {
    while (!state_->stopping.load())
        TRY(run_once(-1));
    return {};
}

void EventLoop::stop() {
    state_->stopping = true;
    uint64_t one = 1;
    (void)!write(state_->wake.get(), &one, sizeof one);
}

}  // namespace sandlot::vmm
