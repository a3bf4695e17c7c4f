// Per-sandbox logs: JSON lines in DIR/sandbox.jsonl, rotated to sandbox.jsonl.1, .2, ... (.1 is the newest
// rotated file). Written by any number of processes at once (the supervisor, `sandlot exec` clients), read by
// `sandlot logs`. DIR also holds `.lock` (flock serialising writers) and `seq` (the last seq handed out, in
// decimal), so seq numbers are unique and increasing across writers and rotations.
// Threading: a LogWriter is thread-safe and may be inherited across fork (the child takes its own lock
// description on first use). A LogFollower is used from one thread at a time. The free functions are
// reentrant.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "proto/base/error.h"
#include "proto/base/unique_fd.h"

namespace sandlot::host {

enum class LogSource { Stdout, Stderr, Output, System };  // Output: PTY output (stdout+stderr merged)
std::string_view log_source_name(LogSource);              // "stdout" "stderr" "output" "system"
std::optional<LogSource> parse_log_source(std::string_view);

struct LogRecord {
    uint64_t seq = 0;     // 1, 2, 3... per sandbox, across writers and rotation: the resume cursor
    int64_t time_ns = 0;  // unix ns (CLOCK_REALTIME)
    LogSource source = LogSource::System;
    std::string session{};  // exec session id ("" for system records)
    std::string event{};    // System: "boot", "ready", "stop", "crash", "console", "exec", "exit", ...
    std::string data{};     // raw bytes (any bytes)
    bool operator==(const LogRecord&) const = default;
};

// One JSON object per line: {"seq":N,"time":"2026-11-22T10:00:00.123456789Z","source":"stdout",
// "session":"...","event":"...","data":"..."}. "data" when the data is valid UTF-8, else "data_base64" with
// the exact bytes. session/event are omitted when empty.
std::string to_json_line(const LogRecord&);  // no trailing newline
Result<LogRecord> parse_json_line(std::string_view line);

struct LogLimits {
    uint64_t max_file_bytes = 8u << 20;
    unsigned keep_rotated = 3;
};

// Appends records to DIR/sandbox.jsonl (DIR is created if missing; its parent must exist). Each append takes
// flock on DIR/.lock, takes the next seqs from DIR/seq, reopens the file if another writer rotated it,
// rotates when the file would pass max_file_bytes, and writes each record as one line with one write(2). Data
// over 64 KiB is split into several records (at a UTF-8 character boundary where there is one).
class LogWriter {
  public:
    static constexpr size_t kMaxRecordData = 64 * 1024;

    static Result<std::unique_ptr<LogWriter>> open(const std::string& dir, LogLimits limits = {});
    // Returns the seq of the last record written.
    Result<uint64_t> append(LogSource source, std::string_view session, std::string_view event,
                            std::span<const uint8_t> data);
    Result<uint64_t> system(std::string_view event, std::string_view text);  // a System record

  private:
    LogWriter(std::string dir, LogLimits limits, UniqueFd lock, UniqueFd seq);
    Result<uint64_t> reserve_seqs(uint64_t count);
    Result<void> prepare_file(size_t line_bytes);
    Result<void> write_line(const std::string& line);

    std::string dir_;
    LogLimits limits_;
    std::mutex mutex_;
    pid_t pid_;  // the process that opened lock_: a forked child re-opens it
    UniqueFd lock_, seq_;
    UniqueFd file_;  // DIR/sandbox.jsonl as last opened (O_APPEND)
    dev_t file_dev_ = 0;
    ino_t file_ino_ = 0;
    off_t known_end_ = 0;  // the file's size after our last write: another size means someone else wrote
};

struct LogQuery {
    uint64_t after_seq = 0;                         // cursor: only records with seq > after_seq
    std::optional<int64_t> since_ns{}, until_ns{};  // inclusive bounds on time_ns
    std::vector<LogSource> sources{};               // empty = all
    std::optional<size_t> tail{};                   // only the last N matching records
};

// Matching records, oldest first. A missing DIR means no records; a corrupt line is skipped.
Result<std::vector<LogRecord>> read_logs(const std::string& dir, const LogQuery& query);

// Follows the log: returns what is new after the cursor, waiting up to `wait` (inotify on DIR, no busy loop)
// when nothing is. Survives rotation (records rotated away beyond keep_rotated before they were read are
// lost). The query's tail applies to the first batch only. DIR must exist.
class LogFollower {
  public:
    static Result<std::unique_ptr<LogFollower>> open(const std::string& dir, LogQuery query);
    Result<std::vector<LogRecord>> next(std::chrono::milliseconds wait);
    uint64_t cursor() const { return cursor_; }  // the seq of the last record returned (else query.after_seq)

  private:
    LogFollower(std::string dir, LogQuery query, UniqueFd inotify);
    Result<std::vector<LogRecord>> read_new();

    std::string dir_;
    LogQuery query_;
    UniqueFd inotify_;
    UniqueFd file_;  // DIR/sandbox.jsonl as last opened, read up to offset_
    dev_t file_dev_ = 0;
    ino_t file_ino_ = 0;
    off_t offset_ = 0;
    uint64_t scanned_ = 0;  // highest seq looked at (matching or not)
    uint64_t cursor_ = 0;
    bool first_ = true;
};

// Parses --since/--until: RFC 3339 ("2026-11-22T10:00:00Z", fractional seconds and offsets allowed), or a
// duration before `now_ns` ("10s", "5m", "1h30m", "250ms", "2d"). Returns unix ns.
Result<int64_t> parse_time_arg(std::string_view text, int64_t now_ns);
// Durations for --max-duration etc: "3s", "500ms", "2m", "1h30m", "2d", bare number = seconds. Must be > 0.
Result<std::chrono::milliseconds> parse_duration(std::string_view text);

}  // namespace sandlot::host
