#include "vmm/devices/vsock/vsock_device.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>

#include "vmm/devices/vsock/host_socket.h"

namespace sandlot::vmm::vsock {

using State = ConnectionState;

Result<std::shared_ptr<VsockDevice>> VsockDevice::create(uint64_t guest_cid, std::string uds_path,
                                                         EventLoop& loop) {
    // CIDs 0-2 are reserved (hypervisor, local, host) and Linux keeps CIDs in 32 bits, ~0 meaning "any".
    if (guest_cid < 3 || guest_cid >= UINT32_MAX) return make_error("vsock guest CID must be in [3, 2^32-2]");
    auto listener = TRY(listen_unix(uds_path));
    std::shared_ptr<VsockDevice> device(new VsockDevice(guest_cid, std::move(uds_path), loop));
    device->listener_ = std::move(listener);  // from here on the destructor unlinks the path
    std::weak_ptr<VsockDevice> weak = device;
    TRY(loop.add(device->listener_.get(), EPOLLIN | EPOLLET, [weak](uint32_t) {
        if (auto self = weak.lock()) self->on_listener_ready();
    }));
    return device;
}

VsockDevice::~VsockDevice() {
    for (auto& [id, conn] : connections_)
        loop_->remove(conn.fd.get());
    if (listener_) {
        loop_->remove(listener_.get());
        unlink(uds_path_.c_str());
    }
}

size_t VsockDevice::connection_count() {
    std::lock_guard lock(mutex());
    return connections_.size();
}

// ---- virtio::Device ----

void VsockDevice::read_config(uint64_t offset, std::span<uint8_t> data) {
    // struct virtio_vsock_config { le64 guest_cid; }
    for (size_t i = 0; i < data.size(); ++i) {
        uint64_t byte = offset + i;
        data[i] = byte < 8 ? static_cast<uint8_t>(guest_cid_ >> (8 * byte)) : 0;
    }
}

Result<void> VsockDevice::activate(virtio::Activation activation) {
    if (activation.queues.size() != std::size(kQueueMaxSizes)) return make_error("vsock needs 3 queues");
    memory_ = &activation.memory;
    queues_ = activation.queues;
    signal_used_ = std::move(activation.signal_used);
    active_ = true;
    // Host clients that connected while the driver was down are still waiting to send their REQUEST.
    for (auto& [id, conn] : connections_)
        schedule(conn);
    process_tx();
    return {};
}

void VsockDevice::notify(uint16_t queue) {
    if (!active_) return;
    if (queue == kTxQueue) process_tx();
    if (queue == kRxQueue) fill_rx();  // new rx buffers: send what was waiting for them
    // The event queue only holds buffers for events we never send.
}

void VsockDevice::reset() {
    active_ = false;
    memory_ = nullptr;
    queues_ = {};
    signal_used_ = nullptr;
    stray_rsts_.clear();
    rx_list_.clear();
    // Connections the guest knew about are gone with it; host clients it has not heard of yet can wait for
    // the next driver.
    std::vector<uint64_t> doomed;
    for (auto& [id, conn] : connections_) {
        conn.in_rx_list = false;
        if (conn.state != State::ReadingConnect && conn.state != State::RequestPending) doomed.push_back(id);
    }
    for (uint64_t id : doomed)
        close_connection(id);
}

// ---- Event-loop handlers ----

void VsockDevice::on_listener_ready() {
    std::lock_guard lock(mutex());
    // Edge-triggered: accept everything queued. Running out of fds leaves the rest queued until the next
    // client arrives, rather than spinning.
    while (true) {
        UniqueFd fd(accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
        if (!fd && (errno == EINTR || errno == ECONNABORTED)) continue;
        if (!fd) break;
        if (connections_.size() >= kMaxConnections) continue;  // closing it is the refusal
        auto conn = add_connection(std::move(fd), State::ReadingConnect);
        if (conn) handle_connect_line(**conn);
    }
    fill_rx();
}

void VsockDevice::on_connection_event(uint64_t id, uint32_t events) {
    std::lock_guard lock(mutex());
    Connection* conn = find(id);
    if (!conn) return;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) conn->host_readable = true;
    if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) conn->host_writable = true;
    bool hung_up = events & (EPOLLHUP | EPOLLERR);
    switch (conn->state) {
        case State::ReadingConnect:
            handle_connect_line(*conn);
            break;
        case State::RequestPending:  // the guest has not heard of it: just forget it
            if (hung_up) close_connection(id);
            break;
        case State::AwaitingResponse:
            if (hung_up) begin_close(*conn, true);
            break;
        case State::Established:
        case State::Closing:
            flush(*conn);
            if (Connection* still = find(id)) schedule(*still);
            break;
    }
    fill_rx();
}

void VsockDevice::handle_connect_line(Connection& conn) {
    auto port = conn.read_connect_line();
    if (!port) {
        close_connection(conn.id);  // bad line or early close: the client just sees the socket close
        return;
    }
    if (!*port) return;  // incomplete; more to come
    conn.peer_port = **port;
    conn.local_port = allocate_local_port();
    by_ports_[{conn.local_port, conn.peer_port}] = conn.id;
    conn.state = State::RequestPending;
    conn.send_request = true;
    conn.host_readable = true;  // bytes after the line are stream data, already here without a new edge
    schedule(conn);
}

// ---- Guest -> device ----

void VsockDevice::process_tx() {
    virtio::Queue& tx = queues_[kTxQueue];
    bool used = false;
    while (auto chain = tx.pop()) {
        handle_guest_packet(*chain);
        tx.add_used(chain->head, 0);
        used = true;
    }
    if (used) signal_used_(kTxQueue);
    fill_rx();  // replies, credit updates and data the packets unblocked
}

void VsockDevice::handle_guest_packet(const virtio::Chain& chain) {
    std::array<uint8_t, kHeaderSize> bytes;
    if (virtio::read_from_chain(*memory_, chain, 0, bytes) < kHeaderSize) return;  // not even a header
    PacketHeader hdr = decode_header(bytes);
    // Only the guest itself may speak, and only to us; anything else has nobody to answer to.
    if (hdr.src_cid != guest_cid_ || hdr.dst_cid != kHostCid) return;

    auto op = static_cast<Op>(hdr.op);
    bool known_op =
        hdr.op >= static_cast<uint16_t>(Op::Request) && hdr.op <= static_cast<uint16_t>(Op::CreditRequest);
    bool well_formed = known_op && hdr.type == kTypeStream && hdr.len <= kMaxPayload &&
                       hdr.len <= chain.readable_len - kHeaderSize;
    Connection* conn = find_by_ports(hdr.dst_port, hdr.src_port);
    if (!well_formed) {
        if (conn && op == Op::Rst)
            begin_close(*conn, false);
        else if (conn)
            abort_connection(*conn);
        else if (op != Op::Rst)
            queue_stray_rst(hdr);
        return;
    }
    if (conn) {
        handle_connection_packet(*conn, hdr, chain);
    } else if (op == Op::Request) {
        connect_to_host(hdr);
    } else if (op != Op::Rst) {
        queue_stray_rst(hdr);  // no such connection
    }
}

void VsockDevice::handle_connection_packet(Connection& conn, const PacketHeader& hdr,
                                           const virtio::Chain& chain) {
    // Every packet carries the guest's current receive credit.
    conn.peer_buf_alloc = hdr.buf_alloc;
    conn.peer_fwd_cnt = hdr.fwd_cnt;
    if (conn.peer_credit() > 0) conn.credit_requested = false;
    uint64_t id = conn.id;
    switch (static_cast<Op>(hdr.op)) {
        case Op::Request:  // a second REQUEST for a live port pair
            abort_connection(conn);
            return;
        case Op::Response:
            if (conn.state != State::AwaitingResponse) {
                abort_connection(conn);
                return;
            }
            conn.state = State::Established;
            conn.host_preamble = "OK " + std::to_string(conn.local_port) + "\n";
            flush(conn);
            break;
        case Op::Rst:
            begin_close(conn, false);
            return;
        case Op::Shutdown:
            handle_guest_shutdown(conn, hdr.flags);
            break;
        case Op::Rw:
            handle_guest_rw(conn, hdr, chain);
            break;
        case Op::CreditUpdate:
            break;  // the credit was taken above
        case Op::CreditRequest:
            conn.send_credit_update = true;
            break;
        case Op::Invalid:
            break;  // filtered out by handle_guest_packet
    }
    if (Connection* still = find(id)) schedule(*still);
}

void VsockDevice::handle_guest_rw(Connection& conn, const PacketHeader& hdr, const virtio::Chain& chain) {
    if (conn.state != State::Established || conn.guest_shut_send) {
        abort_connection(conn);
        return;
    }
    // The guest may have at most kBufAlloc bytes with us that the socket has not taken yet.
    if (hdr.len > kBufAlloc - conn.buffered_from_guest()) {
        abort_connection(conn);
        return;
    }
    if (hdr.len == 0) return;
    if (conn.take_from_guest(*memory_, chain, kHeaderSize, hdr.len) == IoStatus::Failed) {
        abort_connection(conn);  // the host socket is gone
        return;
    }
    if (conn.credit_update_due()) conn.send_credit_update = true;
}

void VsockDevice::handle_guest_shutdown(Connection& conn, uint32_t flags) {
    if (conn.state != State::Established) {
        abort_connection(conn);
        return;
    }
    if ((flags & kShutdownBoth) == kShutdownBoth) {
        begin_close(conn, true);  // a full shutdown is a close: we answer RST and the host gets its bytes
        return;
    }
    if (flags & kShutdownRcv) conn.guest_shut_rcv = true;
    if (flags & kShutdownSend) {
        conn.guest_shut_send = true;
        flush(conn);  // shuts the socket's write side once the buffered bytes are out
    }
}

void VsockDevice::connect_to_host(const PacketHeader& request) {
    if (connections_.size() >= kMaxConnections) {
        queue_stray_rst(request);
        return;
    }
    auto fd = connect_unix(uds_path_ + "_" + std::to_string(request.dst_port));
    if (!fd) {
        queue_stray_rst(request);  // nobody listens on that port
        return;
    }
    auto added = add_connection(std::move(*fd), State::Established);
    if (!added) {
        queue_stray_rst(request);
        return;
    }
    Connection& conn = **added;
    conn.local_port = request.dst_port;
    conn.peer_port = request.src_port;
    conn.peer_buf_alloc = request.buf_alloc;
    conn.peer_fwd_cnt = request.fwd_cnt;
    conn.send_response = true;
    by_ports_[{conn.local_port, conn.peer_port}] = conn.id;
    schedule(conn);
}

// ---- Device -> guest ----

void VsockDevice::fill_rx() {
    if (!active_) return;
    virtio::Queue& rx = queues_[kRxQueue];
    bool used = false;
    while (!stray_rsts_.empty() || !rx_list_.empty()) {
        auto chain = rx.pop();
        if (!chain) break;
        if (chain->writable_len < kHeaderSize) {  // useless buffer: hand it back empty
            rx.add_used(chain->head, 0);
            used = true;
            continue;
        }
        size_t written = next_rx_packet(*chain);
        if (written == 0) {  // nothing could be sent after all (e.g. the socket had no data yet)
            rx.undo_pop();
            break;
        }
        rx.add_used(chain->head, static_cast<uint32_t>(written));
        used = true;
    }
    if (used) signal_used_(kRxQueue);
}

size_t VsockDevice::next_rx_packet(const virtio::Chain& chain) {
    if (!stray_rsts_.empty()) {
        PacketHeader rst = stray_rsts_.front();
        stray_rsts_.pop_front();
        return write_packet(chain, rst);
    }
    // Round robin: one packet per connection per turn.
    while (!rx_list_.empty()) {
        uint64_t id = rx_list_.front();
        rx_list_.pop_front();
        Connection* conn = find(id);
        if (!conn) continue;
        conn->in_rx_list = false;
        size_t written = write_connection_packet(*conn, chain);
        schedule(*conn);
        finish_if_done(*conn);  // may close it
        if (written > 0) return written;
        Connection* still = find(id);
        if (still && still->in_rx_list) return 0;  // it wants a bigger buffer than this one; try again later
    }
    return 0;
}

size_t VsockDevice::write_connection_packet(Connection& conn, const virtio::Chain& chain) {
    request_credit_if_starved(conn);
    if (conn.send_rst) {
        conn.send_rst = false;
        return write_packet(chain, header_for(conn, Op::Rst));
    }
    if (conn.send_request) {
        conn.send_request = false;
        conn.state = State::AwaitingResponse;
        return write_packet(chain, header_for(conn, Op::Request));
    }
    if (conn.send_response) {
        conn.send_response = false;
        return write_packet(chain, header_for(conn, Op::Response));
    }
    if (conn.send_shutdown) {
        conn.send_shutdown = false;
        PacketHeader hdr = header_for(conn, Op::Shutdown);
        hdr.flags = kShutdownBoth;
        return write_packet(chain, hdr);
    }
    if (conn.send_credit_request) {
        conn.send_credit_request = false;
        return write_packet(chain, header_for(conn, Op::CreditRequest));
    }
    if (conn.can_send_data()) {
        size_t room = std::min<size_t>({chain.writable_len - kHeaderSize, kMaxPayload, conn.peer_credit()});
        auto [status, bytes] = room == 0 ? Connection::ReadResult{IoStatus::WouldBlock, 0}
                                         : conn.read_from_host(*memory_, chain, kHeaderSize, room);
        if (status == IoStatus::Ok && bytes > 0) {
            conn.tx_cnt += static_cast<uint32_t>(bytes);
            PacketHeader hdr = header_for(conn, Op::Rw);
            hdr.len = static_cast<uint32_t>(bytes);
            return write_packet(chain, hdr);
        }
        if (status == IoStatus::Ok) {  // EOF: the host will send nothing more
            conn.host_eof = true;
            // A half-close (shutdown(SHUT_WR), as socat does at the end of its input) still wants the guest's
            // reply, so only our sending side ends; if the guest already ended its side, the stream is done.
            PacketHeader hdr = header_for(conn, Op::Shutdown);
            hdr.flags = conn.guest_shut_send ? kShutdownBoth : kShutdownSend;
            return write_packet(chain, hdr);
        }
        if (status == IoStatus::Failed) {  // the host socket broke: reset the stream right here
            conn.to_host.clear();
            mark_closing(conn, false);
            return write_packet(chain, header_for(conn, Op::Rst));
        }
        // WouldBlock: nothing to read after all; a credit update may still be owed.
    }
    if (conn.send_credit_update) return write_packet(chain, header_for(conn, Op::CreditUpdate));
    return 0;
}

PacketHeader VsockDevice::header_for(Connection& conn, Op op) {
    // Every header tells the guest our credit, so it makes any pending CREDIT_UPDATE redundant.
    conn.fwd_cnt_told = conn.fwd_cnt;
    conn.send_credit_update = false;
    return PacketHeader{
        .src_cid = kHostCid,
        .dst_cid = guest_cid_,
        .src_port = conn.local_port,
        .dst_port = conn.peer_port,
        .type = kTypeStream,
        .op = static_cast<uint16_t>(op),
        .buf_alloc = kBufAlloc,
        .fwd_cnt = conn.fwd_cnt,
    };
}

size_t VsockDevice::write_packet(const virtio::Chain& chain, const PacketHeader& hdr) {
    virtio::write_to_chain(*memory_, chain, 0, encode_header(hdr));
    return kHeaderSize + hdr.len;
}

void VsockDevice::queue_stray_rst(const PacketHeader& from_guest) {
    if (stray_rsts_.size() >= kMaxStrayRsts) return;  // a flood; the guest's connects time out instead
    stray_rsts_.push_back(PacketHeader{
        .src_cid = kHostCid,
        .dst_cid = guest_cid_,
        .src_port = from_guest.dst_port,
        .dst_port = from_guest.src_port,
        .type = kTypeStream,
        .op = static_cast<uint16_t>(Op::Rst),
    });
}

void VsockDevice::request_credit_if_starved(Connection& conn) {
    bool starved = conn.state == State::Established && conn.host_readable && !conn.host_eof &&
                   !conn.guest_shut_rcv && conn.peer_credit() == 0;
    if (starved && !conn.credit_requested) conn.send_credit_request = conn.credit_requested = true;
}

void VsockDevice::schedule(Connection& conn) {
    request_credit_if_starved(conn);
    if (conn.in_rx_list || (!conn.has_control_packet() && !conn.can_send_data())) return;
    conn.in_rx_list = true;
    rx_list_.push_back(conn.id);
}

// ---- Connection lifetime ----

Result<Connection*> VsockDevice::add_connection(UniqueFd fd, ConnectionState state) {
    uint64_t id = next_id_++;
    std::weak_ptr<VsockDevice> weak = weak_from_this();
    TRY(loop_->add(fd.get(), EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, [weak, id](uint32_t events) {
        if (auto self = weak.lock()) self->on_connection_event(id, events);
    }));
    Connection& conn = connections_[id];
    conn.id = id;
    conn.fd = std::move(fd);
    conn.state = state;
    return &conn;
}

Connection* VsockDevice::find(uint64_t id) {
    auto it = connections_.find(id);
    return it == connections_.end() ? nullptr : &it->second;
}

Connection* VsockDevice::find_by_ports(uint32_t local_port, uint32_t peer_port) {
    auto it = by_ports_.find({local_port, peer_port});
    return it == by_ports_.end() ? nullptr : find(it->second);
}

uint32_t VsockDevice::allocate_local_port() {
    // Fewer than kMaxConnections ports are taken, so this ends within that many tries.
    while (true) {
        uint32_t port = next_local_port_;
        next_local_port_ = port + 1 >= UINT32_MAX ? kFirstLocalPort : port + 1;  // ~0 is VMADDR_PORT_ANY
        auto it = by_ports_.lower_bound({port, 0});
        if (it == by_ports_.end() || it->first.first != port) return port;
    }
}

void VsockDevice::flush(Connection& conn) {
    uint32_t forwarded_before = conn.fwd_cnt;
    if (conn.flush_to_host() == IoStatus::Failed) {
        abort_connection(conn);  // the host side is gone; nothing will take these bytes
        return;
    }
    if (conn.state == State::Closing) {
        finish_if_done(conn);
        return;
    }
    if (conn.fwd_cnt != forwarded_before && conn.credit_update_due()) conn.send_credit_update = true;
}

void VsockDevice::begin_close(Connection& conn, bool send_rst) {
    mark_closing(conn, send_rst);
    schedule(conn);
    finish_if_done(conn);
}

void VsockDevice::abort_connection(Connection& conn) {
    conn.to_host.clear();
    conn.host_preamble.clear();
    begin_close(conn, true);
}

void VsockDevice::mark_closing(Connection& conn, bool send_rst) {
    if (conn.state == State::Closing) return;
    bool guest_knows = conn.state == State::AwaitingResponse || conn.state == State::Established;
    // Free the port pair at once: the guest may reuse it while we drain.
    auto it = by_ports_.find({conn.local_port, conn.peer_port});
    if (it != by_ports_.end() && it->second == conn.id) by_ports_.erase(it);
    conn.state = State::Closing;
    conn.send_request = conn.send_response = conn.send_shutdown = false;
    conn.send_credit_update = conn.send_credit_request = false;
    conn.send_rst = send_rst && guest_knows;
    conn.host_readable = false;
}

void VsockDevice::finish_if_done(Connection& conn) {
    if (conn.state != State::Closing || conn.send_rst) return;
    if (!conn.to_host.empty() || !conn.host_preamble.empty()) return;  // still draining to the host
    close_connection(conn.id);
}

void VsockDevice::close_connection(uint64_t id) {
    auto it = connections_.find(id);
    if (it == connections_.end()) return;
    Connection& conn = it->second;
    loop_->remove(conn.fd.get());
    auto ports = by_ports_.find({conn.local_port, conn.peer_port});
    if (ports != by_ports_.end() && ports->second == id) by_ports_.erase(ports);
    if (conn.in_rx_list) std::erase(rx_list_, id);
    connections_.erase(it);
}

}  // namespace sandlot::vmm::vsock
