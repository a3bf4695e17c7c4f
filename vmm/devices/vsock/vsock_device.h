// virtio-vsock device (virtio 1.x section 5.10): stream sockets between the guest and host programs, with the
// host side bridged to Unix sockets (see host_socket.h for the protocol).
//
// Queues: rx (0) carries packets to the guest, tx (1) packets from it, event (2) is left alone (we never
// migrate). Config space is the guest's CID as a little-endian u64.
//
// Threading: everything runs under Device::mutex(): transport calls (vCPU threads, or the event-loop thread
// for queue notifications) and this device's socket handlers (event-loop thread). Handlers hold only a
// weak_ptr to the device, so they are harmless after it is gone. The event loop must outlive the device.
//
// Sockets are registered edge-triggered: a hang-up cannot be masked in epoll, so with level triggering a
// closed socket we are not reading (no credit, no rx buffers) would wake the loop forever. Instead each
// connection remembers host_readable/host_writable from the last edge and simply does not read while the
// guest has no credit or no rx buffers; the kernel socket buffer then fills and the host peer blocks.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>

#include "proto/base/error.h"
#include "proto/base/unique_fd.h"
#include "vmm/devices/virtio/device.h"
#include "vmm/devices/vsock/connection.h"
#include "vmm/devices/vsock/packet.h"
#include "vmm/event_loop.h"

namespace sandlot::vmm::vsock {

inline constexpr uint32_t kVsockDeviceType = 19;
inline constexpr uint16_t kRxQueue = 0, kTxQueue = 1, kEventQueue = 2;
inline constexpr uint16_t kQueueSize = 256;
inline constexpr size_t kMaxConnections = 1024;
// Host ports we pick for host-initiated connections count up from here.
inline constexpr uint32_t kFirstLocalPort = 1u << 30;

class VsockDevice : public virtio::Device, public std::enable_shared_from_this<VsockDevice> {
  public:
    // Listens on `uds_path` right away (host clients may connect before the guest driver is up). Fails if
    // the path is a live socket ("vsock socket <path> is in use") or not a socket; a stale socket is
    // replaced.
    static Result<std::shared_ptr<VsockDevice>> create(uint64_t guest_cid, std::string uds_path,
                                                       EventLoop& loop);
    // Closes every connection and unlinks uds_path.
    ~VsockDevice() override;

    uint32_t device_type() const override { return kVsockDeviceType; }
    uint64_t features() const override { return 0; }
    std::span<const uint16_t> queue_max_sizes() const override { return kQueueMaxSizes; }
    void read_config(uint64_t offset, std::span<uint8_t> data) override;
    void write_config(uint64_t, std::span<const uint8_t>) override {}  // read-only
    Result<void> activate(virtio::Activation activation) override;
    void notify(uint16_t queue) override;
    void reset() override;

    // Live connections, including host clients still sending CONNECT. Takes the mutex.
    size_t connection_count();

  private:
    static constexpr uint16_t kQueueMaxSizes[3] = {kQueueSize, kQueueSize, kQueueSize};
    // RSTs for packets that match no connection; more than this many pending are dropped.
    static constexpr size_t kMaxStrayRsts = 256;

    VsockDevice(uint64_t guest_cid, std::string uds_path, EventLoop& loop)
        : guest_cid_(guest_cid), uds_path_(std::move(uds_path)), loop_(&loop) {}

    // Event-loop handlers (take the mutex).
    void on_listener_ready();
    void on_connection_event(uint64_t id, uint32_t events);

    // Guest -> device.
    void process_tx();
    void handle_guest_packet(const virtio::Chain& chain);
    void handle_connection_packet(Connection& conn, const PacketHeader& hdr, const virtio::Chain& chain);
    void handle_guest_rw(Connection& conn, const PacketHeader& hdr, const virtio::Chain& chain);
    void handle_guest_shutdown(Connection& conn, uint32_t flags);
    void connect_to_host(const PacketHeader& request);
    void handle_connect_line(Connection& conn);

    // Device -> guest.
    void fill_rx();
    size_t next_rx_packet(const virtio::Chain& chain);
    size_t write_connection_packet(Connection& conn, const virtio::Chain& chain);
    size_t write_packet(const virtio::Chain& chain, const PacketHeader& hdr);
    PacketHeader header_for(Connection& conn, Op op);
    void queue_stray_rst(const PacketHeader& from_guest);
    // Puts the connection on the rx list if it has something for the guest.
    void schedule(Connection& conn);
    // Data waiting but the guest has no room for it: ask the guest once for a credit update.
    void request_credit_if_starved(Connection& conn);

    // Connection lifetime.
    Result<Connection*> add_connection(UniqueFd fd, ConnectionState state);
    Connection* find(uint64_t id);
    Connection* find_by_ports(uint32_t local_port, uint32_t peer_port);
    uint32_t allocate_local_port();
    void flush(Connection& conn);
    // The guest is done with the connection: send RST if asked, drain what the host still has to get, close.
    // May close the connection at once: callers must not use `conn` afterwards.
    void begin_close(Connection& conn, bool send_rst);
    // A protocol violation: drop what the guest sent that the host has not taken, and RST.
    void abort_connection(Connection& conn);
    // The state change alone; the connection stays.
    void mark_closing(Connection& conn, bool send_rst);
    // Closes the connection if it is closing and nothing is left to do.
    void finish_if_done(Connection& conn);
    void close_connection(uint64_t id);

    const uint64_t guest_cid_;
    const std::string uds_path_;
    EventLoop* const loop_;
    UniqueFd listener_;

    // Set while the driver has the device live (between activate and reset). Guarded by mutex().
    bool active_ = false;
    const GuestMemory* memory_ = nullptr;
    std::span<virtio::Queue> queues_;
    std::function<void(uint16_t)> signal_used_;

    std::unordered_map<uint64_t, Connection> connections_;  // by id
    std::map<std::pair<uint32_t, uint32_t>, uint64_t>
        by_ports_;                  // (local, peer) -> id; closing ones left out
    std::deque<uint64_t> rx_list_;  // connections with something for the guest
    std::deque<PacketHeader> stray_rsts_;
    uint64_t next_id_ = 1;
    uint32_t next_local_port_ = kFirstLocalPort;
};

}  // namespace sandlot::vmm::vsock
