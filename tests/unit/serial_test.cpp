// The 16550A UART without KVM: registers driven directly, output through a pipe, interrupts read back from
// the IrqLine's eventfd.
#include "vmm/devices/serial/serial.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

namespace sandlot::vmm {
namespace {

constexpr uint64_t kThr = 0, kIer = 1, kIir = 2, kFcr = 2, kLcr = 3, kMcr = 4, kLsr = 5, kMsr = 6, kScr = 7;

class SerialTest : public ::testing::Test {
  protected:
    void SetUp() override {
        int fds[2];
        ASSERT_EQ(pipe2(fds, O_CLOEXEC | O_NONBLOCK), 0);
        pipe_read_ = UniqueFd(fds[0]);
        auto irq = IrqLine::create(4);
        ASSERT_TRUE(irq);
        irq_fd_ = irq->fd();
        serial_ = std::make_unique<Serial>(std::move(*irq), UniqueFd(fds[1]));
    }

    uint8_t in(uint64_t offset) {
        uint8_t byte = 0xaa;
        serial_->read(offset, std::span(&byte, 1));
        return byte;
    }
    void out(uint64_t offset, uint8_t value) { serial_->write(offset, std::span(&value, 1)); }

    // How many interrupt edges were raised since the last call.
    uint64_t interrupts() {
        uint64_t count = 0;
        if (::read(irq_fd_, &count, sizeof count) != sizeof count) return 0;
        return count;
    }
    std::string output() {
        std::string text;
        char buf[256];
        ssize_t n;
        while ((n = ::read(pipe_read_.get(), buf, sizeof buf)) > 0)
            text.append(buf, static_cast<size_t>(n));
        return text;
    }

    UniqueFd pipe_read_;
    int irq_fd_ = -1;
    std::unique_ptr<Serial> serial_;
};

TEST_F(SerialTest, LoopbackReflectsModemControlOnModemStatus) {
    // Linux's 8250 autoconfig: MCR = LOOP | RTS | OUT2 must read back as CTS | DCD.
    out(kMcr, 0x10 | 0x0a);
    EXPECT_EQ(in(kMsr)&0xf0, 0x90);
    out(kMcr, 0x10 | 0x05);  // DTR | OUT1 -> DSR | RI
    EXPECT_EQ(in(kMsr)&0xf0, 0x60);
    out(kMcr, 0x10);
    EXPECT_EQ(in(kMsr)&0xf0, 0x00);
    out(kMcr, 0x00);  // out of loopback: carrier, data set ready, clear to send
    EXPECT_EQ(in(kMsr)&0xf0, 0xb0);
}

TEST_F(SerialTest, ScratchAndInterruptEnableReadBack) {
    out(kScr, 0xa5);
    EXPECT_EQ(in(kScr), 0xa5);
    out(kScr, 0x5a);
    EXPECT_EQ(in(kScr), 0x5a);
    out(kIer, 0x00);
    EXPECT_EQ(in(kIer), 0x00);
    out(kIer, 0xff);  // only the low four bits exist
    EXPECT_EQ(in(kIer), 0x0f);
}

TEST_F(SerialTest, FifoBitsIdentifyA16550A) {
    EXPECT_EQ(in(kIir), 0x01);  // no FIFO, no interrupt
    out(kFcr, 0x01);
    EXPECT_EQ(in(kIir) >> 6, 3);
    EXPECT_EQ(in(kIir)&0x20, 0);  // not a 16750 (no 64-byte FIFO bit)
    out(kFcr, 0x00);
    EXPECT_EQ(in(kIir)&0xc0, 0);
}

TEST_F(SerialTest, LineStatusShowsTransmitterAlwaysEmpty) {
    EXPECT_EQ(in(kLsr), 0x60);
    out(kThr, 'x');
    EXPECT_EQ(in(kLsr), 0x60);
}

TEST_F(SerialTest, DivisorLatchShadowsDataAndInterruptEnable) {
    out(kIer, 0x03);
    out(kLcr, 0x83);  // DLAB | 8N1
    out(0, 0x01);     // DLL: 115200 baud
    out(1, 0x00);     // DLM
    EXPECT_EQ(in(0), 0x01);
    EXPECT_EQ(in(1), 0x00);
    out(kLcr, 0x03);
    EXPECT_EQ(in(kLcr), 0x03);
    EXPECT_EQ(in(kIer), 0x03);  // untouched by the divisor writes
    serial_->flush();
    EXPECT_EQ(output(), "");  // divisor writes are not output
}

TEST_F(SerialTest, TransmittedBytesReachTheOutputByLine) {
    for (char c : std::string("hello"))
        out(kThr, static_cast<uint8_t>(c));
    EXPECT_EQ(output(), "");  // buffered until a newline
    out(kThr, '\n');
    EXPECT_EQ(output(), "hello\n");
    out(kThr, '>');
    serial_->flush();
    EXPECT_EQ(output(), ">");
}

TEST_F(SerialTest, LoopbackBytesComeBackInsteadOfGoingOut) {
    out(kMcr, 0x10);
    out(kThr, 'q');
    EXPECT_EQ(in(kLsr)&0x01, 0x01);  // data ready
    EXPECT_EQ(in(kThr), 'q');
    EXPECT_EQ(in(kLsr)&0x01, 0x00);
    serial_->flush();
    EXPECT_EQ(output(), "");
}

TEST_F(SerialTest, NoInterruptsWhileDisabled) {
    out(kThr, 'a');
    EXPECT_EQ(interrupts(), 0u);
    EXPECT_EQ(in(kIir)&0x0f, 0x01);
}

TEST_F(SerialTest, ThrEmptyInterruptOnEnableAndAfterEachWrite) {
    out(kFcr, 0x01);
    out(kIer, 0x02);  // ETBEI on while THR is empty: interrupt
    EXPECT_EQ(interrupts(), 1u);
    EXPECT_EQ(in(kIir), 0xc2);
    EXPECT_EQ(in(kIir), 0xc1);  // reading IIR acknowledged it

    out(kThr, 'a');  // THR empties again at once: a new interrupt
    EXPECT_EQ(interrupts(), 1u);
    EXPECT_EQ(in(kIir), 0xc2);
    EXPECT_EQ(in(kIir), 0xc1);

    out(kIer, 0x02);  // already enabled: no new edge
    EXPECT_EQ(interrupts(), 0u);
    EXPECT_EQ(in(kIir), 0xc1);
}

TEST_F(SerialTest, ThrEmptyReassertsWhenReEnabled) {
    // Linux's UART_BUG_THRE probe: enable, read IIR, disable, enable again: a real 16550 interrupts twice.
    out(kIer, 0x02);
    EXPECT_EQ(in(kIir)&0x0f, 0x02);
    out(kIer, 0x00);
    EXPECT_EQ(in(kIir)&0x0f, 0x01);
    out(kIer, 0x02);
    EXPECT_EQ(in(kIir)&0x0f, 0x02);
    EXPECT_EQ(interrupts(), 2u);
}

TEST_F(SerialTest, DisablingThrEmptyClearsIt) {
    out(kIer, 0x02);
    out(kIer, 0x00);
    out(kIer, 0x01);  // receive interrupts only: THR-empty must not show
    EXPECT_EQ(in(kIir)&0x0f, 0x01);
}

TEST_F(SerialTest, ReceivedDataRaisesInterruptAndIsReadInOrder) {
    out(kIer, 0x01);
    const uint8_t input[] = {'o', 'k'};
    EXPECT_EQ(serial_->receive(input), 2u);
    EXPECT_EQ(interrupts(), 1u);
    EXPECT_EQ(in(kIir)&0x0f, 0x04);
    EXPECT_EQ(in(kLsr)&0x01, 0x01);
    EXPECT_EQ(in(0), 'o');
    EXPECT_EQ(in(0), 'k');
    EXPECT_EQ(in(kLsr)&0x01, 0x00);
    EXPECT_EQ(in(kIir)&0x0f, 0x01);
    EXPECT_EQ(in(0), 0);  // empty receiver reads 0
}

TEST_F(SerialTest, ReceivedDataTakesPriorityOverThrEmpty) {
    out(kIer, 0x03);
    const uint8_t input[] = {'z'};
    serial_->receive(input);
    EXPECT_EQ(in(kIir)&0x0f, 0x04);
    EXPECT_EQ(in(0), 'z');
    EXPECT_EQ(in(kIir)&0x0f, 0x02);
}

TEST_F(SerialTest, ReceiveFifoIsBounded) {
    std::vector<uint8_t> flood(1000, 'x');
    EXPECT_EQ(serial_->receive(flood), Serial::kRxFifoSize);
    EXPECT_EQ(serial_->receive(flood), 0u);
    out(kFcr, 0x03);  // enable + clear receive FIFO
    EXPECT_EQ(in(kLsr)&0x01, 0);
}

TEST_F(SerialTest, OddAccessesAreHarmless) {
    uint8_t wide[4] = {1, 2, 3, 4};
    serial_->read(kScr, wide);  // a 4-byte read sees the register in the low byte
    EXPECT_EQ(wide[1], 0);
    serial_->read(9, wide);
    EXPECT_EQ(wide[0], 0);
    serial_->write(9, wide);
    serial_->write(0, std::span<const uint8_t>());
}

TEST(SerialNoOutputTest, DiscardsOutputWithoutAnFd) {
    auto irq = IrqLine::create(4);
    ASSERT_TRUE(irq);
    Serial serial(std::move(*irq), UniqueFd());
    for (int i = 0; i < 10000; ++i) {
        uint8_t byte = i % 64 == 0 ? '\n' : 'x';
        serial.write(0, std::span(&byte, 1));
    }
    serial.flush();
    uint8_t lsr = 0;
    serial.read(5, std::span(&lsr, 1));
    EXPECT_EQ(lsr, 0x60);
}

}  // namespace
}  // namespace sandlot::vmm
