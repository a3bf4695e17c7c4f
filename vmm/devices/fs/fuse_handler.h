// The transport-agnostic FUSE request interface: one object serves requests that arrive either through the
// host's /dev/fuse (fuse_dev_mount.h: tests, benchmarks) or through a virtio-fs queue (fs_device.h: guests).
// Transports frame requests and replies; the handler parses, executes and builds replies.
//
// Threading: handle() is called concurrently from several transport threads; implementations are thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace sandlot::vmm::fs {

class FuseHandler {
  public:
    virtual ~FuseHandler() = default;
    // `request`: one whole FUSE request exactly as the kernel sends it (fuse_in_header + arguments + data).
    // Appends the whole reply (fuse_out_header + payload) to `reply` (caller passes it empty); leaves it
    // empty when the operation has no reply (FORGET, BATCH_FORGET). Thread-safe: called concurrently.
    virtual void handle(std::span<const uint8_t> request, std::vector<uint8_t>& reply) = 0;
    // Largest WRITE payload / READ reply the handler negotiates in INIT (transports size buffers by it).
    virtual uint32_t max_io() const = 0;
};

}  // namespace sandlot::vmm::fs
