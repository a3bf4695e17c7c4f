// Serves a FuseHandler on the host through /dev/fuse: a real kernel mount of the handler, for tests and
// benchmarks of the same request handlers a guest reaches through virtio-fs.
//
// Threading: `threads` serving threads each poll the /dev/fuse fd (non-blocking) and a stop eventfd, read one
// request into a buffer of max_io() plus headers, call handler.handle() and write the reply. The destructor
// detaches the mount, aborts the connection (fusectl), stops and joins the threads, then closes the device
// (which also aborts the connection): it never waits on the kernel or on a guest-controlled event, only on
// handle() calls already running, which are bounded.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "proto/base/error.h"
#include "proto/base/unique_fd.h"
#include "vmm/devices/fs/fuse_handler.h"

namespace sandlot::vmm::fs {

class FuseDevMount {
  public:
    // Opens /dev/fuse, mounts "fuse" at `mountpoint` (fd=N,rootmode=40000,user_id=0,group_id=0,
    // default_permissions,allow_other; nosuid,nodev), starts `threads` serving threads. Needs root.
    // `handler` must outlive the mount.
    static Result<std::unique_ptr<FuseDevMount>> mount(const std::string& mountpoint, FuseHandler& handler,
                                                       int threads = 2);
    ~FuseDevMount();  // unmounts (umount2 MNT_DETACH), aborts the connection, joins threads

    FuseDevMount(const FuseDevMount&) = delete;
    FuseDevMount& operator=(const FuseDevMount&) = delete;

    // The fusectl connection number (the mount's device minor), 0 if unknown.
    uint32_t connection() const { return connection_; }

  private:
    FuseDevMount(std::string mountpoint, FuseHandler& handler, UniqueFd fuse_fd, UniqueFd stop_fd);
    void serve();

    std::string mountpoint_;
    FuseHandler& handler_;
    UniqueFd fuse_fd_;
    UniqueFd stop_fd_;  // eventfd: readable once the threads must exit
    bool mounted_ = false;
    uint32_t connection_ = 0;
    std::vector<std::thread> threads_;
};

}  // namespace sandlot::vmm::fs
