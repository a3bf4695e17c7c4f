// Writes the proto fuzzer's seed corpus into a directory: streams of well-formed frames of every message
// type, encoded by the real codec, in the input layout that tests/fuzz/proto_fuzz.cpp describes (chunk sizes,
// then the stream), plus a few broken streams (oversized length, truncated frame, short payloads).
//
//   make_seeds DIR
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "proto/exec.h"
#include "proto/frame.h"
#include "proto/fs.h"
#include "proto/messages.h"

namespace sandlot::proto {
namespace {

using Stream = std::vector<uint8_t>;

void append_frame(Stream& stream, const Frame& frame) {
    std::vector<uint8_t> bytes = encode_frame(frame).value();
    stream.insert(stream.end(), bytes.begin(), bytes.end());
}

// The input layout: the number of chunk sizes, the sizes, then the stream.
std::vector<uint8_t> fuzz_input(const Stream& stream, std::vector<uint8_t> chunk_sizes) {
    std::vector<uint8_t> input;
    input.push_back(static_cast<uint8_t>(chunk_sizes.size()));
    input.insert(input.end(), chunk_sizes.begin(), chunk_sizes.end());
    input.insert(input.end(), stream.begin(), stream.end());
    return input;
}

bool write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) return false;
    bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    return std::fclose(f) == 0 && ok;
}

std::vector<uint8_t> raw(std::string_view s) {
    return {s.begin(), s.end()};
}

// One frame of every type, as a session would carry them.
std::vector<Frame> sample_frames() {
    Hello hello;
    hello.protocol_major = kProtocolMajor;
    hello.protocol_minor = kProtocolMinor;
    hello.features =
        kFeatureExec | kFeaturePty | kFeatureExecUser | kFeatureExecRlimits | kFeatureExecTimeout;
    hello.agent_version = "0.1.0";
    hello.agent_start_ns = 123456789;
    hello.agent_ready_ns = 223456789;
    hello.hello_ns = 323456789;
    hello.cpus_online = 2;
    hello.mem_total_kib = 262144;
    hello.kernel_release = "6.1.0";
    hello.max_frame_payload = kMaxFramePayload;
    hello.max_streams = 1024;
    hello.stdin_window = 256 * 1024;

    ExecStart start;
    start.flags = kExecPty | kExecStdin;
    start.argv = {"sh", "-c", "echo hi; exit 3"};
    start.env = {"TERM=xterm", "A=b"};
    start.cwd = "/tmp";
    start.user = "1000:1000";
    start.rlimits = {Rlimit{7, 1024, 4096}, Rlimit{9, kRlimInfinity, kRlimInfinity}};
    start.timeout_ms = 5000;
    start.pty_rows = 40;
    start.pty_cols = 120;
    start.output_window = 1u << 20;

    ErrorMessage error;
    error.code = static_cast<uint32_t>(ErrorCode::SpawnFailed);
    error.errno_value = 2;
    error.message = "command not found: nosuch";
    error.kind = static_cast<uint32_t>(SpawnErrorKind::NotFound);

    FsRequest fs_request;
    fs_request.op = static_cast<uint32_t>(FsOp::PutTree);
    fs_request.flags = kFsParents | kFsPreserveOwner;
    fs_request.path = "/work/src";
    fs_request.user = "nobody";
    fs_request.window = 1u << 20;
    FsEntry fs_entry;
    fs_entry.path = "dir/link";
    fs_entry.type = FsType::Symlink;
    fs_entry.mode = 0777;
    fs_entry.mtime_ns = 1'700'000'000'000'000'000;
    fs_entry.link_target = "../target";

    const uint32_t s = 7;  // an exec stream
    const uint32_t f = 9;  // a file stream
    return {
        make_frame(MessageType::FsRequest, f, encode_fs_request(fs_request).value()),
        make_frame(MessageType::FsEntry, f, encode_fs_entry(fs_entry).value()),
        make_frame(MessageType::FsData, f, raw("file bytes")),
        make_frame(FsWindow{1u << 20}, f),
        make_frame(MessageType::FsCommit, f, {}),
        make_frame(MessageType::FsDone, f, encode_fs_done({3, "/real/path"}).value()),
        make_frame(hello),
        make_frame(Ping{42}),
        make_frame(Pong{42}),
        make_frame(Shutdown{}),
        make_frame(ShutdownAck{}),
        make_frame(error, s),
        make_frame(MessageType::ExecStart, s, encode_exec_start(start).value()),
        make_frame(ExecStarted{1234, 256 * 1024}, s),
        make_frame(MessageType::Stdin, s, raw("input")),
        make_frame(MessageType::StdinClose, s, {}),
        make_frame(MessageType::Stdout, s, raw("hi\n")),
        make_frame(MessageType::Stderr, s, raw("oops\n")),
        make_frame(OutputEof{kChannelStdout}, s),
        make_frame(Window{65536}, s),
        make_frame(Signal{15}, s),
        make_frame(Resize{50, 132}, s),
        make_frame(Exit{-1, 9, 1, 0, 1}, s),
    };
}

}  // namespace
}  // namespace sandlot::proto

int main(int argc, char** argv) {
    using namespace sandlot::proto;
    if (argc != 2) {
        std::fprintf(stderr, "usage: make_seeds DIR\n");
        return 2;
    }
    const std::string dir = argv[1];
    std::vector<std::pair<std::string, std::vector<uint8_t>>> seeds;

    std::vector<Frame> frames = sample_frames();
    Stream all;
    for (size_t i = 0; i < frames.size(); ++i) {
        Stream one;
        append_frame(one, frames[i]);
        append_frame(all, frames[i]);
        // Each message alone, fed whole, and its bare payload (the target also decodes the raw stream).
        seeds.push_back({"frame-" + std::to_string(i), fuzz_input(one, {})});
        seeds.push_back({"payload-" + std::to_string(i), fuzz_input(frames[i].payload, {})});
    }
    // The whole conversation fed whole, byte by byte, and in uneven chunks.
    seeds.push_back({"session-whole", fuzz_input(all, {})});
    seeds.push_back({"session-bytes", fuzz_input(all, {0})});
    seeds.push_back({"session-chunks", fuzz_input(all, {4, 11, 0, 60, 0xf0})});

    // An oversized length behind a good frame; a frame cut short; a header alone.
    Stream oversized;
    append_frame(oversized, make_frame(Ping{1}));
    const uint8_t too_long[kFrameHeaderSize] = {0x01, 0x00, 0x10, 0x00, 0, 0, 0, 0, 0x02, 0x00, 0, 0};
    oversized.insert(oversized.end(), too_long, too_long + kFrameHeaderSize);
    seeds.push_back({"oversized", fuzz_input(oversized, {2, 13})});
    Stream truncated;
    append_frame(truncated, frames[6]);
    truncated.resize(truncated.size() - 5);
    seeds.push_back({"truncated", fuzz_input(truncated, {30})});
    seeds.push_back({"header-only", fuzz_input(Stream(too_long, too_long + 4), {})});

    for (const auto& [name, bytes] : seeds) {
        if (!write_file(dir + "/" + name, bytes)) {
            std::perror(("make_seeds: " + dir + "/" + name).c_str());
            return 1;
        }
    }
    std::printf("make_seeds: wrote %zu seeds to %s\n", seeds.size(), dir.c_str());
    return 0;
}
