// A 16550A UART, the guest's console (ttyS0): eight I/O ports at layout::kSerialPort.
//
// Transmission is instantaneous: THR is always empty, so LSR always shows THRE|TEMT, and every byte the guest
// writes goes straight to the output fd. Interrupts are edges on an IrqLine (ISA IRQ 4): one whenever a cause
// becomes pending (THR empty with IER.ETBEI set, received data with IER.ERBFI set).
//
// Registers (offset: read / write; DLAB = LCR bit 7):
//   0: RBR / THR, or DLL when DLAB     1: IER, or DLM when DLAB     2: IIR / FCR     3: LCR
//   4: MCR                              5: LSR                       6: MSR           7: SCR
// MCR loopback reflects the modem outputs on the inputs (DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD) and
// loops transmitted bytes back to RBR; Linux's 8250 autoconfiguration relies on that.
#pragma once

#include <cstdint>
#include <deque>
#include <mutex>
#include <span>
#include <vector>

#include "proto/base/unique_fd.h"
#include "vmm/devices/bus.h"
#include "vmm/devices/irq_line.h"

namespace sandlot::vmm {

class Serial final : public BusDevice {
  public:
    static constexpr uint64_t kPortCount = 8;
    static constexpr size_t kRxFifoSize = 16;

    // Transmitted bytes go to `output` (an invalid fd discards them). Output is line-buffered: written on
    // each newline, when the buffer fills, on flush() and on destruction.
    Serial(IrqLine irq, UniqueFd output);
    ~Serial() override;

    void read(uint64_t offset, std::span<uint8_t> data) override;
    void write(uint64_t offset, std::span<const uint8_t> data) override;

    // Host -> guest: queues bytes for RBR, as many as fit in the receive FIFO. Returns how many were taken.
    size_t receive(std::span<const uint8_t> bytes);
    // Writes out any buffered output.
    void flush();

  private:
    uint8_t read_register(uint64_t offset);
    void write_register(uint64_t offset, uint8_t value);
    uint8_t interrupt_identification() const;
    uint8_t modem_status() const;
    void transmit(uint8_t byte);
    void flush_locked();

    std::mutex mutex_;
    IrqLine irq_;
    UniqueFd output_;
    std::vector<uint8_t> out_buffer_;
    std::deque<uint8_t> rx_fifo_;

    uint8_t ier_ = 0;
    uint8_t lcr_ = 0;
    uint8_t mcr_ = 0;
    uint8_t scr_ = 0;
    uint8_t dll_ = 0x0c;  // 9600 baud, as after reset; only stored
    uint8_t dlm_ = 0;
    bool fifo_enabled_ = false;
    bool thr_interrupt_pending_ = false;
};

}  // namespace sandlot::vmm
