// virtio-vsock end to end without KVM: a fake guest driver (descriptor rings in a GuestMemory, registers via
// the MMIO transport) on one side, real Unix sockets on the other, and the event loop pumped by the test.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <deque>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <thread>

#include "tests/unit/virtio_test_driver.h"
#include "vmm/devices/irq_line.h"
#include "vmm/devices/virtio/mmio_transport.h"
#include "vmm/devices/vsock/host_socket.h"
#include "vmm/devices/vsock/packet.h"
#include "vmm/devices/vsock/vsock_device.h"
#include "vmm/event_loop.h"

extern char** environ;

namespace sandlot::vmm::vsock {
namespace {

using virtio::test::BufferSpec;
using virtio::test::DriverQueue;
using virtio::test::irq_count;
using virtio::test::MmioDriver;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kRam = 16ull << 20;
constexpr uint64_t kCid = 3;
constexpr uint16_t kRxSize = 128, kTxSize = 64, kEventSize = 8;
constexpr uint32_t kRxSlot = 4096;     // Linux's rx buffers are 4 KiB
constexpr uint32_t kTxSlot = 0x11000;  // room for a 64 KiB payload and then some

struct Packet {
    PacketHeader hdr;
    std::vector<uint8_t> payload;
    Op op() const { return static_cast<Op>(hdr.op); }
};

std::vector<uint8_t> to_bytes(std::string_view s) {
    return {s.begin(), s.end()};
}
std::string to_string(const std::vector<uint8_t>& v) {
    return {v.begin(), v.end()};
}

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
    std::mt19937 gen(seed);
    std::vector<uint8_t> v(n);
    for (auto& b : v)
        b = static_cast<uint8_t>(gen());
    return v;
}

void set_nonblocking(int fd) {
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

sockaddr_un address_of(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    return addr;
}

// A host program connecting to the device's socket.
UniqueFd connect_client(const std::string& path) {
    UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    auto addr = address_of(path);
    if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) return UniqueFd();
    set_nonblocking(fd.get());
    return fd;
}

// A host program listening for guest-initiated connections.
UniqueFd listen_at(const std::string& path) {
    UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    auto addr = address_of(path);
    EXPECT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(listen(fd.get(), 16), 0);
    return fd;
}

void write_all(int fd, std::string_view data) {
    while (!data.empty()) {
        ssize_t n = write(fd, data.data(), data.size());
        if (n < 0 && errno == EAGAIN) {
            pollfd p{fd, POLLOUT, 0};
            poll(&p, 1, 100);
            continue;
        }
        ASSERT_GT(n, 0) << strerror(errno);
        data.remove_prefix(static_cast<size_t>(n));
    }
}

// Whatever is readable right now; *eof set when the peer closed.
std::string read_available(int fd, bool* eof = nullptr) {
    std::string out;
    char buf[65536];
    while (true) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0) {
            out.append(buf, static_cast<size_t>(n));
            continue;
        }
        if (n == 0 && eof) *eof = true;
        break;
    }
    return out;
}

class VsockTest : public ::testing::Test {
  protected:
    void SetUp() override {
        char tmpl[] = "/tmp/sandlot-vsock-XXXXXX";
        ASSERT_NE(mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        uds_ = dir_ + "/vsock.sock";
        auto mem = GuestMemory::create(kRam);
        ASSERT_TRUE(mem);
        memory_.emplace(std::move(*mem));
        auto loop = EventLoop::create();
        ASSERT_TRUE(loop);
        loop_.emplace(std::move(*loop));
        auto device = VsockDevice::create(kCid, uds_, *loop_);
        ASSERT_TRUE(device) << device.error().to_string();
        device_ = *device;
        auto irq = IrqLine::create(5);
        ASSERT_TRUE(irq);
        irq_fd_ = irq->fd();
        transport_ = std::make_shared<virtio::MmioTransport>(*memory_, device_, std::move(*irq));
        driver_.emplace(*transport_);
    }

    void TearDown() override {
        driver_.reset();
        transport_.reset();
        device_.reset();
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }

    // What the guest's virtio_vsock driver does at probe: features, three queues, rx and event buffers.
    void start_driver(bool split_rx = true) {
        split_rx_ = split_rx;
        rx_.emplace(*memory_, kRxSize, 0x10000, 0x100000, kRxSlot);
        tx_.emplace(*memory_, kTxSize, 0x20000, 0x200000, kTxSlot);
        ev_.emplace(*memory_, kEventSize, 0x30000, 0x700000, 4096);
        ASSERT_TRUE(driver_->negotiate(virtio::kFeatureVersion1));
        driver_->write32(virtio::kQueueSelOffset, 0);
        EXPECT_EQ(driver_->read32(virtio::kQueueNumMaxOffset), kQueueSize);
        driver_->setup_queue(kRxQueue, rx_->config());
        driver_->setup_queue(kTxQueue, tx_->config());
        driver_->setup_queue(kEventQueue, ev_->config());
        refill_rx();
        for (int i = 0; i < 4; ++i)
            ev_->add_chain({{.len = 8, .writable = true}});
        driver_->driver_ok();
        ASSERT_EQ(transport_->status() & virtio::kStatusNeedsReset, 0u);
        ASSERT_NE(transport_->status() & virtio::kStatusDriverOk, 0u);
    }

    // Linux 6.1 posts a 44-byte header buffer plus a 4 KiB data buffer; newer kernels one buffer for both.
    size_t refill_rx() {
        size_t added = 0;
        while (rx_->free_descriptors() >= (split_rx_ ? 2u : 1u) && rx_buffers_wanted_ > 0) {
            if (split_rx_) {
                rx_->add_chain({{.len = kHeaderSize, .writable = true}, {.len = kRxSlot, .writable = true}});
            } else {
                rx_->add_chain({{.len = kRxSlot, .writable = true}});
            }
            ++added;
        }
        return added;
    }

    // Takes every used rx buffer into inbox_, gives the buffers back and kicks the device, as the guest does.
    void collect() {
        bool got = true;
        while (got) {
            got = false;
            while (auto used = rx_->pop_used()) {
                got = true;
                std::vector<uint8_t> bytes;
                for (auto [gpa, len] : used->buffers) {
                    std::vector<uint8_t> part(len);
                    ASSERT_TRUE(memory_->read(gpa, part));
                    bytes.insert(bytes.end(), part.begin(), part.end());
                }
                ASSERT_GE(used->len, kHeaderSize);
                ASSERT_LE(used->len, bytes.size());
                Packet p;
                p.hdr = decode_header(std::span<const uint8_t, kHeaderSize>(bytes.data(), kHeaderSize));
                p.payload.assign(bytes.begin() + kHeaderSize, bytes.begin() + used->len);
                ASSERT_EQ(p.hdr.len, p.payload.size());
                ASSERT_EQ(p.hdr.src_cid, kHostCid);
                ASSERT_EQ(p.hdr.dst_cid, kCid);
                ASSERT_EQ(p.hdr.type, kTypeStream);
                if (p.op() == Op::Rw) {
                    EXPECT_GT(p.hdr.len, 0u);
                }
                inbox_.push_back(std::move(p));
            }
            if (refill_rx() > 0) transport_->notify_queue(kRxQueue);
        }
    }

    void pump(int timeout_ms = 0) {
        ASSERT_TRUE(loop_->run_once(timeout_ms));
        collect();
    }

    // Pumps until `done` holds or the deadline passes.
    bool pump_until(const std::function<bool()>& done, int timeout_ms = 3000) {
        auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
        while (!done()) {
            if (Clock::now() > deadline) return false;
            pump(5);
        }
        return true;
    }

    // Waits for the first packet with `op` (other packets stay in the inbox).
    std::optional<Packet> expect_packet(Op op, int timeout_ms = 3000) {
        std::optional<Packet> found;
        pump_until(
            [&] {
                for (auto it = inbox_.begin(); it != inbox_.end(); ++it) {
                    if (it->op() == op) {
                        found = std::move(*it);
                        inbox_.erase(it);
                        return true;
                    }
                }
                return false;
            },
            timeout_ms);
        EXPECT_TRUE(found) << "no packet with op " << static_cast<int>(op);
        return found;
    }

    size_t count_in_inbox(Op op) {
        return std::count_if(inbox_.begin(), inbox_.end(), [&](const Packet& p) { return p.op() == op; });
    }

    PacketHeader from_guest(Op op, uint32_t guest_port, uint32_t host_port, uint32_t len = 0) {
        PacketHeader hdr;
        hdr.src_cid = kCid;
        hdr.dst_cid = kHostCid;
        hdr.src_port = guest_port;
        hdr.dst_port = host_port;
        hdr.len = len;
        hdr.type = kTypeStream;
        hdr.op = static_cast<uint16_t>(op);
        hdr.buf_alloc = guest_buf_alloc_;
        hdr.fwd_cnt = guest_fwd_cnt_;
        return hdr;
    }

    // Puts one packet on the tx queue and kicks the device. Header and payload in separate descriptors
    // (Linux 6.1) unless `split` is false.
    void send(const PacketHeader& hdr, std::span<const uint8_t> payload = {}, bool split = true) {
        auto h = encode_header(hdr);
        std::vector<BufferSpec> bufs;
        if (split) {
            bufs.push_back({.len = kHeaderSize, .data = {h.begin(), h.end()}});
            if (!payload.empty()) {
                bufs.push_back(
                    {.len = static_cast<uint32_t>(payload.size()), .data = {payload.begin(), payload.end()}});
            }
        } else {
            std::vector<uint8_t> all(h.begin(), h.end());
            all.insert(all.end(), payload.begin(), payload.end());
            bufs.push_back({.len = static_cast<uint32_t>(all.size()), .data = all});
        }
        send_raw(bufs);
    }

    void send_raw(const std::vector<BufferSpec>& bufs) {
        auto head = tx_->add_chain(bufs);
        ASSERT_TRUE(head) << "tx queue full";
        transport_->notify_queue(kTxQueue);
        size_t used = 0;
        while (tx_->pop_used())
            ++used;
        EXPECT_EQ(used, 1u) << "the device consumes tx packets as soon as it is kicked";
        collect();
    }

    void send_data(uint32_t guest_port, uint32_t host_port, std::string_view data) {
        send(from_guest(Op::Rw, guest_port, host_port, static_cast<uint32_t>(data.size())), to_bytes(data));
    }

    std::string read_from(int fd, size_t want, int timeout_ms = 3000) {
        std::string got;
        pump_until(
            [&] {
                got += read_available(fd);
                return got.size() >= want;
            },
            timeout_ms);
        return got;
    }

    bool wait_for_eof(int fd, int timeout_ms = 3000) {
        bool eof = false;
        pump_until(
            [&] {
                read_available(fd, &eof);
                return eof;
            },
            timeout_ms);
        return eof;
    }

    struct HostConnection {
        UniqueFd client;
        uint32_t host_port = 0;
    };

    // A host program connects through the device's socket to guest port `guest_port`, which accepts.
    HostConnection connect_from_host(uint32_t guest_port, std::string_view extra = "") {
        HostConnection c;
        c.client = connect_client(uds_);
        EXPECT_TRUE(c.client.valid());
        write_all(c.client.get(), "CONNECT " + std::to_string(guest_port) + "\n" + std::string(extra));
        auto req = expect_packet(Op::Request);
        if (!req) return c;
        EXPECT_EQ(req->hdr.dst_port, guest_port);
        EXPECT_GE(req->hdr.src_port, kFirstLocalPort);
        EXPECT_EQ(req->hdr.buf_alloc, kBufAlloc);
        c.host_port = req->hdr.src_port;
        send(from_guest(Op::Response, guest_port, c.host_port));
        std::string expected = "OK " + std::to_string(c.host_port) + "\n";
        EXPECT_EQ(read_from(c.client.get(), expected.size()), expected);
        return c;
    }

    std::string dir_, uds_;
    std::optional<GuestMemory> memory_;
    std::optional<EventLoop> loop_;
    std::shared_ptr<VsockDevice> device_;
    std::shared_ptr<virtio::MmioTransport> transport_;
    std::optional<MmioDriver> driver_;
    std::optional<DriverQueue> rx_, tx_, ev_;
    int irq_fd_ = -1;
    bool split_rx_ = true;
    size_t rx_buffers_wanted_ = SIZE_MAX;
    std::deque<Packet> inbox_;
    uint32_t guest_buf_alloc_ = kBufAlloc;
    uint32_t guest_fwd_cnt_ = 0;
};

TEST_F(VsockTest, ConfigSpaceHoldsTheGuestCid) {
    EXPECT_EQ(driver_->read32(virtio::kDeviceIdOffset), 19u);
    EXPECT_EQ(driver_->read32(virtio::kConfigOffset), kCid);
    EXPECT_EQ(driver_->read32(virtio::kConfigOffset + 4), 0u);
    EXPECT_EQ(transport_->num_queues(), 3);
}

TEST_F(VsockTest, HostConnectHandshakeAndDataBothWays) {
    start_driver();
    irq_count(irq_fd_);
    auto c = connect_from_host(1234);
    EXPECT_GT(irq_count(irq_fd_), 0u);  // the REQUEST came with an interrupt

    write_all(c.client.get(), "hello guest");
    auto rw = expect_packet(Op::Rw);
    ASSERT_TRUE(rw);
    EXPECT_EQ(to_string(rw->payload), "hello guest");
    EXPECT_EQ(rw->hdr.src_port, c.host_port);
    EXPECT_EQ(rw->hdr.dst_port, 1234u);

    send_data(1234, c.host_port, "hello host");
    EXPECT_EQ(read_from(c.client.get(), 10), "hello host");
    EXPECT_EQ(device_->connection_count(), 1u);
    EXPECT_EQ(ev_->used_idx(), 0);  // the event queue is never touched
}

TEST_F(VsockTest, SingleBufferRxAndTxLayoutsWork) {
    start_driver(/*split_rx=*/false);
    auto c = connect_from_host(77);
    write_all(c.client.get(), "ping");
    auto rw = expect_packet(Op::Rw);
    ASSERT_TRUE(rw);
    EXPECT_EQ(to_string(rw->payload), "ping");
    send(from_guest(Op::Rw, 77, c.host_port, 4), to_bytes("pong"), /*split=*/false);
    EXPECT_EQ(read_from(c.client.get(), 4), "pong");
}

TEST_F(VsockTest, HostClientsMayConnectBeforeTheDriverIsUp) {
    auto client = connect_client(uds_);
    write_all(client.get(), "CONNECT 9\n");
    for (int i = 0; i < 5; ++i)
        ASSERT_TRUE(loop_->run_once(5));
    start_driver();
    auto req = expect_packet(Op::Request);
    ASSERT_TRUE(req);
    EXPECT_EQ(req->hdr.dst_port, 9u);
}

TEST_F(VsockTest, BytesAfterTheConnectLineAreStreamData) {
    start_driver();
    auto c = connect_from_host(1234, "early bytes");
    auto rw = expect_packet(Op::Rw);
    ASSERT_TRUE(rw);
    EXPECT_EQ(to_string(rw->payload), "early bytes");
}

TEST_F(VsockTest, GuestRstClosesTheHostClient) {
    start_driver();
    auto client = connect_client(uds_);
    write_all(client.get(), "CONNECT 4321\n");
    auto req = expect_packet(Op::Request);
    ASSERT_TRUE(req);
    send(from_guest(Op::Rst, 4321, req->hdr.src_port));  // nobody listens on 4321 in the guest
    EXPECT_TRUE(wait_for_eof(client.get()));
    EXPECT_EQ(device_->connection_count(), 0u);
}

TEST_F(VsockTest, BadConnectLinesCloseTheClient) {
    start_driver();
    for (std::string line :
         std::vector<std::string>{"HELLO\n", "CONNECT\n", "CONNECT abc\n", "CONNECT 99999999999\n",
                                  "CONNECT -1\n", "CONNECT 12 \n", std::string(kMaxConnectLine + 8, 'C')}) {
        auto client = connect_client(uds_);
        write_all(client.get(), line);
        EXPECT_TRUE(wait_for_eof(client.get())) << line;
    }
    // And a client that goes away mid-line.
    {
        auto client = connect_client(uds_);
        write_all(client.get(), "CONN");
        pump(5);
    }
    EXPECT_TRUE(pump_until([&] { return device_->connection_count() == 0; }));
    EXPECT_EQ(count_in_inbox(Op::Request), 0u);
}

TEST_F(VsockTest, ConnectLineParsing) {
    EXPECT_EQ(parse_connect_line("CONNECT 52"), 52u);
    EXPECT_EQ(parse_connect_line("CONNECT 52\r"), 52u);
    EXPECT_EQ(parse_connect_line("CONNECT 4294967295"), 4294967295u);
    EXPECT_FALSE(parse_connect_line("CONNECT 4294967296"));
    EXPECT_FALSE(parse_connect_line("CONNECT +5"));
    EXPECT_FALSE(parse_connect_line("connect 5"));
    EXPECT_FALSE(parse_connect_line("CONNECT  5"));
    EXPECT_FALSE(parse_connect_line("CONNECT 5x"));
}

TEST_F(VsockTest, HostPortsAreDistinct) {
    start_driver();
    auto a = connect_from_host(1);
    auto b = connect_from_host(1);
    EXPECT_NE(a.host_port, b.host_port);
    EXPECT_EQ(device_->connection_count(), 2u);
}

TEST_F(VsockTest, GuestInitiatedConnection) {
    start_driver();
    auto listener = listen_at(uds_ + "_5000");
    send(from_guest(Op::Request, 40000, 5000));
    auto resp = expect_packet(Op::Response);
    ASSERT_TRUE(resp);
    EXPECT_EQ(resp->hdr.src_port, 5000u);
    EXPECT_EQ(resp->hdr.dst_port, 40000u);
    UniqueFd server(accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    ASSERT_TRUE(server.valid());

    send_data(40000, 5000, "from the guest");
    EXPECT_EQ(read_from(server.get(), 14), "from the guest");
    write_all(server.get(), "from the host");
    auto rw = expect_packet(Op::Rw);
    ASSERT_TRUE(rw);
    EXPECT_EQ(to_string(rw->payload), "from the host");

    // Guest SHUTDOWN(SEND): the host reads EOF once the data is through, and can still answer.
    auto shutdown_hdr = from_guest(Op::Shutdown, 40000, 5000);
    shutdown_hdr.flags = kShutdownSend;
    send(shutdown_hdr);
    EXPECT_TRUE(wait_for_eof(server.get()));
    write_all(server.get(), "bye");
    rw = expect_packet(Op::Rw);
    ASSERT_TRUE(rw);
    EXPECT_EQ(to_string(rw->payload), "bye");

    // The host closes: SHUTDOWN(both) to the guest, and the connection goes when the guest answers RST.
    server.reset();
    auto shut = expect_packet(Op::Shutdown);
    ASSERT_TRUE(shut);
    EXPECT_EQ(shut->hdr.flags, kShutdownBoth);
    EXPECT_EQ(device_->connection_count(), 1u);
    send(from_guest(Op::Rst, 40000, 5000));
    EXPECT_EQ(device_->connection_count(), 0u);
}

TEST_F(VsockTest, HostHalfCloseStillDeliversTheGuestsReply) {
    start_driver();
    auto c = connect_from_host(1234);
    write_all(c.client.get(), "question");
    auto rw = expect_packet(Op::Rw);
    ASSERT_TRUE(rw);
    EXPECT_EQ(to_string(rw->payload), "question");
    // The host is done sending but still listening: the guest is told SEND only.
    ASSERT_EQ(shutdown(c.client.get(), SHUT_WR), 0);
    auto shut = expect_packet(Op::Shutdown);
    ASSERT_TRUE(shut);
    EXPECT_EQ(shut->hdr.flags, kShutdownSend);
    send_data(1234, c.host_port, "answer");
    EXPECT_EQ(read_from(c.client.get(), 6), "answer");
    EXPECT_EQ(device_->connection_count(), 1u);
}

TEST_F(VsockTest, GuestShutdownRcvStopsHostToGuestData) {
    start_driver();
    auto c = connect_from_host(1234);
    auto shut = from_guest(Op::Shutdown, 1234, c.host_port);
    shut.flags = kShutdownRcv;
    send(shut);
    write_all(c.client.get(), "unwanted");
    for (int i = 0; i < 10; ++i)
        pump(2);
    EXPECT_EQ(count_in_inbox(Op::Rw), 0u);
    // The other direction still flows.
    send_data(1234, c.host_port, "still here");
    EXPECT_EQ(read_from(c.client.get(), 10), "still here");
}

TEST_F(VsockTest, GuestConnectToNobodyGetsRst) {
    start_driver();
    send(from_guest(Op::Request, 40001, 5001));
    auto rst = expect_packet(Op::Rst);
    ASSERT_TRUE(rst);
    EXPECT_EQ(rst->hdr.src_port, 5001u);
    EXPECT_EQ(rst->hdr.dst_port, 40001u);
    EXPECT_EQ(device_->connection_count(), 0u);
}

TEST_F(VsockTest, GuestFullShutdownGetsRstAfterDataReachesTheHost) {
    start_driver();
    auto c = connect_from_host(1234);
    send_data(1234, c.host_port, "last words");
    auto shut = from_guest(Op::Shutdown, 1234, c.host_port);
    shut.flags = kShutdownBoth;
    send(shut);
    auto rst = expect_packet(Op::Rst);
    ASSERT_TRUE(rst);
    EXPECT_EQ(read_from(c.client.get(), 10), "last words");
    EXPECT_TRUE(wait_for_eof(c.client.get()));
    EXPECT_EQ(device_->connection_count(), 0u);
}

TEST_F(VsockTest, DeviceStopsAtTheGuestsCreditAndResumesOnUpdate) {
    start_driver();
    guest_buf_alloc_ = 8192;
    auto c = connect_from_host(1234);
    write_all(c.client.get(), std::string(100000, 'x'));
    auto received = [&] {
        size_t n = 0;
        for (auto& p : inbox_) {
            if (p.op() == Op::Rw) n += p.payload.size();
        }
        return n;
    };
    ASSERT_TRUE(pump_until([&] { return received() >= 8192; }));
    for (int i = 0; i < 20; ++i)
        pump(5);
    EXPECT_EQ(received(), 8192u);
    EXPECT_EQ(count_in_inbox(Op::CreditRequest), 1u);  // asked once, not in a loop

    guest_fwd_cnt_ = 8192;  // the guest application read everything
    send(from_guest(Op::CreditUpdate, 1234, c.host_port));
    ASSERT_TRUE(pump_until([&] { return received() >= 16384; }));
    for (int i = 0; i < 20; ++i)
        pump(5);
    EXPECT_EQ(received(), 16384u);
}

TEST_F(VsockTest, DeviceAnswersCreditRequest) {
    start_driver();
    auto c = connect_from_host(1234);
    send_data(1234, c.host_port, "abc");
    EXPECT_EQ(read_from(c.client.get(), 3), "abc");
    send(from_guest(Op::CreditRequest, 1234, c.host_port));
    auto update = expect_packet(Op::CreditUpdate);
    ASSERT_TRUE(update);
    EXPECT_EQ(update->hdr.buf_alloc, kBufAlloc);
    EXPECT_EQ(update->hdr.fwd_cnt, 3u);
}

TEST_F(VsockTest, GuestOverrunningOurCreditIsReset) {
    start_driver();
    auto c = connect_from_host(1234);
    // The host never reads: the socket fills, then our buffer, then the guest is over its credit.
    std::vector<uint8_t> chunk(kMaxPayload, 'z');
    size_t sent = 0;
    for (int i = 0; i < 64 && count_in_inbox(Op::Rst) == 0; ++i) {
        send(from_guest(Op::Rw, 1234, c.host_port, kMaxPayload), chunk);
        sent += chunk.size();
    }
    ASSERT_EQ(count_in_inbox(Op::Rst), 1u);
    EXPECT_GT(sent, kBufAlloc);  // not before the guest actually exceeded the credit
    EXPECT_EQ(device_->connection_count(), 0u);
    // Later packets for the dead connection get a plain RST.
    send_data(1234, c.host_port, "more");
    EXPECT_EQ(count_in_inbox(Op::Rst), 2u);
}

TEST_F(VsockTest, CreditUpdatesFlowWhileTheGuestSends) {
    start_driver();
    auto c = connect_from_host(1234);
    std::vector<uint8_t> chunk(kMaxPayload, 'q');
    std::string got;
    for (int i = 0; i < 4; ++i) {
        send(from_guest(Op::Rw, 1234, c.host_port, kMaxPayload), chunk);
        got += read_from(c.client.get(), (i + 1) * chunk.size() - got.size());
    }
    ASSERT_EQ(got.size(), 4 * chunk.size());
    // 256 KiB forwarded: at least one update, telling the guest what reached the socket.
    auto update = expect_packet(Op::CreditUpdate);
    ASSERT_TRUE(update);
    EXPECT_GE(update->hdr.fwd_cnt, kBufAlloc / 4);
}

TEST_F(VsockTest, LargeTransferHostToGuestIsByteExact) {
    start_driver();
    guest_buf_alloc_ = 128 * 1024;
    auto c = connect_from_host(1234);
    const auto data = random_bytes(6 << 20, 1);
    std::vector<uint8_t> received;
    size_t written = 0;
    uint32_t advertised_fwd = 0;
    auto deadline = Clock::now() + std::chrono::seconds(60);
    while (received.size() < data.size() && Clock::now() < deadline) {
        if (written < data.size()) {
            ssize_t n = write(c.client.get(), data.data() + written,
                              std::min<size_t>(data.size() - written, 1 << 16));
            if (n > 0) written += static_cast<size_t>(n);
        }
        pump(1);
        bool need_update = false;
        while (!inbox_.empty()) {
            Packet p = std::move(inbox_.front());
            inbox_.pop_front();
            if (p.op() == Op::CreditRequest) need_update = true;
            if (p.op() != Op::Rw) continue;
            received.insert(received.end(), p.payload.begin(), p.payload.end());
            // Never more in flight than the guest's buffer.
            ASSERT_LE(received.size() - advertised_fwd, guest_buf_alloc_);
        }
        // The guest application consumes at once; the driver updates credit like Linux does.
        guest_fwd_cnt_ = static_cast<uint32_t>(received.size());
        if (need_update || guest_fwd_cnt_ - advertised_fwd >= guest_buf_alloc_ / 2) {
            advertised_fwd = guest_fwd_cnt_;
            send(from_guest(Op::CreditUpdate, 1234, c.host_port));
        }
    }
    ASSERT_EQ(received.size(), data.size());
    EXPECT_TRUE(received == data);
}

TEST_F(VsockTest, LargeTransferGuestToHostIsByteExact) {
    start_driver();
    auto c = connect_from_host(1234);
    const auto data = random_bytes(6 << 20, 2);
    std::string received;
    size_t sent = 0;
    uint32_t peer_buf_alloc = kBufAlloc, peer_fwd_cnt = 0;
    auto deadline = Clock::now() + std::chrono::seconds(60);
    bool split = true;
    while (received.size() < data.size() && Clock::now() < deadline) {
        uint32_t credit = peer_buf_alloc - static_cast<uint32_t>(sent - peer_fwd_cnt);
        size_t len = std::min<size_t>({credit, kMaxPayload, data.size() - sent});
        if (len > 0) {
            send(from_guest(Op::Rw, 1234, c.host_port, static_cast<uint32_t>(len)),
                 std::span(data).subspan(sent, len), split);
            split = !split;  // both descriptor layouts
            sent += len;
        }
        received += read_available(c.client.get());
        pump(len > 0 ? 0 : 1);
        while (!inbox_.empty()) {
            Packet p = std::move(inbox_.front());
            inbox_.pop_front();
            ASSERT_NE(p.op(), Op::Rst);
            peer_buf_alloc = p.hdr.buf_alloc;
            peer_fwd_cnt = p.hdr.fwd_cnt;
        }
    }
    ASSERT_EQ(received.size(), data.size());
    EXPECT_TRUE(to_bytes(received) == data);
}

// vCPU threads read and write registers while the event loop moves data: one mutex serializes them.
TEST_F(VsockTest, RegisterAccessFromOtherThreadsDuringTraffic) {
    start_driver();
    auto c = connect_from_host(1234);
    std::atomic<bool> stop = false;
    std::vector<std::thread> vcpus;
    for (int t = 0; t < 2; ++t) {
        vcpus.emplace_back([&] {
            MmioDriver vcpu(*transport_);
            while (!stop) {
                uint32_t status = vcpu.read32(virtio::kInterruptStatusOffset);
                if (status) vcpu.write32(virtio::kInterruptAckOffset, status);
                EXPECT_EQ(vcpu.read32(virtio::kConfigOffset), kCid);
                EXPECT_EQ(vcpu.read32(virtio::kStatusOffset) & virtio::kStatusNeedsReset, 0u);
            }
        });
    }
    size_t received = 0;
    const size_t total = 1 << 20;
    std::string chunk(4096, 'r');
    size_t written = 0;
    auto deadline = Clock::now() + std::chrono::seconds(30);
    while (received < total && Clock::now() < deadline) {
        if (written < total) {
            ssize_t n = write(c.client.get(), chunk.data(), chunk.size());
            if (n > 0) written += static_cast<size_t>(n);
        }
        pump(1);
        for (auto& p : inbox_)
            received += p.op() == Op::Rw ? p.payload.size() : 0;
        inbox_.clear();
        guest_fwd_cnt_ = static_cast<uint32_t>(received);
        send(from_guest(Op::CreditUpdate, 1234, c.host_port));
    }
    stop = true;
    for (auto& t : vcpus)
        t.join();
    EXPECT_EQ(received, total);
}

TEST_F(VsockTest, NoRxBuffersMeansNoReadsUntilTheyReturn) {
    rx_buffers_wanted_ = 0;  // the guest posts no rx buffers at first
    start_driver();
    auto client = connect_client(uds_);
    write_all(client.get(), "CONNECT 1234\n");
    for (int i = 0; i < 10; ++i)
        pump(5);
    EXPECT_TRUE(inbox_.empty());
    rx_buffers_wanted_ = SIZE_MAX;
    collect();  // posts buffers and kicks the rx queue
    EXPECT_TRUE(expect_packet(Op::Request));
}

TEST_F(VsockTest, MalformedPacketsAreDroppedOrReset) {
    start_driver();
    auto listener = listen_at(uds_ + "_6000");

    // Wrong source or destination CID: ignored entirely, nothing connects.
    auto spoofed = from_guest(Op::Request, 1, 6000);
    spoofed.src_cid = 7;
    send(spoofed);
    auto misrouted = from_guest(Op::Request, 1, 6000);
    misrouted.dst_cid = 5;
    send(misrouted);
    for (int i = 0; i < 5; ++i)
        pump(2);
    EXPECT_TRUE(inbox_.empty());
    EXPECT_FALSE(UniqueFd(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC)).valid());

    // A header cut short: dropped, but the buffer still comes back.
    send_raw({{.len = 20, .data = std::vector<uint8_t>(20, 0)}});

    // Unknown op, non-stream type, payload shorter than len, len over 64 KiB, data for no connection: RST.
    auto unknown = from_guest(Op::Request, 2, 6000);
    unknown.op = 99;
    send(unknown);
    auto dgram = from_guest(Op::Request, 3, 6000);
    dgram.type = 2;
    send(dgram);
    send(from_guest(Op::Rw, 4, 6000, 100), to_bytes("short"));
    std::vector<uint8_t> big(kMaxPayload + 1, 'b');
    send(from_guest(Op::Rw, 5, 6000, kMaxPayload + 1), big);
    send(from_guest(Op::Rw, 6, 6000, 3), to_bytes("abc"));
    send(from_guest(Op::Response, 7, 6000));
    for (int i = 0; i < 5; ++i)
        pump(2);
    EXPECT_EQ(count_in_inbox(Op::Rst), 6u);
    EXPECT_EQ(inbox_.size(), 6u);
    // An RST for nothing is not answered.
    send(from_guest(Op::Rst, 8, 6000));
    EXPECT_EQ(inbox_.size(), 6u);
    EXPECT_EQ(device_->connection_count(), 0u);
    EXPECT_EQ(transport_->status() & virtio::kStatusNeedsReset, 0u);

    // The device still works.
    inbox_.clear();
    auto c = connect_from_host(1234);
    send_data(1234, c.host_port, "fine");
    EXPECT_EQ(read_from(c.client.get(), 4), "fine");
}

TEST_F(VsockTest, MalformedPacketOnALiveConnectionResetsIt) {
    start_driver();
    auto c = connect_from_host(1234);
    auto bad = from_guest(Op::Rw, 1234, c.host_port, 500);
    send(bad, to_bytes("too short for 500"));
    auto rst = expect_packet(Op::Rst);
    ASSERT_TRUE(rst);
    EXPECT_EQ(rst->hdr.dst_port, 1234u);
    EXPECT_TRUE(wait_for_eof(c.client.get()));
    EXPECT_EQ(device_->connection_count(), 0u);
}

TEST_F(VsockTest, StrayRstsAreBounded) {
    rx_buffers_wanted_ = 0;
    start_driver();
    for (uint32_t i = 0; i < 600; ++i)
        send(from_guest(Op::Request, 10000 + i, 7000));  // nobody listens
    rx_buffers_wanted_ = SIZE_MAX;
    collect();
    for (int i = 0; i < 5; ++i)
        pump(2);
    EXPECT_GT(count_in_inbox(Op::Rst), 0u);
    EXPECT_LE(count_in_inbox(Op::Rst), 256u);
}

TEST_F(VsockTest, ConnectionCountIsCapped) {
    rlimit fds{};
    getrlimit(RLIMIT_NOFILE, &fds);
    if (fds.rlim_max < 2 * kMaxConnections + 100) GTEST_SKIP() << "needs more file descriptors";
    fds.rlim_cur = std::max<rlim_t>(fds.rlim_cur, 2 * kMaxConnections + 100);
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &fds), 0);
    start_driver();
    std::string path = uds_ + "_8000";
    UniqueFd listener(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    auto addr = address_of(path);
    ASSERT_EQ(bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(listen(listener.get(), 4096), 0);
    size_t responses = 0, rsts = 0;
    for (uint32_t i = 0; i < kMaxConnections + 10; ++i) {
        send(from_guest(Op::Request, 20000 + i, 8000));
        for (auto& p : inbox_)
            (p.op() == Op::Response ? responses : rsts) += 1;
        inbox_.clear();
    }
    EXPECT_EQ(responses, kMaxConnections);
    EXPECT_EQ(rsts, 10u);
    EXPECT_EQ(device_->connection_count(), kMaxConnections);
    // A host client over the cap is turned away.
    auto client = connect_client(uds_);
    ASSERT_TRUE(client.valid());
    EXPECT_TRUE(wait_for_eof(client.get()));
    // Closing one makes room again.
    send(from_guest(Op::Rst, 20000, 8000));
    send(from_guest(Op::Request, 30000, 8000));
    EXPECT_TRUE(expect_packet(Op::Response));
}

TEST_F(VsockTest, BrokenRxQueueNeedsResetWithoutCrashing) {
    start_driver();
    auto client = connect_client(uds_);
    rx_->set_avail_idx(static_cast<uint16_t>(rx_->avail_idx() + 1000));
    write_all(client.get(), "CONNECT 1\n");
    for (int i = 0; i < 10; ++i)
        ASSERT_TRUE(loop_->run_once(5));
    EXPECT_NE(transport_->status() & virtio::kStatusNeedsReset, 0u);
    // Recovery: the driver resets and starts over; the host client that was waiting is still served.
    start_driver();
    EXPECT_TRUE(expect_packet(Op::Request));
}

TEST_F(VsockTest, DriverResetDropsConnections) {
    start_driver();
    auto c = connect_from_host(1234);
    driver_->write32(virtio::kStatusOffset, 0);
    EXPECT_TRUE(wait_for_eof(c.client.get()));
    EXPECT_EQ(device_->connection_count(), 0u);
    // Host data arriving now goes nowhere and breaks nothing; a new driver works.
    start_driver();
    auto again = connect_from_host(1234);
    send_data(1234, again.host_port, "again");
    EXPECT_EQ(read_from(again.client.get(), 5), "again");
}

TEST_F(VsockTest, BusySocketPathIsRefused) {
    auto second = VsockDevice::create(kCid, uds_, *loop_);
    ASSERT_FALSE(second);
    EXPECT_NE(second.error().message.find("vsock socket " + uds_ + " is in use"), std::string::npos)
        << second.error().to_string();
    // The first device still owns its socket.
    EXPECT_TRUE(connect_client(uds_).valid());
}

TEST_F(VsockTest, StaleSocketIsReplaced) {
    std::string path = dir_ + "/stale.sock";
    {
        UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        auto addr = address_of(path);
        ASSERT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    }  // closed without ever listening: connections are refused
    auto created = VsockDevice::create(kCid, path, *loop_);
    ASSERT_TRUE(created) << created.error().to_string();
    std::shared_ptr<VsockDevice> device = std::move(*created);
    EXPECT_TRUE(connect_client(path).valid());
    device.reset();
    EXPECT_FALSE(std::filesystem::exists(path));  // unlinked when the device goes
}

TEST_F(VsockTest, NonSocketPathIsRefused) {
    std::string path = dir_ + "/regular";
    { UniqueFd fd(open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600)); }
    auto device = VsockDevice::create(kCid, path, *loop_);
    ASSERT_FALSE(device);
    EXPECT_TRUE(std::filesystem::exists(path));  // left alone
}

TEST_F(VsockTest, BadCidIsRefused) {
    EXPECT_FALSE(VsockDevice::create(2, dir_ + "/a.sock", *loop_));
    EXPECT_FALSE(VsockDevice::create(0xffffffff, dir_ + "/b.sock", *loop_));
    EXPECT_FALSE(std::filesystem::exists(dir_ + "/a.sock"));
}

// A stock socat client speaks the handshake: "CONNECT <port>\n" on stdin, "OK <port>\n" on stdout.
TEST_F(VsockTest, SocatClientHandshake) {
    start_driver();
    int to_socat[2], from_socat[2];
    ASSERT_EQ(pipe2(to_socat, O_CLOEXEC), 0);
    ASSERT_EQ(pipe2(from_socat, O_CLOEXEC), 0);
    UniqueFd socat_in(to_socat[1]), socat_out(from_socat[0]);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, to_socat[0], 0);
    posix_spawn_file_actions_adddup2(&actions, from_socat[1], 1);
    std::string target = "UNIX-CONNECT:" + uds_;
    const char* argv[] = {"socat", "-", target.c_str(), nullptr};
    pid_t pid = -1;
    int rc = posix_spawnp(&pid, "socat", &actions, nullptr, const_cast<char**>(argv), environ);
    posix_spawn_file_actions_destroy(&actions);
    close(to_socat[0]);
    close(from_socat[1]);
    if (rc != 0) GTEST_SKIP() << "socat not available";
    set_nonblocking(socat_out.get());

    write_all(socat_in.get(), "CONNECT 2222\n");
    auto req = expect_packet(Op::Request, 10000);
    ASSERT_TRUE(req);
    EXPECT_EQ(req->hdr.dst_port, 2222u);
    send(from_guest(Op::Response, 2222, req->hdr.src_port));
    std::string expected = "OK " + std::to_string(req->hdr.src_port) + "\n";
    EXPECT_EQ(read_from(socat_out.get(), expected.size(), 10000), expected);

    send_data(2222, req->hdr.src_port, "hi socat\n");
    EXPECT_EQ(read_from(socat_out.get(), 9, 10000), "hi socat\n");
    write_all(socat_in.get(), "hi guest\n");
    auto rw = expect_packet(Op::Rw, 10000);
    ASSERT_TRUE(rw);
    EXPECT_EQ(to_string(rw->payload), "hi guest\n");

    // socat's stdin hits EOF: it shuts down its write side; the guest hears SHUTDOWN.
    socat_in.reset();
    EXPECT_TRUE(expect_packet(Op::Shutdown, 10000));
    kill(pid, SIGTERM);
    int status = 0;
    waitpid(pid, &status, 0);
}

}  // namespace
}  // namespace sandlot::vmm::vsock
