// virtio-blk device (virtio 1.x section 5.2): a raw disk image (regular file or block device), read-only or
// read-write, with a serial number the guest reads through GET_ID (/sys/block/vdX/serial).
//
// One request queue. Features: SEG_MAX, BLK_SIZE (512), FLUSH (fdatasync), RO when read-only, otherwise
// DISCARD and WRITE_ZEROES (hole punching on sparse files). Request parsing and checks: blk_request.h.
//
// Threading: the transport calls in under Device::mutex() (vCPU threads; the event-loop thread for queue
// notifications). notify() only pops chains — bounded, no I/O — and hands them to a small pool of worker
// threads, so neither a vCPU nor the event loop ever waits for the disk. A worker serves the request
// without the device mutex (preadv/pwritev straight into guest memory), then takes the mutex to put it on
// the used ring and signal the guest. At most one queue's worth of requests is in flight; past that the
// device stops popping until completions make room (a guest that republishes descriptors cannot grow our
// memory).
//
// reset() (and the destructor) wait until no worker is still touching guest memory for the old driver;
// completions that arrive after a reset are dropped (they belong to an earlier "generation" of the queue),
// so no worker ever uses a queue the transport has already thrown away. Lock order: Device::mutex() before
// the work-queue lock; a worker never holds both.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "proto/base/error.h"
#include "vmm/devices/blk/blk_request.h"
#include "vmm/devices/blk/disk_image.h"
#include "vmm/devices/virtio/device.h"
#include "vmm/event_loop.h"

namespace sandlot::vmm::blk {

inline constexpr uint32_t kBlkDeviceType = 2;
inline constexpr uint16_t kQueueSize = 256;
// Requests served at once (each worker does one blocking I/O at a time).
inline constexpr size_t kWorkerThreads = 4;

// Default member initializers throughout, so designated initializers may leave any field out.
struct BlkConfig {
    std::string path = {};
    bool read_only = false;
    std::string serial = {};  // at most 20 bytes (VIRTIO_BLK_ID_BYTES)
    // Completed reads, writes and flushes are counted here (RequestOptions::stats); null: not counted. Must
    // outlive the device.
    proto::VmmStats* stats = nullptr;
};

class BlkDevice : public virtio::Device, public std::enable_shared_from_this<BlkDevice> {
  public:
    // Opens the image (O_RDONLY or O_RDWR, O_CLOEXEC; a regular file or a block device) and starts the
    // workers. Errors are one line naming the path ("disk PATH: No such file or directory"). `loop` is not
    // used today: completions raise the interrupt (an irqfd) straight from the worker threads.
    static Result<std::shared_ptr<BlkDevice>> create(const BlkConfig& config, EventLoop& loop);
    // Waits for requests in flight, then stops the workers.
    ~BlkDevice() override;
    BlkDevice(const BlkDevice&) = delete;
    BlkDevice& operator=(const BlkDevice&) = delete;

    uint64_t capacity_sectors() const { return image_.capacity_sectors(); }
    bool read_only() const { return image_.read_only(); }
    // Requests taken from the queue and not yet completed. Takes the mutex (tests).
    size_t in_flight();

    uint32_t device_type() const override { return kBlkDeviceType; }
    uint64_t features() const override;
    std::span<const uint16_t> queue_max_sizes() const override { return kQueueMaxSizes; }
    void read_config(uint64_t offset, std::span<uint8_t> data) override;
    void write_config(uint64_t, std::span<const uint8_t>) override {}  // nothing writable (no CONFIG_WCE)
    Result<void> activate(virtio::Activation activation) override;
    void notify(uint16_t queue) override;
    void reset() override;

  private:
    static constexpr uint16_t kQueueMaxSizes[1] = {kQueueSize};

    // A popped chain on its way through a worker.
    struct Work {
        uint64_t generation = 0;  // the activation it belongs to
        const GuestMemory* memory = nullptr;
        RequestOptions options;
        virtio::Chain chain;
    };

    BlkDevice(DiskImage image, const std::string& serial, proto::VmmStats* stats);
    Result<void> start_workers();
    void worker_loop();
    // Under mutex(): pops what the driver made available, up to the in-flight limit, for the workers.
    void pop_requests();
    // Takes mutex(): puts a served request on the used ring, unless a reset came in between.
    void complete(const Work& work, uint32_t used_len);
    // Under mutex(): forget the driver; returns once no worker is serving one of its requests.
    void quiesce();

    const DiskImage image_;
    RequestOptions options_;  // id filled in; write_through set per activation

    // The driver's side, between activate() and reset(). Guarded by mutex().
    bool active_ = false;
    const GuestMemory* memory_ = nullptr;
    std::span<virtio::Queue> queues_;
    std::function<void(uint16_t)> signal_used_;
    uint64_t generation_ = 0;  // bumped by every reset: completions of older work are dropped
    size_t in_flight_ = 0;     // popped in this generation, not yet completed

    // The hand-off to the workers. Guarded by work_mutex_ (taken after mutex(), never the other way).
    std::mutex work_mutex_;
    std::condition_variable work_ready_;  // workers: pending_ not empty, or stopping_
    std::condition_variable work_idle_;   // quiesce(): busy_ dropped to 0
    std::deque<Work> pending_;
    size_t busy_ = 0;  // workers between taking a request and finishing its I/O
    bool stopping_ = false;
    std::vector<std::thread> workers_;
};

}  // namespace sandlot::vmm::blk
