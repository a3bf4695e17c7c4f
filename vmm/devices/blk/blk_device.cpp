#include "vmm/devices/blk/blk_device.h"

#include <endian.h>
#include <pthread.h>

#include <algorithm>
#include <cstring>
#include <system_error>

namespace sandlot::vmm::blk {

namespace {

constexpr uint64_t bit(unsigned feature) {
    return 1ull << feature;
}

}  // namespace

Result<std::shared_ptr<BlkDevice>> BlkDevice::create(const BlkConfig& config, EventLoop& /*loop*/) {
    if (config.serial.size() > VIRTIO_BLK_ID_BYTES) {
        return make_error("disk " + config.path + ": serial \"" + config.serial + "\" is longer than " +
                          std::to_string(VIRTIO_BLK_ID_BYTES) + " bytes");
    }
    auto image = TRY(DiskImage::open(config.path, config.read_only));
    std::shared_ptr<BlkDevice> device(new BlkDevice(std::move(image), config.serial, config.stats));
    TRY(device->start_workers());  // on failure the destructor joins the ones that started
    return device;
}

BlkDevice::BlkDevice(DiskImage image, const std::string& serial, proto::VmmStats* stats)
    : image_(std::move(image)) {
    options_.stats = stats;
    std::memcpy(options_.id.data(), serial.data(), std::min(serial.size(), options_.id.size()));
}

BlkDevice::~BlkDevice() {
    {
        std::lock_guard lock(mutex());
        quiesce();
    }
    {
        std::lock_guard lock(work_mutex_);
        stopping_ = true;
    }
    work_ready_.notify_all();
    for (auto& worker : workers_)
        worker.join();
}

Result<void> BlkDevice::start_workers() {
    try {
        for (size_t i = 0; i < kWorkerThreads; ++i)
            workers_.emplace_back([this] { worker_loop(); });
    } catch (const std::system_error& e) {  // std::thread reports failure only this way
        return make_error(std::string("virtio-blk: cannot start worker thread: ") + e.what());
    }
    return {};
}

size_t BlkDevice::in_flight() {
    std::lock_guard lock(mutex());
    return in_flight_;
}

// ---- virtio::Device ----

uint64_t BlkDevice::features() const {
    uint64_t features = bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_FLUSH);
    if (read_only()) return features | bit(VIRTIO_BLK_F_RO);
    return features | bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
}

void BlkDevice::read_config(uint64_t offset, std::span<uint8_t> data) {
    // struct virtio_blk_config (virtio 1.x 5.2.4), little-endian; fields of features we do not offer
    // (SIZE_MAX, GEOMETRY, TOPOLOGY, CONFIG_WCE, MQ, SECURE_ERASE) stay zero.
    virtio_blk_config config{};
    config.capacity = htole64(capacity_sectors());
    // Header and status take a descriptor each; without indirect descriptors the data gets the rest.
    config.seg_max = htole32(kQueueSize - 2);
    config.blk_size = htole32(kSectorSize);
    if (!read_only()) {
        config.max_discard_sectors = htole32(kMaxDiscardSectors);
        config.max_discard_seg = htole32(kMaxDiscardSegments);
        config.discard_sector_alignment = htole32(kDiscardSectorAlignment);
        config.max_write_zeroes_sectors = htole32(kMaxWriteZeroesSectors);
        config.max_write_zeroes_seg = htole32(kMaxWriteZeroesSegments);
        config.write_zeroes_may_unmap = 1;
    }
    const auto* bytes = reinterpret_cast<const uint8_t*>(&config);
    for (size_t i = 0; i < data.size(); ++i)
        data[i] = offset + i < sizeof config ? bytes[offset + i] : 0;
}

Result<void> BlkDevice::activate(virtio::Activation activation) {
    if (activation.queues.size() != std::size(kQueueMaxSizes)) return make_error("virtio-blk needs 1 queue");
    memory_ = &activation.memory;
    queues_ = activation.queues;
    signal_used_ = std::move(activation.signal_used);
    options_.write_through = !(activation.features & bit(VIRTIO_BLK_F_FLUSH));
    in_flight_ = 0;
    active_ = true;
    pop_requests();  // the driver may have queued requests before DRIVER_OK
    return {};
}

void BlkDevice::notify(uint16_t queue) {
    if (queue == 0) pop_requests();
}

void BlkDevice::reset() {
    quiesce();
}

// ---- Requests ----

void BlkDevice::pop_requests() {
    if (!active_) return;
    virtio::Queue& queue = queues_[0];
    std::vector<Work> batch;
    // A well-behaved driver never has more than a queue's worth outstanding; one that recycles descriptors
    // while we still hold them waits here until completions make room.
    while (in_flight_ < queue.size()) {
        auto chain = queue.pop();
        if (!chain) break;
        ++in_flight_;
        batch.push_back(Work{generation_, memory_, options_, std::move(*chain)});
    }
    if (batch.empty()) return;
    {
        std::lock_guard lock(work_mutex_);
        for (auto& work : batch)
            pending_.push_back(std::move(work));
    }
    work_ready_.notify_all();
}

void BlkDevice::worker_loop() {
    pthread_setname_np(pthread_self(), "virtio-blk");
    while (true) {
        Work work;
        {
            std::unique_lock lock(work_mutex_);
            work_ready_.wait(lock, [this] { return stopping_ || !pending_.empty(); });
            if (stopping_) return;
            work = std::move(pending_.front());
            pending_.pop_front();
            ++busy_;
        }
        // No lock held: quiesce() waits for busy_ to drop, so the memory stays the driver's until then.
        uint32_t used_len = serve_request(*work.memory, work.chain, image_, work.options);
        {
            std::lock_guard lock(work_mutex_);
            if (--busy_ == 0) work_idle_.notify_all();
        }
        complete(work, used_len);
    }
}

void BlkDevice::complete(const Work& work, uint32_t used_len) {
    std::lock_guard lock(mutex());
    if (!active_ || work.generation != generation_) return;  // the driver reset the device meanwhile
    --in_flight_;
    queues_[0].add_used(work.chain.head, used_len);
    signal_used_(0);
    pop_requests();  // room again, if the in-flight limit had stopped us
}

void BlkDevice::quiesce() {
    active_ = false;
    ++generation_;
    in_flight_ = 0;
    {
        std::unique_lock lock(work_mutex_);
        pending_.clear();
        work_idle_.wait(lock, [this] { return busy_ == 0; });
    }
    memory_ = nullptr;
    queues_ = {};
    signal_used_ = nullptr;
}

}  // namespace sandlot::vmm::blk
