#include "vmm/devices/vsock/connection.h"

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <string_view>

#include "vmm/devices/vsock/host_socket.h"

namespace sandlot::vmm::vsock {

namespace {

// Repeats a system call that a signal interrupted.
template <class Syscall>
ssize_t retry_eintr(Syscall&& call) {
    ssize_t n;
    while ((n = call()) < 0 && errno == EINTR) {
    }
    return n;
}

}  // namespace

std::span<uint8_t> ByteQueue::grow(size_t n) {
    // Reclaim the written prefix before growing, so the vector stays near the bytes actually held.
    if (head_ > 0 && head_ >= bytes_.size() / 2) {
        bytes_.erase(bytes_.begin(), bytes_.begin() + static_cast<ptrdiff_t>(head_));
        head_ = 0;
    }
    size_t old = bytes_.size();
    bytes_.resize(old + n);
    return std::span(bytes_).subspan(old);
}

void ByteQueue::consume(size_t n) {
    head_ += std::min(n, size());
    if (empty()) clear();
}

void ByteQueue::clear() {
    bytes_.clear();
    head_ = 0;
    if (bytes_.capacity() > kBufAlloc) bytes_.shrink_to_fit();
}

uint32_t Connection::peer_credit() const {
    uint32_t in_flight = tx_cnt - peer_fwd_cnt;  // wraps like the counters do
    return in_flight >= peer_buf_alloc ? 0 : peer_buf_alloc - in_flight;
}

bool Connection::has_control_packet() const {
    return send_request || send_response || send_shutdown || send_rst || send_credit_update ||
           send_credit_request;
}

bool Connection::can_send_data() const {
    return state == ConnectionState::Established && host_readable && !host_eof && !guest_shut_rcv &&
           peer_credit() > 0;
}

Result<std::optional<uint32_t>> Connection::read_connect_line() {
    char buf[kMaxConnectLine];
    while (connect_line.size() < kMaxConnectLine) {
        // Peek first so we consume exactly the line: bytes after '\n' belong to the stream.
        ssize_t n =
            retry_eintr([&] { return recv(fd.get(), buf, kMaxConnectLine - connect_line.size(), MSG_PEEK); });
        if (n < 0 && errno == EAGAIN) return std::nullopt;
        if (n < 0) return errno_error("reading CONNECT line");
        if (n == 0) return make_error("host client closed before CONNECT");
        std::string_view peeked(buf, static_cast<size_t>(n));
        size_t newline = peeked.find('\n');
        size_t take = newline == std::string_view::npos ? peeked.size() : newline + 1;
        if (recv(fd.get(), buf, take, 0) != static_cast<ssize_t>(take))
            return errno_error("reading CONNECT line");
        connect_line.append(buf, take);
        if (newline == std::string_view::npos) continue;
        auto port = parse_connect_line(std::string_view(connect_line).substr(0, connect_line.size() - 1));
        if (!port) return make_error("bad CONNECT line");
        return *port;
    }
    return make_error("CONNECT line too long");
}

IoStatus Connection::take_from_guest(const GuestMemory& memory, const virtio::Chain& chain, size_t offset,
                                     uint32_t len) {
    rx_cnt += len;
    size_t written = 0;
    if (to_host.empty() && host_preamble.empty() && host_writable) {
        // Nothing queued ahead of it: hand the guest's buffers straight to the socket.
        auto iovs = virtio::chain_iovecs(memory, chain, false, offset, len);
        msghdr msg{};
        msg.msg_iov = iovs.data();
        msg.msg_iovlen = iovs.size();
        ssize_t n = retry_eintr([&] { return sendmsg(fd.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT); });
        if (n < 0 && errno != EAGAIN) return IoStatus::Failed;
        if (n < 0) host_writable = false;
        written = n < 0 ? 0 : static_cast<size_t>(n);
        fwd_cnt += static_cast<uint32_t>(written);
    }
    if (written == len) return IoStatus::Ok;
    auto rest = to_host.grow(len - written);
    virtio::read_from_chain(memory, chain, offset + written, rest);
    return IoStatus::WouldBlock;
}

IoStatus Connection::flush_to_host() {
    if (!host_writable) return IoStatus::WouldBlock;
    // Writes as much of `bytes` as the socket takes; nullopt when it is full (host_writable drops) or broken.
    auto send_some = [&](std::span<const uint8_t> bytes) -> std::optional<size_t> {
        ssize_t n = retry_eintr(
            [&] { return send(fd.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT); });
        if (n < 0 && errno == EAGAIN) host_writable = false;
        if (n < 0) return std::nullopt;
        return static_cast<size_t>(n);
    };
    while (!host_preamble.empty()) {
        auto n = send_some({reinterpret_cast<const uint8_t*>(host_preamble.data()), host_preamble.size()});
        if (!n) return host_writable ? IoStatus::Failed : IoStatus::WouldBlock;
        host_preamble.erase(0, *n);
    }
    while (!to_host.empty()) {
        auto n = send_some(to_host.front());
        if (!n) return host_writable ? IoStatus::Failed : IoStatus::WouldBlock;
        to_host.consume(*n);
        fwd_cnt += static_cast<uint32_t>(*n);
    }
    if (guest_shut_send && !host_write_shut) {
        shutdown(fd.get(), SHUT_WR);
        host_write_shut = true;
    }
    return IoStatus::Ok;
}

Connection::ReadResult Connection::read_from_host(const GuestMemory& memory, const virtio::Chain& chain,
                                                  size_t offset, size_t max_len) {
    auto iovs = virtio::chain_iovecs(memory, chain, true, offset, max_len);
    if (iovs.empty()) return {IoStatus::WouldBlock, 0};
    ssize_t n = retry_eintr([&] { return readv(fd.get(), iovs.data(), static_cast<int>(iovs.size())); });
    if (n < 0 && errno == EAGAIN) {
        host_readable = false;  // wait for the next EPOLLIN edge
        return {IoStatus::WouldBlock, 0};
    }
    if (n < 0) return {IoStatus::Failed, 0};
    return {IoStatus::Ok, static_cast<size_t>(n)};
}

}  // namespace sandlot::vmm::vsock
