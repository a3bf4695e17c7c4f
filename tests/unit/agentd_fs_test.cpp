// Filesystem messages (proto/fs.h): round trips, limits, path safety; and the agent's file streams spoken to
// in raw frames, for what the host library never sends (broken windows, unsafe tree paths, stray frames).
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "proto/base/unique_fd.h"
#include "proto/base/unix_address.h"
#include "proto/codec.h"
#include "proto/frame.h"
#include "proto/fs.h"
#include "tests/support/agentd_process.h"
#include "tests/support/temp_dir.h"

namespace sandlot::proto {
namespace {

FsRequest sample_request() {
    FsRequest req;
    req.op = static_cast<uint32_t>(FsOp::Read);
    req.flags = kFsParents | kFsNoSync;
    req.path = std::string("/a/b\xff", 5);
    req.path2 = "/c";
    req.mode = 0755;
    req.uid = 1000;
    req.gid = kFsUnchanged;
    req.offset = 1ull << 40;
    req.length = kFsToEnd;
    req.depth = 3;
    req.user = "nobody";
    req.window = 1 << 20;
    req.mtime_ns = -5;
    req.size_hint = 77;
    return req;
}

TEST(ProtoFs, RoundTrips) {
    auto payload = encode_fs_request(sample_request());
    ASSERT_TRUE(payload);
    EXPECT_EQ(decode_fs_request(*payload).value(), sample_request());

    FsEntry entry;
    entry.path = "dir/file";
    entry.type = FsType::Symlink;
    entry.mode = 04755;
    entry.uid = 1;
    entry.gid = 2;
    entry.size = 3;
    entry.mtime_ns = -1;
    entry.atime_ns = 2;
    entry.ctime_ns = 3;
    entry.ino = 99;
    entry.nlink = 2;
    entry.rdev = 0x0801;
    entry.link_target = "../x";
    EXPECT_EQ(decode_fs_entry(encode_fs_entry(entry).value()).value(), entry);
    EXPECT_EQ(decode_fs_window(encode(FsWindow{12345})).value(), FsWindow{12345});
    EXPECT_EQ(decode_fs_done(encode_fs_done({7, "/real"}).value()).value(), (FsDone{7, "/real"}));
    EXPECT_EQ(message_type_name(static_cast<uint16_t>(MessageType::FsRequest)), "FS_REQUEST");
    EXPECT_EQ(fs_op_name(static_cast<uint32_t>(FsOp::PutTree)), "put_tree");
    EXPECT_EQ(fs_op_name(999), "op 999");
}

TEST(ProtoFs, RefusesNulsLongPathsAndTruncation) {
    FsRequest req = sample_request();
    req.path = std::string("a\0b", 3);
    EXPECT_FALSE(encode_fs_request(req));
    req.path = std::string(kMaxPath + 1, 'x');
    EXPECT_FALSE(encode_fs_request(req));
    auto payload = encode_fs_request(sample_request()).value();
    for (size_t cut = 0; cut < payload.size(); ++cut)
        EXPECT_FALSE(decode_fs_request(std::span(payload.data(), cut))) << cut;
    // A NUL smuggled into the wire form is refused by the decoder too.
    Writer w;
    w.u32(1);
    w.u32(0);
    w.string(std::string("/x\0y", 4));
    EXPECT_FALSE(decode_fs_request(std::move(w).finish().value()));
}

TEST(ProtoFs, RelativeTreePaths) {
    for (const char* ok : {"", "a", "a/b", "a/.b", "..a", "a/b..", "x y/\xff"})
        EXPECT_TRUE(fs_relative_path_ok(ok)) << ok;
    for (const char* bad : {"/a", "..", ".", "a/..", "a/../b", "a//b", "a/", "./a", "a/./b"})
        EXPECT_FALSE(fs_relative_path_ok(bad)) << bad;
    EXPECT_FALSE(fs_relative_path_ok(std::string("a\0b", 3)));
}

// ---------------------------------------------------------------------------------------------------------
// Raw frames against the real agentd.

class AgentdFs : public ::testing::Test {
  protected:
    void SetUp() override {
        // The fixture's connect() speaks AgentConnection; here we want the bare socket.
        auto conn = agentd_.connect();
        ASSERT_TRUE(conn);
        conn.reset();
        auto addr = unix_address(agentd_.dir() + "/a.sock");
        ASSERT_TRUE(addr);
        fd_ = UniqueFd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        ASSERT_EQ(::connect(fd_.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr), 0);
        test::set_socket_timeout(fd_.get(), 10);
        auto hello = read_frame(fd_.get());
        ASSERT_TRUE(hello);
        ASSERT_EQ(hello->type, static_cast<uint16_t>(MessageType::Hello));
    }

    void send(MessageType type, uint32_t stream, std::vector<uint8_t> payload = {}) {
        ASSERT_TRUE(write_frame(fd_.get(), make_frame(type, stream, std::move(payload))));
    }
    void request(uint32_t stream, FsRequest req) {
        send(MessageType::FsRequest, stream, encode_fs_request(req).value());
    }
    Frame next() {
        auto frame = read_frame(fd_.get());
        EXPECT_TRUE(frame) << frame.error().to_string();
        return frame.value_or(Frame{});
    }
    // Reads until the stream's ERROR; returns its errno (or -1 for an FS_DONE).
    int outcome(uint32_t stream) {
        for (;;) {
            Frame frame = next();
            if (frame.type == 0) return -2;
            if (frame.stream_id != stream) continue;
            if (frame.type == static_cast<uint16_t>(MessageType::FsDone)) return -1;
            if (frame.type == static_cast<uint16_t>(MessageType::Error))
                return decode_error(frame.payload)->errno_value;
        }
    }
    std::string dir() const { return tmp_.path(); }

    test::Agentd agentd_;
    test::TempDir tmp_{"sandlot-agentdfs"};
    UniqueFd fd_;
};

FsRequest make(FsOp op, std::string path) {
    FsRequest req;
    req.op = static_cast<uint32_t>(op);
    req.path = std::move(path);
    req.window = 1 << 20;
    return req;
}

TEST_F(AgentdFs, AFailedWriteEndsTheStreamAndLateFramesAreDropped) {
    request(1, make(FsOp::Write, dir() + "/missing/w"));
    EXPECT_EQ(outcome(1), ENOENT);
    // Data the host sent before it saw the ERROR is dropped quietly; the connection still works.
    send(MessageType::FsData, 1, {1, 2, 3});
    send(MessageType::FsCommit, 1);
    request(2, make(FsOp::Exists, dir()));
    for (;;) {
        Frame frame = next();
        ASSERT_NE(frame.type, 0);
        EXPECT_NE(frame.stream_id, 1u) << message_type_name(frame.type);
        if (frame.stream_id == 2 && frame.type == static_cast<uint16_t>(MessageType::FsDone)) break;
    }
}

TEST_F(AgentdFs, UnsafeTreePathsAreRefused) {
    for (std::string bad : {"../escape", "/abs", "a/../../b"}) {
        SCOPED_TRACE(bad);
        request(3, make(FsOp::PutTree, dir() + "/tree"));
        ASSERT_EQ(next().type, static_cast<uint16_t>(MessageType::FsWindow));
        FsEntry e;
        e.path = bad;
        e.type = FsType::Regular;
        e.mode = 0644;
        send(MessageType::FsEntry, 3, encode_fs_entry(e).value());
        EXPECT_EQ(outcome(3), EINVAL);
        FsEntry link;
        link.path = "h";
        link.type = FsType::Hardlink;
        link.link_target = "../../etc/passwd";
        request(3, make(FsOp::PutTree, dir() + "/tree"));
        ASSERT_EQ(next().type, static_cast<uint16_t>(MessageType::FsWindow));
        send(MessageType::FsEntry, 3, encode_fs_entry(link).value());
        EXPECT_EQ(outcome(3), EINVAL);
    }
    EXPECT_FALSE(std::filesystem::exists(dir() + "/escape"));
}

TEST_F(AgentdFs, StrayFramesCancelAndTinyWindows) {
    send(MessageType::FsData, 77, {1});
    EXPECT_EQ(outcome(77), EBADF);
    FsRequest tiny = make(FsOp::List, dir());
    tiny.window = 10;
    request(4, tiny);
    EXPECT_EQ(outcome(4), EINVAL);
    request(5, make(FsOp::Write, dir() + "/c"));
    ASSERT_EQ(next().type, static_cast<uint16_t>(MessageType::FsWindow));
    send(MessageType::FsData, 5, {'a', 'b'});
    send(MessageType::FsCancel, 5);
    EXPECT_EQ(outcome(5), ECANCELED);
    EXPECT_FALSE(std::filesystem::exists(dir() + "/c"));
    // A stream id that is busy cannot be reused for a second request.
    request(6, make(FsOp::Write, dir() + "/d"));
    ASSERT_EQ(next().type, static_cast<uint16_t>(MessageType::FsWindow));
    request(6, make(FsOp::Exists, dir()));
    EXPECT_EQ(outcome(6), EINVAL);
    send(MessageType::FsCommit, 6);
    EXPECT_EQ(outcome(6), -1);
    EXPECT_TRUE(std::filesystem::exists(dir() + "/d"));
    // An undecodable request is answered, not fatal.
    send(MessageType::FsRequest, 8, {1, 2});
    Frame error = next();
    EXPECT_EQ(error.type, static_cast<uint16_t>(MessageType::Error));
    request(9, make(FsOp::Exists, dir()));
    EXPECT_EQ(outcome(9), -1);
}

TEST_F(AgentdFs, ATreeFileWithMissingDataIsNotCommitted) {
    request(10, make(FsOp::PutTree, dir() + "/t"));
    ASSERT_EQ(next().type, static_cast<uint16_t>(MessageType::FsWindow));
    FsEntry root;
    root.type = FsType::Directory;
    root.mode = 0755;
    send(MessageType::FsEntry, 10, encode_fs_entry(root).value());
    FsEntry file;
    file.path = "f";
    file.type = FsType::Regular;
    file.mode = 0644;
    file.size = 10;
    send(MessageType::FsEntry, 10, encode_fs_entry(file).value());
    send(MessageType::FsData, 10, {'1', '2', '3'});
    send(MessageType::FsCommit, 10);
    EXPECT_EQ(outcome(10), EPROTO);
    EXPECT_FALSE(std::filesystem::exists(dir() + "/t/f"));
}

}  // namespace
}  // namespace sandlot::proto
