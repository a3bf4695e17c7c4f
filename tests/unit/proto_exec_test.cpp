// Exec session messages (proto/exec.h): golden bytes, round trips, limits and hostile payloads.
#include <gtest/gtest.h>

#include "proto/codec.h"
#include "proto/exec.h"
#include "tests/support/bytes.h"

namespace sandlot::proto {
namespace {

using test::Bytes;
using test::concat;

// A short string field: u32 length, then the bytes.
Bytes str(std::string_view s) {
    return concat({{static_cast<uint8_t>(s.size()), 0, 0, 0}, test::ascii(s)});
}

ExecStart sample_start() {
    ExecStart msg;
    msg.flags = kExecPty | kExecStdin;
    msg.argv = {"sh", "-c"};
    msg.env = {"A=1"};
    msg.cwd = "/tmp";
    msg.user = "1000:1000";
    msg.rlimits = {Rlimit{7, 64, kRlimInfinity}};
    msg.timeout_ms = 1500;
    msg.pty_rows = 40;
    msg.pty_cols = 120;
    msg.output_window = 0x100000;
    return msg;
}

const Bytes kSampleStart = concat({
    {0x03, 0x00, 0x00, 0x00},  // flags: pty | stdin
    {0x02, 0x00, 0x00, 0x00},  // argc
    str("sh"),
    str("-c"),
    {0x01, 0x00, 0x00, 0x00},  // envc
    str("A=1"),
    str("/tmp"),               // cwd
    str("1000:1000"),          // user
    {0x01, 0x00, 0x00, 0x00},  // rlimit count
    {0x07, 0x00, 0x00, 0x00},  // RLIMIT_NOFILE
    {0x40, 0, 0, 0, 0, 0, 0, 0},
    {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
    {0xdc, 0x05, 0, 0, 0, 0, 0, 0},  // timeout_ms 1500
    {0x28, 0x00},                    // rows 40
    {0x78, 0x00},                    // cols 120
    {0x00, 0x00, 0x10, 0x00},        // output_window 1 MiB
});

TEST(ProtoExec, ExecStartGoldenBytesAndRoundTrip) {
    EXPECT_EQ(encode_exec_start(sample_start()).value(), kSampleStart);
    EXPECT_EQ(decode_exec_start(kSampleStart).value(), sample_start());
}

TEST(ProtoExec, SmallMessagesGoldenBytes) {
    EXPECT_EQ(encode(ExecStarted{0x1234, 0x40000}), (Bytes{0x34, 0x12, 0, 0, 0, 0, 0x04, 0}));
    EXPECT_EQ(encode(OutputEof{kChannelStderr}), (Bytes{0x02}));
    EXPECT_EQ(encode(Window{0x10000}), (Bytes{0, 0, 0x01, 0}));
    EXPECT_EQ(encode(Signal{15}), (Bytes{0x0f, 0, 0, 0}));
    EXPECT_EQ(encode(Resize{50, 132}), (Bytes{0x32, 0, 0x84, 0}));
    EXPECT_EQ(encode(Exit{-1, 9, 1, 0, 1}), (Bytes{0xff, 0xff, 0xff, 0xff, 0x09, 0, 0, 0, 1, 0, 1}));
    EXPECT_EQ(make_frame(Exit{}, 7).type, 0x010b);
    EXPECT_EQ(make_frame(Exit{}, 7).stream_id, 7u);
}

TEST(ProtoExec, SmallMessagesRoundTrip) {
    EXPECT_EQ(decode_exec_started(encode(ExecStarted{77, 5})).value(), (ExecStarted{77, 5}));
    EXPECT_EQ(decode_output_eof(encode(OutputEof{kChannelStdout})).value(), OutputEof{kChannelStdout});
    EXPECT_EQ(decode_window(encode(Window{UINT32_MAX})).value(), Window{UINT32_MAX});
    EXPECT_EQ(decode_signal(encode(Signal{64})).value(), Signal{64});
    EXPECT_EQ(decode_resize(encode(Resize{1, 65535})).value(), (Resize{1, 65535}));
    Exit exit{3, 0, 0, 1, 0};
    EXPECT_EQ(decode_exit(encode(exit)).value(), exit);
}

TEST(ProtoExec, ExecStartTruncatedAtEveryOffsetFails) {
    for (size_t n = 0; n < kSampleStart.size(); ++n) {
        auto msg = decode_exec_start(std::span(kSampleStart).first(n));
        EXPECT_FALSE(msg) << "decoded an EXEC_START cut to " << n << " bytes";
        if (!msg) {
            EXPECT_NE(msg.error().message.find("decode EXEC_START"), std::string::npos);
        }
    }
}

TEST(ProtoExec, HostileCountsAreRejectedBeforeAllocating) {
    // argc of 4 billion in a 12-byte payload.
    EXPECT_FALSE(decode_exec_start(Bytes{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}));
    // argc just over the limit.
    Writer w;
    w.u32(0);
    w.u32(kMaxExecArgs + 1);
    for (size_t i = 0; i <= kMaxExecArgs; ++i)
        w.string("");
    auto over = decode_exec_start(std::move(w).finish().value());
    ASSERT_FALSE(over);
    EXPECT_NE(over.error().message.find("over the limit"), std::string::npos);
}

TEST(ProtoExec, BadRequestsAreRefusedBothWays) {
    ExecStart empty = sample_start();
    empty.argv.clear();
    EXPECT_FALSE(encode_exec_start(empty));

    ExecStart nul = sample_start();
    nul.argv[1] = std::string("a\0b", 3);
    EXPECT_FALSE(encode_exec_start(nul));

    ExecStart bad_env = sample_start();
    bad_env.env = {"NOEQUALS"};
    EXPECT_FALSE(encode_exec_start(bad_env));

    ExecStart huge = sample_start();
    huge.argv.push_back(std::string(kMaxFramePayload, 'x'));
    auto too_big = encode_exec_start(huge);
    ASSERT_FALSE(too_big);
    EXPECT_NE(too_big.error().message.find("do not fit"), std::string::npos);

    // The decoder refuses what the encoder would never produce.
    Bytes zero_argc = concat({{0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}, str(""), str("")});
    EXPECT_FALSE(decode_exec_start(zero_argc));
    Bytes nul_arg = concat({{0, 0, 0, 0}, {1, 0, 0, 0}, str(std::string_view("a\0", 2))});
    EXPECT_FALSE(decode_exec_start(nul_arg));
}

TEST(ProtoExec, InvalidFieldValuesFail) {
    EXPECT_FALSE(decode_output_eof(Bytes{3}));
    EXPECT_FALSE(decode_signal(encode(Signal{0})));
    EXPECT_FALSE(decode_signal(encode(Signal{65})));
    EXPECT_FALSE(decode_exit(Bytes{0, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
    EXPECT_FALSE(decode_window(Bytes{1, 2, 3}));
}

TEST(ProtoExec, NamesForErrorsAndFeatures) {
    EXPECT_EQ(spawn_error_kind_name(static_cast<uint32_t>(SpawnErrorKind::NotFound)), "not found");
    EXPECT_EQ(spawn_error_kind_name(99), "error kind 99");
    EXPECT_EQ(feature_name(kFeaturePty), "pty");
}

}  // namespace
}  // namespace sandlot::proto
