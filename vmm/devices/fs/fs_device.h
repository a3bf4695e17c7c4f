// virtio-fs device (virtio 1.x section 5.11): a host directory shared with the guest over FUSE. The device is
// only the transport: each request chain carries one FUSE request (device-readable: fuse_in_header,
// arguments, WRITE data) and room for its reply (device-writable: fuse_out_header and payload); a FuseHandler
// (fuse_handler.h, e.g. PassthroughFs) executes it.
//
// Queues: hiprio (0), which Linux uses for FORGET and BATCH_FORGET, then kNumRequestQueues request queues.
// Config space: struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; } (the tag is padded with
// NULs, and has no NUL at all when it is 36 bytes long).
//
// Per chain: the readable part is gathered into a buffer (at most max_request_len() bytes, else the request
// is refused), the handler runs, and the reply is scattered into the writable part. Outcomes:
//  * a reply that fits: written whole, used length = reply size;
//  * no reply (FORGET, BATCH_FORGET): used length 0;
//  * a reply larger than the writable part: the guest gets a bare fuse_out_header with error -EIO instead
//    (FUSE has no partial replies for fixed-size answers, and the guest sizes variable ones itself, so a
//    reply that does not fit is an error, never truncated);
//  * a malformed request (shorter than fuse_in_header, in.len not within the readable part, larger than
//    max_request_len()): the handler is not called and the guest gets -EINVAL (when the header is readable);
//  * no room for even a fuse_out_header: the chain is returned with used length 0 and, unless it is a FORGET
//    or BATCH_FORGET, the handler is not called (a reply nobody can receive must have no side effects).
// Broken rings and descriptors never reach this file: virtio::Queue marks the queue broken and the transport
// sets DEVICE_NEEDS_RESET.
//
// Threading: transport calls (vCPU threads, the event-loop thread for notifications) hold Device::mutex() and
// only wake the workers. kWorkerThreads worker threads pop chains under the mutex, then gather, run the
// handler and scatter with the mutex released, and take it again for add_used + signal_used. A chain is only
// popped when a worker is free, so in-flight work (and memory: one request and one reply buffer per worker,
// reused) is bounded by the worker count, whatever the guest queues. reset() and the destructor wait until no
// worker touches guest memory any more; a completion that races a reset is dropped (the driver's queues are
// gone). A handler call that never returns therefore blocks reset(): handlers must not block indefinitely.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "proto/base/error.h"
#include "proto/vmm_stats.h"
#include "vmm/devices/fs/fuse_handler.h"
#include "vmm/devices/virtio/device.h"
#include "vmm/event_loop.h"

namespace sandlot::vmm::fs {

inline constexpr uint32_t kFsDeviceType = 26;
inline constexpr size_t kMaxTagLen = 36;
inline constexpr uint16_t kHiprioQueue = 0;
inline constexpr uint16_t kFirstRequestQueue = 1;
inline constexpr uint32_t kNumRequestQueues = 1;
// Linux sizes its virtqueues by QueueNumMax and caps a request at (queue size - 4) pages without indirect
// descriptors, so 1024 lets the guest use 1 MiB requests.
inline constexpr uint16_t kQueueSize = 1024;
inline constexpr size_t kWorkerThreads = 2;
// Besides max_io() payload bytes, a request carries headers and names; SETXATTR carries a value of up to
// XATTR_SIZE_MAX (64 KiB) whatever max_io() is.
inline constexpr uint32_t kRequestOverhead = 4096;
inline constexpr uint32_t kMinPayloadLimit = 64 * 1024;

class FsDevice : public virtio::Device, public std::enable_shared_from_this<FsDevice> {
  public:
    // tag: 1..36 bytes, shown in config space; the guest mounts `mount -t virtiofs TAG DIR`. Starts the
    // worker threads. `loop` is unused today (the device's only host-side work is the handler, run on its
    // workers); it is taken so every virtio device is created the same way.
    // `stats`, if given, counts the data of successful READ and WRITE requests; it must outlive the device.
    static Result<std::shared_ptr<FsDevice>> create(std::string tag, std::shared_ptr<FuseHandler> handler,
                                                    EventLoop& loop, proto::VmmStats* stats = nullptr);
    // Waits for the request in progress on each worker, then joins them.
    ~FsDevice() override;
    FsDevice(const FsDevice&) = delete;
    FsDevice& operator=(const FsDevice&) = delete;

    uint32_t device_type() const override { return kFsDeviceType; }
    uint64_t features() const override { return 0; }  // no VIRTIO_FS_F_NOTIFICATION, no DAX window
    std::span<const uint16_t> queue_max_sizes() const override { return kQueueMaxSizes; }
    void read_config(uint64_t offset, std::span<uint8_t> data) override;
    void write_config(uint64_t, std::span<const uint8_t>) override {}  // read-only
    Result<void> activate(virtio::Activation activation) override;
    void notify(uint16_t queue) override;
    // Stops popping chains and waits until no worker touches guest memory.
    void reset() override;

    const std::string& tag() const { return tag_; }
    // Largest readable part of a chain that is handed to the handler.
    uint64_t max_request_len() const;

  private:
    static constexpr uint16_t kQueueMaxSizes[1 + kNumRequestQueues] = {kQueueSize, kQueueSize};

    struct Job {
        uint16_t queue = 0;
        virtio::Chain chain;
    };
    // One worker's buffers, kept across requests so steady state allocates nothing.
    struct Buffers {
        std::vector<uint8_t> request;
        std::vector<uint8_t> reply;
    };

    FsDevice(std::string tag, std::shared_ptr<FuseHandler> handler, proto::VmmStats* stats)
        : tag_(std::move(tag)), handler_(std::move(handler)), stats_(stats) {}

    void worker_main();
    // The next chain to serve, hiprio first, then the request queues in turn. Mutex held.
    std::optional<Job> pop_next();
    bool any_available();
    // Runs one request outside the mutex; returns the used length.
    uint32_t serve(const GuestMemory& memory, const virtio::Chain& chain, Buffers& buffers);
    // Adds a successful READ's or WRITE's data bytes to stats_ (non-null). `reply` is at least a header.
    void count_data(uint32_t opcode, std::span<const uint8_t> reply);

    const std::string tag_;
    const std::shared_ptr<FuseHandler> handler_;
    proto::VmmStats* const stats_;  // may be null
    std::vector<std::thread> workers_;

    // Guarded by mutex().
    bool active_ = false;
    bool stopping_ = false;
    uint64_t generation_ = 0;  // bumped by every reset(): completions from before it are dropped
    const GuestMemory* memory_ = nullptr;
    std::span<virtio::Queue> queues_;
    std::function<void(uint16_t)> signal_used_;
    uint16_t next_request_queue_ = 0;
    std::condition_variable work_cv_;  // waited on with mutex(): chains may be available, or stopping_

    // Workers between popping a chain and being done with guest memory. Guarded by busy_mutex_ (not mutex():
    // reset() waits for it while holding mutex()). Lock order: mutex(), then busy_mutex_.
    std::mutex busy_mutex_;
    std::condition_variable idle_cv_;
    size_t busy_ = 0;
};

}  // namespace sandlot::vmm::fs
