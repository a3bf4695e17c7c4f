// The virtio-mmio v2 transport, driven through its registers with a fake device behind it.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>

#include "tests/unit/virtio_test_driver.h"
#include "vmm/devices/irq_line.h"
#include "vmm/devices/virtio/device.h"
#include "vmm/devices/virtio/mmio_transport.h"
#include "vmm/memory/guest_memory.h"

namespace sandlot::vmm::virtio {
namespace {

using test::BufferSpec;
using test::DriverQueue;
using test::irq_count;
using test::MmioDriver;

constexpr uint64_t kRam = 16ull << 20;
constexpr uint64_t kFeatureA = 1ull << 0, kFeatureB = 1ull << 3;

// Two queues; on a notify it copies each chain's readable bytes, reversed, into its writable part.
class EchoDevice : public Device {
  public:
    uint32_t device_type() const override { return 42; }
    uint64_t features() const override { return kFeatureA | kFeatureB; }
    std::span<const uint16_t> queue_max_sizes() const override { return kSizes; }
    void read_config(uint64_t offset, std::span<uint8_t> data) override {
        for (size_t i = 0; i < data.size(); ++i)
            data[i] = offset + i < 8 ? config[offset + i] : 0;
    }
    void write_config(uint64_t offset, std::span<const uint8_t> data) override {
        for (size_t i = 0; i < data.size(); ++i) {
            if (offset + i < 8) config[offset + i] = data[i];
        }
    }
    Result<void> activate(Activation a) override {
        ++activations;
        if (fail_activation) return make_error("nope");
        memory = &a.memory;
        queues = a.queues;
        features_seen = a.features;
        signal = a.signal_used;
        return {};
    }
    void notify(uint16_t q) override {
        ++notifies;
        bool used = false;
        while (auto chain = queues[q].pop()) {
            std::vector<uint8_t> bytes(chain->readable_len);
            read_from_chain(*memory, *chain, 0, bytes);
            std::reverse(bytes.begin(), bytes.end());
            size_t n = write_to_chain(*memory, *chain, 0, bytes);
            queues[q].add_used(chain->head, static_cast<uint32_t>(n));
            used = true;
        }
        if (used) signal(q);
    }
    void reset() override {
        ++resets;
        queues = {};
        memory = nullptr;
    }

    static constexpr uint16_t kSizes[2] = {8, 16};
    uint8_t config[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    bool fail_activation = false;
    int activations = 0, notifies = 0, resets = 0;
    uint64_t features_seen = 0;
    const GuestMemory* memory = nullptr;
    std::span<Queue> queues;
    std::function<void(uint16_t)> signal;
};

class MmioTransportTest : public ::testing::Test {
  protected:
    void SetUp() override {
        auto mem = GuestMemory::create(kRam);
        ASSERT_TRUE(mem);
        memory_.emplace(std::move(*mem));
        auto irq = IrqLine::create(5);
        ASSERT_TRUE(irq);
        irq_fd_ = irq->fd();
        device_ = std::make_shared<EchoDevice>();
        transport_ = std::make_shared<MmioTransport>(*memory_, device_, std::move(*irq));
        driver_.emplace(*transport_);
        q0_.emplace(*memory_, 8, 0x10000, 0x100000, 4096);
        q1_.emplace(*memory_, 16, 0x20000, 0x200000, 4096);
    }

    // A full, successful bring-up.
    void bring_up() {
        int activations = device_->activations;
        ASSERT_TRUE(driver_->negotiate(kFeatureVersion1 | kFeatureB));
        driver_->setup_queue(0, q0_->config());
        driver_->setup_queue(1, q1_->config());
        driver_->driver_ok();
        ASSERT_EQ(device_->activations, activations + 1);
        ASSERT_FALSE(driver_->read32(kStatusOffset) & kStatusNeedsReset);
    }

    std::optional<GuestMemory> memory_;
    int irq_fd_ = -1;
    std::shared_ptr<EchoDevice> device_;
    std::shared_ptr<MmioTransport> transport_;
    std::optional<MmioDriver> driver_;
    std::optional<DriverQueue> q0_, q1_;
};

TEST_F(MmioTransportTest, IdentifiesItself) {
    EXPECT_EQ(driver_->read32(kMagicValueOffset), 0x74726976u);
    EXPECT_EQ(driver_->read32(kVersionOffset), 2u);
    EXPECT_EQ(driver_->read32(kDeviceIdOffset), 42u);
    EXPECT_EQ(driver_->read32(kVendorIdOffset), kVendorId);
    EXPECT_EQ(transport_->num_queues(), 2);
    EXPECT_EQ(kMmioSize, 0x1000u);
    EXPECT_EQ(kQueueNotifyOffset, 0x50u);
}

TEST_F(MmioTransportTest, OffersDeviceFeaturesPlusVersion1) {
    driver_->write32(kDeviceFeaturesSelOffset, 0);
    EXPECT_EQ(driver_->read32(kDeviceFeaturesOffset), static_cast<uint32_t>(kFeatureA | kFeatureB));
    driver_->write32(kDeviceFeaturesSelOffset, 1);
    EXPECT_EQ(driver_->read32(kDeviceFeaturesOffset), 1u);  // bit 32: VERSION_1
    driver_->write32(kDeviceFeaturesSelOffset, 2);
    EXPECT_EQ(driver_->read32(kDeviceFeaturesOffset), 0u);
}

TEST_F(MmioTransportTest, RefusesFeaturesOkWithoutVersion1) {
    EXPECT_FALSE(driver_->negotiate(kFeatureA));
    EXPECT_EQ(driver_->read32(kStatusOffset), kStatusAcknowledge | kStatusDriver);
}

TEST_F(MmioTransportTest, RefusesFeaturesWeDidNotOffer) {
    EXPECT_FALSE(driver_->negotiate(kFeatureVersion1 | (1ull << 5)));
    EXPECT_FALSE(driver_->negotiate(kFeatureVersion1 | (1ull << 40)));
}

TEST_F(MmioTransportTest, AcceptsASubsetWithVersion1) {
    EXPECT_TRUE(driver_->negotiate(kFeatureVersion1 | kFeatureA));
    // Features are frozen after FEATURES_OK.
    driver_->write32(kDriverFeaturesSelOffset, 0);
    driver_->write32(kDriverFeaturesOffset, static_cast<uint32_t>(kFeatureB));
    driver_->setup_queue(0, q0_->config());
    driver_->setup_queue(1, q1_->config());
    driver_->driver_ok();
    EXPECT_EQ(device_->features_seen, kFeatureVersion1 | kFeatureA);
}

TEST_F(MmioTransportTest, StatusFollowsTheStateMachine) {
    // DRIVER before ACKNOWLEDGE, FEATURES_OK before DRIVER: refused.
    driver_->write32(kStatusOffset, kStatusDriver);
    EXPECT_EQ(driver_->read32(kStatusOffset), 0u);
    driver_->write32(kStatusOffset, kStatusAcknowledge | kStatusFeaturesOk);
    EXPECT_EQ(driver_->read32(kStatusOffset), kStatusAcknowledge);
    // DRIVER_OK without FEATURES_OK is refused and activates nothing.
    driver_->write32(kStatusOffset, kStatusAcknowledge | kStatusDriver | kStatusDriverOk);
    EXPECT_EQ(driver_->read32(kStatusOffset), kStatusAcknowledge | kStatusDriver);
    EXPECT_EQ(device_->activations, 0);
    // Clearing a bit other than by writing 0 is refused.
    driver_->write32(kStatusOffset, kStatusDriver);
    EXPECT_EQ(driver_->read32(kStatusOffset), kStatusAcknowledge | kStatusDriver);
    // The driver cannot set NEEDS_RESET itself.
    driver_->write32(kStatusOffset, kStatusAcknowledge | kStatusDriver | kStatusNeedsReset);
    EXPECT_EQ(driver_->read32(kStatusOffset), kStatusAcknowledge | kStatusDriver);
}

TEST_F(MmioTransportTest, QueueRegisters) {
    driver_->write32(kQueueSelOffset, 0);
    EXPECT_EQ(driver_->read32(kQueueNumMaxOffset), 8u);
    driver_->write32(kQueueSelOffset, 1);
    EXPECT_EQ(driver_->read32(kQueueNumMaxOffset), 16u);
    driver_->write32(kQueueSelOffset, 2);
    EXPECT_EQ(driver_->read32(kQueueNumMaxOffset), 0u);  // no such queue
    EXPECT_EQ(driver_->read32(kQueueReadyOffset), 0u);
    ASSERT_TRUE(driver_->negotiate(kFeatureVersion1));
    driver_->setup_queue(0, q0_->config());
    driver_->write32(kQueueSelOffset, 0);
    EXPECT_EQ(driver_->read32(kQueueReadyOffset), 1u);
    driver_->write32(kQueueReadyOffset, 0);
    EXPECT_EQ(driver_->read32(kQueueReadyOffset), 0u);
}

TEST_F(MmioTransportTest, ActivatesOnlyWithAllQueuesReady) {
    ASSERT_TRUE(driver_->negotiate(kFeatureVersion1));
    driver_->setup_queue(0, q0_->config());
    driver_->driver_ok();
    EXPECT_EQ(device_->activations, 0);
    EXPECT_TRUE(driver_->read32(kStatusOffset) & kStatusNeedsReset);
}

TEST_F(MmioTransportTest, BadQueueConfigIsRefusedAtQueueReady) {
    ASSERT_TRUE(driver_->negotiate(kFeatureVersion1));
    auto bad = q0_->config();
    bad.size = 6;  // not a power of two
    driver_->setup_queue(0, bad);
    driver_->write32(kQueueSelOffset, 0);
    EXPECT_EQ(driver_->read32(kQueueReadyOffset), 0u);
    EXPECT_TRUE(driver_->read32(kStatusOffset) & kStatusNeedsReset);
    EXPECT_EQ(driver_->read32(kInterruptStatusOffset), kInterruptConfigChange);
    EXPECT_GE(irq_count(irq_fd_), 1u);

    ASSERT_TRUE(driver_->negotiate(kFeatureVersion1));  // negotiate() resets first
    bad = q0_->config();
    bad.size = 16;  // above QueueNumMax (8)
    driver_->setup_queue(0, bad);
    driver_->write32(kQueueSelOffset, 0);
    EXPECT_EQ(driver_->read32(kQueueReadyOffset), 0u);

    ASSERT_TRUE(driver_->negotiate(kFeatureVersion1));
    bad = q0_->config();
    bad.used_ring = kRam - 8;  // outside RAM
    driver_->setup_queue(0, bad);
    driver_->write32(kQueueSelOffset, 0);
    EXPECT_EQ(driver_->read32(kQueueReadyOffset), 0u);
}

TEST_F(MmioTransportTest, UsedBuffersRaiseTheInterrupt) {
    bring_up();
    irq_count(irq_fd_);
    q1_->add_chain({{.len = 3, .data = {1, 2, 3}}, {.len = 8, .writable = true}});
    driver_->notify(1);  // an MMIO write to QueueNotify works too, not just the ioeventfd
    EXPECT_EQ(device_->notifies, 1);
    auto used = q1_->pop_used();
    ASSERT_TRUE(used);
    EXPECT_EQ(used->len, 3u);
    EXPECT_EQ(irq_count(irq_fd_), 1u);
    EXPECT_EQ(driver_->read32(kInterruptStatusOffset), kInterruptUsedBuffer);
    driver_->write32(kInterruptAckOffset, kInterruptUsedBuffer);
    EXPECT_EQ(driver_->read32(kInterruptStatusOffset), 0u);

    // Suppressed by the driver: used buffers, but no interrupt.
    q0_->set_avail_flags(kAvailFlagNoInterrupt);
    q0_->add_chain({{.len = 1, .data = {9}}, {.len = 1, .writable = true}});
    transport_->notify_queue(0);
    EXPECT_TRUE(q0_->pop_used());
    EXPECT_EQ(irq_count(irq_fd_), 0u);
    EXPECT_EQ(driver_->read32(kInterruptStatusOffset), 0u);
}

TEST_F(MmioTransportTest, BrokenQueueNeedsResetAndIsIgnored) {
    bring_up();
    irq_count(irq_fd_);
    q0_->set_avail_idx(100);  // a jump far beyond the queue size
    transport_->notify_queue(0);
    EXPECT_TRUE(driver_->read32(kStatusOffset) & kStatusNeedsReset);
    EXPECT_EQ(driver_->read32(kInterruptStatusOffset) & kInterruptConfigChange, kInterruptConfigChange);
    EXPECT_EQ(irq_count(irq_fd_), 1u);
    int notifies = device_->notifies;
    transport_->notify_queue(0);
    EXPECT_EQ(device_->notifies, notifies);  // the broken queue is ignored
    // The other queue still works.
    q1_->add_chain({{.len = 1, .data = {9}}, {.len = 1, .writable = true}});
    transport_->notify_queue(1);
    EXPECT_TRUE(q1_->pop_used());
    // A reset brings it all back.
    driver_->write32(kStatusOffset, 0);
    EXPECT_EQ(driver_->read32(kStatusOffset), 0u);
    q0_.emplace(*memory_, 8, 0x10000, 0x100000, 4096);
    q1_.emplace(*memory_, 16, 0x20000, 0x200000, 4096);
    bring_up();
    q0_->add_chain({{.len = 1, .data = {9}}, {.len = 1, .writable = true}});
    transport_->notify_queue(0);
    EXPECT_TRUE(q0_->pop_used());
}

TEST_F(MmioTransportTest, FailedActivationNeedsReset) {
    device_->fail_activation = true;
    ASSERT_TRUE(driver_->negotiate(kFeatureVersion1));
    driver_->setup_queue(0, q0_->config());
    driver_->setup_queue(1, q1_->config());
    driver_->driver_ok();
    EXPECT_TRUE(driver_->read32(kStatusOffset) & kStatusNeedsReset);
    q0_->add_chain({{.len = 1, .data = {9}}, {.len = 1, .writable = true}});
    transport_->notify_queue(0);
    EXPECT_EQ(device_->notifies, 0);
}

TEST_F(MmioTransportTest, ResetClearsEverything) {
    bring_up();
    int resets = device_->resets;
    driver_->write32(kQueueSelOffset, 1);
    driver_->write32(kStatusOffset, 0);
    EXPECT_EQ(device_->resets, resets + 1);
    EXPECT_EQ(driver_->read32(kStatusOffset), 0u);
    EXPECT_EQ(driver_->read32(kInterruptStatusOffset), 0u);
    for (uint32_t q = 0; q < 2; ++q) {
        driver_->write32(kQueueSelOffset, q);
        EXPECT_EQ(driver_->read32(kQueueReadyOffset), 0u);
    }
    // Notifications after the reset go nowhere.
    transport_->notify_queue(0);
    EXPECT_EQ(device_->notifies, 0);
}

TEST_F(MmioTransportTest, QueueRegistersAreFrozenWhileLive) {
    bring_up();
    driver_->write32(kQueueSelOffset, 0);
    driver_->write32(kQueueReadyOffset, 0);  // refused after DRIVER_OK
    EXPECT_EQ(driver_->read32(kQueueReadyOffset), 1u);
    driver_->write32(kQueueDescLowOffset, 0x5000);  // ignored: the queue keeps working
    q0_->add_chain({{.len = 1, .data = {9}}, {.len = 1, .writable = true}});
    transport_->notify_queue(0);
    EXPECT_TRUE(q0_->pop_used());
}

TEST_F(MmioTransportTest, UnknownOffsetsAndOddSizesAreIgnored) {
    EXPECT_EQ(driver_->read32(0x0c0), 0u);
    EXPECT_EQ(driver_->read32(0x0f8), 0u);
    EXPECT_EQ(driver_->read32(kQueueNotifyOffset), 0u);  // write-only
    driver_->write32(0x0c0, 0xffffffff);
    driver_->write32(kMagicValueOffset, 0);
    EXPECT_EQ(driver_->read32(kMagicValueOffset), kMmioMagic);

    uint8_t two[2] = {0xff, 0xff};
    transport_->read(kMagicValueOffset, two);  // 16-bit register read: zero
    EXPECT_EQ(two[0], 0);
    EXPECT_EQ(two[1], 0);
    uint8_t one[1] = {kStatusAcknowledge};
    transport_->write(kStatusOffset, one);  // 8-bit register write: ignored
    EXPECT_EQ(driver_->read32(kStatusOffset), 0u);
    uint8_t eight[8] = {};
    transport_->read(kMagicValueOffset, eight);
    EXPECT_EQ(eight[0], 0);
    uint8_t four[4] = {0xff, 0xff, 0xff, 0xff};
    transport_->read(kMagicValueOffset + 2, four);  // misaligned
    EXPECT_EQ(four[0], 0);
}

TEST_F(MmioTransportTest, ConfigSpaceAnySize) {
    uint8_t b[1];
    transport_->read(kConfigOffset + 2, b);
    EXPECT_EQ(b[0], 3);
    uint8_t q[8];
    transport_->read(kConfigOffset, q);
    EXPECT_EQ(q[7], 8);
    EXPECT_EQ(driver_->read32(kConfigOffset + 4), 0x08070605u);
    EXPECT_EQ(driver_->read32(kConfigOffset + 0x100), 0u);  // past the device's config
    uint8_t w[2] = {0xaa, 0xbb};
    transport_->write(kConfigOffset + 1, w);
    EXPECT_EQ(device_->config[1], 0xaa);
    EXPECT_EQ(device_->config[2], 0xbb);
}

TEST_F(MmioTransportTest, NoSharedMemoryRegions) {
    driver_->write32(kShmSelOffset, 0);
    EXPECT_EQ(driver_->read32(kShmLenLowOffset), 0xffffffffu);
    EXPECT_EQ(driver_->read32(kShmLenHighOffset), 0xffffffffu);
}

TEST_F(MmioTransportTest, DestroyingTheTransportResetsTheDevice) {
    bring_up();
    int resets = device_->resets;
    transport_.reset();
    driver_.reset();
    EXPECT_EQ(device_->resets, resets + 1);
    EXPECT_TRUE(device_->queues.empty());
}

}  // namespace
}  // namespace sandlot::vmm::virtio
