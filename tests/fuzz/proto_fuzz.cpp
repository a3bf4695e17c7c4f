// libFuzzer target for the wire codec: the frame decoder and every message decoder (proto/frame.h,
// proto/messages.h, proto/exec.h). tools/fuzz builds it with clang, ASan and UBSan, and runs it.
//
// Input layout (tests/fuzz/make_seeds.cpp writes its seeds this way):
//   byte 0        n, the number of chunk-size bytes that follow
//   bytes 1..n    chunk sizes, used in turn and cycled: v < 0xf0 means v+1 bytes, else (v-0xef) * 4 KiB
//   the rest      the byte stream, fed to a FrameDecoder in those chunks (in one go when n is 0)
//
// What must hold, whatever the bytes:
//   - The decoder returns exactly the frames that a plain front-to-back parse of the stream finds, in order.
//     It fails only for a length over kMaxFramePayload (as soon as that header is in, after the frames before
//     it) or for a feed that would hold more than kMaxBuffered. After a failure it stays failed. buffered()
//     is always what was fed minus what was returned as frames.
//   - Each returned frame re-encodes (encode_frame) to exactly the bytes it came from.
//   - decode_header fails exactly for an oversized length, and otherwise round-trips through encode_header.
//   - Every decode_* function, run on every frame payload and on the raw stream, either fails cleanly or
//     gives a message x with decode(encode(x)) == x (the only allowed difference: strings the encoder clamps)
//     and encode() a fixed point from then on.
// A violation aborts, which libFuzzer reports as a crash with the input saved; so does any ASan/UBSan
// finding.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "proto/codec.h"
#include "proto/exec.h"
#include "proto/frame.h"
#include "proto/fs.h"
#include "proto/messages.h"

namespace sandlot::proto {
namespace {

[[noreturn]] void violated(const char* what, const char* file, int line) {
    std::fprintf(stderr, "proto_fuzz: invariant violated at %s:%d: %s\n", file, line, what);
    std::abort();
}
#define CHECK(cond) ((cond) ? (void)0 : violated(#cond, __FILE__, __LINE__))

using Bytes = std::span<const uint8_t>;

// ---------------------------------------------------------------------------------------------------------
// Input layout

struct FuzzInput {
    Bytes chunk_sizes;
    Bytes stream;
};

FuzzInput split_input(Bytes data) {
    if (data.empty()) return {};
    size_t n = std::min<size_t>(data[0], data.size() - 1);
    return {data.subspan(1, n), data.subspan(1 + n)};
}

size_t chunk_length(uint8_t v) {
    return v < 0xf0 ? size_t{v} + 1 : size_t{v - 0xefu} * 4096;
}

bool same_frame(const Frame& a, const Frame& b) {
    return a.type == b.type && a.flags == b.flags && a.stream_id == b.stream_id && a.payload == b.payload;
}

// ---------------------------------------------------------------------------------------------------------
// Message decoders: decode(encode(x)) == normalized(x)

std::string clamped(const std::string& s, size_t max) {
    return s.substr(0, std::min(s.size(), max));
}

// What decode(encode(x)) must give: x with the strings the encoders clamp (messages.h) cut to their limits.
template <class T>
T normalized(T msg) {
    return msg;
}
template <>
Hello normalized(Hello msg) {
    msg.agent_version = clamped(msg.agent_version, kMaxShortString);
    msg.kernel_release = clamped(msg.kernel_release, kMaxShortString);
    return msg;
}
template <>
ErrorMessage normalized(ErrorMessage msg) {
    msg.message = clamped(msg.message, kMaxErrorMessage);
    return msg;
}

std::vector<uint8_t> encoded(const ExecStart& msg) {
    // The decoder enforces the same limits as the encoder, so whatever decoded must encode.
    auto bytes = encode_exec_start(msg);
    CHECK(bytes.has_value());
    return std::move(*bytes);
}
std::vector<uint8_t> encoded(const FsRequest& msg) {
    auto bytes = encode_fs_request(msg);
    CHECK(bytes.has_value());
    return std::move(*bytes);
}
std::vector<uint8_t> encoded(const FsEntry& msg) {
    auto bytes = encode_fs_entry(msg);
    CHECK(bytes.has_value());
    return std::move(*bytes);
}
std::vector<uint8_t> encoded(const FsDone& msg) {
    auto bytes = encode_fs_done(msg);
    CHECK(bytes.has_value());
    return std::move(*bytes);
}
template <class T>
std::vector<uint8_t> encoded(const T& msg) {
    return encode(msg);
}

template <class T>
void check_round_trip(Bytes payload, Result<T> (*decode)(Bytes)) {
    Result<T> first = decode(payload);
    if (!first) {
        CHECK(!first.error().message.empty());
        return;
    }
    std::vector<uint8_t> bytes = encoded(*first);
    CHECK(bytes.size() <= kMaxFramePayload);
    Result<T> second = decode(bytes);
    CHECK(second.has_value());
    CHECK(*second == normalized(*first));
    CHECK(encoded(*second) == bytes);
}

// Frame types whose payload is raw bytes (STDIN, STDOUT, STDERR) or empty (STDIN_CLOSE) have no decoder.
void check_every_decoder(Bytes payload) {
    check_round_trip<Hello>(payload, decode_hello);
    check_round_trip<Ping>(payload, decode_ping);
    check_round_trip<Pong>(payload, decode_pong);
    check_round_trip<Shutdown>(payload, decode_shutdown);
    check_round_trip<ShutdownAck>(payload, decode_shutdown_ack);
    check_round_trip<ErrorMessage>(payload, decode_error);
    check_round_trip<ExecStart>(payload, decode_exec_start);
    check_round_trip<ExecStarted>(payload, decode_exec_started);
    check_round_trip<OutputEof>(payload, decode_output_eof);
    check_round_trip<Window>(payload, decode_window);
    check_round_trip<Signal>(payload, decode_signal);
    check_round_trip<Resize>(payload, decode_resize);
    check_round_trip<Exit>(payload, decode_exit);
    check_round_trip<FsRequest>(payload, decode_fs_request);
    check_round_trip<FsEntry>(payload, decode_fs_entry);
    check_round_trip<FsWindow>(payload, decode_fs_window);
    check_round_trip<FsDone>(payload, decode_fs_done);
    if (auto entry = decode_fs_entry(payload)) (void)fs_relative_path_ok(entry->path);

    // The names used in logs and error messages, for whatever numbers arrived.
    if (auto hello = decode_hello(payload)) {
        for (int bit = 0; bit < 64; ++bit) {
            uint64_t mask = uint64_t{1} << bit;
            if (hello->features & mask) CHECK(!feature_name(mask).empty());
        }
    }
    if (auto error = decode_error(payload)) CHECK(!spawn_error_kind_name(error->kind).empty());
}

// ---------------------------------------------------------------------------------------------------------
// Framing

void check_header(Bytes at) {
    if (at.size() < kFrameHeaderSize) return;
    std::span<const uint8_t, kFrameHeaderSize> raw(at.data(), kFrameHeaderSize);
    Result<FrameHeader> header = decode_header(raw);
    CHECK(header.has_value() == (load_le32(raw.data()) <= kMaxFramePayload));
    if (!header) return;
    uint8_t again[kFrameHeaderSize];
    encode_header(*header, again);
    CHECK(std::equal(raw.begin(), raw.end(), again));
}

// What a FrameDecoder must find in `stream`: a parse without any buffering.
struct ReferenceParse {
    std::vector<Frame> frames;
    size_t frames_end = 0;               // offset just past the last whole frame
    std::optional<size_t> oversized_at;  // offset of a header with an oversized length, where parsing stopped
};

ReferenceParse reference_parse(Bytes stream) {
    ReferenceParse ref;
    size_t pos = 0;
    while (stream.size() - pos >= kFrameHeaderSize) {
        const uint8_t* h = stream.data() + pos;
        uint32_t length = load_le32(h);
        if (length > kMaxFramePayload) {
            ref.oversized_at = pos;
            break;
        }
        if (stream.size() - pos - kFrameHeaderSize < length) break;
        Frame frame;
        frame.stream_id = load_le32(h + 4);
        frame.type = load_le16(h + 8);
        frame.flags = load_le16(h + 10);
        frame.payload.assign(h + kFrameHeaderSize, h + kFrameHeaderSize + length);
        ref.frames.push_back(std::move(frame));
        pos += kFrameHeaderSize + length;
        ref.frames_end = pos;
    }
    return ref;
}

// Feeds `stream` in the input's chunks, draining whole frames after every feed, and checks the decoder
// against the reference parse. Returns the frames it produced.
std::vector<Frame> run_decoder(const FuzzInput& input) {
    const Bytes stream = input.stream;
    const ReferenceParse ref = reference_parse(stream);
    FrameDecoder decoder;
    std::vector<Frame> frames;
    size_t fed = 0;      // stream bytes accepted by feed()
    size_t drained = 0;  // stream bytes handed out as frames
    size_t chunk_index = 0;
    bool failed = false;

    // A frame handed out must be the next one the reference found.
    auto take = [&](Frame frame) {
        CHECK(frames.size() < ref.frames.size());
        CHECK(same_frame(frame, ref.frames[frames.size()]));
        drained += kFrameHeaderSize + frame.payload.size();
        frames.push_back(std::move(frame));
        CHECK(decoder.buffered() == fed - drained);
    };
    // A failure that is not a full buffer must be the oversized header, once it has arrived, with every
    // frame before it already returned.
    auto oversized_failure = [&](size_t arrived) {
        CHECK(ref.oversized_at.has_value());
        CHECK(*ref.oversized_at + kFrameHeaderSize <= arrived);
        CHECK(frames.size() == ref.frames.size());
        CHECK(drained == *ref.oversized_at);
    };

    while (fed < stream.size() && !failed) {
        size_t length = stream.size() - fed;
        if (!input.chunk_sizes.empty()) {
            uint8_t v = input.chunk_sizes[chunk_index++ % input.chunk_sizes.size()];
            length = std::min(length, chunk_length(v));
        }
        const bool overflows = decoder.buffered() + length > FrameDecoder::kMaxBuffered;
        if (Result<void> ok = decoder.feed(stream.subspan(fed, length)); !ok) {
            failed = true;
            if (!overflows) oversized_failure(fed + length);
            break;
        }
        CHECK(!overflows);
        fed += length;
        CHECK(decoder.buffered() == fed - drained);
        CHECK(decoder.buffered() <= FrameDecoder::kMaxBuffered);

        for (;;) {
            Result<std::optional<Frame>> next = decoder.next();
            if (!next) {
                failed = true;
                oversized_failure(fed);
                break;
            }
            if (!next->has_value()) break;
            take(std::move(**next));
        }
        // Without a failure, an oversized header cannot have arrived yet.
        if (!failed && ref.oversized_at) CHECK(*ref.oversized_at + kFrameHeaderSize > fed);
    }

    CHECK(decoder.failed() == failed);
    if (failed) {
        // Stays failed, whatever comes next.
        const uint8_t zero_frame[kFrameHeaderSize] = {};
        CHECK(!decoder.feed(zero_frame).has_value());
        CHECK(!decoder.next().has_value());
        CHECK(decoder.failed());
    } else {
        CHECK(!ref.oversized_at.has_value());
        CHECK(frames.size() == ref.frames.size());
        CHECK(decoder.buffered() == stream.size() - ref.frames_end);
    }
    return frames;
}

void check_frame(const Frame& frame, Bytes original) {
    Result<std::vector<uint8_t>> bytes = encode_frame(frame);
    CHECK(bytes.has_value());
    CHECK(bytes->size() == kFrameHeaderSize + frame.payload.size());
    CHECK(std::equal(bytes->begin(), bytes->end(), original.begin(), original.begin() + bytes->size()));
    CHECK(!message_type_name(frame.type).empty());
    check_every_decoder(frame.payload);
}

}  // namespace
}  // namespace sandlot::proto

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace sandlot::proto;
    const FuzzInput input = split_input(Bytes(data, size));

    check_header(input.stream);
    std::vector<Frame> frames = run_decoder(input);
    size_t offset = 0;
    for (const Frame& frame : frames) {
        Bytes original = input.stream.subspan(offset);
        check_header(original);
        check_frame(frame, original);
        offset += kFrameHeaderSize + frame.payload.size();
    }
    // The decoders straight on the input, so mutations reach them without having to form a frame.
    check_every_decoder(input.stream);
    return 0;
}
