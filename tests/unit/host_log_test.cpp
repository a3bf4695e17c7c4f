// Per-sandbox JSONL logs: the line format, seq numbering across writers and processes, rotation, queries,
// following, and the --since/--until/--max-duration parsers.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "host/lib/sandbox_log.h"
#include "tests/support/temp_dir.h"

namespace sandlot::host {
namespace {

using namespace std::chrono_literals;
using test::TempDir;

constexpr int64_t kNov22 = 1'795'341'600LL * 1'000'000'000;  // 2026-11-22T10:00:00Z

std::span<const uint8_t> bytes(std::string_view text) {
    return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

std::unique_ptr<LogWriter> open_writer(const std::string& dir, LogLimits limits = {}) {
    auto writer = LogWriter::open(dir, limits);
    EXPECT_TRUE(writer) << writer.error().to_string();
    return writer ? std::move(*writer) : nullptr;
}

std::vector<LogRecord> read_all(const std::string& dir, LogQuery query = {}) {
    auto records = read_logs(dir, query);
    EXPECT_TRUE(records) << records.error().to_string();
    return records ? *records : std::vector<LogRecord>{};
}

std::vector<uint64_t> seqs(const std::vector<LogRecord>& records) {
    std::vector<uint64_t> out;
    for (const auto& r : records)
        out.push_back(r.seq);
    return out;
}

std::vector<uint64_t> range(uint64_t first, uint64_t last) {
    std::vector<uint64_t> out;
    for (uint64_t s = first; s <= last; ++s)
        out.push_back(s);
    return out;
}

// Writes records as lines, the way a writer would, with chosen seqs and times.
void write_lines(const std::string& path, const std::vector<LogRecord>& records,
                 const std::string& extra = "") {
    std::ofstream out(path, std::ios::binary | std::ios::app);
    for (const auto& r : records)
        out << to_json_line(r) << "\n";
    out << extra;
}

int64_t thread_cpu_ns() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1'000'000'000LL + ts.tv_nsec;
}

TEST(HostLog, SourceNames) {
    for (auto s : {LogSource::Stdout, LogSource::Stderr, LogSource::Output, LogSource::System})
        EXPECT_EQ(parse_log_source(log_source_name(s)), s);
    EXPECT_EQ(log_source_name(LogSource::Output), "output");
    EXPECT_FALSE(parse_log_source("STDOUT"));
}

TEST(HostLog, JsonLineFormat) {
    LogRecord r{
        .seq = 7, .time_ns = kNov22 + 123456789, .source = LogSource::Stdout, .session = "s1", .data = "hi"};
    EXPECT_EQ(
        to_json_line(r),
        R"({"seq":7,"time":"2026-11-22T10:00:00.123456789Z","source":"stdout","session":"s1","data":"hi"})");
    LogRecord sys{.seq = 1, .time_ns = kNov22, .source = LogSource::System, .event = "boot", .data = ""};
    EXPECT_EQ(
        to_json_line(sys),
        R"({"seq":1,"time":"2026-11-22T10:00:00.000000000Z","source":"system","event":"boot","data":""})");
}

TEST(HostLog, JsonRoundTripTextWithNulAndNewlines) {
    LogRecord r{.seq = 42,
                .time_ns = kNov22 + 5,
                .source = LogSource::Output,
                .session = "abc",
                .event = "exec",
                .data = std::string("line1\nline2\r\n\0tab\t\"q\" \\ é ✓ 😀\x7f", 36)};
    std::string line = to_json_line(r);
    EXPECT_EQ(line.find('\n'), std::string::npos);
    EXPECT_NE(line.find("\"data\":"), std::string::npos);
    auto back = parse_json_line(line);
    ASSERT_TRUE(back) << back.error().message;
    EXPECT_EQ(*back, r);
    EXPECT_EQ(back->data.size(), 36u);
}

TEST(HostLog, InvalidUtf8GoesToBase64Exactly) {
    std::string all;
    for (int b = 0; b < 256; ++b)
        all += static_cast<char>(b);
    for (std::string data :
         {std::string("\xff"), std::string("ok \xc0\x80 overlong"), std::string("\xed\xa0\x80"),
          std::string("\xf4\x90\x80\x80"), std::string("cut \xe2\x9c"), std::string("a\0\xfe", 3), all}) {
        LogRecord r{.seq = 3, .time_ns = kNov22, .source = LogSource::Stderr, .data = data};
        std::string line = to_json_line(r);
        EXPECT_NE(line.find("\"data_base64\":"), std::string::npos) << line;
        EXPECT_EQ(line.find("\"data\":"), std::string::npos) << line;
        auto back = parse_json_line(line);
        ASSERT_TRUE(back) << back.error().message;
        EXPECT_EQ(back->data, data);
    }
    // Base64 of every length mod 3.
    for (std::string data : {"\xff", "\xff\xfe", "\xff\xfe\xfd", "\xff\xfe\xfd\xfc"}) {
        auto back = parse_json_line(to_json_line({.seq = 1, .time_ns = 0, .data = data}));
        ASSERT_TRUE(back);
        EXPECT_EQ(back->data, data);
    }
}

TEST(HostLog, ParseRejectsBadLines) {
    const char* bad[] = {
        "",
        "not json",
        "[1,2]",
        R"({"time":"2026-11-22T10:00:00Z","source":"stdout","data":""})",
        R"({"seq":-1,"time":"2026-11-22T10:00:00Z","source":"stdout","data":""})",
        R"({"seq":"1","time":"2026-11-22T10:00:00Z","source":"stdout","data":""})",
        R"({"seq":1,"time":"yesterday","source":"stdout","data":""})",
        R"({"seq":1,"time":"2026-11-22T10:00:00Z","source":"nowhere","data":""})",
        R"({"seq":1,"time":"2026-11-22T10:00:00Z","source":"stdout"})",
        R"({"seq":1,"time":"2026-11-22T10:00:00Z","source":"stdout","data_base64":"abc"})",
        R"({"seq":1,"time":"2026-11-22T10:00:00Z","source":"stdout","data_base64":"a=bc"})",
        R"({"seq":1,"time":"2026-11-22T10:00:00Z","source":"stdout","data":5})",
        "{\"seq\":1,\"time\":\"2026-11-22T10:00:00Z\",\"source\":\"stdout\",\"data\":\"\xff\"}",
    };
    for (const char* line : bad)
        EXPECT_FALSE(parse_json_line(line)) << line;
    auto good =
        parse_json_line(R"({"seq":1,"time":"2026-11-22T12:00:00+02:00","source":"stdout","data":"x"})");
    ASSERT_TRUE(good);
    EXPECT_EQ(good->time_ns, kNov22);
}

TEST(HostLog, WriterCreatesDirAndNumbersFromOne) {
    TempDir tmp("hostlog");
    std::string dir = tmp / "logs";
    EXPECT_TRUE(read_all(dir).empty());  // missing dir: no records
    auto writer = open_writer(dir);
    ASSERT_TRUE(writer);
    EXPECT_EQ(writer->system("boot", "booting"), 1u);
    EXPECT_EQ(writer->append(LogSource::Stdout, "s", "", bytes("out")), 2u);
    auto records = read_all(dir);
    ASSERT_EQ(records.size(), 2u);
    EXPECT_EQ(records[0].event, "boot");
    EXPECT_EQ(records[0].data, "booting");
    EXPECT_EQ(records[0].source, LogSource::System);
    EXPECT_EQ(records[1].session, "s");
    EXPECT_EQ(records[1].data, "out");
    EXPECT_LE(records[0].time_ns, records[1].time_ns);
}

TEST(HostLog, SeqMonotonicAcrossWriterInstances) {
    TempDir tmp("hostlog");
    auto a = open_writer(tmp.path());
    auto b = open_writer(tmp.path());
    ASSERT_TRUE(a && b);
    for (uint64_t i = 1; i <= 20; ++i)
        EXPECT_EQ((i % 2 ? a : b)->append(LogSource::Stdout, "", "", bytes("x")), i);
    a.reset();
    auto c = open_writer(tmp.path());  // a new writer later continues the numbering
    EXPECT_EQ(c->system("again", ""), 21u);
    EXPECT_EQ(seqs(read_all(tmp.path())), range(1, 21));
}

TEST(HostLog, SeqRecoversFromLostSeqFile) {
    TempDir tmp("hostlog");
    auto writer = open_writer(tmp.path());
    for (int i = 0; i < 5; ++i)
        ASSERT_TRUE(writer->system("e", "x"));
    std::ofstream(tmp / "seq", std::ios::trunc) << "garbage";
    EXPECT_EQ(writer->system("e", "x"), 6u);
}

TEST(HostLog, ThreadsShareOneWriter) {
    TempDir tmp("hostlog");
    auto writer = open_writer(tmp.path());
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < 100; ++i)
                ASSERT_TRUE(writer->append(LogSource::Stdout, "", "", bytes("thread data")));
        });
    for (auto& t : threads)
        t.join();
    EXPECT_EQ(seqs(read_all(tmp.path())), range(1, 400));
}

// Child processes (forked before this test makes any thread) and the parent write at once, with rotation;
// half the children use the writer they inherited, half open their own. Nothing may be lost, duplicated or
// torn.
TEST(HostLog, ForkedWritersShareSeqWithoutLossOrTearing) {
    TempDir tmp("hostlog");
    LogLimits limits{.max_file_bytes = 256 * 1024, .keep_rotated = 100};
    auto inherited = open_writer(tmp.path(), limits);
    ASSERT_TRUE(inherited);
    constexpr int kChildren = 4, kPerChild = 150;
    std::string big(70 * 1024, 'B');  // split into two records
    std::vector<pid_t> children;
    for (int k = 0; k < kChildren; ++k) {
        pid_t pid = fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            std::unique_ptr<LogWriter> own;
            if (k % 2) {
                auto opened = LogWriter::open(tmp.path(), limits);
                if (!opened) _exit(2);
                own = std::move(*opened);
            }
            LogWriter& w = own ? *own : *inherited;
            for (int i = 0; i < kPerChild; ++i) {
                std::string text = "child " + std::to_string(k) + " record " + std::to_string(i) + " ";
                if (i % 25 == 0) text += big;
                if (!w.append(LogSource::Stdout, std::to_string(k), "", bytes(text))) _exit(3);
            }
            _exit(0);
        }
        children.push_back(pid);
    }
    for (int i = 0; i < kPerChild; ++i)
        ASSERT_TRUE(inherited->append(LogSource::Stderr, "parent", "", bytes("parent " + std::to_string(i))));
    for (pid_t pid : children) {
        int status = 0;
        ASSERT_EQ(waitpid(pid, &status, 0), pid);
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    }
    // Every line of every file parses.
    size_t lines = 0;
    for (const auto& entry : std::filesystem::directory_iterator(tmp.path())) {
        if (!entry.path().filename().string().starts_with("sandbox.jsonl")) continue;
        std::ifstream in(entry.path(), std::ios::binary);
        for (std::string line; std::getline(in, line); ++lines)
            EXPECT_TRUE(parse_json_line(line)) << entry.path() << ": " << line.substr(0, 100);
    }
    size_t splits = kChildren * (kPerChild / 25);
    size_t total = (kChildren + 1) * kPerChild + splits;
    EXPECT_EQ(lines, total);
    auto records = read_all(tmp.path());
    EXPECT_EQ(seqs(records), range(1, total));
    // Each writer's records appear in its own order with intact payloads.
    std::map<std::string, std::string> joined;  // session -> concatenated data
    for (const auto& r : records)
        joined[r.session] += r.data;
    for (int k = 0; k < kChildren; ++k) {
        std::string expected;
        for (int i = 0; i < kPerChild; ++i)
            expected +=
                "child " + std::to_string(k) + " record " + std::to_string(i) + " " + (i % 25 ? "" : big);
        EXPECT_EQ(joined[std::to_string(k)], expected) << "child " << k;
    }
    EXPECT_EQ(joined["parent"].substr(0, 16), "parent 0parent 1");
}

TEST(HostLog, LargeDataIsSplitIntoRecords) {
    TempDir tmp("hostlog");
    auto writer = open_writer(tmp.path());
    std::string data(200 * 1024, 'a');
    EXPECT_EQ(writer->append(LogSource::Stdout, "", "", bytes(data)), 4u);
    auto records = read_all(tmp.path());
    ASSERT_EQ(records.size(), 4u);
    std::string joined;
    for (const auto& r : records) {
        EXPECT_LE(r.data.size(), 64u * 1024);
        joined += r.data;
    }
    EXPECT_EQ(joined, data);
    // A split never cuts a UTF-8 character: each piece stays text.
    std::string text = "a";
    while (text.size() < 100 * 1024)
        text += "é";
    EXPECT_EQ(writer->append(LogSource::Stdout, "", "", bytes(text)), 6u);
    records = read_all(tmp.path(), {.after_seq = 4});
    ASSERT_EQ(records.size(), 2u);
    EXPECT_EQ(records[0].data.size(), 64u * 1024 - 1);
    EXPECT_EQ(records[0].data + records[1].data, text);
    std::ifstream in(tmp / "sandbox.jsonl");
    std::stringstream all;
    all << in.rdbuf();
    EXPECT_EQ(all.str().find("data_base64"), std::string::npos);
}

TEST(HostLog, RotationKeepsAtMostKeepRotatedFiles) {
    TempDir tmp("hostlog");
    auto writer = open_writer(tmp.path(), {.max_file_bytes = 4096, .keep_rotated = 2});
    for (int i = 0; i < 300; ++i)
        ASSERT_TRUE(writer->append(LogSource::Stdout, "", "", bytes("record number " + std::to_string(i))));
    std::set<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(tmp.path())) {
        names.insert(entry.path().filename().string());
        if (entry.path().filename().string().starts_with("sandbox.jsonl")) {
            EXPECT_LE(entry.file_size(), 4096u);
        }
    }
    EXPECT_EQ(names,
              (std::set<std::string>{".lock", "seq", "sandbox.jsonl", "sandbox.jsonl.1", "sandbox.jsonl.2"}));
    auto records = read_all(tmp.path());
    ASSERT_GT(records.size(), 50u);
    ASSERT_LT(records.size(), 300u);
    EXPECT_EQ(seqs(records), range(300 - records.size() + 1, 300));
    EXPECT_EQ(records.back().data, "record number 299");
}

TEST(HostLog, QueriesFilterByCursorTimeSourceAndTail) {
    TempDir tmp("hostlog");
    // Two rotated files and the current one, written by hand with known times.
    std::vector<LogRecord> all;
    for (uint64_t s = 1; s <= 12; ++s)
        all.push_back(
            {.seq = s,
             .time_ns = kNov22 + static_cast<int64_t>(s) * 1'000'000'000,
             .source = s % 3 == 0 ? LogSource::System : (s % 2 ? LogSource::Stdout : LogSource::Stderr),
             .data = "r" + std::to_string(s)});
    write_lines(tmp / "sandbox.jsonl.2", {all.begin(), all.begin() + 4});
    write_lines(tmp / "sandbox.jsonl.1", {all.begin() + 4, all.begin() + 8});
    write_lines(tmp / "sandbox.jsonl", {all.begin() + 8, all.end()});
    EXPECT_EQ(read_all(tmp.path()), all);
    EXPECT_EQ(seqs(read_all(tmp.path(), {.tail = 3})), (std::vector<uint64_t>{10, 11, 12}));
    EXPECT_TRUE(read_all(tmp.path(), {.tail = 0}).empty());
    EXPECT_EQ(seqs(read_all(tmp.path(), {.after_seq = 9})), (std::vector<uint64_t>{10, 11, 12}));
    EXPECT_EQ(
        seqs(read_all(tmp.path(), {.since_ns = kNov22 + 3'000'000'000, .until_ns = kNov22 + 5'000'000'000})),
        (std::vector<uint64_t>{3, 4, 5}));
    EXPECT_EQ(seqs(read_all(tmp.path(), {.sources = {LogSource::System}})),
              (std::vector<uint64_t>{3, 6, 9, 12}));
    EXPECT_EQ(seqs(read_all(tmp.path(), {.sources = {LogSource::Stdout, LogSource::Stderr}, .tail = 2})),
              (std::vector<uint64_t>{10, 11}));
    EXPECT_EQ(
        seqs(read_all(
            tmp.path(),
            {.after_seq = 2, .until_ns = kNov22 + 6'000'000'000, .sources = {LogSource::Stdout}, .tail = 1})),
        (std::vector<uint64_t>{5}));
}

TEST(HostLog, CorruptLinesAreSkipped) {
    TempDir tmp("hostlog");
    LogRecord a{.seq = 1, .time_ns = kNov22, .source = LogSource::Stdout, .data = "a"};
    LogRecord b{.seq = 2, .time_ns = kNov22, .source = LogSource::Stdout, .data = "b"};
    write_lines(tmp / "sandbox.jsonl", {a}, "{\"seq\":garbage\n\n\xff\xfe\n");
    write_lines(tmp / "sandbox.jsonl", {b}, R"({"seq":3,"time":"2026-11-22T10:00:00Z","source":"std)");
    EXPECT_EQ(read_all(tmp.path()), (std::vector<LogRecord>{a, b}));  // the unfinished last line too
    // A writer ends the unfinished line before appending, so its record survives.
    auto writer = open_writer(tmp.path());
    EXPECT_EQ(writer->system("after", "crash"), 3u);
    auto records = read_all(tmp.path());
    ASSERT_EQ(records.size(), 3u);
    EXPECT_EQ(records[2].event, "after");
}

TEST(HostLog, FollowerReturnsNewRecordsAndResumes) {
    TempDir tmp("hostlog");
    auto writer = open_writer(tmp.path());
    for (int i = 0; i < 3; ++i)
        ASSERT_TRUE(writer->system("old", std::to_string(i)));
    auto follower = LogFollower::open(tmp.path(), {.tail = 2});
    ASSERT_TRUE(follower) << follower.error().to_string();
    auto first = (*follower)->next(0ms);
    ASSERT_TRUE(first);
    EXPECT_EQ(seqs(*first), (std::vector<uint64_t>{2, 3}));  // tail applies to the first batch
    EXPECT_EQ((*follower)->cursor(), 3u);

    // A record written while the follower waits wakes it well before the wait ends.
    std::thread late([&] {
        std::this_thread::sleep_for(100ms);  // lets next() reach its wait; the result does not depend on it
        ASSERT_TRUE(writer->append(LogSource::Stdout, "x", "", bytes("late")));
    });
    auto start = std::chrono::steady_clock::now();
    auto batch = (*follower)->next(10s);
    late.join();
    ASSERT_TRUE(batch);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
    ASSERT_EQ(batch->size(), 1u);
    EXPECT_EQ((*batch)[0].data, "late");
    EXPECT_EQ((*follower)->cursor(), 4u);

    // Resume from a cursor in a new follower: only what came after it.
    for (int i = 0; i < 3; ++i)
        ASSERT_TRUE(writer->system("new", std::to_string(i)));
    auto resumed = LogFollower::open(tmp.path(), {.after_seq = (*follower)->cursor()});
    ASSERT_TRUE(resumed);
    auto rest = (*resumed)->next(0ms);
    ASSERT_TRUE(rest);
    EXPECT_EQ(seqs(*rest), (std::vector<uint64_t>{5, 6, 7}));
}

TEST(HostLog, FollowerWaitsWithoutBurningCpu) {
    TempDir tmp("hostlog");
    auto writer = open_writer(tmp.path());
    ASSERT_TRUE(writer->system("boot", ""));
    auto follower = LogFollower::open(tmp.path(), {.after_seq = 1});
    ASSERT_TRUE(follower);
    auto cpu_before = thread_cpu_ns();
    auto start = std::chrono::steady_clock::now();
    auto batch = (*follower)->next(300ms);
    auto elapsed = std::chrono::steady_clock::now() - start;
    ASSERT_TRUE(batch);
    EXPECT_TRUE(batch->empty());
    EXPECT_GE(elapsed, 299ms);
    EXPECT_LT(thread_cpu_ns() - cpu_before, 50'000'000);  // well under the 300 ms waited
    EXPECT_EQ((*follower)->cursor(), 1u);
}

TEST(HostLog, FollowerSurvivesRotation) {
    TempDir tmp("hostlog");
    auto writer = open_writer(tmp.path(), {.max_file_bytes = 2048, .keep_rotated = 50});
    auto follower = LogFollower::open(tmp.path(), {.sources = {LogSource::Stdout}});
    ASSERT_TRUE(follower);
    std::vector<LogRecord> got;
    uint64_t written = 0;
    // Between reads: nothing, part of a file, several rotations.
    for (int burst : {0, 5, 30, 1, 120, 7}) {
        for (int i = 0; i < burst; ++i) {
            ASSERT_TRUE(
                writer->append(LogSource::Stdout, "", "", bytes("payload " + std::to_string(++written))));
            if (i % 10 == 0) {
                ASSERT_TRUE(writer->system("noise", "filtered out"));
            }
        }
        auto batch = (*follower)->next(0ms);
        ASSERT_TRUE(batch) << batch.error().to_string();
        got.insert(got.end(), batch->begin(), batch->end());
    }
    ASSERT_GT(std::distance(std::filesystem::directory_iterator(tmp.path()), {}), 5);  // it did rotate
    ASSERT_EQ(got.size(), written);
    for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_EQ(got[i].data, "payload " + std::to_string(i + 1));
        if (i) {
            EXPECT_GT(got[i].seq, got[i - 1].seq);
        }
    }
    EXPECT_EQ((*follower)->cursor(), got.back().seq);
}

TEST(HostLog, FollowerNeedsTheDirectory) {
    TempDir tmp("hostlog");
    auto follower = LogFollower::open(tmp / "missing", {});
    ASSERT_FALSE(follower);
    EXPECT_NE(follower.error().message.find("missing"), std::string::npos);
}

TEST(HostLog, ParseTimeArg) {
    const int64_t now = kNov22 + 777;
    auto ok = [&](std::string_view text) {
        auto t = parse_time_arg(text, now);
        EXPECT_TRUE(t) << text << ": " << t.error().message;
        return t.value_or(-1);
    };
    EXPECT_EQ(ok("2026-11-22T10:00:00Z"), kNov22);
    EXPECT_EQ(ok("2026-11-22t10:00:00z"), kNov22);
    EXPECT_EQ(ok("2026-11-22T10:00:00.5Z"), kNov22 + 500'000'000);
    EXPECT_EQ(ok("2026-11-22T10:00:00.123456789123Z"), kNov22 + 123'456'789);
    EXPECT_EQ(ok("2026-11-22T11:30:00+01:30"), kNov22);
    EXPECT_EQ(ok("2026-11-22T05:00:00-05:00"), kNov22);
    EXPECT_EQ(ok("1970-01-01T00:00:00Z"), 0);
    EXPECT_EQ(ok("2024-02-29T00:00:00Z"), 1'709'164'800LL * 1'000'000'000);
    EXPECT_EQ(ok("10s"), now - 10'000'000'000);
    EXPECT_EQ(ok("5m"), now - 300'000'000'000);
    EXPECT_EQ(ok("1h30m"), now - 5'400'000'000'000);
    EXPECT_EQ(ok("250ms"), now - 250'000'000);
    EXPECT_EQ(ok("2d"), now - 172'800'000'000'000);
    for (std::string_view bad :
         {"", "yesterday", "10", "10x", "-5m", "2026-11-22", "2026-11-22T10:00:00", "2026-13-01T00:00:00Z",
          "2025-02-29T00:00:00Z", "2026-11-22T24:00:00Z", "2026-11-22T10:00:00.Z", "2026-11-22T10:00:00+0100",
          "2026-11-22T10:00:00Z ", "99999999999999999999s", "1h\nrm -rf"}) {
        auto t = parse_time_arg(bad, now);
        ASSERT_FALSE(t) << bad;
        const std::string& message = t.error().message;
        EXPECT_EQ(message.find('\n'), std::string::npos) << message;
        EXPECT_TRUE(message.starts_with("invalid time \"")) << message;
        if (bad.find('\n') == std::string_view::npos) {
            EXPECT_NE(message.find(bad), std::string::npos) << message;
        }
    }
    EXPECT_NE(parse_time_arg("1h\nrm -rf", now).error().message.find("\"1h\\x0arm -rf\""), std::string::npos);
}

TEST(HostLog, ParseDuration) {
    auto ms = [](std::string_view text) {
        auto d = parse_duration(text);
        EXPECT_TRUE(d) << text << ": " << d.error().message;
        return d.value_or(0ms).count();
    };
    EXPECT_EQ(ms("3s"), 3000);
    EXPECT_EQ(ms("500ms"), 500);
    EXPECT_EQ(ms("2m"), 120'000);
    EXPECT_EQ(ms("1h30m"), 5'400'000);
    EXPECT_EQ(ms("2d"), 172'800'000);
    EXPECT_EQ(ms("5"), 5000);
    EXPECT_EQ(ms("1m30s250ms"), 90'250);
    for (std::string_view bad : {"", "0", "0s", "0ms0s", "-1s", "1.5s", "s", "10x", "10 s", "5S", "1h30",
                                 "30m5", "99999999999999999999", "36501d", "3s\x1b[2J"}) {
        auto d = parse_duration(bad);
        ASSERT_FALSE(d) << bad;
        const std::string& message = d.error().message;
        EXPECT_TRUE(message.starts_with("invalid duration \"")) << message;
        EXPECT_EQ(message.find('\n'), std::string::npos);
        EXPECT_EQ(message.find('\x1b'), std::string::npos) << message;
        if (bad.find('\x1b') == std::string_view::npos) {
            EXPECT_NE(message.find(bad), std::string::npos) << message;
        }
    }
    EXPECT_NE(parse_duration("0s").error().message.find("more than zero"), std::string::npos);
}

}  // namespace
}  // namespace sandlot::host
