// Wire format: golden bytes for the frame header and every message, round trips, and hostile input
// (truncation, oversized lengths, arbitrary chunking).
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <numeric>
#include <thread>

#include "proto/base/unique_fd.h"
#include "proto/codec.h"
#include "proto/frame.h"
#include "proto/messages.h"
#include "proto/version.h"
#include "tests/support/bytes.h"

namespace sandlot::proto {
namespace {

using test::ascii;
using test::Bytes;
using test::concat;

Hello sample_hello() {
    Hello h;
    h.protocol_major = 1;
    h.protocol_minor = 2;
    h.features = 0x0102030405060708;
    h.agent_version = "0.1.0";
    h.agent_start_ns = 0x10;
    h.agent_ready_ns = 0x2000;
    h.hello_ns = 0x300000;
    h.cpus_online = 4;
    h.mem_total_kib = 0x40000;
    h.kernel_release = "6.1.0";
    h.max_frame_payload = 0x100000;
    h.max_streams = 1024;
    h.stdin_window = 0x40000;
    return h;
}

// The HELLO above, byte by byte.
const Bytes kSampleHelloPayload = concat({
    {0x01, 0x00},                                      // protocol_major
    {0x02, 0x00},                                      // protocol_minor
    {0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01},  // features
    {0x05, 0x00, 0x00, 0x00},
    ascii("0.1.0"),                                    // agent_version
    {0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // agent_start_ns
    {0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // agent_ready_ns
    {0x00, 0x00, 0x30, 0x00, 0x00, 0x00, 0x00, 0x00},  // hello_ns
    {0x04, 0x00, 0x00, 0x00},                          // cpus_online
    {0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00},  // mem_total_kib
    {0x05, 0x00, 0x00, 0x00},
    ascii("6.1.0"),            // kernel_release
    {0x00, 0x00, 0x10, 0x00},  // max_frame_payload (1.1)
    {0x00, 0x04, 0x00, 0x00},  // max_streams (1.1)
    {0x00, 0x00, 0x04, 0x00},  // stdin_window (1.1)
});
// The fields a protocol 1.0 agent sends: everything before max_frame_payload.
constexpr size_t kHelloV10Size = 12 + 4 + 5 + 8 * 3 + 4 + 8 + 4 + 5;

Bytes encoded(const Frame& frame) {
    return encode_frame(frame).value();
}

TEST(ProtoFrame, HeaderIsLittleEndianInFieldOrder) {
    FrameHeader header{0x04030201, 0x08070605, 0x0a09, 0x0c0b};
    std::array<uint8_t, kFrameHeaderSize> raw{};
    encode_header(header, raw);
    EXPECT_EQ(Bytes(raw.begin(), raw.end()),
              (Bytes{0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c}));

    // 12 bytes: length 0x10, stream 3, type 0x0102, flags 0x8000.
    const std::array<uint8_t, kFrameHeaderSize> golden = {0x10, 0, 0, 0, 3, 0, 0, 0, 0x02, 0x01, 0x00, 0x80};
    auto decoded = decode_header(golden);
    ASSERT_TRUE(decoded) << decoded.error().to_string();
    EXPECT_EQ(decoded->payload_length, 0x10u);
    EXPECT_EQ(decoded->stream_id, 3u);
    EXPECT_EQ(decoded->type, 0x0102);
    EXPECT_EQ(decoded->flags, 0x8000);
}

TEST(ProtoFrame, PayloadLengthLimit) {
    std::array<uint8_t, kFrameHeaderSize> raw{};
    encode_header({kMaxFramePayload, 0, 1, 0}, raw);
    EXPECT_TRUE(decode_header(raw));
    encode_header({kMaxFramePayload + 1, 0, 1, 0}, raw);
    EXPECT_FALSE(decode_header(raw));
    encode_header({0xffffffff, 0, 1, 0}, raw);
    EXPECT_FALSE(decode_header(raw));

    Frame big;
    big.payload.resize(kMaxFramePayload + 1);
    EXPECT_FALSE(encode_frame(big));
    big.payload.resize(kMaxFramePayload);
    auto bytes = encode_frame(big);
    ASSERT_TRUE(bytes);
    EXPECT_EQ(bytes->size(), kFrameHeaderSize + kMaxFramePayload);
}

TEST(ProtoMessages, PingFrameGoldenBytes) {
    Frame frame = make_frame(Ping{0x1122334455667788}, 7);
    EXPECT_EQ(encoded(frame), (Bytes{0x08, 0x00, 0x00, 0x00,  // payload_length
                                     0x07, 0x00, 0x00, 0x00,  // stream_id
                                     0x02, 0x00,              // type PING
                                     0x00, 0x00,              // flags
                                     0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11}));
}

TEST(ProtoMessages, PongGoldenBytes) {
    EXPECT_EQ(encode(Pong{0xdeadbeef}), (Bytes{0xef, 0xbe, 0xad, 0xde, 0, 0, 0, 0}));
    EXPECT_EQ(make_frame(Pong{1}).type, 0x0003);
}

TEST(ProtoMessages, ShutdownFramesGoldenBytes) {
    EXPECT_EQ(encoded(make_frame(Shutdown{})), (Bytes{0, 0, 0, 0, 0, 0, 0, 0, 0x04, 0x00, 0, 0}));
    EXPECT_EQ(encoded(make_frame(ShutdownAck{})), (Bytes{0, 0, 0, 0, 0, 0, 0, 0, 0x05, 0x00, 0, 0}));
}

TEST(ProtoMessages, ErrorGoldenBytes) {
    ErrorMessage error{static_cast<uint32_t>(ErrorCode::Unsupported), -2, "no"};
    EXPECT_EQ(encode(error),
              (Bytes{0x01, 0x00, 0x00, 0x00,                                       // code
                     0xfe, 0xff, 0xff, 0xff,                                       // errno -2
                     0x02, 0x00, 0x00, 0x00, 'n', 'o', 0x00, 0x00, 0x00, 0x00}));  // kind (1.1)
    EXPECT_EQ(make_frame(error).type, 0x0006);
}

TEST(ProtoMessages, OlderPeersDecodeWithDefaults) {
    // A 1.0 agent's HELLO has no limits; a 1.0 ERROR has no kind.
    Hello old = sample_hello();
    old.max_frame_payload = old.max_streams = old.stdin_window = 0;
    EXPECT_EQ(decode_hello(std::span(kSampleHelloPayload).first(kHelloV10Size)).value(), old);
    Bytes v10_error = {0x04, 0, 0, 0, 0x0d, 0, 0, 0, 0x01, 0, 0, 0, 'x'};
    EXPECT_EQ(decode_error(v10_error).value(), (ErrorMessage{4, 13, "x", 0}));
}

TEST(ProtoMessages, HelloGoldenBytes) {
    EXPECT_EQ(encode(sample_hello()), kSampleHelloPayload);
    Frame frame = make_frame(sample_hello());
    Bytes bytes = encoded(frame);
    EXPECT_EQ(
        Bytes(bytes.begin(), bytes.begin() + kFrameHeaderSize),
        (Bytes{static_cast<uint8_t>(kSampleHelloPayload.size()), 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00, 0, 0}));
}

TEST(ProtoMessages, RoundTrips) {
    auto hello = decode_hello(encode(sample_hello()));
    ASSERT_TRUE(hello) << hello.error().to_string();
    EXPECT_EQ(*hello, sample_hello());

    EXPECT_EQ(decode_ping(encode(Ping{42})).value(), Ping{42});
    EXPECT_EQ(decode_pong(encode(Pong{UINT64_MAX})).value(), Pong{UINT64_MAX});
    EXPECT_TRUE(decode_shutdown(encode(Shutdown{})));
    EXPECT_TRUE(decode_shutdown_ack(encode(ShutdownAck{})));

    ErrorMessage error{static_cast<uint32_t>(ErrorCode::Failed), 13, "permission denied: /x"};
    EXPECT_EQ(decode_error(encode(error)).value(), error);
    ErrorMessage empty{};
    EXPECT_EQ(decode_error(encode(empty)).value(), empty);
}

TEST(ProtoMessages, HelloTruncatedAtEveryOffsetFails) {
    for (size_t n = 0; n < kSampleHelloPayload.size(); ++n) {
        if (n == kHelloV10Size) continue;  // a complete 1.0 HELLO
        auto hello = decode_hello(std::span(kSampleHelloPayload).first(n));
        EXPECT_FALSE(hello) << "decoded a HELLO cut to " << n << " bytes";
        if (!hello) {
            EXPECT_NE(hello.error().message.find("decode HELLO"), std::string::npos);
        }
    }
}

TEST(ProtoMessages, ShortPayloadsFail) {
    EXPECT_FALSE(decode_ping(Bytes{1, 2, 3, 4, 5, 6, 7}));
    EXPECT_FALSE(decode_pong(Bytes{}));
    EXPECT_FALSE(decode_error(Bytes{1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 'a'}));
}

TEST(ProtoMessages, TrailingBytesFromNewerPeersAreIgnored) {
    Bytes payload = concat({kSampleHelloPayload, {0xaa, 0xbb, 0xcc}});
    EXPECT_EQ(decode_hello(payload).value(), sample_hello());
    EXPECT_EQ(decode_ping(Bytes{1, 0, 0, 0, 0, 0, 0, 0, 9, 9}).value(), Ping{1});
}

TEST(ProtoMessages, LongStringsAreClampedToFit) {
    ErrorMessage error{1, 0, std::string(kMaxErrorMessage + 100, 'x')};
    auto decoded = decode_error(encode(error)).value();
    EXPECT_EQ(decoded.message.size(), kMaxErrorMessage);
}

TEST(ProtoMessages, TypeNames) {
    EXPECT_EQ(message_type_name(0x0001), "HELLO");
    EXPECT_EQ(message_type_name(0x0005), "SHUTDOWN_ACK");
    EXPECT_EQ(message_type_name(0x1234), "0x1234");
    EXPECT_EQ(message_type_name(0x0101), "EXEC_START");
    EXPECT_EQ(message_type_name(0x010b), "EXIT");
    EXPECT_EQ(message_type_name(0x0007), "STATS_REQUEST");
    EXPECT_EQ(message_type_name(0x0008), "STATS");
    EXPECT_EQ(feature_name(kFeatureStats), "stats");
}

Stats sample_stats() {
    return Stats{.mem_total_kib = 0x0102030405060708,
                 .mem_available_kib = 0x10,
                 .uptime_ns = 0x2000,
                 .processes = 7,
                 .exec_sessions = 2,
                 .load1_centi = 0x0304};
}

const Bytes kSampleStatsPayload = concat({
    {0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01},  // mem_total_kib
    {0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // mem_available_kib
    {0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // uptime_ns
    {0x07, 0x00, 0x00, 0x00},                          // processes
    {0x02, 0x00, 0x00, 0x00},                          // exec_sessions
    {0x04, 0x03, 0x00, 0x00},                          // load1_centi
});

TEST(ProtoMessages, StatsGoldenBytesAndRoundTrip) {
    EXPECT_EQ(encode(sample_stats()), kSampleStatsPayload);
    EXPECT_EQ(decode_stats(kSampleStatsPayload).value(), sample_stats());
    EXPECT_EQ(decode_stats(encode(Stats{})).value(), Stats{});
    Stats max{UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX};
    EXPECT_EQ(decode_stats(encode(max)).value(), max);
    // Appended fields from a newer agent are ignored.
    EXPECT_EQ(decode_stats(concat({kSampleStatsPayload, {0xaa, 0xbb}})).value(), sample_stats());

    EXPECT_EQ(encoded(make_frame(StatsRequest{})), (Bytes{0, 0, 0, 0, 0, 0, 0, 0, 0x07, 0x00, 0, 0}));
    EXPECT_TRUE(decode_stats_request(encode(StatsRequest{})));
    EXPECT_EQ(make_frame(sample_stats(), 3).type, 0x0008);
    EXPECT_EQ(make_frame(sample_stats(), 3).stream_id, 3u);
}

TEST(ProtoMessages, StatsTruncatedAtEveryOffsetFails) {
    for (size_t n = 0; n < kSampleStatsPayload.size(); ++n) {
        auto stats = decode_stats(std::span(kSampleStatsPayload).first(n));
        EXPECT_FALSE(stats) << "decoded a STATS cut to " << n << " bytes";
        if (!stats) {
            EXPECT_NE(stats.error().message.find("decode STATS"), std::string::npos);
        }
    }
}

TEST(ProtoVersion, IsOneThreeAndCarriesTheProjectVersion) {
    EXPECT_EQ(kProtocolMajor, 1);
    EXPECT_EQ(kProtocolMinor, 3);
    EXPECT_FALSE(kAgentVersion.empty());
    EXPECT_NE(kAgentVersion.find('.'), std::string_view::npos);
}

TEST(ProtoCodec, ReaderFailsCleanlyAndConsumesNothing) {
    Bytes data = {0x03, 0x00, 0x00, 0x00, 'a', 'b'};  // claims 3 bytes, has 2
    Reader r(data);
    EXPECT_FALSE(r.string());
    EXPECT_EQ(r.offset(), 0u);
    EXPECT_EQ(r.u16().value(), 3);
    EXPECT_EQ(r.u16().value(), 0);
    EXPECT_EQ(r.u8().value(), 'a');
    EXPECT_FALSE(r.u16());
    EXPECT_EQ(r.remaining(), 1u);

    Bytes huge_length = {0xff, 0xff, 0xff, 0xff};
    Reader r2(huge_length);
    EXPECT_FALSE(r2.bytes());
}

TEST(ProtoCodec, WriterRoundTripsEveryWidth) {
    Writer w;
    w.u8(0xab);
    w.u16(0xbeef);
    w.u32(0xcafef00d);
    w.u64(0x0123456789abcdef);
    w.i32(-5);
    w.string("héllo");
    Bytes raw = std::vector{uint8_t{1}, uint8_t{2}};
    w.bytes(raw);
    Bytes payload = std::move(w).finish().value();

    Reader r(payload);
    EXPECT_EQ(r.u8().value(), 0xab);
    EXPECT_EQ(r.u16().value(), 0xbeef);
    EXPECT_EQ(r.u32().value(), 0xcafef00du);
    EXPECT_EQ(r.u64().value(), 0x0123456789abcdefu);
    EXPECT_EQ(r.i32().value(), -5);
    EXPECT_EQ(r.string().value(), "héllo");
    auto b = r.bytes().value();
    EXPECT_EQ(Bytes(b.begin(), b.end()), raw);
    EXPECT_EQ(r.remaining(), 0u);
}

TEST(ProtoCodec, WriterLimitIsEnforced) {
    Writer w(8);
    w.u64(1);
    EXPECT_FALSE(w.overflowed());
    w.u8(2);
    EXPECT_TRUE(w.overflowed());
    EXPECT_EQ(w.size(), 8u);
    EXPECT_FALSE(std::move(w).finish());

    Writer s(6);
    s.string("abc");  // 4 + 3 > 6: nothing of the field is written
    EXPECT_TRUE(s.overflowed());
    EXPECT_EQ(s.size(), 0u);
}

// Three frames of different shapes, as one byte stream.
std::vector<Frame> sample_frames() {
    Frame empty = make_frame(Shutdown{}, 0);
    Frame hello = make_frame(sample_hello(), 1);
    Frame odd;
    odd.type = 0x7777;
    odd.flags = 0x0001;
    odd.stream_id = 0xfffffffe;
    odd.payload.resize(300);
    std::iota(odd.payload.begin(), odd.payload.end(), uint8_t{0});
    return {empty, hello, odd};
}

void expect_same_frame(const Frame& a, const Frame& b) {
    EXPECT_EQ(a.type, b.type);
    EXPECT_EQ(a.flags, b.flags);
    EXPECT_EQ(a.stream_id, b.stream_id);
    EXPECT_EQ(a.payload, b.payload);
}

Bytes stream_of(const std::vector<Frame>& frames) {
    Bytes out;
    for (const Frame& f : frames) {
        Bytes b = encoded(f);
        out.insert(out.end(), b.begin(), b.end());
    }
    return out;
}

std::vector<Frame> drain(FrameDecoder& decoder) {
    std::vector<Frame> out;
    for (;;) {
        auto frame = decoder.next();
        EXPECT_TRUE(frame) << frame.error().to_string();
        if (!frame || !*frame) return out;
        out.push_back(std::move(**frame));
    }
}

TEST(ProtoFrameDecoder, SeveralFramesInOneChunk) {
    auto frames = sample_frames();
    FrameDecoder decoder;
    ASSERT_TRUE(decoder.feed(stream_of(frames)));
    auto got = drain(decoder);
    ASSERT_EQ(got.size(), frames.size());
    for (size_t i = 0; i < frames.size(); ++i)
        expect_same_frame(got[i], frames[i]);
    EXPECT_EQ(decoder.buffered(), 0u);
}

TEST(ProtoFrameDecoder, SplitAtEveryByteBoundary) {
    auto frames = sample_frames();
    Bytes stream = stream_of(frames);
    for (size_t split = 0; split <= stream.size(); ++split) {
        FrameDecoder decoder;
        std::vector<Frame> got;
        ASSERT_TRUE(decoder.feed(std::span(stream).first(split)));
        for (Frame& f : drain(decoder))
            got.push_back(std::move(f));
        ASSERT_TRUE(decoder.feed(std::span(stream).subspan(split)));
        for (Frame& f : drain(decoder))
            got.push_back(std::move(f));
        ASSERT_EQ(got.size(), frames.size()) << "split at " << split;
        for (size_t i = 0; i < frames.size(); ++i)
            expect_same_frame(got[i], frames[i]);
    }
}

TEST(ProtoFrameDecoder, OneByteAtATime) {
    auto frames = sample_frames();
    Bytes stream = stream_of(frames);
    FrameDecoder decoder;
    std::vector<Frame> got;
    for (uint8_t byte : stream) {
        ASSERT_TRUE(decoder.feed(std::span(&byte, 1)));
        for (Frame& f : drain(decoder))
            got.push_back(std::move(f));
    }
    ASSERT_EQ(got.size(), frames.size());
    for (size_t i = 0; i < frames.size(); ++i)
        expect_same_frame(got[i], frames[i]);
}

TEST(ProtoFrameDecoder, OversizedLengthRejectedAsSoonAsTheHeaderArrives) {
    std::array<uint8_t, kFrameHeaderSize> header{};
    encode_header({kMaxFramePayload + 1, 0, 2, 0}, header);
    FrameDecoder decoder;
    ASSERT_TRUE(decoder.feed(std::span(header).first(11)));
    EXPECT_FALSE(decoder.failed());
    EXPECT_FALSE(decoder.feed(std::span(header).subspan(11)));
    EXPECT_TRUE(decoder.failed());
    EXPECT_FALSE(decoder.next());  // stays failed
    Bytes more = encoded(make_frame(Ping{1}));
    EXPECT_FALSE(decoder.feed(more));
}

TEST(ProtoFrameDecoder, GoodFrameBeforeABadHeaderIsStillDelivered) {
    Bytes stream = encoded(make_frame(Ping{5}));
    std::array<uint8_t, kFrameHeaderSize> bad{};
    encode_header({0xffffffff, 0, 2, 0}, bad);
    stream.insert(stream.end(), bad.begin(), bad.end());

    FrameDecoder decoder;
    ASSERT_TRUE(decoder.feed(stream));
    auto first = decoder.next();
    ASSERT_TRUE(first && *first);
    EXPECT_EQ(decode_ping((*first)->payload).value(), Ping{5});
    EXPECT_FALSE(decoder.next());
}

TEST(ProtoFrameDecoder, BufferIsBounded) {
    FrameDecoder decoder;
    // A maximal frame that is not complete yet, then more than one read's worth on top of it.
    std::array<uint8_t, kFrameHeaderSize> header{};
    encode_header({kMaxFramePayload, 0, 2, 0}, header);
    ASSERT_TRUE(decoder.feed(header));
    Bytes chunk(kMaxFramePayload - 1);
    ASSERT_TRUE(decoder.feed(chunk));
    Bytes too_much(FrameDecoder::kMaxBuffered);
    EXPECT_FALSE(decoder.feed(too_much));
    EXPECT_TRUE(decoder.failed());
}

TEST(ProtoFrameDecoder, DrainedDecoderAcceptsEndlessStreams) {
    FrameDecoder decoder;
    Bytes chunk;
    for (int i = 0; i < 1000; ++i) {
        Bytes f = encoded(make_frame(Ping{static_cast<uint64_t>(i)}));
        chunk.insert(chunk.end(), f.begin(), f.end());
    }
    for (int round = 0; round < 200; ++round) {  // 4 MB total, far over kMaxBuffered
        ASSERT_TRUE(decoder.feed(chunk));
        ASSERT_EQ(drain(decoder).size(), 1000u);
    }
}

struct SocketPair {
    SocketPair() {
        int fds[2];
        EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
        a.reset(fds[0]);
        b.reset(fds[1]);
    }
    UniqueFd a, b;
};

TEST(ProtoBlockingIo, WriteThenReadFrames) {
    SocketPair pair;
    auto frames = sample_frames();
    for (const Frame& f : frames)
        ASSERT_TRUE(write_frame(pair.a.get(), f));
    for (const Frame& f : frames) {
        auto got = read_frame(pair.b.get());
        ASSERT_TRUE(got) << got.error().to_string();
        expect_same_frame(*got, f);
    }
    pair.a.reset();
    auto eof = read_frame(pair.b.get());
    ASSERT_FALSE(eof);
    EXPECT_TRUE(is_connection_closed(eof.error())) << eof.error().to_string();
}

TEST(ProtoBlockingIo, LargeFrameAcrossShortTransfers) {
    SocketPair pair;
    Frame big;
    big.type = 0x0100;
    big.payload.resize(kMaxFramePayload);
    std::iota(big.payload.begin(), big.payload.end(), uint8_t{7});
    std::thread writer([&] { EXPECT_TRUE(write_frame(pair.a.get(), big)); });
    auto got = read_frame(pair.b.get());
    writer.join();
    ASSERT_TRUE(got) << got.error().to_string();
    expect_same_frame(*got, big);
}

TEST(ProtoBlockingIo, TruncatedFramesAreErrorsNotCloses) {
    Bytes frame = encoded(make_frame(Ping{9}));
    for (size_t cut : {size_t{5}, kFrameHeaderSize, kFrameHeaderSize + 3}) {
        SocketPair pair;
        ASSERT_TRUE(write_all(pair.a.get(), std::span(frame).first(cut)));
        pair.a.reset();
        auto got = read_frame(pair.b.get());
        ASSERT_FALSE(got) << "cut at " << cut;
        EXPECT_FALSE(is_connection_closed(got.error()));
        EXPECT_NE(got.error().message.find("truncated"), std::string::npos) << got.error().message;
    }
}

TEST(ProtoBlockingIo, OversizedHeaderIsRejectedWithoutReadingThePayload) {
    SocketPair pair;
    std::array<uint8_t, kFrameHeaderSize> header{};
    encode_header({kMaxFramePayload + 1, 0, 2, 0}, header);
    ASSERT_TRUE(write_all(pair.a.get(), header));
    auto got = read_frame(pair.b.get());  // would block forever if it tried to read the payload
    ASSERT_FALSE(got);
    EXPECT_NE(got.error().message.find("exceeds"), std::string::npos);
}

TEST(ProtoBlockingIo, WriteToClosedPeerFailsWithoutSigpipe) {
    SocketPair pair;
    pair.b.reset();
    auto ok = write_frame(pair.a.get(), make_frame(Ping{1}));
    ASSERT_FALSE(ok);
    EXPECT_EQ(ok.error().code, EPIPE);
}

}  // namespace
}  // namespace sandlot::proto
