// The split virtqueue against a hostile driver: every malformed ring or chain must break the queue, never
// crash or hang it.
#include <gtest/gtest.h>

#include <numeric>
#include <string>

#include "tests/unit/virtio_test_driver.h"
#include "vmm/devices/virtio/queue.h"
#include "vmm/memory/guest_memory.h"

namespace sandlot::vmm::virtio {
namespace {

using test::BufferSpec;
using test::DriverQueue;

constexpr uint64_t kRam = 16ull << 20;
constexpr uint64_t kRings = 0x10000;
constexpr uint64_t kBuffers = 0x100000;

class VirtqueueTest : public ::testing::Test {
  protected:
    void SetUp() override {
        auto mem = GuestMemory::create(kRam);
        ASSERT_TRUE(mem) << mem.error().to_string();
        memory_.emplace(std::move(*mem));
    }

    // A driver queue of `size` entries and the device queue over it, with a broken handler that records why.
    void make_queue(uint16_t size = 8, uint16_t max = 256) {
        driver_.emplace(*memory_, size, kRings, kBuffers, 4096);
        auto q = Queue::create(*memory_, driver_->config(), max);
        ASSERT_TRUE(q) << q.error().to_string();
        queue_.emplace(std::move(*q));
        queue_->set_broken_handler([this](const std::string& why) {
            ++broken_calls_;
            broken_why_ = why;
        });
    }

    void expect_broken(const std::string& why_part) {
        EXPECT_FALSE(queue_->pop().has_value());
        EXPECT_TRUE(queue_->broken());
        EXPECT_EQ(broken_calls_, 1);
        EXPECT_NE(broken_why_.find(why_part), std::string::npos) << broken_why_;
        // Broken stays broken and quiet.
        EXPECT_FALSE(queue_->pop().has_value());
        EXPECT_FALSE(queue_->has_available());
        EXPECT_EQ(broken_calls_, 1);
    }

    std::optional<GuestMemory> memory_;
    std::optional<DriverQueue> driver_;
    std::optional<Queue> queue_;
    int broken_calls_ = 0;
    std::string broken_why_;
};

TEST_F(VirtqueueTest, PopsValidChainReadableThenWritable) {
    make_queue();
    EXPECT_FALSE(queue_->pop().has_value());
    auto head = driver_->add_chain({{.len = 10, .data = std::vector<uint8_t>(10, 0xaa)},
                                    {.len = 20, .writable = false, .data = std::vector<uint8_t>(20, 0xbb)},
                                    {.len = 100, .writable = true}});
    ASSERT_TRUE(head);
    auto chain = queue_->pop();
    ASSERT_TRUE(chain);
    EXPECT_EQ(chain->head, *head);
    ASSERT_EQ(chain->segments.size(), 3u);
    EXPECT_EQ(chain->readable_len, 30u);
    EXPECT_EQ(chain->writable_len, 100u);
    EXPECT_FALSE(chain->segments[0].device_writable);
    EXPECT_FALSE(chain->segments[1].device_writable);
    EXPECT_TRUE(chain->segments[2].device_writable);
    EXPECT_EQ(chain->segments[2].len, 100u);
    EXPECT_FALSE(queue_->pop().has_value());
    EXPECT_FALSE(queue_->broken());
}

TEST_F(VirtqueueTest, AddUsedPublishesElementAndIndex) {
    make_queue();
    auto head = driver_->add_chain({{.len = 64, .writable = true}});
    auto chain = queue_->pop();
    ASSERT_TRUE(chain);
    queue_->add_used(chain->head, 42);
    auto used = driver_->pop_used();
    ASSERT_TRUE(used);
    EXPECT_EQ(used->id, *head);
    EXPECT_EQ(used->len, 42u);
    EXPECT_EQ(driver_->used_idx(), 1);
}

TEST_F(VirtqueueTest, ScatterGatherHelpersSpanSegments) {
    make_queue();
    std::vector<uint8_t> a = {1, 2, 3}, b = {4, 5, 6, 7};
    driver_->add_chain({{.len = 3, .data = a},
                        {.len = 4, .data = b},
                        {.len = 2, .writable = true},
                        {.len = 5, .writable = true}});
    auto chain = queue_->pop();
    ASSERT_TRUE(chain);

    std::vector<uint8_t> out(10, 0);
    EXPECT_EQ(read_from_chain(*memory_, *chain, 1, out), 6u);  // bounded by the readable part
    EXPECT_EQ(std::vector<uint8_t>(out.begin(), out.begin() + 6), (std::vector<uint8_t>{2, 3, 4, 5, 6, 7}));

    std::vector<uint8_t> in = {9, 8, 7, 6, 5, 4, 3, 2};
    EXPECT_EQ(write_to_chain(*memory_, *chain, 1, in), 6u);  // 7 writable bytes, from offset 1
    auto ids = driver_->chain(chain->head);
    EXPECT_EQ(*memory_->read_obj<uint8_t>(driver_->slot(ids[2]) + 1), 9);
    EXPECT_EQ(*memory_->read_obj<uint8_t>(driver_->slot(ids[3]) + 0), 8);
    EXPECT_EQ(*memory_->read_obj<uint8_t>(driver_->slot(ids[3]) + 4), 4);

    auto iovs = chain_iovecs(*memory_, *chain, true, 1, 100);
    ASSERT_EQ(iovs.size(), 2u);
    EXPECT_EQ(iovs[0].iov_len, 1u);
    EXPECT_EQ(iovs[1].iov_len, 5u);
    EXPECT_TRUE(chain_iovecs(*memory_, *chain, false, 7, 100).empty());
}

TEST_F(VirtqueueTest, UndoPopReturnsTheSameChain) {
    make_queue();
    auto head = driver_->add_chain({{.len = 8, .writable = true}});
    auto first = queue_->pop();
    ASSERT_TRUE(first);
    queue_->undo_pop();
    EXPECT_TRUE(queue_->has_available());
    auto again = queue_->pop();
    ASSERT_TRUE(again);
    EXPECT_EQ(again->head, *head);
    EXPECT_FALSE(queue_->has_available());
}

TEST_F(VirtqueueTest, IndexWrapsAt65535) {
    // Both indexes start at 0 after a reset, so walk them past 65535 one chain at a time.
    make_queue(4);
    uint32_t total = 65536 + 10;
    for (uint32_t i = 0; i < total; ++i) {
        auto head = driver_->add_chain({{.len = 4, .writable = true}});
        ASSERT_TRUE(head);
        auto chain = queue_->pop();
        ASSERT_TRUE(chain) << "at " << i;
        ASSERT_EQ(chain->head, *head);
        queue_->add_used(chain->head, i & 0xff);
        auto used = driver_->pop_used();
        ASSERT_TRUE(used);
        ASSERT_EQ(used->len, i & 0xff);
    }
    EXPECT_EQ(driver_->avail_idx(), static_cast<uint16_t>(total));
    EXPECT_EQ(driver_->used_idx(), static_cast<uint16_t>(total));
    EXPECT_FALSE(queue_->broken());
}

TEST_F(VirtqueueTest, FullQueueAcrossTheWrapIsNotAJump) {
    make_queue(4);
    // Advance to 65534 one chain at a time, then publish a full queue (4 chains) spanning the wrap.
    for (uint32_t i = 0; i < 65534; ++i) {
        driver_->add_chain({{.len = 1, .writable = true}});
        auto c = queue_->pop();
        ASSERT_TRUE(c);
        queue_->add_used(c->head, 0);
        driver_->pop_used();
    }
    for (int i = 0; i < 4; ++i)
        ASSERT_TRUE(driver_->add_chain({{.len = 1, .writable = true}}));
    EXPECT_EQ(driver_->avail_idx(), 2);
    for (int i = 0; i < 4; ++i)
        ASSERT_TRUE(queue_->pop()) << i;
    EXPECT_FALSE(queue_->pop());
    EXPECT_FALSE(queue_->broken());
}

TEST_F(VirtqueueTest, HugeAvailJumpBreaksQueue) {
    make_queue(8);
    driver_->set_avail_idx(9);  // 9 new entries in a queue of 8
    expect_broken("avail index");
}

TEST_F(VirtqueueTest, WrappedBackwardsAvailIndexBreaksQueue) {
    make_queue(8);
    driver_->set_avail_idx(0xffff);  // "65535 new entries"
    expect_broken("avail index");
}

TEST_F(VirtqueueTest, HeadOutOfRangeBreaksQueue) {
    make_queue(8);
    driver_->publish(8);
    expect_broken("out of range");
}

TEST_F(VirtqueueTest, NextOutOfRangeBreaksQueue) {
    make_queue(8);
    driver_->write_desc(0, kBuffers, 16, kDescFlagNext, 8);
    driver_->publish(0);
    expect_broken("out of range");
}

TEST_F(VirtqueueTest, SelfLoopBreaksQueue) {
    make_queue(8);
    driver_->write_desc(3, kBuffers, 16, kDescFlagNext, 3);
    driver_->publish(3);
    expect_broken("longer than the queue");
}

TEST_F(VirtqueueTest, LongCycleBreaksQueue) {
    make_queue(8);
    for (uint16_t i = 0; i < 8; ++i)
        driver_->write_desc(i, kBuffers, 16, kDescFlagNext, (i + 1) % 8);
    driver_->publish(0);
    expect_broken("longer than the queue");
}

TEST_F(VirtqueueTest, ChainOfExactlyQueueSizeIsFine) {
    make_queue(8);
    for (uint16_t i = 0; i < 8; ++i)
        driver_->write_desc(i, kBuffers + i * 16, 16, i < 7 ? kDescFlagNext : 0, i + 1);
    driver_->publish(0);
    auto chain = queue_->pop();
    ASSERT_TRUE(chain);
    EXPECT_EQ(chain->segments.size(), 8u);
    EXPECT_EQ(chain->readable_len, 128u);
}

TEST_F(VirtqueueTest, BufferOutsideRamBreaksQueue) {
    make_queue(8);
    driver_->write_desc(0, kRam - 8, 16, 0, 0);  // runs off the end of RAM
    driver_->publish(0);
    expect_broken("outside guest RAM");
}

TEST_F(VirtqueueTest, BufferAddressOverflowBreaksQueue) {
    make_queue(8);
    driver_->write_desc(0, ~0ull - 4, 0x100, 0, 0);
    driver_->publish(0);
    expect_broken("outside guest RAM");
}

TEST_F(VirtqueueTest, ChainOver4GiBBreaksQueue) {
    // Three valid 1.5 GiB buffers (in 3 GiB of lazily mapped RAM) add up to more than a u32 can count.
    auto mem = GuestMemory::create(3ull << 30);
    ASSERT_TRUE(mem);
    DriverQueue big(*mem, 8, kRings, kBuffers, 4096);
    auto q = Queue::create(*mem, big.config(), 8);
    ASSERT_TRUE(q);
    bool broken = false;
    std::string why;
    q->set_broken_handler([&](const std::string& w) {
        broken = true;
        why = w;
    });
    for (uint16_t i = 0; i < 3; ++i)
        big.write_desc(i, 0x1000'0000, 0x6000'0000, i < 2 ? kDescFlagNext : 0, i + 1);
    big.publish(0);
    EXPECT_FALSE(q->pop());
    EXPECT_TRUE(broken);
    EXPECT_NE(why.find("4 GiB"), std::string::npos) << why;
}

TEST_F(VirtqueueTest, ReadableAfterWritableBreaksQueue) {
    make_queue(8);
    driver_->write_desc(0, kBuffers, 16, kDescFlagNext | kDescFlagWrite, 1);
    driver_->write_desc(1, kBuffers + 16, 16, 0, 0);
    driver_->publish(0);
    expect_broken("readable descriptor after");
}

TEST_F(VirtqueueTest, IndirectDescriptorBreaksQueue) {
    make_queue(8);
    driver_->write_desc(0, kBuffers, 32, kDescFlagIndirect, 0);
    driver_->publish(0);
    expect_broken("indirect");
}

TEST_F(VirtqueueTest, ZeroLengthDescriptorsAreSkipped) {
    make_queue(8);
    driver_->write_desc(0, kBuffers, 0, kDescFlagNext, 1);
    driver_->write_desc(1, kBuffers, 8, kDescFlagWrite, 0);
    driver_->publish(0);
    auto chain = queue_->pop();
    ASSERT_TRUE(chain);
    ASSERT_EQ(chain->segments.size(), 1u);
    EXPECT_EQ(chain->writable_len, 8u);
}

TEST_F(VirtqueueTest, NoInterruptFlagIsHonored) {
    make_queue(8);
    EXPECT_TRUE(queue_->interrupt_wanted());
    driver_->set_avail_flags(kAvailFlagNoInterrupt);
    EXPECT_FALSE(queue_->interrupt_wanted());
    driver_->set_avail_flags(0);
    EXPECT_TRUE(queue_->interrupt_wanted());
}

TEST_F(VirtqueueTest, GuestRewritingDescriptorsAfterPopDoesNotChangeTheChain) {
    make_queue(8);
    driver_->write_desc(0, kBuffers, 16, 0, 0);
    driver_->publish(0);
    auto chain = queue_->pop();
    ASSERT_TRUE(chain);
    driver_->write_desc(0, kRam * 4, 0xffffffff, kDescFlagWrite, 0);  // too late: the chain was copied
    EXPECT_EQ(chain->segments[0].gpa, kBuffers);
    EXPECT_EQ(chain->segments[0].len, 16u);
}

// ---- Queue configuration ----

class QueueConfigTest : public VirtqueueTest {
  protected:
    Result<Queue> create(QueueConfig config, uint16_t max = 256) {
        return Queue::create(*memory_, config, max);
    }
    QueueConfig good(uint16_t size = 16) { return {size, kRings, kRings + 0x1000, kRings + 0x2000}; }
};

TEST_F(QueueConfigTest, AcceptsAGoodConfig) {
    EXPECT_TRUE(create(good()));
}

TEST_F(QueueConfigTest, SizeMustBeANonZeroPowerOfTwoWithinMax) {
    EXPECT_FALSE(create(good(0)));
    EXPECT_FALSE(create(good(3)));
    EXPECT_FALSE(create(good(24)));
    EXPECT_FALSE(create(good(512), 256));
    EXPECT_TRUE(create(good(256), 256));
    EXPECT_TRUE(create(good(1), 256));
}

TEST_F(QueueConfigTest, RingsMustBeAligned) {
    auto c = good();
    c.desc_table += 8;  // 16-byte alignment required
    EXPECT_FALSE(create(c));
    c = good();
    c.avail_ring += 1;  // 2-byte
    EXPECT_FALSE(create(c));
    c = good();
    c.used_ring += 2;  // 4-byte
    EXPECT_FALSE(create(c));
    c = good();
    c.avail_ring += 2;  // 2-aligned is fine for avail
    EXPECT_TRUE(create(c));
}

TEST_F(QueueConfigTest, RingsMustLieInsideRam) {
    auto c = good(256);
    c.desc_table = kRam - 16 * 128;  // half of the table past the end
    EXPECT_FALSE(create(c));
    c = good(256);
    c.avail_ring = kRam - 4;
    EXPECT_FALSE(create(c));
    c = good(256);
    c.used_ring = kRam - 8;
    EXPECT_FALSE(create(c));
    c = good(256);
    c.used_ring = 3ull << 30;  // in the MMIO hole
    EXPECT_FALSE(create(c));
    c = good(256);
    c.desc_table = ~0ull & ~15ull;  // wraps the address space
    EXPECT_FALSE(create(c));
}

}  // namespace
}  // namespace sandlot::vmm::virtio
