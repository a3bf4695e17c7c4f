// virtio-blk end to end without KVM: the test driver builds request chains in fake guest RAM, the MMIO
// transport hands them to the device, and the device's worker threads do real I/O on a temporary image.
// Completions arrive from those threads: the tests wait on the interrupt eventfd, as a guest would.
//
// The "trap" tests park a worker inside its preadv with userfaultfd (the guest buffer's page is missing
// and nobody serves the fault), so a request is reliably in flight while the test resets the device.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/loop.h>
#include <linux/userfaultfd.h>
#include <linux/virtio_blk.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "proto/base/unique_fd.h"
#include "tests/support/temp_dir.h"
#include "tests/unit/virtio_test_driver.h"
#include "vmm/devices/blk/blk_device.h"
#include "vmm/devices/irq_line.h"
#include "vmm/devices/virtio/mmio_transport.h"
#include "vmm/event_loop.h"

namespace sandlot::vmm::blk {
namespace {

using virtio::test::BufferSpec;
using virtio::test::DriverQueue;
using virtio::test::irq_count;
using virtio::test::MmioDriver;
using virtio::test::UsedElem;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kRam = 32ull << 20;
constexpr uint16_t kDriverQueueSize = 128;
constexpr uint64_t kRings = 0x10000;       // two ring sets fit below kBuffers (see start())
constexpr uint64_t kBuffers = 0x100000;    // descriptor i's buffer: kBuffers + i * kSlot
constexpr uint32_t kSlot = 64 * 1024;      // up to 0x900000
constexpr uint64_t kManual = 0xa00000;     // headers and status bytes of hand-built chains
constexpr uint64_t kTrapArea = 0x1000000;  // never touched by anyone but the device (userfaultfd tests)
constexpr uint32_t kTrapLen = 64 * 1024;
constexpr uint64_t kImageSectors = 8192;  // 4 MiB
constexpr uint8_t kUnwritten = 0xee;      // what writable buffers hold before the device answers

uint64_t bit(unsigned feature) {
    return 1ull << feature;
}

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
    std::mt19937 gen(seed);
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; i += 4) {
        uint32_t word = gen() | 0x01010101;  // no zero bytes, so zeroed ranges stand out
        std::memcpy(v.data() + i, &word, std::min<size_t>(4, n - i));
    }
    return v;
}

std::vector<uint8_t> header(uint32_t type, uint64_t sector) {
    std::vector<uint8_t> h(16, 0);
    std::memcpy(h.data(), &type, 4);
    std::memcpy(h.data() + 8, &sector, 8);
    return h;
}

void append_range(std::vector<uint8_t>& out, uint64_t sector, uint32_t count, uint32_t flags) {
    virtio_blk_discard_write_zeroes r{};
    r.sector = sector;
    r.num_sectors = count;
    r.flags = flags;
    auto* p = reinterpret_cast<const uint8_t*>(&r);
    out.insert(out.end(), p, p + sizeof r);
}

std::vector<uint8_t> read_file(const std::string& path) {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    struct stat st {};
    if (!fd || fstat(fd.get(), &st) < 0) return {};
    std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size));
    EXPECT_EQ(pread(fd.get(), bytes.data(), bytes.size(), 0), st.st_size);
    return bytes;
}

void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
    UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    ASSERT_TRUE(fd);
    ASSERT_EQ(write(fd.get(), bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
}

// Gets the file's blocks allocated for real, so st_blocks is a fair "before" for hole punching.
void sync_file(const std::string& path) {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(fd);
    ASSERT_EQ(fsync(fd.get()), 0);
}

uint64_t allocated_bytes(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(stat(path.c_str(), &st), 0);
    return static_cast<uint64_t>(st.st_blocks) * 512;
}

std::vector<uint8_t> slice_of(const std::vector<uint8_t>& v, uint64_t sector, uint64_t sectors) {
    return {v.begin() + static_cast<ptrdiff_t>(sector * 512),
            v.begin() + static_cast<ptrdiff_t>((sector + sectors) * 512)};
}

// What came back for one request.
struct Reply {
    bool completed = false;
    uint32_t used_len = 0;
    uint8_t status = kUnwritten;
    std::vector<uint8_t> data;  // the writable bytes before the status byte
};

// Parks any thread that touches [host, host + len) until release(): userfaultfd without a fault handler.
class FaultTrap {
  public:
    // nullptr when userfaultfd is not available to us (no privilege, old kernel).
    static std::unique_ptr<FaultTrap> create(void* host, size_t len) {
        UniqueFd fd(static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));
        if (!fd) return nullptr;
        uffdio_api api{};
        api.api = UFFD_API;
        if (ioctl(fd.get(), UFFDIO_API, &api) < 0) return nullptr;
        uffdio_register reg{};
        reg.range = {reinterpret_cast<uint64_t>(host), len};
        reg.mode = UFFDIO_REGISTER_MODE_MISSING;
        if (ioctl(fd.get(), UFFDIO_REGISTER, &reg) < 0) return nullptr;
        return std::unique_ptr<FaultTrap>(new FaultTrap(std::move(fd), reg.range));
    }
    // Closing the descriptor wakes whoever is still parked.
    ~FaultTrap() { release(); }

    // Whether some thread faulted on the range within `timeout_ms`.
    bool wait_for_fault(int timeout_ms) {
        pollfd p{fd_.get(), POLLIN, 0};
        if (poll(&p, 1, timeout_ms) != 1) return false;
        uffd_msg msg{};
        return read(fd_.get(), &msg, sizeof msg) == sizeof msg && msg.event == UFFD_EVENT_PAGEFAULT;
    }
    // Unregistering wakes the parked threads; their faults then fill the pages normally.
    void release() {
        if (!fd_) return;
        uffdio_range range = range_;
        ioctl(fd_.get(), UFFDIO_UNREGISTER, &range);
        fd_.reset();
    }

  private:
    FaultTrap(UniqueFd fd, uffdio_range range) : fd_(std::move(fd)), range_(range) {}
    UniqueFd fd_;
    uffdio_range range_;
};

// A loop device over a file, detached by the kernel once the last descriptor of it closes. Needs root;
// nullopt when loop devices are not available here.
struct LoopDevice {
    std::string path;
    UniqueFd fd;

    static std::optional<LoopDevice> attach(const std::string& file) {
        UniqueFd control(open("/dev/loop-control", O_RDWR | O_CLOEXEC));
        UniqueFd backing(open(file.c_str(), O_RDWR | O_CLOEXEC));
        if (!control || !backing) return std::nullopt;
        for (int attempt = 0; attempt < 5; ++attempt) {  // another process may grab the free one first
            int n = ioctl(control.get(), LOOP_CTL_GET_FREE);
            if (n < 0) return std::nullopt;
            std::string path = "/dev/loop" + std::to_string(n);
            UniqueFd dev(open(path.c_str(), O_RDWR | O_CLOEXEC));
            if (!dev) return std::nullopt;
            loop_config config{};
            config.fd = static_cast<uint32_t>(backing.get());
            config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
            if (ioctl(dev.get(), LOOP_CONFIGURE, &config) == 0) return LoopDevice{path, std::move(dev)};
            if (errno != EBUSY) return std::nullopt;
        }
        return std::nullopt;
    }
};

class VirtioBlkTest : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_FALSE(dir_.path().empty());
        image_path_ = dir_ / "disk.img";
        auto mem = GuestMemory::create(kRam);
        ASSERT_TRUE(mem);
        memory_.emplace(std::move(*mem));
        auto loop = EventLoop::create();
        ASSERT_TRUE(loop);
        loop_.emplace(std::move(*loop));
    }

    void TearDown() override { destroy_device(); }

    void destroy_device() {
        driver_.reset();
        transport_.reset();
        device_.reset();
    }

    // Writes `contents` as the image and builds device, transport and driver around it.
    void make_device(const std::vector<uint8_t>& contents, bool read_only = false,
                     const std::string& serial = "sandlot-test") {
        write_file(image_path_, contents);
        image_ = contents;
        auto device = BlkDevice::create(
            {.path = image_path_, .read_only = read_only, .serial = serial, .stats = &stats_}, *loop_);
        ASSERT_TRUE(device) << device.error().to_string();
        device_ = *device;
        auto irq = IrqLine::create(5);
        ASSERT_TRUE(irq);
        irq_fd_ = irq->fd();
        transport_ = std::make_shared<virtio::MmioTransport>(*memory_, device_, std::move(*irq));
        driver_.emplace(*transport_);
    }

    void make_random_device(bool read_only = false) {
        make_device(random_bytes(kImageSectors * 512, 7), read_only);
    }

    uint64_t offered_features() {
        driver_->write32(virtio::kDeviceFeaturesSelOffset, 0);
        uint64_t low = driver_->read32(virtio::kDeviceFeaturesOffset);
        driver_->write32(virtio::kDeviceFeaturesSelOffset, 1);
        uint64_t high = driver_->read32(virtio::kDeviceFeaturesOffset);
        return low | (high << 32);
    }

    uint32_t config32(size_t offset) { return driver_->read32(virtio::kConfigOffset + offset); }

    // The guest driver's probe: accept `features` (default: everything offered), one queue, DRIVER_OK.
    // Alternate calls place the rings apart, so an old ring can be checked after a reset.
    void start(std::optional<uint64_t> features = std::nullopt) {
        uint64_t rings = kRings + (starts_++ % 2) * 0x8000;
        q_.emplace(*memory_, kDriverQueueSize, rings, kBuffers, kSlot);
        ASSERT_TRUE(driver_->negotiate(features.value_or(offered_features())));
        driver_->write32(virtio::kQueueSelOffset, 0);
        EXPECT_EQ(driver_->read32(virtio::kQueueNumMaxOffset), kQueueSize);
        driver_->setup_queue(0, q_->config());
        driver_->driver_ok();
        ASSERT_NE(transport_->status() & virtio::kStatusDriverOk, 0u);
        ASSERT_EQ(transport_->status() & virtio::kStatusNeedsReset, 0u);
    }

    // The next used element, waiting for the interrupt the completing worker raises.
    std::optional<UsedElem> wait_used(int timeout_ms = 5000) {
        auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
        while (true) {
            if (auto used = q_->pop_used()) return used;
            if (Clock::now() > deadline) return std::nullopt;
            pollfd p{irq_fd_, POLLIN, 0};
            poll(&p, 1, 50);
            irq_count(irq_fd_);
        }
    }

    // Publishes one chain (writable buffers pre-filled with kUnwritten) without kicking the device.
    uint16_t post(const std::vector<BufferSpec>& buffers) {
        auto head = q_->add_chain(buffers);
        EXPECT_TRUE(head) << "queue full";
        auto ids = q_->chain(*head);
        for (size_t i = 0; i < buffers.size(); ++i) {
            if (!buffers[i].writable) continue;
            std::vector<uint8_t> fill(buffers[i].len, kUnwritten);
            EXPECT_TRUE(memory_->write(q_->slot(ids[i]), fill));
        }
        return *head;
    }

    // Turns a used element back into what the device wrote into the chain described by `buffers`.
    Reply reply_for(const UsedElem& used, const std::vector<BufferSpec>& buffers) {
        Reply reply;
        reply.completed = true;
        reply.used_len = used.len;
        EXPECT_EQ(used.buffers.size(), buffers.size());
        std::vector<uint8_t> writable;
        for (size_t i = 0; i < buffers.size() && i < used.buffers.size(); ++i) {
            if (!buffers[i].writable) continue;
            std::vector<uint8_t> part(used.buffers[i].second);
            EXPECT_TRUE(memory_->read(used.buffers[i].first, part));
            writable.insert(writable.end(), part.begin(), part.end());
        }
        if (!writable.empty()) {
            reply.status = writable.back();
            writable.pop_back();
        }
        reply.data = std::move(writable);
        return reply;
    }

    // One request, start to finish.
    Reply send(const std::vector<BufferSpec>& buffers) {
        uint16_t head = post(buffers);
        transport_->notify_queue(0);
        auto used = wait_used();
        if (!used) {
            ADD_FAILURE() << "request never completed";
            return {};
        }
        EXPECT_EQ(used->id, head);
        return reply_for(*used, buffers);
    }

    // VIRTIO_BLK_T_IN of `lens` bytes per data segment, then a separate status byte.
    Reply read_sectors(uint64_t sector, const std::vector<uint32_t>& lens) {
        std::vector<BufferSpec> bufs{{.len = 16, .data = header(VIRTIO_BLK_T_IN, sector)}};
        for (uint32_t len : lens)
            bufs.push_back({.len = len, .writable = true});
        bufs.push_back({.len = 1, .writable = true});
        return send(bufs);
    }

    // VIRTIO_BLK_T_OUT of `data`, cut into segments of `lens` bytes.
    Reply write_sectors(uint64_t sector, const std::vector<uint8_t>& data,
                        const std::vector<uint32_t>& lens) {
        std::vector<BufferSpec> bufs{{.len = 16, .data = header(VIRTIO_BLK_T_OUT, sector)}};
        size_t at = 0;
        for (uint32_t len : lens) {
            bufs.push_back({.len = len, .data = {data.begin() + at, data.begin() + at + len}});
            at += len;
        }
        EXPECT_EQ(at, data.size());
        bufs.push_back({.len = 1, .writable = true});
        return send(bufs);
    }

    // A request whose header is followed by readable `payload` (if any) and only a status byte.
    Reply command(uint32_t type, uint64_t sector = 0, const std::vector<uint8_t>& payload = {}) {
        std::vector<BufferSpec> bufs{{.len = 16, .data = header(type, sector)}};
        if (!payload.empty()) bufs.push_back({.len = static_cast<uint32_t>(payload.size()), .data = payload});
        bufs.push_back({.len = 1, .writable = true});
        return send(bufs);
    }

    Reply ranges_command(uint32_t type, uint64_t sector, uint32_t count, uint32_t flags = 0) {
        std::vector<uint8_t> payload;
        append_range(payload, sector, count, flags);
        return command(type, 0, payload);
    }

    // A hand-built read of `len` bytes into the trap area at descriptors 0..2 (head 0); the caller
    // publishes it as often as it likes. Only for queues that add_chain() never touches.
    void build_trap_read(uint32_t len) {
        ASSERT_TRUE(memory_->write(kManual, header(VIRTIO_BLK_T_IN, 0)));
        q_->write_desc(0, kManual, 16, virtio::kDescFlagNext, 1);
        q_->write_desc(1, kTrapArea, len, virtio::kDescFlagWrite | virtio::kDescFlagNext, 2);
        q_->write_desc(2, kManual + 0x100, 1, virtio::kDescFlagWrite, 0);
    }

    std::unique_ptr<FaultTrap> make_trap() {
        auto host = memory_->slice(kTrapArea, kTrapLen);
        EXPECT_TRUE(host);
        return host ? FaultTrap::create(host->data(), kTrapLen) : nullptr;
    }

    // Waits for the used index of the current queue to reach `idx`.
    bool wait_used_idx(uint16_t idx, int timeout_ms = 5000) {
        auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
        while (q_->used_idx() != idx) {
            if (Clock::now() > deadline) return false;
            pollfd p{irq_fd_, POLLIN, 0};
            poll(&p, 1, 50);
            irq_count(irq_fd_);
        }
        return true;
    }

    sandlot::test::TempDir dir_{"sandlot-blk"};
    std::string image_path_;
    std::vector<uint8_t> image_;  // what make_device() wrote
    std::optional<GuestMemory> memory_;
    std::optional<EventLoop> loop_;
    proto::VmmStats stats_{};  // what the device counts into; outlives it
    std::shared_ptr<BlkDevice> device_;
    std::shared_ptr<virtio::MmioTransport> transport_;
    std::optional<MmioDriver> driver_;
    std::optional<DriverQueue> q_;
    int irq_fd_ = -1;
    unsigned starts_ = 0;
};

// ---- Creation and config space ----

TEST_F(VirtioBlkTest, CreateReportsBadPathsInOneLine) {
    auto missing = BlkDevice::create({.path = dir_ / "nope.img"}, *loop_);
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.error().to_string(), "disk " + (dir_ / "nope.img") + ": No such file or directory");

    auto directory = BlkDevice::create({.path = dir_.path(), .read_only = true}, *loop_);
    ASSERT_FALSE(directory);
    EXPECT_NE(directory.error().to_string().find("not a regular file or block device"), std::string::npos);

    // A FIFO must fail, not hang in open().
    std::string fifo = dir_ / "fifo";
    ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
    auto pipe = BlkDevice::create({.path = fifo, .read_only = true}, *loop_);
    ASSERT_FALSE(pipe);
    EXPECT_NE(pipe.error().to_string().find("not a regular file or block device"), std::string::npos);

    write_file(image_path_, std::vector<uint8_t>(4096));
    auto long_serial = BlkDevice::create({.path = image_path_, .serial = std::string(21, 'x')}, *loop_);
    ASSERT_FALSE(long_serial);
    EXPECT_NE(long_serial.error().to_string().find("longer than 20 bytes"), std::string::npos);
}

// One writer or any number of readers per image: a second sandbox may not write an image another one uses.
TEST_F(VirtioBlkTest, AnImageHasOneWriterOrManyReaders) {
    write_file(image_path_, std::vector<uint8_t>(4096));
    {
        auto writer = BlkDevice::create({.path = image_path_}, *loop_);
        ASSERT_TRUE(writer) << writer.error().to_string();
        auto second_writer = BlkDevice::create({.path = image_path_}, *loop_);
        ASSERT_FALSE(second_writer);
        EXPECT_NE(second_writer.error().to_string().find("is in use by another sandbox"), std::string::npos);
        EXPECT_FALSE(BlkDevice::create({.path = image_path_, .read_only = true}, *loop_));
    }
    auto reader = BlkDevice::create({.path = image_path_, .read_only = true}, *loop_);
    ASSERT_TRUE(reader);
    EXPECT_TRUE(BlkDevice::create({.path = image_path_, .read_only = true}, *loop_)) << "readers share";
    EXPECT_FALSE(BlkDevice::create({.path = image_path_}, *loop_)) << "no writer while it is read";
}

TEST_F(VirtioBlkTest, ConfigSpaceAndFeatures) {
    make_random_device();
    EXPECT_EQ(driver_->read32(virtio::kDeviceIdOffset), kBlkDeviceType);
    EXPECT_EQ(device_->capacity_sectors(), kImageSectors);

    uint64_t features = offered_features();
    EXPECT_NE(features & virtio::kFeatureVersion1, 0u);
    for (unsigned f : {VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_DISCARD,
                       VIRTIO_BLK_F_WRITE_ZEROES}) {
        EXPECT_NE(features & bit(f), 0u) << "feature " << f;
    }
    EXPECT_EQ(features & bit(VIRTIO_BLK_F_RO), 0u);
    EXPECT_EQ(features & bit(VIRTIO_BLK_F_MQ), 0u);

    EXPECT_EQ(config32(offsetof(virtio_blk_config, capacity)), kImageSectors);
    EXPECT_EQ(config32(offsetof(virtio_blk_config, capacity) + 4), 0u);
    uint8_t capacity[8];  // one 8-byte access works too
    transport_->read(virtio::kConfigOffset, capacity);
    uint64_t cap = 0;
    std::memcpy(&cap, capacity, 8);
    EXPECT_EQ(cap, kImageSectors);
    EXPECT_EQ(config32(offsetof(virtio_blk_config, seg_max)), kQueueSize - 2u);
    EXPECT_EQ(config32(offsetof(virtio_blk_config, blk_size)), 512u);
    EXPECT_EQ(config32(offsetof(virtio_blk_config, max_discard_sectors)), kMaxDiscardSectors);
    EXPECT_EQ(config32(offsetof(virtio_blk_config, max_discard_seg)), kMaxDiscardSegments);
    EXPECT_EQ(config32(offsetof(virtio_blk_config, discard_sector_alignment)), kDiscardSectorAlignment);
    EXPECT_EQ(config32(offsetof(virtio_blk_config, max_write_zeroes_sectors)), kMaxWriteZeroesSectors);
    EXPECT_EQ(config32(offsetof(virtio_blk_config, max_write_zeroes_seg)), kMaxWriteZeroesSegments);
    EXPECT_EQ(config32(offsetof(virtio_blk_config, write_zeroes_may_unmap)) & 0xff, 1u);
    // Past the structure: zeroes; writes are ignored.
    EXPECT_EQ(config32(sizeof(virtio_blk_config) + 8), 0u);
    driver_->write32(virtio::kConfigOffset, 0x12345678);
    EXPECT_EQ(config32(0), kImageSectors);
}

TEST_F(VirtioBlkTest, ReadOnlyDeviceOffersRoAndNoDiscard) {
    make_random_device(true);
    EXPECT_TRUE(device_->read_only());
    uint64_t features = offered_features();
    EXPECT_NE(features & bit(VIRTIO_BLK_F_RO), 0u);
    EXPECT_EQ(features & bit(VIRTIO_BLK_F_DISCARD), 0u);
    EXPECT_EQ(features & bit(VIRTIO_BLK_F_WRITE_ZEROES), 0u);
    EXPECT_EQ(config32(offsetof(virtio_blk_config, max_discard_sectors)), 0u);
    EXPECT_EQ(config32(0), kImageSectors);
}

// ---- Data path ----

TEST_F(VirtioBlkTest, ReadsImageAcrossSegments) {
    make_random_device();
    start();
    auto reply = read_sectors(100, {512, 4096, 1536});
    ASSERT_TRUE(reply.completed);
    EXPECT_EQ(reply.status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(reply.used_len, 512u + 4096 + 1536 + 1);
    EXPECT_EQ(reply.data, slice_of(image_, 100, 12));
}

TEST_F(VirtioBlkTest, WriteThenReadRoundTripAcrossSegments) {
    make_random_device();
    start();
    auto data = random_bytes(3 * 4096, 99);
    auto w = write_sectors(40, data, {512, 4096, 2048, 1024, 4608});
    ASSERT_TRUE(w.completed);
    EXPECT_EQ(w.status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(w.used_len, 1u);

    // Read back with a different segmentation, including data and status in one buffer.
    auto r = send({{.len = 16, .data = header(VIRTIO_BLK_T_IN, 40)},
                   {.len = 8192, .writable = true},
                   {.len = 4096 + 1, .writable = true}});
    EXPECT_EQ(r.status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(r.data, data);

    // And it is in the file, with the neighbours untouched.
    auto file = read_file(image_path_);
    ASSERT_EQ(file.size(), image_.size());
    EXPECT_EQ(slice_of(file, 40, 24), data);
    EXPECT_EQ(slice_of(file, 39, 1), slice_of(image_, 39, 1));
    EXPECT_EQ(slice_of(file, 64, 1), slice_of(image_, 64, 1));
}

TEST_F(VirtioBlkTest, ManyRequestsInFlightAtOnce) {
    make_random_device();
    start();
    // 40 writes posted together, one kick; each chain is 3 descriptors.
    std::vector<std::vector<uint8_t>> blocks;
    for (int i = 0; i < 40; ++i) {
        blocks.push_back(random_bytes(4096, 1000 + i));
        post({{.len = 16, .data = header(VIRTIO_BLK_T_OUT, 8ull * i)},
              {.len = 4096, .data = blocks.back()},
              {.len = 1, .writable = true}});
    }
    transport_->notify_queue(0);
    for (int i = 0; i < 40; ++i) {
        auto used = wait_used();
        ASSERT_TRUE(used) << i;
        EXPECT_EQ(used->len, 1u);
    }
    EXPECT_EQ(device_->in_flight(), 0u);
    auto file = read_file(image_path_);
    for (int i = 0; i < 40; ++i)
        EXPECT_EQ(slice_of(file, 8ull * i, 8), blocks[i]) << i;
}

TEST_F(VirtioBlkTest, GetIdReturnsSerialPadded) {
    make_random_device();
    start();
    auto reply = send({{.len = 16, .data = header(VIRTIO_BLK_T_GET_ID, 0)},
                       {.len = VIRTIO_BLK_ID_BYTES, .writable = true},
                       {.len = 1, .writable = true}});
    EXPECT_EQ(reply.status, VIRTIO_BLK_S_OK);
    std::vector<uint8_t> want(VIRTIO_BLK_ID_BYTES, 0);
    std::memcpy(want.data(), "sandlot-test", 12);
    EXPECT_EQ(reply.data, want);

    // Too small for the ID.
    auto small = send({{.len = 16, .data = header(VIRTIO_BLK_T_GET_ID, 0)},
                       {.len = 10, .writable = true},
                       {.len = 1, .writable = true}});
    EXPECT_EQ(small.status, VIRTIO_BLK_S_IOERR);
}

TEST_F(VirtioBlkTest, GetIdOfExactlyTwentyBytesHasNoTerminator) {
    make_device(std::vector<uint8_t>(4096), false, "abcdefghijklmnopqrst");
    start();
    auto reply = send({{.len = 16, .data = header(VIRTIO_BLK_T_GET_ID, 0)}, {.len = 21, .writable = true}});
    EXPECT_EQ(reply.status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(std::string(reply.data.begin(), reply.data.end()), "abcdefghijklmnopqrst");
}

TEST_F(VirtioBlkTest, FlushSucceeds) {
    make_random_device();
    start();
    EXPECT_EQ(write_sectors(0, random_bytes(512, 3), {512}).status, VIRTIO_BLK_S_OK);
    auto reply = command(VIRTIO_BLK_T_FLUSH);
    EXPECT_EQ(reply.status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(reply.used_len, 1u);
}

TEST_F(VirtioBlkTest, CountsExactlyTheBytesOfCompletedRequests) {
    make_random_device();
    start();
    auto load = [](const std::atomic<uint64_t>& counter) { return counter.load(); };
    ASSERT_EQ(read_sectors(100, {512, 4096, 1536}).status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(load(stats_.blk_read_bytes), 512u + 4096 + 1536);
    EXPECT_EQ(load(stats_.blk_read_ops), 1u);
    ASSERT_EQ(write_sectors(40, random_bytes(3 * 4096, 5), {4096, 8192}).status, VIRTIO_BLK_S_OK);
    ASSERT_EQ(write_sectors(0, random_bytes(512, 6), {512}).status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(load(stats_.blk_write_bytes), 3u * 4096 + 512);
    EXPECT_EQ(load(stats_.blk_write_ops), 2u);
    ASSERT_EQ(command(VIRTIO_BLK_T_FLUSH).status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(load(stats_.blk_flush_ops), 1u);

    // Failed and non-data requests count nothing.
    EXPECT_EQ(read_sectors(kImageSectors, {512}).status, VIRTIO_BLK_S_IOERR);
    EXPECT_EQ(write_sectors(kImageSectors - 1, random_bytes(1024, 7), {1024}).status, VIRTIO_BLK_S_IOERR);
    EXPECT_EQ(send({{.len = 16, .data = header(VIRTIO_BLK_T_GET_ID, 0)},
                    {.len = VIRTIO_BLK_ID_BYTES + 1, .writable = true}})
                  .status,
              VIRTIO_BLK_S_OK);
    EXPECT_EQ(load(stats_.blk_read_bytes), 512u + 4096 + 1536);
    EXPECT_EQ(load(stats_.blk_read_ops), 1u);
    EXPECT_EQ(load(stats_.blk_write_bytes), 3u * 4096 + 512);
    EXPECT_EQ(load(stats_.blk_write_ops), 2u);
    EXPECT_EQ(load(stats_.blk_flush_ops), 1u);
    EXPECT_EQ(load(stats_.fs_read_bytes), 0u);
}

TEST_F(VirtioBlkTest, WritesWorkWhenFlushIsNotNegotiated) {
    make_random_device();
    start(virtio::kFeatureVersion1 | bit(VIRTIO_BLK_F_SEG_MAX));  // writes must then be stable at once
    auto data = random_bytes(1024, 5);
    EXPECT_EQ(write_sectors(2, data, {1024}).status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(slice_of(read_file(image_path_), 2, 2), data);
}

// ---- Discard and write zeroes ----

bool can_punch_holes(const std::string& dir) {
    std::string probe = dir + "/probe";
    UniqueFd fd(open(probe.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    std::vector<uint8_t> data(65536, 1);
    bool ok = fd && write(fd.get(), data.data(), data.size()) == static_cast<ssize_t>(data.size()) &&
              fallocate(fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 65536) == 0;
    unlink(probe.c_str());
    return ok;
}

TEST_F(VirtioBlkTest, DiscardPunchesHoleInSparseFile) {
    if (!can_punch_holes(dir_.path())) GTEST_SKIP() << "the temp file system cannot punch holes";
    make_random_device();
    start();
    sync_file(image_path_);
    uint64_t before = allocated_bytes(image_path_);
    ASSERT_GE(before, kImageSectors * 512);

    // Two ranges in one request: 1 MiB at 1 MiB and 512 KiB at 3 MiB.
    std::vector<uint8_t> payload;
    append_range(payload, 2048, 2048, 0);
    append_range(payload, 6144, 1024, 0);
    auto reply = command(VIRTIO_BLK_T_DISCARD, 0, payload);
    EXPECT_EQ(reply.status, VIRTIO_BLK_S_OK);

    uint64_t after = allocated_bytes(image_path_);
    EXPECT_LE(after, before - (3ull << 19)) << "before " << before << " after " << after;
    auto file = read_file(image_path_);
    EXPECT_EQ(file.size(), image_.size());  // KEEP_SIZE
    EXPECT_EQ(slice_of(file, 2048, 2048), std::vector<uint8_t>(1 << 20, 0));
    EXPECT_EQ(slice_of(file, 0, 2048), slice_of(image_, 0, 2048));
    EXPECT_EQ(slice_of(file, 4096, 2048), slice_of(image_, 4096, 2048));
    EXPECT_EQ(slice_of(file, 7168, 1024), slice_of(image_, 7168, 1024));
}

TEST_F(VirtioBlkTest, WriteZeroesWithAndWithoutUnmap) {
    make_random_device();
    start();
    // Without unmap: zeroed in place (unaligned to host blocks on purpose).
    EXPECT_EQ(ranges_command(VIRTIO_BLK_T_WRITE_ZEROES, 3, 5).status, VIRTIO_BLK_S_OK);
    // With unmap: may be punched out.
    sync_file(image_path_);
    uint64_t before = allocated_bytes(image_path_);
    EXPECT_EQ(
        ranges_command(VIRTIO_BLK_T_WRITE_ZEROES, 4096, 2048, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP).status,
        VIRTIO_BLK_S_OK);
    auto file = read_file(image_path_);
    ASSERT_EQ(file.size(), image_.size());
    EXPECT_EQ(slice_of(file, 2, 1), slice_of(image_, 2, 1));
    EXPECT_EQ(slice_of(file, 3, 5), std::vector<uint8_t>(5 * 512, 0));
    EXPECT_EQ(slice_of(file, 8, 1), slice_of(image_, 8, 1));
    EXPECT_EQ(slice_of(file, 4096, 2048), std::vector<uint8_t>(1 << 20, 0));
    EXPECT_EQ(slice_of(file, 6144, 1), slice_of(image_, 6144, 1));
    if (can_punch_holes(dir_.path())) {
        EXPECT_LT(allocated_bytes(image_path_), before);
    }

    // The guest sees the zeroes too.
    auto r = read_sectors(3, {5 * 512});
    EXPECT_EQ(r.status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(r.data, std::vector<uint8_t>(5 * 512, 0));
}

TEST_F(VirtioBlkTest, DiscardAndWriteZeroesAreChecked) {
    make_random_device();
    start();
    // unmap is for write zeroes only; unknown flags are unsupported for both.
    EXPECT_EQ(ranges_command(VIRTIO_BLK_T_DISCARD, 0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP).status,
              VIRTIO_BLK_S_UNSUPP);
    EXPECT_EQ(ranges_command(VIRTIO_BLK_T_DISCARD, 0, 8, 0x2).status, VIRTIO_BLK_S_UNSUPP);
    EXPECT_EQ(ranges_command(VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 0x4).status, VIRTIO_BLK_S_UNSUPP);
    // Out of range, overflowing, too big.
    EXPECT_EQ(ranges_command(VIRTIO_BLK_T_DISCARD, kImageSectors - 4, 8).status, VIRTIO_BLK_S_IOERR);
    EXPECT_EQ(ranges_command(VIRTIO_BLK_T_WRITE_ZEROES, kImageSectors, 1).status, VIRTIO_BLK_S_IOERR);
    EXPECT_EQ(ranges_command(VIRTIO_BLK_T_WRITE_ZEROES, UINT64_MAX - 2, 8).status, VIRTIO_BLK_S_IOERR);
    EXPECT_EQ(ranges_command(VIRTIO_BLK_T_DISCARD, 0, kMaxDiscardSectors + 1).status, VIRTIO_BLK_S_IOERR);
    // No ranges, a partial range, too many ranges.
    EXPECT_EQ(command(VIRTIO_BLK_T_DISCARD).status, VIRTIO_BLK_S_IOERR);
    EXPECT_EQ(command(VIRTIO_BLK_T_WRITE_ZEROES, 0, std::vector<uint8_t>(24, 0)).status, VIRTIO_BLK_S_IOERR);
    std::vector<uint8_t> many;
    for (uint32_t i = 0; i <= kMaxDiscardSegments; ++i)
        append_range(many, i, 1, 0);
    ASSERT_LE(many.size(), kSlot);
    EXPECT_EQ(command(VIRTIO_BLK_T_DISCARD, 0, many).status, VIRTIO_BLK_S_IOERR);
    // A bad range anywhere fails the request before any range runs.
    std::vector<uint8_t> mixed;
    append_range(mixed, 0, 8, 0);
    append_range(mixed, kImageSectors, 8, 0);
    EXPECT_EQ(command(VIRTIO_BLK_T_WRITE_ZEROES, 0, mixed).status, VIRTIO_BLK_S_IOERR);
    EXPECT_EQ(read_file(image_path_), image_);
}

// ---- Read-only images, bounds, hostile chains ----

TEST_F(VirtioBlkTest, ReadOnlyRefusesWrites) {
    make_random_device(true);
    start();
    EXPECT_EQ(write_sectors(0, random_bytes(4096, 11), {4096}).status, VIRTIO_BLK_S_IOERR);
    EXPECT_EQ(ranges_command(VIRTIO_BLK_T_WRITE_ZEROES, 0, 8).status, VIRTIO_BLK_S_IOERR);
    EXPECT_EQ(ranges_command(VIRTIO_BLK_T_DISCARD, 0, 8).status, VIRTIO_BLK_S_IOERR);
    EXPECT_EQ(read_file(image_path_), image_);
    // Reading and flushing still work.
    auto r = read_sectors(0, {4096});
    EXPECT_EQ(r.status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(r.data, slice_of(image_, 0, 8));
    EXPECT_EQ(command(VIRTIO_BLK_T_FLUSH).status, VIRTIO_BLK_S_OK);
}

TEST_F(VirtioBlkTest, OutOfRangeAndOverflowingSectorsFail) {
    make_random_device();
    start();
    EXPECT_EQ(read_sectors(kImageSectors - 1, {512}).status, VIRTIO_BLK_S_OK);  // the last sector
    EXPECT_EQ(read_sectors(kImageSectors, {512}).status, VIRTIO_BLK_S_IOERR);
    EXPECT_EQ(read_sectors(kImageSectors - 1, {1024}).status, VIRTIO_BLK_S_IOERR);  // straddles the end
    EXPECT_EQ(read_sectors(UINT64_MAX, {512}).status, VIRTIO_BLK_S_IOERR);
    EXPECT_EQ(read_sectors(1ull << 55, {512}).status, VIRTIO_BLK_S_IOERR);  // sector * 512 overflows
    EXPECT_EQ(write_sectors(kImageSectors, random_bytes(512, 1), {512}).status, VIRTIO_BLK_S_IOERR);
    EXPECT_EQ(write_sectors(UINT64_MAX, random_bytes(512, 1), {512}).status, VIRTIO_BLK_S_IOERR);
    auto file = read_file(image_path_);
    EXPECT_EQ(file.size(), image_.size()) << "a write past the end must not grow the image";
    EXPECT_EQ(file, image_);
}

TEST_F(VirtioBlkTest, ImageSizeNotMultipleOf512RoundsDown) {
    auto contents = random_bytes(10 * 512 + 100, 21);
    make_device(contents);
    EXPECT_EQ(device_->capacity_sectors(), 10u);
    EXPECT_EQ(config32(0), 10u);
    start();
    auto data = random_bytes(512, 22);
    EXPECT_EQ(write_sectors(9, data, {512}).status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(write_sectors(10, data, {512}).status, VIRTIO_BLK_S_IOERR);
    EXPECT_EQ(read_sectors(10, {512}).status, VIRTIO_BLK_S_IOERR);
    auto r = read_sectors(9, {512});
    EXPECT_EQ(r.status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(r.data, data);
    auto file = read_file(image_path_);
    ASSERT_EQ(file.size(), contents.size());
    EXPECT_TRUE(std::equal(file.end() - 100, file.end(), contents.end() - 100)) << "the tail is not ours";
}

TEST_F(VirtioBlkTest, BlockDeviceImage) {
    auto contents = random_bytes(kImageSectors * 512, 41);
    write_file(dir_ / "backing.img", contents);
    auto loop = LoopDevice::attach(dir_ / "backing.img");
    if (!loop) GTEST_SKIP() << "no loop devices here (needs root)";
    auto device = BlkDevice::create({.path = loop->path, .serial = "sandlot-vol0"}, *loop_);
    ASSERT_TRUE(device) << device.error().to_string();
    device_ = *device;
    EXPECT_EQ(device_->capacity_sectors(), kImageSectors);  // BLKGETSIZE64
    auto irq = IrqLine::create(5);
    ASSERT_TRUE(irq);
    irq_fd_ = irq->fd();
    transport_ = std::make_shared<virtio::MmioTransport>(*memory_, device_, std::move(*irq));
    driver_.emplace(*transport_);
    start();

    auto r = read_sectors(16, {4096});
    EXPECT_EQ(r.status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(r.data, slice_of(contents, 16, 8));
    auto data = random_bytes(8192, 42);
    EXPECT_EQ(write_sectors(100, data, {4096, 4096}).status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(ranges_command(VIRTIO_BLK_T_WRITE_ZEROES, 200, 16).status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(command(VIRTIO_BLK_T_FLUSH).status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(read_sectors(100, {8192}).data, data);
    EXPECT_EQ(read_sectors(200, {8192}).data, std::vector<uint8_t>(8192, 0));
    EXPECT_EQ(read_sectors(kImageSectors, {512}).status, VIRTIO_BLK_S_IOERR);
    auto file = read_file(dir_ / "backing.img");
    EXPECT_EQ(slice_of(file, 100, 16), data);
    EXPECT_EQ(slice_of(file, 200, 16), std::vector<uint8_t>(8192, 0));
    EXPECT_EQ(slice_of(file, 216, 1), slice_of(contents, 216, 1));
}

TEST_F(VirtioBlkTest, MalformedChainsGetErrorsNotCrashes) {
    make_random_device();
    start();
    // Data in a readable buffer where the device has to write it.
    EXPECT_EQ(send({{.len = 16, .data = header(VIRTIO_BLK_T_IN, 0)},
                    {.len = 512, .data = std::vector<uint8_t>(512, 1)},
                    {.len = 1, .writable = true}})
                  .status,
              VIRTIO_BLK_S_IOERR);
    // Data in a writable buffer where the device has to read it.
    auto bad_write = send({{.len = 16, .data = header(VIRTIO_BLK_T_OUT, 0)},
                           {.len = 512, .writable = true},
                           {.len = 1, .writable = true}});
    EXPECT_EQ(bad_write.status, VIRTIO_BLK_S_IOERR);
    EXPECT_EQ(bad_write.data, std::vector<uint8_t>(512, kUnwritten));
    // Lengths that are not whole sectors.
    EXPECT_EQ(read_sectors(0, {100}).status, VIRTIO_BLK_S_IOERR);
    EXPECT_EQ(write_sectors(0, random_bytes(700, 1), {700}).status, VIRTIO_BLK_S_IOERR);
    // A header cut short; a chain that is only a status byte.
    EXPECT_EQ(send({{.len = 8, .data = std::vector<uint8_t>(8, 0)}, {.len = 1, .writable = true}}).status,
              VIRTIO_BLK_S_IOERR);
    EXPECT_EQ(send({{.len = 1, .writable = true}}).status, VIRTIO_BLK_S_IOERR);
    // Discard with a writable data part.
    EXPECT_EQ(send({{.len = 16, .data = header(VIRTIO_BLK_T_DISCARD, 0)},
                    {.len = 16, .writable = true},
                    {.len = 1, .writable = true}})
                  .status,
              VIRTIO_BLK_S_IOERR);
    // No writable byte at all: no status to write, the buffers just come back.
    auto no_status = send({{.len = 16, .data = header(VIRTIO_BLK_T_OUT, 0)}, {.len = 512, .data = {}}});
    EXPECT_TRUE(no_status.completed);
    EXPECT_EQ(no_status.used_len, 0u);
    // A header split over two buffers is fine.
    auto h = header(VIRTIO_BLK_T_IN, 5);
    auto split = send({{.len = 8, .data = {h.begin(), h.begin() + 8}},
                       {.len = 8, .data = {h.begin() + 8, h.end()}},
                       {.len = 513, .writable = true}});
    EXPECT_EQ(split.status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(split.data, slice_of(image_, 5, 1));

    EXPECT_EQ(read_file(image_path_), image_);
    EXPECT_EQ(transport_->status() & virtio::kStatusNeedsReset, 0u);
    EXPECT_EQ(device_->in_flight(), 0u);
}

TEST_F(VirtioBlkTest, UnknownRequestTypesAreUnsupported) {
    make_random_device();
    start();
    // SCSI commands, GET_LIFETIME, SECURE_ERASE, nonsense, a legacy barrier flag.
    for (uint32_t type : {2u, 3u, 10u, 14u, 99u, VIRTIO_BLK_T_IN | 0x80000000u})
        EXPECT_EQ(command(type).status, VIRTIO_BLK_S_UNSUPP) << type;
}

TEST_F(VirtioBlkTest, BrokenDescriptorNeedsResetThenRecovers) {
    make_random_device();
    start();
    q_->write_desc(0, kManual, 16, virtio::kDescFlagNext, 4000);  // next is out of the table
    q_->publish(0);
    transport_->notify_queue(0);
    EXPECT_NE(transport_->status() & virtio::kStatusNeedsReset, 0u);
    start();
    auto data = random_bytes(512, 8);
    EXPECT_EQ(write_sectors(1, data, {512}).status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(read_sectors(1, {512}).data, data);
}

// ---- Threads: the event loop, resets and teardown with requests in flight ----

TEST_F(VirtioBlkTest, CompletesWhileEventLoopRunsOnItsOwnThread) {
    make_random_device();
    start();
    // The notification path of a real VM: an eventfd (the ioeventfd) on the loop calls the transport.
    UniqueFd kick(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    ASSERT_TRUE(kick);
    ASSERT_TRUE(loop_->add(kick.get(), EPOLLIN, [&](uint32_t) {
        uint64_t n;
        (void)!read(kick.get(), &n, sizeof n);
        transport_->notify_queue(0);
    }));
    std::thread loop_thread([&] { EXPECT_TRUE(loop_->run()); });

    auto data = random_bytes(8192, 31);
    std::vector<BufferSpec> write_chain{{.len = 16, .data = header(VIRTIO_BLK_T_OUT, 64)},
                                        {.len = 8192, .data = data},
                                        {.len = 1, .writable = true}};
    post(write_chain);
    uint64_t one = 1;
    ASSERT_EQ(write(kick.get(), &one, sizeof one), 8);
    auto used = wait_used();  // completes on a worker while the loop sleeps in epoll_wait
    ASSERT_TRUE(used);
    EXPECT_EQ(reply_for(*used, write_chain).status, VIRTIO_BLK_S_OK);

    std::vector<BufferSpec> read_chain{{.len = 16, .data = header(VIRTIO_BLK_T_IN, 64)},
                                       {.len = 8192 + 1, .writable = true}};
    post(read_chain);
    ASSERT_EQ(write(kick.get(), &one, sizeof one), 8);
    used = wait_used();
    ASSERT_TRUE(used);
    auto reply = reply_for(*used, read_chain);
    EXPECT_EQ(reply.status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(reply.data, data);

    loop_->stop();
    loop_thread.join();
    loop_->remove(kick.get());
}

TEST_F(VirtioBlkTest, ResetWithRequestsInFlightRepeatedly) {
    make_random_device();
    for (int round = 0; round < 20; ++round) {
        start();
        auto block = random_bytes(kSlot, 1000 + round);
        for (int i = 0; i < 40; ++i) {  // 64 KiB each, alternately reads and writes
            bool read = i % 2 == 1;
            post({{.len = 16, .data = header(read ? VIRTIO_BLK_T_IN : VIRTIO_BLK_T_OUT, 128ull * i)},
                  {.len = kSlot, .writable = read, .data = read ? std::vector<uint8_t>{} : block},
                  {.len = 1, .writable = true}});
        }
        transport_->notify_queue(0);
        driver_->write32(virtio::kStatusOffset, 0);  // reset with most of them in flight
        // Once reset returns nothing more may land on the old ring.
        uint16_t used_at_reset = q_->used_idx();
        auto old_ring = q_->config();
        start();
        auto data = random_bytes(512, round);
        ASSERT_EQ(write_sectors(8000, data, {512}).status, VIRTIO_BLK_S_OK) << round;
        ASSERT_EQ(read_sectors(8000, {512}).data, data) << round;
        EXPECT_EQ(*memory_->read_obj<uint16_t>(old_ring.used_ring + 2), used_at_reset) << round;
        driver_->write32(virtio::kStatusOffset, 0);
    }
}

TEST_F(VirtioBlkTest, ResetWaitsForRequestInsideIo) {
    make_random_device();
    start();
    auto trap = make_trap();
    if (!trap) GTEST_SKIP() << "userfaultfd is not available";
    build_trap_read(4096);
    for (int i = 0; i < 8; ++i)
        q_->publish(0);
    transport_->notify_queue(0);
    ASSERT_TRUE(trap->wait_for_fault(5000)) << "no worker reached the guest buffer";
    EXPECT_EQ(device_->in_flight(), 8u);

    std::atomic<bool> reset_done = false;
    std::thread resetter([&] {
        driver_->write32(virtio::kStatusOffset, 0);
        reset_done = true;
    });
    // A worker is parked inside preadv writing guest memory: reset must not return under it.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_FALSE(reset_done.load());
    trap->release();
    resetter.join();
    EXPECT_TRUE(reset_done.load());
    EXPECT_EQ(q_->used_idx(), 0u) << "completions of the reset driver are dropped";
    auto old_ring = q_->config();

    start();
    auto data = random_bytes(1024, 77);
    EXPECT_EQ(write_sectors(300, data, {1024}).status, VIRTIO_BLK_S_OK);
    EXPECT_EQ(read_sectors(300, {1024}).data, data);
    EXPECT_EQ(*memory_->read_obj<uint16_t>(old_ring.used_ring + 2), 0u);
}

TEST_F(VirtioBlkTest, InFlightRequestsAreBoundedByQueueSize) {
    make_random_device();
    start();
    auto trap = make_trap();
    if (!trap) GTEST_SKIP() << "userfaultfd is not available";
    // A hostile driver publishes the same chain over and over, more often than the queue has room for.
    build_trap_read(4096);
    for (int i = 0; i < kDriverQueueSize; ++i)
        q_->publish(0);
    transport_->notify_queue(0);
    ASSERT_TRUE(trap->wait_for_fault(5000));
    EXPECT_EQ(device_->in_flight(), size_t{kDriverQueueSize});
    for (int i = 0; i < kDriverQueueSize; ++i)
        q_->publish(0);
    transport_->notify_queue(0);
    EXPECT_EQ(device_->in_flight(), size_t{kDriverQueueSize}) << "popped past the queue size";
    EXPECT_EQ(transport_->status() & virtio::kStatusNeedsReset, 0u);

    trap->release();
    EXPECT_TRUE(wait_used_idx(2 * kDriverQueueSize)) << "used idx " << q_->used_idx();
    EXPECT_EQ(device_->in_flight(), 0u);
    EXPECT_EQ(*memory_->read_obj<uint8_t>(kManual + 0x100), VIRTIO_BLK_S_OK);
}

TEST_F(VirtioBlkTest, DestructionWaitsForRequestInsideIo) {
    make_random_device();
    start();
    auto trap = make_trap();
    if (!trap) GTEST_SKIP() << "userfaultfd is not available";
    build_trap_read(4096);
    q_->publish(0);
    transport_->notify_queue(0);
    ASSERT_TRUE(trap->wait_for_fault(5000));

    std::atomic<bool> destroyed = false;
    std::weak_ptr<BlkDevice> weak = device_;
    std::thread destroyer([&] {
        destroy_device();  // transport (resets the device), then the device itself
        destroyed = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_FALSE(destroyed.load());
    trap->release();
    destroyer.join();
    EXPECT_TRUE(weak.expired());
    EXPECT_EQ(q_->used_idx(), 0u);
}

}  // namespace
}  // namespace sandlot::vmm::blk
