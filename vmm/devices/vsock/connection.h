// One vsock stream between a guest port and a host Unix socket, and the I/O on its host side.
//
// Flow control is virtio-vsock's credit scheme, in both directions:
//   guest -> host: we advertise kBufAlloc and fwd_cnt (bytes written to the Unix socket). Bytes the socket
//     cannot take yet wait in to_host, which the credit bounds to kBufAlloc; a guest sending more is reset.
//   host -> guest: the guest advertises peer_buf_alloc and peer_fwd_cnt; we never send more than
//     peer_buf_alloc - (tx_cnt - peer_fwd_cnt) bytes it has not consumed.
// Control packets owed to the guest are flags (send_*), so each connection has at most a handful pending.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "proto/base/unique_fd.h"
#include "vmm/devices/virtio/queue.h"
#include "vmm/memory/guest_memory.h"

namespace sandlot::vmm::vsock {

// Receive buffer we advertise to the guest per connection; also the most we buffer for the host socket.
inline constexpr uint32_t kBufAlloc = 256 * 1024;

// Bytes waiting to be written to the host socket.
class ByteQueue {
  public:
    bool empty() const { return head_ == bytes_.size(); }
    size_t size() const { return bytes_.size() - head_; }
    std::span<const uint8_t> front() const { return std::span(bytes_).subspan(head_); }
    // Makes room for `n` more bytes at the back and returns it for the caller to fill.
    std::span<uint8_t> grow(size_t n);
    void consume(size_t n);
    void clear();

  private:
    std::vector<uint8_t> bytes_;
    size_t head_ = 0;  // bytes before it have been written already
};

enum class ConnectionState {
    ReadingConnect,    // host client connected; reading its "CONNECT <port>\n"
    RequestPending,    // REQUEST owed to the guest
    AwaitingResponse,  // REQUEST sent; waiting for the guest's RESPONSE or RST
    Established,       // bytes flow both ways
    Closing,           // forgotten by the guest side; finishing RST and draining to_host, then closed
};

enum class IoStatus { Ok, WouldBlock, Failed };

struct Connection {
    uint64_t id = 0;  // never reused; event handlers name their connection by it
    UniqueFd fd;
    ConnectionState state = ConnectionState::ReadingConnect;
    uint32_t local_port = 0;   // our port, on the host CID
    uint32_t peer_port = 0;    // the guest's port
    std::string connect_line;  // partial CONNECT line from a host client

    // Control packets owed to the guest.
    bool send_request = false;
    bool send_response = false;
    bool send_shutdown = false;  // SHUTDOWN(both): the host side closed
    bool send_rst = false;
    bool send_credit_update = false;
    bool send_credit_request = false;
    bool credit_requested = false;  // a CREDIT_REQUEST went out and the guest has not given credit since
    bool in_rx_list = false;        // queued in the device's list of connections with something for the guest

    // guest -> host.
    uint32_t rx_cnt = 0;        // payload bytes received from the guest
    uint32_t fwd_cnt = 0;       // of those, bytes written to the host socket
    uint32_t fwd_cnt_told = 0;  // fwd_cnt in the last header we sent the guest
    std::string host_preamble;  // "OK <port>\n" for a host client, written before any data
    ByteQueue to_host;
    bool host_writable = true;     // no EAGAIN since the last EPOLLOUT edge
    bool guest_shut_send = false;  // the guest will send nothing more: shut our write side once drained
    bool guest_shut_rcv = false;   // the guest will receive nothing more: stop reading the host socket
    bool host_write_shut = false;

    // host -> guest.
    uint32_t tx_cnt = 0;  // payload bytes sent to the guest
    uint32_t peer_buf_alloc = 0;
    uint32_t peer_fwd_cnt = 0;
    bool host_readable = false;  // the socket may have data (or EOF): no EAGAIN since the last EPOLLIN edge
    bool host_eof = false;

    // Bytes the guest can still take from us.
    uint32_t peer_credit() const;
    // Bytes from the guest we hold but have not written to the socket yet.
    uint32_t buffered_from_guest() const { return rx_cnt - fwd_cnt; }
    bool has_control_packet() const;
    bool can_send_data() const;
    // True when the guest's view of fwd_cnt is stale enough to be worth a CREDIT_UPDATE.
    bool credit_update_due() const { return fwd_cnt - fwd_cnt_told >= kBufAlloc / 4; }

    // Reads the CONNECT line without consuming any byte after its '\n' (those are stream data).
    // Returns the port once the line is complete; nullopt while incomplete; an error for a bad line or EOF.
    Result<std::optional<uint32_t>> read_connect_line();

    // Takes `len` payload bytes, `offset` into the readable part of `chain`: written straight to the socket
    // when possible, the rest kept in to_host. The caller checked the credit.
    IoStatus take_from_guest(const GuestMemory& memory, const virtio::Chain& chain, size_t offset,
                             uint32_t len);
    // Writes host_preamble and to_host to the socket; shuts its write side once drained after a guest
    // SHUTDOWN(SEND). Ok when everything is written.
    IoStatus flush_to_host();

    // Reads up to `max_len` bytes from the socket straight into the writable part of `chain` at `offset`.
    struct ReadResult {
        IoStatus status;
        size_t bytes;  // 0 with Ok means EOF
    };
    ReadResult read_from_host(const GuestMemory& memory, const virtio::Chain& chain, size_t offset,
                              size_t max_len);
};

}  // namespace sandlot::vmm::vsock
