// `sandlot logs` and `sandlot metrics`: what a sandbox printed and what it uses (host/lib/sandbox_log.h,
// host/lib/metrics.h).
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "host/cli/commands.h"
#include "host/cli/sandbox_args.h"
#include "host/lib/lifecycle.h"
#include "proto/frame.h"

namespace sandlot::cli {

namespace {

struct LogsArgs {
    std::string name;
    bool follow = false;
    int64_t tail = -1;
    std::string since, until;
    std::vector<std::string> sources;
    bool json_output = false;
    uint64_t after = 0;
};

std::atomic<bool> g_stop{false};
extern "C" void request_stop(int) {
    g_stop = true;
}

void stop_on_signals() {
    struct sigaction action {};
    action.sa_handler = request_stop;
    sigemptyset(&action.sa_mask);
    for (int signo : {SIGINT, SIGTERM, SIGHUP})
        sigaction(signo, &action, nullptr);
}

void write_out(int fd, std::string_view data) {
    (void)proto::write_all(fd, std::span(reinterpret_cast<const uint8_t*>(data.data()), data.size()));
}

void print_record(const host::LogRecord& record, bool json_output) {
    if (json_output) {
        write_out(STDOUT_FILENO, host::to_json_line(record) + "\n");
        return;
    }
    switch (record.source) {
        case host::LogSource::Stdout:
        case host::LogSource::Output:
            write_out(STDOUT_FILENO, record.data);
            break;
        case host::LogSource::Stderr:
            write_out(STDERR_FILENO, record.data);
            break;
        case host::LogSource::System:
            write_out(STDERR_FILENO, fmt::format("[system] {}: {}\n", record.event, record.data));
            break;
    }
}

Result<host::LogQuery> to_query(const LogsArgs& args) {
    host::LogQuery query;
    query.after_seq = args.after;
    if (!args.since.empty()) query.since_ns = TRY(host::parse_time_arg(args.since, host::unix_now_ns()));
    if (!args.until.empty()) query.until_ns = TRY(host::parse_time_arg(args.until, host::unix_now_ns()));
    for (const auto& text : args.sources) {
        auto source = host::parse_log_source(text);
        if (!source) return make_error("--source " + text + ": expected stdout, stderr, output or system");
        query.sources.push_back(*source);
    }
    if (args.tail >= 0) query.tail = static_cast<size_t>(args.tail);
    return query;
}

int logs(const LogsArgs& args) {
    auto query = to_query(args);
    if (!query) return fail(query.error());
    auto home = host::SandboxHome::open();
    if (!home) return fail(home.error());
    if (!args.follow) {
        auto records = home->logs(args.name, *query);
        if (!records) return fail(records.error());
        for (const auto& record : *records)
            print_record(record, args.json_output);
        return 0;
    }
    stop_on_signals();
    auto follower = home->log_stream(args.name, *query);
    if (!follower) return fail(follower.error());
    // Until interrupted, or until the sandbox is gone and everything it wrote has been shown.
    while (!g_stop) {
        auto records = (*follower)->next(std::chrono::milliseconds(500));
        if (!records) return fail(records.error());
        for (const auto& record : *records)
            print_record(record, args.json_output);
        if (records->empty()) {
            auto record = home->get(args.name);
            if (!record) break;
        }
    }
    return 0;
}

struct MetricsArgs {
    std::string name;
    bool all = false;
    double watch_s = 0;
    bool json_output = false;
};

void print_metrics(const std::vector<host::SandboxMetrics>& all, bool json_output, bool header) {
    if (json_output) {
        for (const auto& m : all)
            fmt::print("{}\n", host::metrics_to_json(m));
        std::fflush(stdout);
        return;
    }
    if (header)
        fmt::print("{:<24} {:>7} {:>21} {:>10} {:>10} {:>10} {:>10}\n", "NAME", "CPU %", "MEM USED / LIMIT",
                   "HOST RSS", "DISK READ", "DISK WRITE", "UPTIME");
    for (const auto& m : all)
        fmt::print("{:<24} {:>7.1f} {:>21} {:>10} {:>10} {:>10} {:>9}s\n", m.name, m.cpu_percent,
                   human_bytes(m.memory_used_bytes) + " / " + human_bytes(m.memory_limit_bytes),
                   human_bytes(m.host_rss_bytes), human_bytes(m.disk_read_bytes),
                   human_bytes(m.disk_write_bytes), m.uptime_ns / 1'000'000'000);
    std::fflush(stdout);
}

int metrics(const MetricsArgs& args) {
    if (args.all == !args.name.empty()) return fail("give a sandbox name or --all");
    if (args.watch_s < 0) return fail("--watch must be >= 0");
    auto home = host::SandboxHome::open();
    if (!home) return fail(home.error());
    stop_on_signals();
    if (args.all) {
        bool header = true;
        do {
            auto all = home->all_metrics();
            if (!all) return fail(all.error());
            print_metrics(*all, args.json_output, header);
            header = false;
            if (args.watch_s > 0) std::this_thread::sleep_for(to_ms(args.watch_s));
        } while (args.watch_s > 0 && !g_stop);
        return 0;
    }
    if (args.watch_s <= 0) {
        auto m = home->metrics(args.name);
        if (!m) return fail(m.error());
        print_metrics({*m}, args.json_output, true);
        return 0;
    }
    bool header = true;
    auto streamed = home->metrics_stream(args.name, to_ms(args.watch_s), [&](const host::SandboxMetrics& m) {
        print_metrics({m}, args.json_output, header);
        header = false;
        return !g_stop.load();
    });
    if (!streamed) return fail(streamed.error());
    return 0;
}

}  // namespace

std::vector<std::pair<std::string, CommandRunner>> add_observe_commands(CLI::App& app) {
    std::vector<std::pair<std::string, CommandRunner>> commands;
    auto largs = std::make_shared<LogsArgs>();
    auto* logs_cmd =
        app.add_subcommand("logs", "Show what a sandbox's commands printed, and its system events");
    logs_cmd->add_option("name", largs->name, "Sandbox name")->required();
    logs_cmd->add_flag("-f,--follow", largs->follow, "Keep printing new records as they come");
    logs_cmd->add_option("-n,--tail", largs->tail, "Only the last N records");
    logs_cmd->add_option("--since", largs->since,
                         "Records from this time (RFC 3339, or a duration ago: 10m)");
    logs_cmd->add_option("--until", largs->until, "Records up to this time (RFC 3339, or a duration ago)");
    logs_cmd->add_option("--source", largs->sources, "stdout, stderr, output or system (repeatable)")
        ->allow_extra_args(false);
    logs_cmd->add_flag("--json", largs->json_output, "JSON Lines records, with their seq cursor");
    logs_cmd->add_option("--after", largs->after, "Only records after this seq (a cursor from --json)");
    commands.emplace_back("logs", [largs] { return logs(*largs); });

    auto margs = std::make_shared<MetricsArgs>();
    auto* metrics_cmd = app.add_subcommand("metrics", "Show a running sandbox's resource use");
    metrics_cmd->add_option("name", margs->name, "Sandbox name");
    metrics_cmd->add_flag("--all", margs->all, "Every running sandbox");
    metrics_cmd->add_option("--watch", margs->watch_s, "Repeat every this many seconds");
    metrics_cmd->add_flag("--json", margs->json_output, "One JSON object per sandbox and sample");
    commands.emplace_back("metrics", [margs] { return metrics(*margs); });
    return commands;
}

}  // namespace sandlot::cli
