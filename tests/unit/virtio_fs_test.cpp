// virtio-fs without KVM: a fake guest driver (descriptor rings in a GuestMemory, registers through the MMIO
// transport) feeds FUSE requests to the FsDevice. VirtioFsTest uses a recording/echo FuseHandler defined
// here, so it tests the transport alone (framing, bounds, queues, workers, reset); VirtioFsPassthroughTest
// runs real FUSE requests against a PassthroughFs over a temporary directory.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fuse.h>
#include <poll.h>
#include <sys/stat.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tests/unit/virtio_test_driver.h"
#include "vmm/devices/fs/fs_device.h"
#include "vmm/devices/fs/passthrough_fs.h"
#include "vmm/devices/irq_line.h"
#include "vmm/devices/virtio/mmio_transport.h"
#include "vmm/event_loop.h"

namespace sandlot::vmm::fs {
namespace {

using namespace std::chrono_literals;
using virtio::test::BufferSpec;
using virtio::test::DriverQueue;
using virtio::test::irq_count;
using virtio::test::MmioDriver;
using virtio::test::UsedElem;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kRam = 64ull << 20;
constexpr uint16_t kHiprioSize = 64, kRequestSize = 256;
constexpr uint32_t kHiprioSlot = 4096;
constexpr uint32_t kRequestSlot = 0x11000;  // 68 KiB per descriptor
constexpr uint64_t kHiprioRings = 0x10000, kRequestRings = 0x20000;
constexpr uint64_t kHiprioBuffers = 0x100000, kRequestBuffers = 0x1000000;

// Opcodes the test handler understands (the transport does not care what they mean).
constexpr uint32_t kEcho = 5000;      // reply payload = request payload
constexpr uint32_t kBigReply = 5001;  // payload: u32 n; reply payload = n bytes of 0xab
constexpr uint32_t kBadReply = 5002;  // replies 8 bytes: less than a fuse_out_header

std::vector<uint8_t> fuse_request(uint32_t opcode, uint64_t unique, std::span<const uint8_t> payload = {},
                                  uint64_t nodeid = 1) {
    fuse_in_header in{};
    in.len = static_cast<uint32_t>(sizeof in + payload.size());
    in.opcode = opcode;
    in.unique = unique;
    in.nodeid = nodeid;
    // Sized once and filled by memcpy: GCC 12 at -O2 misreads insert() after a memcpy as out of bounds.
    std::vector<uint8_t> bytes(sizeof in + payload.size());
    std::memcpy(bytes.data(), &in, sizeof in);
    if (!payload.empty()) std::memcpy(bytes.data() + sizeof in, payload.data(), payload.size());
    return bytes;
}

template <class T>
std::span<const uint8_t> bytes_of(const T& value) {
    return {reinterpret_cast<const uint8_t*>(&value), sizeof value};
}

std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
    std::mt19937 gen(seed);
    std::vector<uint8_t> v(n);
    for (auto& b : v)
        b = static_cast<uint8_t>(gen());
    return v;
}

// Readable buffers holding `bytes`, cut at the given sizes (the last one takes the rest).
std::vector<BufferSpec> readable(const std::vector<uint8_t>& bytes, std::vector<uint32_t> cuts = {}) {
    std::vector<BufferSpec> specs;
    size_t at = 0;
    for (uint32_t cut : cuts) {
        if (at >= bytes.size()) break;
        size_t n = std::min<size_t>(cut, bytes.size() - at);
        specs.push_back(
            {.len = static_cast<uint32_t>(n), .data = {bytes.begin() + at, bytes.begin() + at + n}});
        at += n;
    }
    if (at < bytes.size() || specs.empty()) {
        specs.push_back(
            {.len = static_cast<uint32_t>(bytes.size() - at), .data = {bytes.begin() + at, bytes.end()}});
    }
    return specs;
}

std::vector<BufferSpec> with_writable(std::vector<BufferSpec> specs, std::vector<uint32_t> sizes) {
    for (uint32_t size : sizes)
        specs.push_back({.len = size, .writable = true});
    return specs;
}

// Records every request; answers by opcode. Can hold requests at a gate to keep them in flight.
class TestHandler : public FuseHandler {
  public:
    explicit TestHandler(uint32_t max_io = 8192) : max_io_(max_io) {}

    void handle(std::span<const uint8_t> request, std::vector<uint8_t>& reply) override {
        EXPECT_TRUE(reply.empty());
        std::unique_lock lock(mutex_);
        requests_.emplace_back(request.begin(), request.end());
        ++in_handler_;
        max_concurrent_ = std::max(max_concurrent_, in_handler_);
        cv_.notify_all();
        cv_.wait(lock, [&] { return gate_open_; });
        --in_handler_;
        lock.unlock();

        fuse_in_header in;
        std::memcpy(&in, request.data(), sizeof in);
        EXPECT_EQ(in.len, request.size());
        if (in.opcode == FUSE_FORGET || in.opcode == FUSE_BATCH_FORGET) return;
        std::vector<uint8_t> payload;
        auto args = request.subspan(sizeof in);
        if (in.opcode == kEcho) {
            payload.assign(args.begin(), args.end());
        } else if (in.opcode == kBigReply) {
            uint32_t n = 0;
            std::memcpy(&n, args.data(), std::min<size_t>(4, args.size()));
            payload.assign(n, 0xab);
        } else if (in.opcode == kBadReply) {
            reply.assign(8, 0);
            return;
        }
        fuse_out_header out{};
        out.len = static_cast<uint32_t>(sizeof out + payload.size());
        out.error = in.opcode == kEcho || in.opcode == kBigReply ? 0 : -ENOSYS;
        out.unique = in.unique;
        reply.resize(sizeof out);
        std::memcpy(reply.data(), &out, sizeof out);
        reply.insert(reply.end(), payload.begin(), payload.end());
    }
    uint32_t max_io() const override { return max_io_; }

    void close_gate() {
        std::lock_guard lock(mutex_);
        gate_open_ = false;
    }
    void open_gate() {
        std::lock_guard lock(mutex_);
        gate_open_ = true;
        cv_.notify_all();
    }
    // Waits until `n` calls are inside handle() (held at the gate).
    bool wait_in_handler(size_t n) {
        std::unique_lock lock(mutex_);
        return cv_.wait_for(lock, 10s, [&] { return in_handler_ == n; });
    }
    std::vector<std::vector<uint8_t>> requests() {
        std::lock_guard lock(mutex_);
        return requests_;
    }
    size_t max_concurrent() {
        std::lock_guard lock(mutex_);
        return max_concurrent_;
    }

  private:
    const uint32_t max_io_;
    std::mutex mutex_;
    std::condition_variable cv_;
    std::vector<std::vector<uint8_t>> requests_;
    size_t in_handler_ = 0, max_concurrent_ = 0;
    bool gate_open_ = true;
};

struct Reply {
    fuse_out_header out{};
    std::vector<uint8_t> payload;
};

class VirtioFsTest : public ::testing::Test {
  protected:
    void SetUp() override {
        auto mem = GuestMemory::create(kRam);
        ASSERT_TRUE(mem);
        memory_.emplace(std::move(*mem));
        auto loop = EventLoop::create();
        ASSERT_TRUE(loop);
        loop_.emplace(std::move(*loop));
    }

    void TearDown() override {
        if (handler_) handler_->open_gate();
        driver_.reset();
        transport_.reset();
        device_.reset();
    }

    void make_device(std::shared_ptr<FuseHandler> handler, std::string tag = "sandlot-root") {
        auto device = FsDevice::create(std::move(tag), std::move(handler), *loop_, &stats_);
        ASSERT_TRUE(device) << device.error().to_string();
        device_ = *device;
        auto irq = IrqLine::create(5);
        ASSERT_TRUE(irq);
        irq_fd_ = irq->fd();
        transport_ = std::make_shared<virtio::MmioTransport>(*memory_, device_, std::move(*irq));
        driver_.emplace(*transport_);
    }

    void make_test_device(uint32_t max_io = 8192) {
        handler_ = std::make_shared<TestHandler>(max_io);
        make_device(handler_);
    }

    // What the guest's virtio_fs driver does at probe: features, then the hiprio and request queues.
    void start_driver() {
        hiprio_.emplace(*memory_, kHiprioSize, kHiprioRings, kHiprioBuffers, kHiprioSlot);
        requests_.emplace(*memory_, kRequestSize, kRequestRings, kRequestBuffers, kRequestSlot);
        ASSERT_TRUE(driver_->negotiate(virtio::kFeatureVersion1));
        driver_->setup_queue(kHiprioQueue, hiprio_->config());
        driver_->setup_queue(kFirstRequestQueue, requests_->config());
        driver_->driver_ok();
        ASSERT_EQ(transport_->status() & virtio::kStatusNeedsReset, 0u);
        ASSERT_NE(transport_->status() & virtio::kStatusDriverOk, 0u);
    }

    DriverQueue& queue(uint16_t index) { return index == kHiprioQueue ? *hiprio_ : *requests_; }

    uint16_t submit(uint16_t q, const std::vector<BufferSpec>& specs) {
        auto head = queue(q).add_chain(specs);
        EXPECT_TRUE(head) << "queue " << q << " is full";
        driver_->notify(q);
        return head.value_or(0xffff);
    }

    // Waits (on the interrupt) for the next used element of queue `q`.
    std::optional<UsedElem> wait_used(uint16_t q, std::chrono::milliseconds timeout = 10s) {
        auto deadline = Clock::now() + timeout;
        while (true) {
            if (auto used = queue(q).pop_used()) return used;
            if (Clock::now() > deadline) return std::nullopt;
            pollfd p{irq_fd_, POLLIN, 0};
            poll(&p, 1, 50);
            irq_count(irq_fd_);
        }
    }

    // The bytes the device wrote into the writable buffers of a used chain (the first `readable_count`
    // buffers are the request).
    std::vector<uint8_t> written(const UsedElem& used, size_t readable_count) {
        std::vector<uint8_t> bytes;
        for (size_t i = readable_count; i < used.buffers.size(); ++i) {
            auto [gpa, len] = used.buffers[i];
            std::vector<uint8_t> part(len);
            EXPECT_TRUE(memory_->read(gpa, part));
            bytes.insert(bytes.end(), part.begin(), part.end());
        }
        EXPECT_LE(used.len, bytes.size());
        bytes.resize(std::min<size_t>(used.len, bytes.size()));
        return bytes;
    }

    Reply parse_reply(const std::vector<uint8_t>& bytes) {
        Reply r;
        EXPECT_GE(bytes.size(), sizeof r.out);
        if (bytes.size() < sizeof r.out) return r;
        std::memcpy(&r.out, bytes.data(), sizeof r.out);
        EXPECT_EQ(r.out.len, bytes.size());
        r.payload.assign(bytes.begin() + sizeof r.out, bytes.end());
        return r;
    }

    // Sends one request (in descriptors of at most one slot) and waits for its reply.
    Reply call(uint16_t q, const std::vector<uint8_t>& request, uint32_t reply_room = 4096) {
        std::vector<uint32_t> cuts(request.size() / kRequestSlot, kRequestSlot);
        auto specs = readable(request, cuts);
        size_t readable_count = specs.size();
        uint16_t head = submit(q, with_writable(specs, {reply_room}));
        auto used = wait_used(q);
        EXPECT_TRUE(used);
        if (!used) return {};
        EXPECT_EQ(used->id, head);
        return parse_reply(written(*used, readable_count));
    }

    // Waits until another thread holds the device mutex (the workers are all parked in the handler, so
    // that thread is the one resetting the device).
    static bool wait_for_mutex_held_elsewhere(std::mutex& mutex) {
        auto deadline = Clock::now() + 10s;
        while (Clock::now() < deadline) {
            if (!mutex.try_lock()) return true;
            mutex.unlock();
            std::this_thread::yield();
        }
        return false;
    }

    // Expects the chain back with nothing written.
    void expect_dropped(uint16_t q, const std::vector<BufferSpec>& specs) {
        uint16_t head = submit(q, specs);
        auto used = wait_used(q);
        ASSERT_TRUE(used);
        EXPECT_EQ(used->id, head);
        EXPECT_EQ(used->len, 0u);
    }

    std::optional<GuestMemory> memory_;
    std::optional<EventLoop> loop_;
    std::shared_ptr<TestHandler> handler_;
    proto::VmmStats stats_{};  // what the device counts into; outlives it
    std::shared_ptr<FsDevice> device_;
    std::shared_ptr<virtio::MmioTransport> transport_;
    std::optional<MmioDriver> driver_;
    std::optional<DriverQueue> hiprio_, requests_;
    int irq_fd_ = -1;
};

TEST_F(VirtioFsTest, CreateChecksTheTagAndHandler) {
    auto handler = std::make_shared<TestHandler>();
    EXPECT_FALSE(FsDevice::create("", handler, *loop_));
    EXPECT_FALSE(FsDevice::create(std::string(37, 'x'), handler, *loop_));
    EXPECT_FALSE(FsDevice::create(std::string("a\0b", 3), handler, *loop_));
    EXPECT_FALSE(FsDevice::create("tag", nullptr, *loop_));
    auto ok = FsDevice::create(std::string(36, 'x'), handler, *loop_);
    ASSERT_TRUE(ok);
    EXPECT_EQ((*ok)->tag(), std::string(36, 'x'));
}

TEST_F(VirtioFsTest, RegistersAndConfigSpace) {
    make_test_device();
    EXPECT_EQ(driver_->read32(virtio::kDeviceIdOffset), kFsDeviceType);
    EXPECT_EQ(transport_->num_queues(), 2);
    for (uint32_t q = 0; q < 2; ++q) {
        driver_->write32(virtio::kQueueSelOffset, q);
        EXPECT_EQ(driver_->read32(virtio::kQueueNumMaxOffset), kQueueSize);
    }
    driver_->write32(virtio::kQueueSelOffset, 2);
    EXPECT_EQ(driver_->read32(virtio::kQueueNumMaxOffset), 0u);

    // struct virtio_fs_config, read byte by byte as a guest may.
    std::vector<uint8_t> config(48);
    for (size_t i = 0; i < config.size(); ++i)
        transport_->read(virtio::kConfigOffset + i, std::span<uint8_t>(&config[i], 1));
    std::string tag(config.begin(), config.begin() + 36);
    EXPECT_EQ(tag, std::string("sandlot-root") + std::string(36 - 12, '\0'));
    EXPECT_EQ(driver_->read32(virtio::kConfigOffset + 36), kNumRequestQueues);
    for (size_t i = 40; i < config.size(); ++i)
        EXPECT_EQ(config[i], 0) << i;

    // Read-only: writes change nothing.
    uint8_t junk[4] = {1, 2, 3, 4};
    transport_->write(virtio::kConfigOffset, junk);
    transport_->write(virtio::kConfigOffset + 36, junk);
    EXPECT_EQ(driver_->read32(virtio::kConfigOffset), 0x646e6173u);  // "sand"
    EXPECT_EQ(driver_->read32(virtio::kConfigOffset + 36), kNumRequestQueues);
}

TEST_F(VirtioFsTest, ThirtySixByteTagHasNoNul) {
    std::string tag = "abcdefghijklmnopqrstuvwxyz0123456789";
    ASSERT_EQ(tag.size(), 36u);
    make_device(std::make_shared<TestHandler>(), tag);
    std::vector<uint8_t> config(40);
    transport_->read(virtio::kConfigOffset, config);
    EXPECT_EQ(std::string(config.begin(), config.begin() + 36), tag);
    uint32_t num = 0;
    std::memcpy(&num, config.data() + 36, 4);
    EXPECT_EQ(num, 1u);
}

TEST_F(VirtioFsTest, RequestAndReplySplitAcrossSegments) {
    make_test_device();
    start_driver();
    auto payload = pattern(300, 1);
    auto request = fuse_request(kEcho, 77, payload);
    // The header itself straddles descriptors; the reply's header too.
    auto specs = with_writable(readable(request, {10, 30, 7, 100}), {9, 7, 50, 1000});
    ASSERT_EQ(specs.size(), 9u);
    uint16_t head = submit(kFirstRequestQueue, specs);
    auto used = wait_used(kFirstRequestQueue);
    ASSERT_TRUE(used);
    EXPECT_EQ(used->id, head);
    EXPECT_EQ(used->len, sizeof(fuse_out_header) + payload.size());
    Reply reply = parse_reply(written(*used, 5));
    EXPECT_EQ(reply.out.unique, 77u);
    EXPECT_EQ(reply.out.error, 0);
    EXPECT_EQ(reply.payload, payload);
    auto seen = handler_->requests();
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0], request);
}

TEST_F(VirtioFsTest, ReplyExactlyFillingTheWritablePart) {
    make_test_device();
    start_driver();
    auto payload = pattern(100, 2);
    Reply reply = call(kFirstRequestQueue, fuse_request(kEcho, 1, payload), sizeof(fuse_out_header) + 100);
    EXPECT_EQ(reply.out.error, 0);
    EXPECT_EQ(reply.payload, payload);
}

TEST_F(VirtioFsTest, ReplyThatDoesNotFitIsEio) {
    make_test_device();
    start_driver();
    uint32_t want = 5000;
    Reply reply = call(kFirstRequestQueue, fuse_request(kBigReply, 9, bytes_of(want)), 4096);
    EXPECT_EQ(reply.out.error, -EIO);
    EXPECT_EQ(reply.out.unique, 9u);
    EXPECT_TRUE(reply.payload.empty());
    EXPECT_EQ(handler_->requests().size(), 1u);

    // One byte short, split over segments.
    want = 100;
    auto specs = with_writable(readable(fuse_request(kBigReply, 10, bytes_of(want))), {16, 50, 49});
    submit(kFirstRequestQueue, specs);
    auto used = wait_used(kFirstRequestQueue);
    ASSERT_TRUE(used);
    EXPECT_EQ(used->len, sizeof(fuse_out_header));
    EXPECT_EQ(parse_reply(written(*used, 1)).out.error, -EIO);
}

TEST_F(VirtioFsTest, MalformedHandlerReplyIsEio) {
    make_test_device();
    start_driver();
    Reply reply = call(kFirstRequestQueue, fuse_request(kBadReply, 11));
    EXPECT_EQ(reply.out.error, -EIO);
    EXPECT_EQ(reply.out.unique, 11u);
}

TEST_F(VirtioFsTest, ForgetNeedsNoWritablePart) {
    make_test_device();
    start_driver();
    fuse_forget_in forget{.nlookup = 3};
    expect_dropped(kHiprioQueue, readable(fuse_request(FUSE_FORGET, 21, bytes_of(forget), 42)));
    // BATCH_FORGET on a request queue, and a FORGET that comes with (unused) reply room.
    fuse_batch_forget_in batch{.count = 0, .dummy = 0};
    expect_dropped(kFirstRequestQueue, readable(fuse_request(FUSE_BATCH_FORGET, 22, bytes_of(batch))));
    expect_dropped(kHiprioQueue,
                   with_writable(readable(fuse_request(FUSE_FORGET, 23, bytes_of(forget), 42)), {64}));
    auto seen = handler_->requests();
    ASSERT_EQ(seen.size(), 3u);
    fuse_in_header in;
    std::memcpy(&in, seen[0].data(), sizeof in);
    EXPECT_EQ(in.opcode, FUSE_FORGET);
    EXPECT_EQ(in.nodeid, 42u);
}

TEST_F(VirtioFsTest, RequestWithoutRoomForAReplyIsNotRun) {
    make_test_device();
    start_driver();
    auto request = fuse_request(kEcho, 1, pattern(10, 3));
    expect_dropped(kFirstRequestQueue, readable(request));
    expect_dropped(kFirstRequestQueue, with_writable(readable(request), {8, 7}));  // 15 < fuse_out_header
    EXPECT_TRUE(handler_->requests().empty());
    // 16 bytes is enough for an error reply.
    Reply reply = call(kFirstRequestQueue, fuse_request(4242, 2), sizeof(fuse_out_header));
    EXPECT_EQ(reply.out.error, -ENOSYS);
}

TEST_F(VirtioFsTest, MalformedRequestsAreRefused) {
    make_test_device();
    start_driver();
    // Shorter than a fuse_in_header: not even a unique to answer.
    auto request = fuse_request(kEcho, 5);
    request.resize(sizeof(fuse_in_header) - 1);
    expect_dropped(kFirstRequestQueue, with_writable(readable(request), {64}));

    // in.len longer than the readable part, or shorter than the header.
    for (uint32_t bad_len : {sizeof(fuse_in_header) + 11, 0ul, sizeof(fuse_in_header) - 1, 0xfffffffful}) {
        auto bad = fuse_request(kEcho, 6, pattern(10, 4));
        std::memcpy(bad.data(), &bad_len, 4);
        Reply reply = call(kFirstRequestQueue, bad);
        EXPECT_EQ(reply.out.error, -EINVAL) << bad_len;
        EXPECT_EQ(reply.out.unique, 6u);
    }

    // Larger than any request the handler can take (two 68 KiB descriptors > 64 KiB + 4 KiB).
    auto huge = fuse_request(kEcho, 7, pattern(2 * kRequestSlot - sizeof(fuse_in_header), 5));
    ASSERT_GT(huge.size(), device_->max_request_len());
    Reply reply = call(kFirstRequestQueue, huge);
    EXPECT_EQ(reply.out.error, -EINVAL);
    EXPECT_EQ(reply.out.unique, 7u);
    EXPECT_TRUE(handler_->requests().empty());

    // Trailing bytes after in.len are not part of the request.
    auto padded = fuse_request(kEcho, 8, pattern(20, 6));
    auto with_junk = padded;
    with_junk.resize(with_junk.size() + 13, 0xee);
    reply = call(kFirstRequestQueue, with_junk);
    EXPECT_EQ(reply.out.error, 0);
    EXPECT_EQ(reply.payload.size(), 20u);
    auto seen = handler_->requests();
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0], padded);

    // The device still works.
    auto payload = pattern(50, 7);
    EXPECT_EQ(call(kFirstRequestQueue, fuse_request(kEcho, 9, payload)).payload, payload);
    EXPECT_EQ(transport_->status() & virtio::kStatusNeedsReset, 0u);
}

TEST_F(VirtioFsTest, LargestAcceptedRequest) {
    make_test_device(128 * 1024);  // max_io above the 64 KiB floor
    start_driver();
    ASSERT_EQ(device_->max_request_len(), 128 * 1024 + kRequestOverhead);
    auto payload = pattern(device_->max_request_len() - sizeof(fuse_in_header), 8);
    auto request = fuse_request(kEcho, 1, payload);
    auto specs = with_writable(readable(request, {kRequestSlot, kRequestSlot}), {16});
    submit(kFirstRequestQueue, specs);
    auto used = wait_used(kFirstRequestQueue);
    ASSERT_TRUE(used);
    EXPECT_EQ(parse_reply(written(*used, 2)).out.error, -EIO);  // the echo does not fit in 16 bytes
    ASSERT_EQ(handler_->requests().size(), 1u);
    EXPECT_EQ(handler_->requests()[0], request);

    request = fuse_request(kEcho, 2, pattern(payload.size() + 1, 9));
    Reply reply = call(kFirstRequestQueue, request);  // one byte over
    EXPECT_EQ(reply.out.error, -EINVAL);
}

TEST_F(VirtioFsTest, BrokenChainNeedsResetAndTheDeviceRecovers) {
    make_test_device();
    start_driver();
    // A descriptor that points outside guest RAM.
    requests_->write_desc(0, kRam + 4096, 64, 0, 0);
    requests_->publish(0);
    driver_->notify(kFirstRequestQueue);
    auto deadline = Clock::now() + 10s;
    while (!(transport_->status() & virtio::kStatusNeedsReset) && Clock::now() < deadline) {
        pollfd p{irq_fd_, POLLIN, 0};
        poll(&p, 1, 50);
        irq_count(irq_fd_);
    }
    EXPECT_NE(transport_->status() & virtio::kStatusNeedsReset, 0u);
    EXPECT_EQ(requests_->used_idx(), 0);
    EXPECT_TRUE(handler_->requests().empty());

    // The hiprio queue is not broken and still works.
    fuse_forget_in forget{.nlookup = 1};
    expect_dropped(kHiprioQueue, readable(fuse_request(FUSE_FORGET, 1, bytes_of(forget))));

    driver_->write32(virtio::kStatusOffset, 0);
    start_driver();
    auto payload = pattern(10, 10);
    EXPECT_EQ(call(kFirstRequestQueue, fuse_request(kEcho, 2, payload)).payload, payload);
}

TEST_F(VirtioFsTest, HiprioQueueIsServedToo) {
    make_test_device();
    start_driver();
    auto payload = pattern(30, 11);
    Reply reply = call(kHiprioQueue, fuse_request(kEcho, 3, payload));
    EXPECT_EQ(reply.payload, payload);
    EXPECT_EQ(reply.out.unique, 3u);
    // Both queues at once.
    submit(kHiprioQueue, with_writable(readable(fuse_request(kEcho, 4, payload)), {100}));
    submit(kFirstRequestQueue, with_writable(readable(fuse_request(kEcho, 5, payload)), {100}));
    auto a = wait_used(kHiprioQueue);
    auto b = wait_used(kFirstRequestQueue);
    ASSERT_TRUE(a && b);
    EXPECT_EQ(parse_reply(written(*a, 1)).out.unique, 4u);
    EXPECT_EQ(parse_reply(written(*b, 1)).out.unique, 5u);
}

TEST_F(VirtioFsTest, RequestsQueuedBeforeDriverOkAreServed) {
    make_test_device();
    hiprio_.emplace(*memory_, kHiprioSize, kHiprioRings, kHiprioBuffers, kHiprioSlot);
    requests_.emplace(*memory_, kRequestSize, kRequestRings, kRequestBuffers, kRequestSlot);
    ASSERT_TRUE(driver_->negotiate(virtio::kFeatureVersion1));
    driver_->setup_queue(kHiprioQueue, hiprio_->config());
    driver_->setup_queue(kFirstRequestQueue, requests_->config());
    requests_->add_chain(with_writable(readable(fuse_request(kEcho, 1)), {64}));
    driver_->notify(kFirstRequestQueue);  // ignored: not live yet
    driver_->driver_ok();
    auto used = wait_used(kFirstRequestQueue);
    ASSERT_TRUE(used);
    EXPECT_EQ(parse_reply(written(*used, 1)).out.unique, 1u);
}

TEST_F(VirtioFsTest, ResetWaitsForRequestsInFlightAndDropsTheirReplies) {
    make_test_device();
    start_driver();
    handler_->close_gate();
    for (uint64_t i = 0; i < 6; ++i)
        submit(kFirstRequestQueue, with_writable(readable(fuse_request(kEcho, i, pattern(64, 12))), {128}));
    // One request per worker is taken; the rest wait in the ring.
    ASSERT_TRUE(handler_->wait_in_handler(kWorkerThreads));

    auto reset = std::async(std::launch::async, [&] { driver_->write32(virtio::kStatusOffset, 0); });
    EXPECT_TRUE(wait_for_mutex_held_elsewhere(device_->mutex()));
    EXPECT_EQ(reset.wait_for(100ms), std::future_status::timeout) << "reset returned with requests in flight";
    handler_->open_gate();
    ASSERT_EQ(reset.wait_for(10s), std::future_status::ready);
    EXPECT_EQ(transport_->status(), 0u);
    EXPECT_EQ(requests_->used_idx(), 0) << "a completion reached the queue after the reset";
    EXPECT_EQ(handler_->requests().size(), kWorkerThreads);

    // A fresh driver works; nothing from before the reset shows up.
    start_driver();
    auto payload = pattern(40, 13);
    Reply reply = call(kFirstRequestQueue, fuse_request(kEcho, 100, payload));
    EXPECT_EQ(reply.out.unique, 100u);
    EXPECT_EQ(reply.payload, payload);
    EXPECT_FALSE(wait_used(kFirstRequestQueue, 50ms));
}

TEST_F(VirtioFsTest, DestroyWithRequestsInFlight) {
    make_test_device();
    start_driver();
    handler_->close_gate();
    for (uint64_t i = 0; i < 10; ++i)
        submit(kFirstRequestQueue, with_writable(readable(fuse_request(kEcho, i, pattern(64, 14))), {128}));
    ASSERT_TRUE(handler_->wait_in_handler(kWorkerThreads));
    // The device cannot go away before the gate opens: its reset waits for the workers.
    std::mutex& device_mutex = device_->mutex();
    auto destroy = std::async(std::launch::async, [&] {
        driver_.reset();
        transport_.reset();  // resets the device: waits for the workers
        device_.reset();     // joins them
    });
    EXPECT_TRUE(wait_for_mutex_held_elsewhere(device_mutex));
    EXPECT_EQ(destroy.wait_for(100ms), std::future_status::timeout);
    handler_->open_gate();
    ASSERT_EQ(destroy.wait_for(10s), std::future_status::ready);
    EXPECT_EQ(requests_->used_idx(), 0);
}

TEST_F(VirtioFsTest, ManyConcurrentRequests) {
    make_test_device();
    start_driver();
    constexpr uint64_t kTotal = 3000;
    std::map<uint16_t, std::pair<uint64_t, size_t>> outstanding;  // head -> (unique, readable buffers)
    std::map<uint64_t, std::vector<uint8_t>> expected;            // unique -> payload
    std::mt19937 gen(15);
    uint64_t next = 0, done = 0, forgets = 0;
    auto deadline = Clock::now() + 60s;
    while (done < kTotal && Clock::now() < deadline) {
        // Fill the ring, with a varying number of descriptors per chain.
        while (next < kTotal && requests_->free_descriptors() >= 6) {
            auto payload = pattern(gen() % 3000, static_cast<uint32_t>(next));
            auto request = fuse_request(kEcho, next, payload);
            std::vector<uint32_t> cuts;
            for (uint32_t n = gen() % 3; n > 0; --n)
                cuts.push_back(1 + gen() % 700);
            auto specs = readable(request, cuts);
            size_t readable_count = specs.size();
            auto reply_len = static_cast<uint32_t>(sizeof(fuse_out_header) + payload.size());
            uint32_t first = std::max<uint32_t>(1, reply_len / 2);
            specs = with_writable(specs, {first, reply_len - first + 1});
            auto head = requests_->add_chain(specs);
            ASSERT_TRUE(head);
            outstanding[*head] = {next, readable_count};
            expected[next] = std::move(payload);
            ++next;
        }
        if (hiprio_->free_descriptors() > 0 && gen() % 4 == 0) {
            fuse_forget_in forget{.nlookup = 1};
            hiprio_->add_chain(readable(fuse_request(FUSE_FORGET, 1000000 + forgets, bytes_of(forget))));
            driver_->notify(kHiprioQueue);
            ++forgets;
        }
        driver_->notify(kFirstRequestQueue);
        auto used = wait_used(kFirstRequestQueue);
        ASSERT_TRUE(used);
        do {
            auto it = outstanding.find(used->id);
            ASSERT_NE(it, outstanding.end()) << "unknown or repeated head " << used->id;
            auto [unique, readable_count] = it->second;
            Reply reply = parse_reply(written(*used, readable_count));
            ASSERT_EQ(reply.out.unique, unique);
            ASSERT_EQ(reply.payload, expected[unique]) << unique;
            expected.erase(unique);
            outstanding.erase(it);
            ++done;
        } while ((used = requests_->pop_used()));
        while (hiprio_->pop_used()) {
        }
    }
    EXPECT_EQ(done, kTotal);
    EXPECT_TRUE(outstanding.empty());
    EXPECT_LE(handler_->max_concurrent(), kWorkerThreads);
    // Every FORGET reached the handler.
    auto drain_deadline = Clock::now() + 10s;
    while (hiprio_->used_idx() != forgets && Clock::now() < drain_deadline)
        wait_used(kHiprioQueue, 50ms);
    EXPECT_EQ(handler_->requests().size(), kTotal + forgets);
}

// ---- End to end: real FUSE requests against a PassthroughFs over a temporary directory ----

class VirtioFsPassthroughTest : public VirtioFsTest {
  protected:
    void SetUp() override {
        VirtioFsTest::SetUp();
        char tmpl[] = "/tmp/sandlot-virtiofs-XXXXXX";
        ASSERT_NE(mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        content_ = pattern(300 * 1024 + 123, 99);  // several 4 KiB pages, not a whole number of them
        std::ofstream(dir_ + "/hello.bin", std::ios::binary)
            .write(reinterpret_cast<const char*>(content_.data()),
                   static_cast<std::streamsize>(content_.size()));
        auto fs = PassthroughFs::create({.root = dir_});
        ASSERT_TRUE(fs) << fs.error().to_string();
        fs_ = std::shared_ptr<PassthroughFs>(std::move(*fs));
        make_device(fs_, "sandlot-root");
        start_driver();
    }
    void TearDown() override {
        VirtioFsTest::TearDown();
        fs_.reset();
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }

    // One request laid out as Linux's virtio_fs lays it out: the in header, the arguments, and request pages
    // in separate descriptors; then the out header, the fixed-size out arguments, and reply pages.
    Reply fuse_call(uint32_t opcode, uint64_t nodeid, std::span<const uint8_t> args, uint32_t out_args,
                    uint32_t out_pages_bytes = 0) {
        auto request = fuse_request(opcode, ++unique_, args, nodeid);
        std::vector<uint32_t> cuts = {sizeof(fuse_in_header)};
        auto specs = readable(request, cuts);
        size_t readable_count = specs.size();
        std::vector<uint32_t> out = {sizeof(fuse_out_header)};
        if (out_args > 0) out.push_back(out_args);
        for (uint32_t left = out_pages_bytes; left > 0;) {
            uint32_t n = std::min<uint32_t>(left, 4096);
            out.push_back(n);
            left -= n;
        }
        uint16_t q = opcode == FUSE_FORGET ? kHiprioQueue : kFirstRequestQueue;
        uint16_t head = submit(q, with_writable(specs, out));
        auto used = wait_used(q);
        EXPECT_TRUE(used);
        if (!used) return {};
        EXPECT_EQ(used->id, head);
        if (opcode == FUSE_FORGET) {
            EXPECT_EQ(used->len, 0u);
            return {};
        }
        Reply reply = parse_reply(written(*used, readable_count));
        EXPECT_EQ(reply.out.unique, unique_);
        return reply;
    }

    template <class T>
    static T as(const Reply& reply) {
        T value{};
        EXPECT_GE(reply.payload.size(), sizeof value);
        std::memcpy(&value, reply.payload.data(), std::min(sizeof value, reply.payload.size()));
        return value;
    }

    static std::vector<uint8_t> name_arg(std::string_view name) {
        std::vector<uint8_t> bytes(name.begin(), name.end());
        bytes.push_back(0);
        return bytes;
    }

    void init() {
        fuse_init_in in{};
        in.major = FUSE_KERNEL_VERSION;
        in.minor = FUSE_KERNEL_MINOR_VERSION;
        in.max_readahead = 128 * 1024;
        in.flags = FUSE_ASYNC_READ | FUSE_MAX_PAGES | FUSE_DO_READDIRPLUS;
        Reply reply = fuse_call(FUSE_INIT, 0, bytes_of(in), sizeof(fuse_init_out));
        ASSERT_EQ(reply.out.error, 0);
        auto out = as<fuse_init_out>(reply);
        EXPECT_EQ(out.major, FUSE_KERNEL_VERSION);
        EXPECT_GE(out.max_write, 4096u);
        EXPECT_LE(out.max_write, fs_->max_io());
    }

    std::string dir_;
    std::vector<uint8_t> content_;
    std::shared_ptr<PassthroughFs> fs_;
    uint64_t unique_ = 0;
};

TEST_F(VirtioFsPassthroughTest, InitLookupGetattrOpenReadRelease) {
    init();
    Reply reply = fuse_call(FUSE_LOOKUP, FUSE_ROOT_ID, name_arg("hello.bin"), sizeof(fuse_entry_out));
    ASSERT_EQ(reply.out.error, 0);
    auto entry = as<fuse_entry_out>(reply);
    EXPECT_NE(entry.nodeid, 0u);
    EXPECT_NE(entry.nodeid, FUSE_ROOT_ID);
    EXPECT_EQ(entry.attr.size, content_.size());
    EXPECT_TRUE(S_ISREG(entry.attr.mode));
    EXPECT_EQ(fs_->node_count(), 1u);

    fuse_getattr_in getattr{};
    reply = fuse_call(FUSE_GETATTR, entry.nodeid, bytes_of(getattr), sizeof(fuse_attr_out));
    ASSERT_EQ(reply.out.error, 0);
    EXPECT_EQ(as<fuse_attr_out>(reply).attr.size, content_.size());
    EXPECT_EQ(as<fuse_attr_out>(reply).attr.ino, entry.attr.ino);

    fuse_open_in open_in{};
    open_in.flags = O_RDONLY;
    reply = fuse_call(FUSE_OPEN, entry.nodeid, bytes_of(open_in), sizeof(fuse_open_out));
    ASSERT_EQ(reply.out.error, 0);
    uint64_t fh = as<fuse_open_out>(reply).fh;

    // The whole file in 128 KiB reads, each reply spread over 4 KiB page descriptors.
    std::vector<uint8_t> got;
    constexpr uint32_t kChunk = 128 * 1024;
    for (uint64_t offset = 0;; offset += kChunk) {
        fuse_read_in read_in{};
        read_in.fh = fh;
        read_in.offset = offset;
        read_in.size = kChunk;
        reply = fuse_call(FUSE_READ, entry.nodeid, bytes_of(read_in), 0, kChunk);
        ASSERT_EQ(reply.out.error, 0);
        got.insert(got.end(), reply.payload.begin(), reply.payload.end());
        if (reply.payload.size() < kChunk) break;
    }
    EXPECT_EQ(got.size(), content_.size());
    EXPECT_TRUE(got == content_);
    EXPECT_EQ(stats_.fs_read_bytes.load(), content_.size());  // exactly the data, not the headers
    EXPECT_EQ(stats_.fs_write_bytes.load(), 0u);

    fuse_release_in release{};
    release.fh = fh;
    reply = fuse_call(FUSE_RELEASE, entry.nodeid, bytes_of(release), 0);
    EXPECT_EQ(reply.out.error, 0);
    EXPECT_EQ(fs_->handle_count(), 0u);

    // FORGET on the hiprio queue, without reply room, drops the node.
    fuse_forget_in forget{.nlookup = 1};
    fuse_call(FUSE_FORGET, entry.nodeid, bytes_of(forget), 0);  // returns once the chain is used
    EXPECT_EQ(fs_->node_count(), 0u);
}

TEST_F(VirtioFsPassthroughTest, ErrorsAndEscapes) {
    init();
    Reply reply = fuse_call(FUSE_LOOKUP, FUSE_ROOT_ID, name_arg("missing"), sizeof(fuse_entry_out));
    EXPECT_EQ(reply.out.error, -ENOENT);
    EXPECT_TRUE(reply.payload.empty());
    for (std::string_view name : {"..", ".", "a/b", ""}) {
        reply = fuse_call(FUSE_LOOKUP, FUSE_ROOT_ID, name_arg(name), sizeof(fuse_entry_out));
        EXPECT_LT(reply.out.error, 0) << name;
    }
    fuse_getattr_in getattr{};
    reply = fuse_call(FUSE_GETATTR, 12345, bytes_of(getattr), sizeof(fuse_attr_out));
    EXPECT_LT(reply.out.error, 0);
    // A READ whose reply room is smaller than what it asks for: the data does not fit, the guest gets EIO.
    reply = fuse_call(FUSE_LOOKUP, FUSE_ROOT_ID, name_arg("hello.bin"), sizeof(fuse_entry_out));
    ASSERT_EQ(reply.out.error, 0);
    uint64_t node = as<fuse_entry_out>(reply).nodeid;
    fuse_open_in open_in{};
    reply = fuse_call(FUSE_OPEN, node, bytes_of(open_in), sizeof(fuse_open_out));
    ASSERT_EQ(reply.out.error, 0);
    fuse_read_in read_in{};
    read_in.fh = as<fuse_open_out>(reply).fh;
    read_in.size = 8192;
    reply = fuse_call(FUSE_READ, node, bytes_of(read_in), 0, 4096);
    EXPECT_EQ(reply.out.error, -EIO);
}

TEST_F(VirtioFsPassthroughTest, WriteThroughTheQueue) {
    init();
    fuse_create_in create{};
    create.flags = O_WRONLY;
    create.mode = S_IFREG | 0644;
    auto args = std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(&create),
                                     reinterpret_cast<const uint8_t*>(&create) + sizeof create);
    auto name = name_arg("new.bin");
    args.insert(args.end(), name.begin(), name.end());
    Reply reply = fuse_call(FUSE_CREATE, FUSE_ROOT_ID, args, sizeof(fuse_entry_out) + sizeof(fuse_open_out));
    ASSERT_EQ(reply.out.error, 0);
    auto entry = as<fuse_entry_out>(reply);
    fuse_open_out open_out{};
    std::memcpy(&open_out, reply.payload.data() + sizeof entry, sizeof open_out);

    // A 1 MiB WRITE (the largest PassthroughFs takes), header and data in separate descriptors.
    auto data = pattern(fs_->max_io(), 7);
    fuse_write_in write{};
    write.fh = open_out.fh;
    write.size = static_cast<uint32_t>(data.size());
    args.assign(reinterpret_cast<const uint8_t*>(&write),
                reinterpret_cast<const uint8_t*>(&write) + sizeof write);
    args.insert(args.end(), data.begin(), data.end());
    auto request = fuse_request(FUSE_WRITE, ++unique_, args, entry.nodeid);
    std::vector<uint32_t> cuts = {sizeof(fuse_in_header), sizeof write};
    for (size_t i = 0; i < data.size() / 65536; ++i)
        cuts.push_back(65536);
    auto specs = readable(request, cuts);
    size_t readable_count = specs.size();
    submit(kFirstRequestQueue, with_writable(specs, {sizeof(fuse_out_header), sizeof(fuse_write_out)}));
    auto used = wait_used(kFirstRequestQueue);
    ASSERT_TRUE(used);
    reply = parse_reply(written(*used, readable_count));
    ASSERT_EQ(reply.out.error, 0);
    EXPECT_EQ(as<fuse_write_out>(reply).size, data.size());
    EXPECT_EQ(stats_.fs_write_bytes.load(), data.size());
    EXPECT_EQ(stats_.fs_read_bytes.load(), 0u);

    fuse_release_in release{};
    release.fh = open_out.fh;
    EXPECT_EQ(fuse_call(FUSE_RELEASE, entry.nodeid, bytes_of(release), 0).out.error, 0);
    std::ifstream file(dir_ + "/new.bin", std::ios::binary);
    std::vector<uint8_t> on_disk((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    EXPECT_TRUE(on_disk == data);
}

}  // namespace
}  // namespace sandlot::vmm::fs
