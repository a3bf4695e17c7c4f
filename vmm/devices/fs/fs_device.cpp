#include "vmm/devices/fs/fs_device.h"

#include <linux/fuse.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace sandlot::vmm::fs {

namespace {

constexpr size_t kInHeaderSize = sizeof(fuse_in_header);
constexpr size_t kOutHeaderSize = sizeof(fuse_out_header);
constexpr size_t kConfigSize = kMaxTagLen + sizeof(uint32_t);  // struct virtio_fs_config

}  // namespace

Result<std::shared_ptr<FsDevice>> FsDevice::create(std::string tag, std::shared_ptr<FuseHandler> handler,
                                                   [[maybe_unused]] EventLoop& loop, proto::VmmStats* stats) {
    if (tag.empty() || tag.size() > kMaxTagLen) {
        return make_error("virtio-fs tag \"" + tag + "\" must be 1 to " + std::to_string(kMaxTagLen) +
                          " bytes");
    }
    // The guest reads the tag up to the first NUL: one inside it would silently shorten it.
    if (tag.find('\0') != std::string::npos) return make_error("virtio-fs tag contains a NUL byte");
    if (!handler) return make_error("virtio-fs device needs a FUSE handler");
    std::shared_ptr<FsDevice> device(new FsDevice(std::move(tag), std::move(handler), stats));
    // Raw pointer: the workers must not keep the device alive; its destructor joins them.
    for (size_t i = 0; i < kWorkerThreads; ++i)
        device->workers_.emplace_back([raw = device.get()] { raw->worker_main(); });
    return device;
}

FsDevice::~FsDevice() {
    {
        std::lock_guard lock(mutex());
        stopping_ = true;
    }
    work_cv_.notify_all();
    for (auto& worker : workers_)
        worker.join();
}

uint64_t FsDevice::max_request_len() const {
    return std::max<uint64_t>(handler_->max_io(), kMinPayloadLimit) + kRequestOverhead;
}

// ---- virtio::Device (mutex held) ----

void FsDevice::read_config(uint64_t offset, std::span<uint8_t> data) {
    for (size_t i = 0; i < data.size(); ++i) {
        uint64_t byte = offset + i;
        if (byte < kMaxTagLen) {
            data[i] = byte < tag_.size() ? static_cast<uint8_t>(tag_[byte]) : 0;
        } else if (byte < kConfigSize) {
            data[i] = static_cast<uint8_t>(kNumRequestQueues >> (8 * (byte - kMaxTagLen)));
        } else {
            data[i] = 0;
        }
    }
}

Result<void> FsDevice::activate(virtio::Activation activation) {
    if (activation.queues.size() != std::size(kQueueMaxSizes)) return make_error("virtio-fs needs 2 queues");
    memory_ = &activation.memory;
    queues_ = activation.queues;
    signal_used_ = std::move(activation.signal_used);
    next_request_queue_ = 0;
    active_ = true;
    work_cv_.notify_all();  // the driver may have queued requests before DRIVER_OK
    return {};
}

void FsDevice::notify(uint16_t) {
    // Any queue: a free worker pops from all of them, hiprio first.
    if (active_) work_cv_.notify_one();
}

void FsDevice::reset() {
    active_ = false;
    ++generation_;
    memory_ = nullptr;
    queues_ = {};
    signal_used_ = nullptr;
    // Workers in the middle of a request hold no device lock; once they are out of guest memory they find
    // the generation changed and drop their completion.
    std::unique_lock busy(busy_mutex_);
    idle_cv_.wait(busy, [this] { return busy_ == 0; });
}

// ---- Workers ----

std::optional<FsDevice::Job> FsDevice::pop_next() {
    if (auto chain = queues_[kHiprioQueue].pop()) return Job{kHiprioQueue, std::move(*chain)};
    for (uint32_t i = 0; i < kNumRequestQueues; ++i) {
        uint32_t index = (next_request_queue_ + i) % kNumRequestQueues;
        auto queue = static_cast<uint16_t>(kFirstRequestQueue + index);
        if (auto chain = queues_[queue].pop()) {
            next_request_queue_ = static_cast<uint16_t>((index + 1) % kNumRequestQueues);
            return Job{queue, std::move(*chain)};
        }
    }
    return std::nullopt;
}

bool FsDevice::any_available() {
    return std::ranges::any_of(queues_, [](virtio::Queue& queue) { return queue.has_available(); });
}

void FsDevice::worker_main() {
    Buffers buffers;
    std::unique_lock lock(mutex());
    while (!stopping_) {
        std::optional<Job> job = active_ ? pop_next() : std::nullopt;
        if (!job) {
            work_cv_.wait(lock);
            continue;
        }
        {
            std::lock_guard busy(busy_mutex_);
            ++busy_;
        }
        const uint64_t generation = generation_;
        const GuestMemory& memory = *memory_;
        if (any_available()) work_cv_.notify_one();  // more work: wake the next idle worker
        lock.unlock();

        uint32_t used_len = serve(memory, job->chain, buffers);

        {
            std::lock_guard busy(busy_mutex_);
            if (--busy_ == 0) idle_cv_.notify_all();
        }
        lock.lock();
        if (active_ && generation == generation_) {
            queues_[job->queue].add_used(job->chain.head, used_len);
            signal_used_(job->queue);
        }
    }
}

// The reply comes from our own handler, so its header and fuse_write_out are trusted (and still checked for
// size).
void FsDevice::count_data(uint32_t opcode, std::span<const uint8_t> reply) {
    fuse_out_header out{};
    std::memcpy(&out, reply.data(), sizeof out);
    if (out.error != 0) return;
    if (opcode == FUSE_READ) {
        proto::count(stats_->fs_read_bytes, reply.size() - kOutHeaderSize);
    } else if (opcode == FUSE_WRITE && reply.size() >= kOutHeaderSize + sizeof(fuse_write_out)) {
        fuse_write_out written{};
        std::memcpy(&written, reply.data() + kOutHeaderSize, sizeof written);
        proto::count(stats_->fs_write_bytes, written.size);
    }
}

uint32_t FsDevice::serve(const GuestMemory& memory, const virtio::Chain& chain, Buffers& buffers) {
    const bool can_reply = chain.writable_len >= kOutHeaderSize;
    auto reply_error = [&](uint64_t unique, int error) -> uint32_t {
        if (!can_reply) return 0;
        fuse_out_header out{};
        out.len = kOutHeaderSize;
        out.error = -error;
        out.unique = unique;
        std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(&out), sizeof out);
        return static_cast<uint32_t>(virtio::write_to_chain(memory, chain, 0, bytes));
    };

    if (chain.readable_len < kInHeaderSize) return 0;  // not a request: nobody to answer
    fuse_in_header in{};
    if (chain.readable_len > max_request_len()) {
        virtio::read_from_chain(memory, chain, 0, {reinterpret_cast<uint8_t*>(&in), sizeof in});
        return reply_error(in.unique, EINVAL);
    }
    // One copy of everything: the guest may rewrite its buffers at any time, so the header is parsed from
    // the same copy the handler sees.
    buffers.request.resize(chain.readable_len);
    virtio::read_from_chain(memory, chain, 0, buffers.request);
    std::memcpy(&in, buffers.request.data(), sizeof in);
    if (in.len < kInHeaderSize || in.len > chain.readable_len) return reply_error(in.unique, EINVAL);
    const bool has_reply = in.opcode != FUSE_FORGET && in.opcode != FUSE_BATCH_FORGET;
    if (has_reply && !can_reply) return 0;

    buffers.reply.clear();
    handler_->handle(std::span<const uint8_t>(buffers.request.data(), in.len), buffers.reply);
    uint32_t used_len = 0;
    if (buffers.reply.empty()) {
        used_len = 0;  // FORGET and friends
    } else if (buffers.reply.size() < kOutHeaderSize || buffers.reply.size() > chain.writable_len) {
        used_len = reply_error(in.unique, EIO);  // a malformed reply, or more than the guest has room for
    } else {
        used_len = static_cast<uint32_t>(virtio::write_to_chain(memory, chain, 0, buffers.reply));
        if (stats_) count_data(in.opcode, buffers.reply);
    }
    // Keep steady-state buffers, but do not hold on to a one-off giant reply.
    if (buffers.reply.capacity() > 2 * max_request_len()) std::vector<uint8_t>().swap(buffers.reply);
    return used_len;
}

}  // namespace sandlot::vmm::fs
