#include "proto/frame.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "proto/codec.h"

namespace sandlot::proto {

namespace {

constexpr const char* kConnectionClosed = "connection closed by peer";

std::string oversized_message(uint32_t length) {
    return "frame payload length " + std::to_string(length) + " exceeds the " +
           std::to_string(kMaxFramePayload) + "-byte limit";
}

// Reads until `bytes` is full or EOF; returns how many bytes arrived.
Result<size_t> read_some_exact(int fd, std::span<uint8_t> bytes) {
    size_t got = 0;
    while (got < bytes.size()) {
        ssize_t n = ::read(fd, bytes.data() + got, bytes.size() - got);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno_error("read");
        }
        if (n == 0) break;
        got += static_cast<size_t>(n);
    }
    return got;
}

}  // namespace

void encode_header(const FrameHeader& header, std::span<uint8_t, kFrameHeaderSize> out) {
    store_le32(out.data() + 0, header.payload_length);
    store_le32(out.data() + 4, header.stream_id);
    store_le16(out.data() + 8, header.type);
    store_le16(out.data() + 10, header.flags);
}

Result<FrameHeader> decode_header(std::span<const uint8_t, kFrameHeaderSize> in) {
    FrameHeader header;
    header.payload_length = load_le32(in.data() + 0);
    header.stream_id = load_le32(in.data() + 4);
    header.type = load_le16(in.data() + 8);
    header.flags = load_le16(in.data() + 10);
    if (header.payload_length > kMaxFramePayload) return make_error(oversized_message(header.payload_length));
    return header;
}

Result<std::vector<uint8_t>> encode_frame(const Frame& frame) {
    if (frame.payload.size() > kMaxFramePayload) {
        return make_error("cannot send a " + std::to_string(frame.payload.size()) +
                          "-byte payload: limit is " + std::to_string(kMaxFramePayload));
    }
    std::vector<uint8_t> out(kFrameHeaderSize + frame.payload.size());
    FrameHeader header{static_cast<uint32_t>(frame.payload.size()), frame.stream_id, frame.type, frame.flags};
    encode_header(header, std::span<uint8_t, kFrameHeaderSize>(out.data(), kFrameHeaderSize));
    std::copy(frame.payload.begin(), frame.payload.end(), out.begin() + kFrameHeaderSize);
    return out;
}

std::unexpected<Error> FrameDecoder::fail(Error error) {
    failed_ = error;
    buffer_.clear();
    buffer_.shrink_to_fit();
    consumed_ = 0;
    return std::unexpected(std::move(error));
}

Result<void> FrameDecoder::check_pending_header() {
    if (buffered() < kFrameHeaderSize) return {};
    auto header = decode_header(
        std::span<const uint8_t, kFrameHeaderSize>(buffer_.data() + consumed_, kFrameHeaderSize));
    if (!header) return fail(header.error());
    return {};
}

Result<void> FrameDecoder::feed(std::span<const uint8_t> bytes) {
    if (failed_) return std::unexpected(*failed_);
    // Drop bytes already handed out before growing, so the buffer holds only undelivered data.
    if (consumed_ > 0) {
        buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<ptrdiff_t>(consumed_));
        consumed_ = 0;
    }
    if (bytes.size() > kMaxBuffered - buffer_.size()) {
        return fail(make_error("frame decoder buffer full (" + std::to_string(buffer_.size()) +
                               " bytes held): frames must be drained with next() between reads")
                        .error());
    }
    buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
    return check_pending_header();
}

Result<std::optional<Frame>> FrameDecoder::next() {
    if (failed_) return std::unexpected(*failed_);
    if (buffered() < kFrameHeaderSize) return std::nullopt;
    const uint8_t* start = buffer_.data() + consumed_;
    auto header = decode_header(std::span<const uint8_t, kFrameHeaderSize>(start, kFrameHeaderSize));
    if (!header) return fail(header.error());
    if (buffered() - kFrameHeaderSize < header->payload_length) return std::nullopt;

    Frame frame;
    frame.type = header->type;
    frame.flags = header->flags;
    frame.stream_id = header->stream_id;
    frame.payload.assign(start + kFrameHeaderSize, start + kFrameHeaderSize + header->payload_length);
    consumed_ += kFrameHeaderSize + header->payload_length;
    if (consumed_ == buffer_.size()) {
        buffer_.clear();
        consumed_ = 0;
    }
    // A bad header right behind this frame is reported by the next call; this frame is still good.
    return frame;
}

Result<void> read_exact(int fd, std::span<uint8_t> bytes) {
    size_t got = TRY(read_some_exact(fd, bytes));
    if (got < bytes.size()) {
        return make_error("unexpected EOF after " + std::to_string(got) + " of " +
                          std::to_string(bytes.size()) + " bytes");
    }
    return {};
}

Result<void> write_all(int fd, std::span<const uint8_t> bytes) {
    bool is_socket = true;  // send() with MSG_NOSIGNAL avoids SIGPIPE; plain write() for pipes and files
    size_t sent = 0;
    while (sent < bytes.size()) {
        ssize_t n = is_socket ? ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL)
                              : ::write(fd, bytes.data() + sent, bytes.size() - sent);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == ENOTSOCK && is_socket) {
                is_socket = false;
                continue;
            }
            return errno_error("write");
        }
        sent += static_cast<size_t>(n);
    }
    return {};
}

Result<Frame> read_frame(int fd) {
    uint8_t raw[kFrameHeaderSize];
    size_t got = TRY(read_some_exact(fd, raw));
    if (got == 0) return make_error(kConnectionClosed);
    if (got < kFrameHeaderSize) {
        return make_error("truncated frame: connection closed after " + std::to_string(got) + " of " +
                          std::to_string(kFrameHeaderSize) + " header bytes");
    }
    FrameHeader header = TRY(decode_header(raw));
    Frame frame;
    frame.type = header.type;
    frame.flags = header.flags;
    frame.stream_id = header.stream_id;
    frame.payload.resize(header.payload_length);
    got = TRY(read_some_exact(fd, frame.payload));
    if (got < header.payload_length) {
        return make_error("truncated frame: connection closed after " + std::to_string(got) + " of " +
                          std::to_string(header.payload_length) + " payload bytes");
    }
    return frame;
}

Result<void> write_frame(int fd, const Frame& frame) {
    auto bytes = TRY(encode_frame(frame));
    return write_all(fd, bytes);
}

bool is_connection_closed(const Error& error) {
    return error.code == 0 && error.message == kConnectionClosed;
}

}  // namespace sandlot::proto
