#include "host/lib/sandbox_log.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <climits>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>

namespace sandlot::host {

namespace {

using namespace std::chrono;

constexpr std::string_view kLogName = "sandbox.jsonl";
constexpr size_t kMaxLine = 1 << 20;  // a writer's line is at most ~6 x 64 KiB (JSON escapes)
constexpr int64_t kNsPerSec = 1'000'000'000;

constexpr std::array<std::pair<LogSource, std::string_view>, 4> kSourceNames{{
    {LogSource::Stdout, "stdout"},
    {LogSource::Stderr, "stderr"},
    {LogSource::Output, "output"},
    {LogSource::System, "system"},
}};

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}
bool is_alpha(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// Strict UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF), the same rule
// nlohmann-json applies when it writes a string: anything it would not write verbatim goes to base64.
bool valid_utf8(std::string_view s) {
    for (size_t i = 0; i < s.size();) {
        auto c = static_cast<uint8_t>(s[i]);
        size_t len = 1;
        uint32_t cp = c;
        if (c >= 0x80) {
            if (c >= 0xc2 && c <= 0xdf) {
                len = 2, cp = c & 0x1f;
            } else if (c >= 0xe0 && c <= 0xef) {
                len = 3, cp = c & 0x0f;
            } else if (c >= 0xf0 && c <= 0xf4) {
                len = 4, cp = c & 0x07;
            } else {
                return false;
            }
            if (s.size() - i < len) return false;
            for (size_t k = 1; k < len; ++k) {
                auto cc = static_cast<uint8_t>(s[i + k]);
                if ((cc & 0xc0) != 0x80) return false;
                cp = cp << 6 | (cc & 0x3f);
            }
            if (len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) return false;
            if (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) return false;
        }
        i += len;
    }
    return true;
}

constexpr std::string_view kBase64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64_encode(std::string_view in) {
    std::string out;
    out.reserve((in.size() + 2) / 3 * 4);
    for (size_t i = 0; i < in.size(); i += 3) {
        uint32_t n = static_cast<uint8_t>(in[i]) << 16;
        if (i + 1 < in.size()) n |= static_cast<uint8_t>(in[i + 1]) << 8;
        if (i + 2 < in.size()) n |= static_cast<uint8_t>(in[i + 2]);
        out += kBase64[n >> 18];
        out += kBase64[(n >> 12) & 63];
        out += i + 1 < in.size() ? kBase64[(n >> 6) & 63] : '=';
        out += i + 2 < in.size() ? kBase64[n & 63] : '=';
    }
    return out;
}

std::optional<std::string> base64_decode(std::string_view in) {
    if (in.size() % 4 != 0) return std::nullopt;
    std::string out;
    out.reserve(in.size() / 4 * 3);
    for (size_t i = 0; i < in.size(); i += 4) {
        uint32_t n = 0;
        int pad = 0;
        for (size_t k = 0; k < 4; ++k) {
            char c = in[i + k];
            size_t v = kBase64.find(c);
            if (c == '=' && i + 4 == in.size() && k >= 2) {
                ++pad, v = 0;
            } else if (v == std::string_view::npos || pad > 0) {
                return std::nullopt;
            }
            n = n << 6 | static_cast<uint32_t>(v);
        }
        out += static_cast<char>(n >> 16);
        if (pad < 2) out += static_cast<char>((n >> 8) & 0xff);
        if (pad < 1) out += static_cast<char>(n & 0xff);
    }
    return out;
}

std::string format_time(int64_t ns) {
    int64_t secs = ns / kNsPerSec, frac = ns % kNsPerSec;
    if (frac < 0) secs -= 1, frac += kNsPerSec;
    auto tp = sys_seconds(seconds(secs));
    auto day = floor<days>(tp);
    year_month_day ymd(day);
    hh_mm_ss hms(tp - day);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02d.%09dZ", static_cast<int>(ymd.year()),
                  static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                  static_cast<int>(hms.hours().count()), static_cast<int>(hms.minutes().count()),
                  static_cast<int>(hms.seconds().count()), static_cast<int>(frac));
    return buf;
}

// YYYY-MM-DD(T|t| )HH:MM:SS[.fraction](Z|z|+HH:MM|-HH:MM) -> unix ns.
std::optional<int64_t> parse_rfc3339(std::string_view s) {
    size_t pos = 0;
    auto number = [&](size_t count, int& out) {
        if (s.size() - pos < count) return false;
        out = 0;
        for (size_t end = pos + count; pos < end; ++pos) {
            if (!is_digit(s[pos])) return false;
            out = out * 10 + (s[pos] - '0');
        }
        return true;
    };
    auto one_of = [&](std::string_view chars) {
        if (pos >= s.size() || chars.find(s[pos]) == std::string_view::npos) return false;
        ++pos;
        return true;
    };
    int y, mo, d, h, mi, sec;
    if (!(number(4, y) && one_of("-") && number(2, mo) && one_of("-") && number(2, d) && one_of("Tt ") &&
          number(2, h) && one_of(":") && number(2, mi) && one_of(":") && number(2, sec)))
        return std::nullopt;
    int64_t frac = 0;
    if (one_of(".")) {
        size_t start = pos;
        for (int64_t scale = kNsPerSec / 10; pos < s.size() && is_digit(s[pos]); ++pos, scale /= 10)
            frac += (s[pos] - '0') * scale;
        if (pos == start) return std::nullopt;
    }
    int offset_min = 0;
    if (!one_of("Zz")) {
        bool negative = pos < s.size() && s[pos] == '-';
        int oh, om;
        if (!(one_of("+-") && number(2, oh) && one_of(":") && number(2, om)) || oh > 23 || om > 59)
            return std::nullopt;
        offset_min = (oh * 60 + om) * (negative ? -1 : 1);
    }
    if (pos != s.size() || h > 23 || mi > 59 || sec > 60) return std::nullopt;
    year_month_day ymd{year(y), month(static_cast<unsigned>(mo)), day(static_cast<unsigned>(d))};
    if (!ymd.ok()) return std::nullopt;
    int64_t secs = int64_t{sys_days(ymd).time_since_epoch().count()} * 86400 + h * 3600 + mi * 60 + sec -
                   offset_min * 60;
    if (secs >= INT64_MAX / kNsPerSec || secs <= INT64_MIN / kNsPerSec) return std::nullopt;
    return secs * kNsPerSec + frac;
}

// Sum of NUMBER UNIT terms (ms, s, m, h, d); with allow_bare, a lone number is seconds. The error says why.
Result<int64_t> duration_ms(std::string_view text, bool allow_bare) {
    constexpr int64_t kMaxMs = 36500LL * 86'400'000;  // 100 years: deadlines built on it cannot overflow
    auto syntax = [] { return make_error("expected a number with a unit, like 500ms, 3s, 2m, 1h30m or 2d"); };
    auto too_long = [] { return make_error("too long (the most is 36500d)"); };
    if (text.empty()) return syntax();
    int64_t total = 0;
    for (size_t pos = 0; pos < text.size();) {
        size_t start = pos;
        int64_t value = 0;
        for (; pos < text.size() && is_digit(text[pos]); ++pos)
            if (__builtin_mul_overflow(value, 10, &value) ||
                __builtin_add_overflow(value, text[pos] - '0', &value))
                return too_long();
        if (pos == start) return syntax();
        size_t unit_start = pos;
        while (pos < text.size() && is_alpha(text[pos]))
            ++pos;
        std::string_view unit = text.substr(unit_start, pos - unit_start);
        int64_t scale = 0;
        if (unit == "ms") scale = 1;
        if (unit == "s" || (unit.empty() && allow_bare && start == 0 && pos == text.size())) scale = 1000;
        if (unit == "m") scale = 60'000;
        if (unit == "h") scale = 3'600'000;
        if (unit == "d") scale = 86'400'000;
        if (scale == 0) return syntax();
        if (__builtin_mul_overflow(value, scale, &value) || __builtin_add_overflow(total, value, &total) ||
            total > kMaxMs)
            return too_long();
    }
    return total;
}

// The input as it goes into a one-line error: quoted, escaped, cut at 64 bytes.
std::string quote(std::string_view text) {
    std::string out = "\"";
    for (char c : text.substr(0, 64)) {
        auto b = static_cast<uint8_t>(c);
        char buf[8];
        if (c == '"' || c == '\\') {
            out += '\\', out += c;
        } else if (b < 0x20 || b >= 0x7f) {
            std::snprintf(buf, sizeof buf, "\\x%02x", b);
            out += buf;
        } else {
            out += c;
        }
    }
    return out + (text.size() > 64 ? "...\"" : "\"");
}

int64_t realtime_ns() {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec * kNsPerSec + ts.tv_nsec;
}

// Splits data into records of at most kMaxRecordData bytes, not cutting a UTF-8 character where avoidable.
std::vector<std::string_view> split_data(std::string_view data) {
    std::vector<std::string_view> out;
    do {
        size_t n = std::min(data.size(), LogWriter::kMaxRecordData);
        if (n < data.size()) {
            size_t cut = n;
            auto continuation = [&](size_t i) { return (static_cast<uint8_t>(data[i]) & 0xc0) == 0x80; };
            for (int k = 0; k < 3 && cut > 1 && continuation(cut); ++k)
                --cut;
            if (!continuation(cut)) n = cut;
        }
        out.push_back(data.substr(0, n));
        data.remove_prefix(n);
    } while (!data.empty());
    return out;
}

bool matches(const LogQuery& query, const LogRecord& record) {
    if (query.since_ns && record.time_ns < *query.since_ns) return false;
    if (query.until_ns && record.time_ns > *query.until_ns) return false;
    return query.sources.empty() ||
           std::find(query.sources.begin(), query.sources.end(), record.source) != query.sources.end();
}

using Sink = std::function<void(LogRecord&&)>;

// Parses the complete lines of fd from `offset` on and hands over each record newer than last_seq (updated).
// Corrupt lines are skipped. Returns the offset just after the last complete line.
Result<off_t> read_records(int fd, off_t offset, uint64_t& last_seq, const Sink& sink) {
    std::string pending;
    off_t read_pos = offset;
    std::vector<char> chunk(256 * 1024);
    for (;;) {
        ssize_t n = pread(fd, chunk.data(), chunk.size(), read_pos);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("read log file");
        if (n == 0) return offset;
        read_pos += n;
        pending.append(chunk.data(), static_cast<size_t>(n));
        size_t start = 0;
        for (size_t nl; (nl = pending.find('\n', start)) != std::string::npos; start = nl + 1) {
            auto record = parse_json_line(std::string_view(pending).substr(start, nl - start));
            if (!record || record->seq <= last_seq) continue;
            last_seq = record->seq;
            sink(std::move(*record));
        }
        if (pending.size() - start > kMaxLine) start = pending.size();  // no end in sight: garbage
        offset += static_cast<off_t>(start);
        pending.erase(0, start);
    }
}

std::string log_path(const std::string& dir) {
    return dir + "/" + std::string(kLogName);
}

struct CurrentFile {
    UniqueFd fd;
    dev_t dev = 0;
    ino_t ino = 0;
    off_t offset = 0;
};

// Reads every log file of dir, oldest first. Opening the newest file first and the rotated ones after means a
// rotation during the scan can only show a file twice (deduplicated by seq), never hide one.
Result<CurrentFile> scan(const std::string& dir, uint64_t& last_seq, const Sink& sink) {
    CurrentFile current;
    std::string base = log_path(dir);
    current.fd = UniqueFd(::open(base.c_str(), O_RDONLY | O_CLOEXEC));
    if (!current.fd && errno != ENOENT) return errno_error("open " + base);
    struct stat st {};
    if (current.fd) {
        if (fstat(current.fd.get(), &st) != 0) return errno_error("stat " + base);
        current.dev = st.st_dev, current.ino = st.st_ino;
    }
    unsigned listed = 0;  // the highest rotated file named in the directory
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
        std::string name = entry.path().filename().string();
        unsigned n = 0;
        auto digits = std::string_view(name).substr(std::min(name.size(), kLogName.size() + 1));
        if (name.starts_with(std::string(kLogName) + ".") && !digits.empty() &&
            std::all_of(digits.begin(), digits.end(), is_digit) && digits.size() < 6 &&
            std::from_chars(digits.data(), digits.data() + digits.size(), n).ec == std::errc())
            listed = std::max(listed, n);
    }
    std::vector<UniqueFd> rotated;  // .1, .2, ...
    for (unsigned i = 1;; ++i) {
        std::string path = base + "." + std::to_string(i);
        UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd && errno != ENOENT) return errno_error("open " + path);
        if (!fd && i > listed) break;
        if (fd) rotated.push_back(std::move(fd));
    }
    for (auto it = rotated.rbegin(); it != rotated.rend(); ++it)
        TRY(read_records(it->get(), 0, last_seq, sink));
    if (current.fd) current.offset = TRY(read_records(current.fd.get(), 0, last_seq, sink));
    return current;
}

}  // namespace

std::string_view log_source_name(LogSource source) {
    for (const auto& [value, name] : kSourceNames)
        if (value == source) return name;
    return "?";
}

std::optional<LogSource> parse_log_source(std::string_view text) {
    for (const auto& [value, name] : kSourceNames)
        if (name == text) return value;
    return std::nullopt;
}

std::string to_json_line(const LogRecord& record) {
    nlohmann::ordered_json j;
    j["seq"] = record.seq;
    j["time"] = format_time(record.time_ns);
    j["source"] = std::string(log_source_name(record.source));
    if (!record.session.empty()) j["session"] = record.session;
    if (!record.event.empty()) j["event"] = record.event;
    if (valid_utf8(record.data)) {
        j["data"] = record.data;
    } else {
        j["data_base64"] = base64_encode(record.data);
    }
    return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

Result<LogRecord> parse_json_line(std::string_view line) {
    auto fail = [](const char* why) { return make_error(std::string("corrupt log line: ") + why); };
    auto j = nlohmann::json::parse(line.begin(), line.end(), nullptr, false);
    if (j.is_discarded() || !j.is_object()) return fail("not a JSON object");
    auto string_member = [&](const char* key) -> const std::string* {
        auto it = j.find(key);
        return it != j.end() && it->is_string() ? &it->get_ref<const std::string&>() : nullptr;
    };
    LogRecord record;
    auto seq = j.find("seq");
    if (seq == j.end() || !seq->is_number_unsigned()) return fail("no seq");
    record.seq = seq->get<uint64_t>();
    const std::string* time = string_member("time");
    std::optional<int64_t> time_ns = time ? parse_rfc3339(*time) : std::nullopt;
    if (!time_ns) return fail("no valid time");
    record.time_ns = *time_ns;
    const std::string* source = string_member("source");
    auto parsed_source = source ? parse_log_source(*source) : std::nullopt;
    if (!parsed_source) return fail("no valid source");
    record.source = *parsed_source;
    if (const std::string* session = string_member("session")) record.session = *session;
    if (const std::string* event = string_member("event")) record.event = *event;
    if (const std::string* data = string_member("data")) {
        record.data = *data;
    } else if (const std::string* encoded = string_member("data_base64")) {
        auto decoded = base64_decode(*encoded);
        if (!decoded) return fail("bad data_base64");
        record.data = std::move(*decoded);
    } else {
        return fail("no data");
    }
    return record;
}

// ---- LogWriter ----

LogWriter::LogWriter(std::string dir, LogLimits limits, UniqueFd lock, UniqueFd seq)
    : dir_(std::move(dir)), limits_(limits), pid_(getpid()), lock_(std::move(lock)), seq_(std::move(seq)) {}

Result<std::unique_ptr<LogWriter>> LogWriter::open(const std::string& dir, LogLimits limits) {
    if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return errno_error("create log directory " + dir);
    std::string lock_path = dir + "/.lock", seq_path = dir + "/seq";
    UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (!lock) return errno_error("open " + lock_path);
    UniqueFd seq(::open(seq_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (!seq) return errno_error("open " + seq_path);
    return std::unique_ptr<LogWriter>(new LogWriter(dir, limits, std::move(lock), std::move(seq)));
}

Result<uint64_t> LogWriter::system(std::string_view event, std::string_view text) {
    return append(LogSource::System, "", event,
                  std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
}

Result<uint64_t> LogWriter::append(LogSource source, std::string_view session, std::string_view event,
                                   std::span<const uint8_t> data) {
    std::lock_guard guard(mutex_);
    if (getpid() != pid_) {  // flock belongs to the open file description, which fork shares: take our own
        std::string lock_path = dir_ + "/.lock";
        lock_ = UniqueFd(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
        if (!lock_) return errno_error("open " + lock_path);
        pid_ = getpid();
    }
    auto chunks = split_data(std::string_view(reinterpret_cast<const char*>(data.data()), data.size()));
    while (flock(lock_.get(), LOCK_EX) != 0)
        if (errno != EINTR) return errno_error("lock " + dir_ + "/.lock");
    struct Unlock {
        int fd;
        ~Unlock() { flock(fd, LOCK_UN); }
    } unlock{lock_.get()};
    uint64_t first = TRY(reserve_seqs(chunks.size()));
    LogRecord record{.time_ns = realtime_ns(),
                     .source = source,
                     .session = std::string(session),
                     .event = std::string(event)};
    for (size_t i = 0; i < chunks.size(); ++i) {
        record.seq = first + i;
        record.data = std::string(chunks[i]);
        std::string line = to_json_line(record) + "\n";
        TRY(prepare_file(line.size()));
        TRY(write_line(line));
    }
    return first + chunks.size() - 1;
}

// Under the lock: the first of `count` fresh seqs. The file is updated before the records are written, so a
// writer dying in between leaves a gap, never a duplicate. A missing or damaged file restarts after the
// highest seq in the logs.
Result<uint64_t> LogWriter::reserve_seqs(uint64_t count) {
    char buf[32];
    ssize_t n = pread(seq_.get(), buf, sizeof buf, 0);
    if (n < 0) return errno_error("read " + dir_ + "/seq");
    uint64_t last = 0;
    auto [end, ec] = std::from_chars(buf, buf + n, last);
    if (n == 0 || ec != std::errc() || (end != buf + n && *end != '\n')) {
        auto records = TRY(read_logs(dir_, LogQuery{.tail = 1}));
        last = records.empty() ? 0 : records.back().seq;
    }
    std::string text = std::to_string(last + count) + "\n";
    if (pwrite(seq_.get(), text.data(), text.size(), 0) != static_cast<ssize_t>(text.size()) ||
        ftruncate(seq_.get(), static_cast<off_t>(text.size())) != 0)
        return errno_error("write " + dir_ + "/seq");
    return last + 1;
}

// Under the lock: makes file_ the current DIR/sandbox.jsonl with room for line_bytes, rotating if it is full,
// and ends a line a crashed writer left unfinished so the next record is not glued to it.
Result<void> LogWriter::prepare_file(size_t line_bytes) {
    std::string base = log_path(dir_);
    struct stat st {};
    auto open_current = [&]() -> Result<void> {
        file_ = UniqueFd(::open(base.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
        if (!file_ || fstat(file_.get(), &st) != 0) return errno_error("open " + base);
        file_dev_ = st.st_dev, file_ino_ = st.st_ino, known_end_ = -1;
        return {};
    };
    if (!file_ || ::stat(base.c_str(), &st) != 0 || st.st_dev != file_dev_ || st.st_ino != file_ino_)
        TRY(open_current());
    if (fstat(file_.get(), &st) != 0) return errno_error("stat " + base);
    if (st.st_size > 0 && static_cast<uint64_t>(st.st_size) + line_bytes > limits_.max_file_bytes) {
        for (unsigned i = limits_.keep_rotated; i >= 1; --i) {
            std::string from = i == 1 ? base : base + "." + std::to_string(i - 1);
            std::string to = base + "." + std::to_string(i);
            if (rename(from.c_str(), to.c_str()) != 0 && errno != ENOENT)
                return errno_error("rotate " + from);
        }
        if (limits_.keep_rotated == 0 && unlink(base.c_str()) != 0 && errno != ENOENT)
            return errno_error("remove " + base);
        TRY(open_current());
    }
    bool foreign = st.st_size > 0 && st.st_size != known_end_;  // someone else wrote last
    known_end_ = st.st_size;
    char last = '\n';
    if (foreign && pread(file_.get(), &last, 1, st.st_size - 1) == 1 && last != '\n') TRY(write_line("\n"));
    return {};
}

Result<void> LogWriter::write_line(const std::string& line) {
    for (size_t done = 0; done < line.size();) {
        ssize_t n = write(file_.get(), line.data() + done, line.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("write " + log_path(dir_));
        done += static_cast<size_t>(n);
        known_end_ += n;
    }
    return {};
}

// ---- reading ----

Result<std::vector<LogRecord>> read_logs(const std::string& dir, const LogQuery& query) {
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0) {
        if (errno == ENOENT) return std::vector<LogRecord>{};
        return errno_error("stat " + dir);
    }
    std::deque<LogRecord> found;
    uint64_t last_seq = query.after_seq;
    TRY(scan(dir, last_seq, [&](LogRecord&& record) {
        if (!matches(query, record)) return;
        found.push_back(std::move(record));
        if (query.tail && found.size() > *query.tail) found.pop_front();
    }));
    return std::vector<LogRecord>(std::make_move_iterator(found.begin()),
                                  std::make_move_iterator(found.end()));
}

LogFollower::LogFollower(std::string dir, LogQuery query, UniqueFd inotify)
    : dir_(std::move(dir)),
      query_(std::move(query)),
      inotify_(std::move(inotify)),
      scanned_(query_.after_seq),
      cursor_(query_.after_seq) {}

Result<std::unique_ptr<LogFollower>> LogFollower::open(const std::string& dir, LogQuery query) {
    UniqueFd inotify(inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
    if (!inotify) return errno_error("inotify_init1");
    if (inotify_add_watch(inotify.get(), dir.c_str(), IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_ONLYDIR) < 0)
        return errno_error("watch log directory " + dir);
    return std::unique_ptr<LogFollower>(new LogFollower(dir, std::move(query), std::move(inotify)));
}

Result<std::vector<LogRecord>> LogFollower::read_new() {
    std::vector<LogRecord> out;
    auto sink = [&](LogRecord&& record) {
        if (matches(query_, record)) out.push_back(std::move(record));
    };
    struct stat st {};
    std::string base = log_path(dir_);
    if (!file_ || ::stat(base.c_str(), &st) != 0 || st.st_dev != file_dev_ || st.st_ino != file_ino_) {
        // First call or rotated: whatever we had not read yet is in a rotated file now.
        auto current = TRY(scan(dir_, scanned_, sink));
        file_ = std::move(current.fd);
        file_dev_ = current.dev, file_ino_ = current.ino, offset_ = current.offset;
    } else {
        offset_ = TRY(read_records(file_.get(), offset_, scanned_, sink));
    }
    if (first_ && query_.tail && out.size() > *query_.tail)
        out.erase(out.begin(), out.end() - static_cast<ptrdiff_t>(*query_.tail));
    first_ = false;
    if (!out.empty()) cursor_ = out.back().seq;
    return out;
}

Result<std::vector<LogRecord>> LogFollower::next(std::chrono::milliseconds wait) {
    auto deadline = steady_clock::now() + wait;
    for (;;) {
        // Drop queued events first: one arriving after this point wakes the poll below.
        alignas(inotify_event) char events[4096];
        while (read(inotify_.get(), events, sizeof events) > 0) {
        }
        auto records = TRY(read_new());
        if (!records.empty()) return records;
        auto left = duration_cast<milliseconds>(deadline - steady_clock::now()).count();
        if (left <= 0) return records;
        pollfd pfd{.fd = inotify_.get(), .events = POLLIN, .revents = 0};
        if (poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left, INT_MAX))) < 0 && errno != EINTR)
            return errno_error("wait for log records");
    }
}

// ---- time arguments ----

Result<int64_t> parse_time_arg(std::string_view text, int64_t now_ns) {
    if (auto time = parse_rfc3339(text)) return *time;
    int64_t ns = 0, result = 0;
    if (auto ms = duration_ms(text, false); ms && !__builtin_mul_overflow(*ms, int64_t{1'000'000}, &ns) &&
                                            !__builtin_sub_overflow(now_ns, ns, &result))
        return result;
    return make_error(
        "invalid time " + quote(text) +
        ": expected RFC 3339 (2026-11-22T10:00:00Z) or a duration before now (10s, 5m, 1h30m, 2d)");
}

Result<std::chrono::milliseconds> parse_duration(std::string_view text) {
    auto ms = duration_ms(text, true);
    if (!ms) return make_error("invalid duration " + quote(text) + ": " + ms.error().message);
    if (*ms <= 0) return make_error("invalid duration " + quote(text) + ": must be more than zero");
    return std::chrono::milliseconds(*ms);
}

}  // namespace sandlot::host
