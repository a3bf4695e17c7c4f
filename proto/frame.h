// Wire framing shared by the host and the guest agent.
//
// Every message travels as one frame: a fixed 12-byte little-endian header followed by the payload.
//
//   offset 0  u32 payload_length   bytes after the header, at most kMaxFramePayload
//   offset 4  u32 stream_id        0 is the control stream; later features multiplex sessions on others
//   offset 8  u16 type             a proto::MessageType value
//   offset 10 u16 flags            reserved, 0 for now; receivers ignore bits they do not know
//
// A length above kMaxFramePayload, or a stream that ends inside a frame, is a protocol error: the reader
// reports an Error and the connection is not used again (frame boundaries are lost).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "proto/base/error.h"

namespace sandlot::proto {

inline constexpr size_t kFrameHeaderSize = 12;
inline constexpr uint32_t kMaxFramePayload = 1u << 20;  // 1 MiB
inline constexpr uint32_t kControlStream = 0;

struct FrameHeader {
    uint32_t payload_length = 0;
    uint32_t stream_id = 0;
    uint16_t type = 0;
    uint16_t flags = 0;
};

struct Frame {
    uint16_t type = 0;
    uint16_t flags = 0;
    uint32_t stream_id = kControlStream;
    std::vector<uint8_t> payload;
};

void encode_header(const FrameHeader& header, std::span<uint8_t, kFrameHeaderSize> out);
// Fails if payload_length exceeds kMaxFramePayload.
Result<FrameHeader> decode_header(std::span<const uint8_t, kFrameHeaderSize> in);

// Header followed by payload, ready to write. Fails if the payload is over kMaxFramePayload.
Result<std::vector<uint8_t>> encode_frame(const Frame& frame);

// Incremental decoder for a byte stream (a non-blocking socket): feed() what was read, then take whole
// frames with next() until it yields nothing.
//
// Buffering is bounded: the decoder holds at most one incomplete frame plus the bytes fed since the last
// time next() drained it, and refuses to hold more than kMaxBuffered. An oversized length is reported as soon
// as its header has arrived (by feed() or next()), without waiting for the payload; frames before it are
// still returned first. After any error the decoder stays failed.
class FrameDecoder {
  public:
    // One maximal frame plus one 64 KiB read.
    static constexpr size_t kMaxBuffered = kFrameHeaderSize + kMaxFramePayload + 64 * 1024;

    Result<void> feed(std::span<const uint8_t> bytes);
    // The next complete frame; std::nullopt when more bytes are needed.
    Result<std::optional<Frame>> next();

    // Bytes held that do not yet form a whole frame (after next() has drained the complete ones).
    size_t buffered() const { return buffer_.size() - consumed_; }
    bool failed() const { return failed_.has_value(); }

  private:
    Result<void> check_pending_header();
    std::unexpected<Error> fail(Error error);

    std::vector<uint8_t> buffer_;
    size_t consumed_ = 0;  // bytes at the front of buffer_ already returned as frames
    std::optional<Error> failed_;
};

// Blocking helpers for simple clients (the host side, tests). They read/write whole frames, retry on EINTR
// and short transfers, and never raise SIGPIPE.
//
// read_frame: EOF before the first header byte is reported as a "connection closed" error
// (is_connection_closed() tells it apart); EOF inside a frame is a "truncated frame" error.
Result<Frame> read_frame(int fd);
Result<void> write_frame(int fd, const Frame& frame);

// True for the error read_frame returns when the peer closed the connection cleanly between frames.
bool is_connection_closed(const Error& error);

// Reads/writes exactly bytes.size() bytes. read_exact reports EOF as an error (code 0) after `got` bytes.
Result<void> read_exact(int fd, std::span<uint8_t> bytes);
Result<void> write_all(int fd, std::span<const uint8_t> bytes);

}  // namespace sandlot::proto
