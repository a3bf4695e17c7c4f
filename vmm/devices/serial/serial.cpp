#include "vmm/devices/serial/serial.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace sandlot::vmm {

namespace {

// Register offsets.
constexpr uint64_t kRbrThr = 0;  // DLL when DLAB
constexpr uint64_t kIer = 1;     // DLM when DLAB
constexpr uint64_t kIirFcr = 2;
constexpr uint64_t kLcr = 3;
constexpr uint64_t kMcr = 4;
constexpr uint64_t kLsr = 5;
constexpr uint64_t kMsr = 6;
constexpr uint64_t kScr = 7;

constexpr uint8_t kIerRxAvailable = 0x01;  // ERBFI
constexpr uint8_t kIerThrEmpty = 0x02;     // ETBEI
constexpr uint8_t kIerMask = 0x0f;

constexpr uint8_t kIirNoInterrupt = 0x01;
constexpr uint8_t kIirThrEmpty = 0x02;
constexpr uint8_t kIirRxAvailable = 0x04;
constexpr uint8_t kIirFifoEnabled = 0xc0;

constexpr uint8_t kFcrEnableFifo = 0x01;
constexpr uint8_t kFcrClearRx = 0x02;

constexpr uint8_t kLcrDlab = 0x80;

constexpr uint8_t kMcrDtr = 0x01;
constexpr uint8_t kMcrRts = 0x02;
constexpr uint8_t kMcrOut1 = 0x04;
constexpr uint8_t kMcrOut2 = 0x08;
constexpr uint8_t kMcrLoop = 0x10;
constexpr uint8_t kMcrMask = 0x1f;

constexpr uint8_t kLsrDataReady = 0x01;
constexpr uint8_t kLsrThrEmpty = 0x20;
constexpr uint8_t kLsrTransmitterEmpty = 0x40;

constexpr uint8_t kMsrCts = 0x10;
constexpr uint8_t kMsrDsr = 0x20;
constexpr uint8_t kMsrRi = 0x40;
constexpr uint8_t kMsrDcd = 0x80;

constexpr size_t kOutBufferSize = 4096;

}  // namespace

Serial::Serial(IrqLine irq, UniqueFd output) : irq_(std::move(irq)), output_(std::move(output)) {
    out_buffer_.reserve(kOutBufferSize);
}

Serial::~Serial() {
    flush();
}

void Serial::read(uint64_t offset, std::span<uint8_t> data) {
    // The UART's registers are bytes; a wider access sees the register in its low byte.
    std::fill(data.begin(), data.end(), 0);
    if (data.empty() || offset >= kPortCount) return;
    std::lock_guard lock(mutex_);
    data[0] = read_register(offset);
}

void Serial::write(uint64_t offset, std::span<const uint8_t> data) {
    if (data.empty() || offset >= kPortCount) return;
    std::lock_guard lock(mutex_);
    write_register(offset, data[0]);
}

uint8_t Serial::read_register(uint64_t offset) {
    bool dlab = (lcr_ & kLcrDlab) != 0;
    switch (offset) {
        case kRbrThr: {
            if (dlab) return dll_;
            if (rx_fifo_.empty()) return 0;
            uint8_t byte = rx_fifo_.front();
            rx_fifo_.pop_front();
            return byte;
        }
        case kIer:
            return dlab ? dlm_ : ier_;
        case kIirFcr: {
            uint8_t iir = interrupt_identification();
            // Reading IIR acknowledges a THR-empty interrupt (the lowest-priority cause) when it is the one
            // shown.
            if ((iir & 0x0f) == kIirThrEmpty) thr_interrupt_pending_ = false;
            return iir;
        }
        case kLcr:
            return lcr_;
        case kMcr:
            return mcr_;
        case kLsr:
            return kLsrThrEmpty | kLsrTransmitterEmpty | (rx_fifo_.empty() ? 0 : kLsrDataReady);
        case kMsr:
            return modem_status();
        case kScr:
            return scr_;
        default:
            return 0;
    }
}

void Serial::write_register(uint64_t offset, uint8_t value) {
    bool dlab = (lcr_ & kLcrDlab) != 0;
    switch (offset) {
        case kRbrThr:
            if (dlab) {
                dll_ = value;
                return;
            }
            transmit(value);
            // The byte left THR at once: THR is empty again, a new THR-empty interrupt.
            if (ier_ & kIerThrEmpty) {
                thr_interrupt_pending_ = true;
                irq_.trigger();
            }
            return;
        case kIer: {
            if (dlab) {
                dlm_ = value;
                return;
            }
            uint8_t old = ier_;
            ier_ = value & kIerMask;
            bool thr_enabled_now = (ier_ & kIerThrEmpty) && !(old & kIerThrEmpty);
            bool rx_enabled_now = (ier_ & kIerRxAvailable) && !(old & kIerRxAvailable);
            // Enabling the THR-empty interrupt while THR is empty (always) raises it; Linux's 8250 driver
            // checks this when it starts the port.
            if (!(ier_ & kIerThrEmpty)) thr_interrupt_pending_ = false;
            if (thr_enabled_now) thr_interrupt_pending_ = true;
            if (thr_enabled_now || (rx_enabled_now && !rx_fifo_.empty())) irq_.trigger();
            return;
        }
        case kIirFcr:
            fifo_enabled_ = (value & kFcrEnableFifo) != 0;
            if (value & kFcrClearRx) rx_fifo_.clear();
            return;
        case kLcr:
            lcr_ = value;
            return;
        case kMcr:
            mcr_ = value & kMcrMask;
            return;
        case kScr:
            scr_ = value;
            return;
        default:  // LSR and MSR are read-only
            return;
    }
}

uint8_t Serial::interrupt_identification() const {
    uint8_t fifo_bits = fifo_enabled_ ? kIirFifoEnabled : 0;
    if ((ier_ & kIerRxAvailable) && !rx_fifo_.empty()) return fifo_bits | kIirRxAvailable;
    if ((ier_ & kIerThrEmpty) && thr_interrupt_pending_) return fifo_bits | kIirThrEmpty;
    return fifo_bits | kIirNoInterrupt;
}

uint8_t Serial::modem_status() const {
    if (!(mcr_ & kMcrLoop)) return kMsrDcd | kMsrDsr | kMsrCts;  // a terminal is always attached and ready
    uint8_t msr = 0;
    if (mcr_ & kMcrDtr) msr |= kMsrDsr;
    if (mcr_ & kMcrRts) msr |= kMsrCts;
    if (mcr_ & kMcrOut1) msr |= kMsrRi;
    if (mcr_ & kMcrOut2) msr |= kMsrDcd;
    return msr;
}

void Serial::transmit(uint8_t byte) {
    if (mcr_ & kMcrLoop) {
        // Loopback: the byte comes back in on the receiver, and the outside world sees nothing.
        if (rx_fifo_.size() < kRxFifoSize) rx_fifo_.push_back(byte);
        if (ier_ & kIerRxAvailable) irq_.trigger();
        return;
    }
    if (!output_) return;
    out_buffer_.push_back(byte);
    if (byte == '\n' || out_buffer_.size() >= kOutBufferSize) flush_locked();
}

size_t Serial::receive(std::span<const uint8_t> bytes) {
    std::lock_guard lock(mutex_);
    size_t room = kRxFifoSize - std::min(kRxFifoSize, rx_fifo_.size());
    size_t taken = std::min(room, bytes.size());
    rx_fifo_.insert(rx_fifo_.end(), bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(taken));
    if (taken > 0 && (ier_ & kIerRxAvailable)) irq_.trigger();
    return taken;
}

void Serial::flush() {
    std::lock_guard lock(mutex_);
    flush_locked();
}

void Serial::flush_locked() {
    size_t done = 0;
    while (done < out_buffer_.size()) {
        ssize_t n = ::write(output_.get(), out_buffer_.data() + done, out_buffer_.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0)
            break;  // the console went away (EPIPE, ENOSPC...): drop output rather than stall the guest
        done += static_cast<size_t>(n);
    }
    out_buffer_.clear();
}

}  // namespace sandlot::vmm
