#include "proto/exec.h"

#include "proto/codec.h"

namespace sandlot::proto {

namespace {

bool has_nul(std::string_view s) {
    return s.find('\0') != std::string_view::npos;
}

// A count read from the wire, checked against its limit before anything is allocated for it.
Result<uint32_t> bounded_count(Reader& r, size_t limit, const char* what) {
    uint32_t n = TRY(r.u32());
    if (n > limit)
        return make_error(std::string(what) + " count " + std::to_string(n) + " over the limit of " +
                          std::to_string(limit));
    // Every element takes at least 4 bytes, so a count the payload cannot hold is rejected up front.
    if (static_cast<size_t>(n) * 4 > r.remaining())
        return make_error(std::string(what) + " count " + std::to_string(n) + " exceeds the payload");
    return n;
}

Result<std::string> bounded_string(Reader& r, size_t limit, const char* what) {
    std::string s = TRY(r.string());
    if (s.size() > limit)
        return make_error(std::string(what) + " longer than " + std::to_string(limit) + " bytes");
    if (has_nul(s)) return make_error(std::string(what) + " contains a NUL byte");
    return s;
}

Result<std::vector<std::string>> string_list(Reader& r, size_t max_count, const char* what) {
    uint32_t n = TRY(bounded_count(r, max_count, what));
    std::vector<std::string> list;
    list.reserve(n);
    for (uint32_t i = 0; i < n; ++i)
        list.push_back(TRY(bounded_string(r, kMaxFramePayload, what)));
    return list;
}

Result<ExecStart> decode_exec_start_fields(std::span<const uint8_t> payload) {
    Reader r(payload);
    ExecStart msg;
    msg.flags = TRY(r.u32());
    msg.argv = TRY(string_list(r, kMaxExecArgs, "argv"));
    if (msg.argv.empty()) return make_error("argv is empty");
    msg.env = TRY(string_list(r, kMaxExecEnv, "env"));
    for (const std::string& entry : msg.env) {
        size_t eq = entry.find('=');
        if (eq == std::string::npos || eq == 0)
            return make_error("env entry without KEY=: " + entry.substr(0, 64));
    }
    msg.cwd = TRY(bounded_string(r, kMaxPath, "cwd"));
    msg.user = TRY(bounded_string(r, kMaxShortString, "user"));
    uint32_t n = TRY(bounded_count(r, kMaxExecRlimits, "rlimit"));
    for (uint32_t i = 0; i < n; ++i) {
        Rlimit limit;
        limit.resource = TRY(r.u32());
        limit.soft = TRY(r.u64());
        limit.hard = TRY(r.u64());
        msg.rlimits.push_back(limit);
    }
    msg.timeout_ms = TRY(r.u64());
    msg.pty_rows = TRY(r.u16());
    msg.pty_cols = TRY(r.u16());
    msg.output_window = TRY(r.u32());
    return msg;
}

}  // namespace

Result<std::vector<uint8_t>> encode_exec_start(const ExecStart& msg) {
    if (msg.argv.empty()) return make_error("exec: argv is empty");
    if (msg.argv.size() > kMaxExecArgs)
        return make_error("exec: more than " + std::to_string(kMaxExecArgs) + " arguments");
    if (msg.env.size() > kMaxExecEnv)
        return make_error("exec: more than " + std::to_string(kMaxExecEnv) + " environment entries");
    if (msg.rlimits.size() > kMaxExecRlimits)
        return make_error("exec: more than " + std::to_string(kMaxExecRlimits) + " rlimits");
    if (msg.cwd.size() > kMaxPath)
        return make_error("exec: working directory longer than " + std::to_string(kMaxPath));
    if (msg.user.size() > kMaxShortString) return make_error("exec: user name too long");
    for (const auto& s : msg.argv)
        if (has_nul(s)) return make_error("exec: an argument contains a NUL byte");
    for (const auto& s : msg.env) {
        if (has_nul(s)) return make_error("exec: an environment entry contains a NUL byte");
        size_t eq = s.find('=');
        if (eq == std::string::npos || eq == 0)
            return make_error("exec: environment entry is not KEY=VALUE: " + s);
    }
    if (has_nul(msg.cwd) || has_nul(msg.user)) return make_error("exec: cwd or user contains a NUL byte");

    Writer w;
    w.u32(msg.flags);
    w.u32(static_cast<uint32_t>(msg.argv.size()));
    for (const auto& s : msg.argv)
        w.string(s);
    w.u32(static_cast<uint32_t>(msg.env.size()));
    for (const auto& s : msg.env)
        w.string(s);
    w.string(msg.cwd);
    w.string(msg.user);
    w.u32(static_cast<uint32_t>(msg.rlimits.size()));
    for (const auto& limit : msg.rlimits) {
        w.u32(limit.resource);
        w.u64(limit.soft);
        w.u64(limit.hard);
    }
    w.u64(msg.timeout_ms);
    w.u16(msg.pty_rows);
    w.u16(msg.pty_cols);
    w.u32(msg.output_window);
    auto payload = std::move(w).finish();
    if (!payload)
        return make_error("exec: arguments and environment do not fit one " +
                          std::to_string(kMaxFramePayload / 1024) + " KiB request");
    return payload;
}

Result<ExecStart> decode_exec_start(std::span<const uint8_t> payload) {
    return decoding("EXEC_START", decode_exec_start_fields(payload));
}

std::vector<uint8_t> encode(const ExecStarted& msg) {
    Writer w;
    w.u32(msg.pid);
    w.u32(msg.stdin_window);
    return finish_small(std::move(w));
}

Result<ExecStarted> decode_exec_started(std::span<const uint8_t> payload) {
    Reader r(payload);
    auto decode = [&]() -> Result<ExecStarted> {
        ExecStarted msg;
        msg.pid = TRY(r.u32());
        msg.stdin_window = TRY(r.u32());
        return msg;
    };
    return decoding("EXEC_STARTED", decode());
}

std::vector<uint8_t> encode(const OutputEof& msg) {
    Writer w;
    w.u8(msg.channel);
    return finish_small(std::move(w));
}

Result<OutputEof> decode_output_eof(std::span<const uint8_t> payload) {
    Reader r(payload);
    auto decode = [&]() -> Result<OutputEof> {
        OutputEof msg;
        msg.channel = TRY(r.u8());
        if (msg.channel != kChannelStdout && msg.channel != kChannelStderr)
            return make_error("unknown channel " + std::to_string(msg.channel));
        return msg;
    };
    return decoding("OUTPUT_EOF", decode());
}

std::vector<uint8_t> encode(const Window& msg) {
    Writer w;
    w.u32(msg.bytes);
    return finish_small(std::move(w));
}

Result<Window> decode_window(std::span<const uint8_t> payload) {
    Reader r(payload);
    auto bytes = decoding("WINDOW", r.u32());
    if (!bytes) return std::unexpected(bytes.error());
    return Window{*bytes};
}

std::vector<uint8_t> encode(const Signal& msg) {
    Writer w;
    w.i32(msg.signo);
    return finish_small(std::move(w));
}

Result<Signal> decode_signal(std::span<const uint8_t> payload) {
    Reader r(payload);
    auto decode = [&]() -> Result<Signal> {
        Signal msg;
        msg.signo = TRY(r.i32());
        if (msg.signo < 1 || msg.signo > 64) return make_error("signal number " + std::to_string(msg.signo));
        return msg;
    };
    return decoding("SIGNAL", decode());
}

std::vector<uint8_t> encode(const Resize& msg) {
    Writer w;
    w.u16(msg.rows);
    w.u16(msg.cols);
    return finish_small(std::move(w));
}

Result<Resize> decode_resize(std::span<const uint8_t> payload) {
    Reader r(payload);
    auto decode = [&]() -> Result<Resize> {
        Resize msg;
        msg.rows = TRY(r.u16());
        msg.cols = TRY(r.u16());
        return msg;
    };
    return decoding("RESIZE", decode());
}

std::vector<uint8_t> encode(const Exit& msg) {
    Writer w;
    w.i32(msg.exit_code);
    w.i32(msg.signal);
    w.u8(msg.core_dumped);
    w.u8(msg.timed_out);
    w.u8(msg.output_abandoned);
    return finish_small(std::move(w));
}

Result<Exit> decode_exit(std::span<const uint8_t> payload) {
    Reader r(payload);
    auto decode = [&]() -> Result<Exit> {
        Exit msg;
        msg.exit_code = TRY(r.i32());
        msg.signal = TRY(r.i32());
        msg.core_dumped = TRY(r.u8());
        msg.timed_out = TRY(r.u8());
        msg.output_abandoned = TRY(r.u8());
        return msg;
    };
    return decoding("EXIT", decode());
}

}  // namespace sandlot::proto
