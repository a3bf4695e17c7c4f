#include "vmm/devices/fs/fuse_dev_mount.h"

#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace sandlot::vmm::fs {

namespace {

// Room for the largest request: a WRITE of max_io() bytes after its headers. The kernel refuses reads
// into buffers smaller than that (and than FUSE_MIN_READ_BUFFER).
size_t request_buffer_size(const FuseHandler& handler) {
    size_t size = size_t{handler.max_io()} + 4096;
    return size < FUSE_MIN_READ_BUFFER ? FUSE_MIN_READ_BUFFER : size;
}

}  // namespace

Result<std::unique_ptr<FuseDevMount>> FuseDevMount::mount(const std::string& mountpoint, FuseHandler& handler,
                                                          int threads) {
    if (threads < 1) return make_error("fuse mount: at least one serving thread");
    UniqueFd fuse_fd(open("/dev/fuse", O_RDWR | O_CLOEXEC | O_NONBLOCK));
    if (!fuse_fd) return errno_error("open /dev/fuse");
    UniqueFd stop_fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!stop_fd) return errno_error("eventfd");
    std::string options = "fd=" + std::to_string(fuse_fd.get()) +
                          ",rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other";
    if (::mount("sandlot", mountpoint.c_str(), "fuse", MS_NOSUID | MS_NODEV, options.c_str()) < 0) {
        return errno_error("mount fuse at " + mountpoint);
    }
    std::unique_ptr<FuseDevMount> m(
        new FuseDevMount(mountpoint, handler, std::move(fuse_fd), std::move(stop_fd)));
    m->mounted_ = true;
    for (int i = 0; i < threads; ++i)
        m->threads_.emplace_back([raw = m.get()] { raw->serve(); });
    // The mount's device minor names its fusectl directory. (This stat is served by the threads above.)
    struct stat st;
    if (stat(mountpoint.c_str(), &st) < 0) return errno_error("stat " + mountpoint);
    m->connection_ = minor(st.st_dev);
    return m;
}

FuseDevMount::FuseDevMount(std::string mountpoint, FuseHandler& handler, UniqueFd fuse_fd, UniqueFd stop_fd)
    : mountpoint_(std::move(mountpoint)),
      handler_(handler),
      fuse_fd_(std::move(fuse_fd)),
      stop_fd_(std::move(stop_fd)) {}

FuseDevMount::~FuseDevMount() {
    if (mounted_) umount2(mountpoint_.c_str(), MNT_DETACH);
    // A detached mount with files still open keeps the connection alive; abort it so their users see
    // errors instead of waiting for a server that is going away.
    if (connection_ != 0) {
        std::string abort_path = "/sys/fs/fuse/connections/" + std::to_string(connection_) + "/abort";
        UniqueFd abort_fd(open(abort_path.c_str(), O_WRONLY | O_CLOEXEC));
        if (abort_fd) {
            ssize_t ignored = write(abort_fd.get(), "1", 1);
            (void)ignored;
        }
    }
    uint64_t one = 1;
    ssize_t ignored = write(stop_fd_.get(), &one, sizeof one);
    (void)ignored;
    for (std::thread& t : threads_)
        t.join();
    fuse_fd_.reset();  // the last device fd: the kernel aborts the connection if nothing else did
}

void FuseDevMount::serve() {
    std::vector<uint8_t> request(request_buffer_size(handler_));
    std::vector<uint8_t> reply;
    for (;;) {
        struct pollfd fds[2] = {{fuse_fd_.get(), POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return;
        }
        if (fds[1].revents) return;
        ssize_t n = read(fuse_fd_.get(), request.data(), request.size());
        if (n < 0) {
            // EAGAIN: another thread took the request. ENOENT: it was interrupted before we got it.
            if (errno == EAGAIN || errno == EINTR || errno == ENOENT) continue;
            return;  // ENODEV: unmounted; anything else: the connection is unusable
        }
        handler_.handle(std::span(request.data(), static_cast<size_t>(n)), reply);
        if (reply.empty()) continue;
        // ENOENT: the request was interrupted meanwhile and its reply is no longer wanted.
        ssize_t w;
        do {
            w = write(fuse_fd_.get(), reply.data(), reply.size());
        } while (w < 0 && errno == EINTR);
    }
}

}  // namespace sandlot::vmm::fs
