// An interrupt line into the guest: an eventfd that KVM turns into an edge on a GSI (KVM_IRQFD).
// Devices only see this object; tests read the eventfd to see interrupts fire without KVM.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>

#include "proto/base/error.h"
#include "proto/base/unique_fd.h"

namespace sandlot::vmm {

class IrqLine {
  public:
    static Result<IrqLine> create(uint32_t gsi) {
        UniqueFd fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!fd) return errno_error("eventfd for irq");
        return IrqLine(std::move(fd), gsi);
    }

    void trigger() const {
        uint64_t one = 1;
        (void)!::write(fd_.get(), &one, sizeof one);
    }
    int fd() const { return fd_.get(); }
    uint32_t gsi() const { return gsi_; }

  private:
    IrqLine(UniqueFd fd, uint32_t gsi) : fd_(std::move(fd)), gsi_(gsi) {}
    UniqueFd fd_;
    uint32_t gsi_;
};

}  // namespace sandlot::vmm
