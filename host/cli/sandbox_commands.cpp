// `sandlot create | start | stop | kill | rm | ls | ps | inspect | exec`: named sandboxes
// (host/lib/lifecycle.h). Every failure is one line "sandlot: error: ..." and exit status 125.
#include <fmt/format.h>

#include <ctime>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "host/cli/commands.h"
#include "host/cli/sandbox_args.h"
#include "host/lib/lifecycle.h"

namespace sandlot::cli {

namespace {

using nlohmann::json;

std::string rfc3339(int64_t unix_ns) {
    if (unix_ns <= 0) return "";
    time_t seconds = static_cast<time_t>(unix_ns / 1'000'000'000);
    tm utc{};
    gmtime_r(&seconds, &utc);
    char text[40];
    strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &utc);
    return fmt::format("{}.{:03}Z", text, (unix_ns / 1'000'000) % 1000);
}

// "3 minutes ago", for tables.
std::string ago(int64_t unix_ns) {
    if (unix_ns <= 0) return "-";
    int64_t now = host::unix_now_ns();
    int64_t s = std::max<int64_t>((now - unix_ns) / 1'000'000'000, 0);
    if (s < 60) return fmt::format("{}s ago", s);
    if (s < 3600) return fmt::format("{}m ago", s / 60);
    if (s < 86400) return fmt::format("{}h ago", s / 3600);
    return fmt::format("{}d ago", s / 86400);
}

json to_json(host::SandboxHome& home, const host::SandboxRecord& r) {
    json config = json::parse(r.config, nullptr, false);
    json j = {
        {"name", r.name},
        {"id", r.id},
        {"status", host::status_name(r.status)},
        {"exit_reason", r.exit_reason},
        {"exit_code", r.exit_code ? json(*r.exit_code) : json(nullptr)},
        {"labels", r.labels},
        {"created", rfc3339(r.created_ns)},
        {"started", rfc3339(r.started_ns)},
        {"stopped", rfc3339(r.stopped_ns)},
        {"vmm_pid", r.vmm.pid},
        {"supervisor_pid", r.supervisor.pid},
        {"dir", home.paths(r).dir},
        {"config", config.is_discarded() ? json(nullptr) : config},
    };
    return j;
}

struct Args {
    SandboxArgs sandbox;
    ProcessArgs process;
    std::string name;
    std::vector<std::string> names;
    double stop_timeout_s = 10;
    bool force = false;
    bool json_output = false;
    bool quiet = false;
    std::vector<std::string> labels;
    std::vector<std::string> statuses;
};

Result<host::SandboxFilter> to_filter(const Args& args, bool running_only) {
    host::SandboxFilter filter;
    filter.labels = TRY(to_labels(args.labels));
    for (const auto& text : args.statuses) {
        auto status = host::parse_status(text);
        if (!status)
            return make_error("--status " + text +
                              ": expected created, running, draining, stopped or crashed");
        filter.statuses.push_back(*status);
    }
    if (running_only) filter.statuses = {host::SandboxStatus::Running, host::SandboxStatus::Draining};
    return filter;
}

int list(const Args& args, bool running_only) {
    auto filter = to_filter(args, running_only);
    if (!filter) return fail(filter.error());
    auto home = host::SandboxHome::open();
    if (!home) return fail(home.error());
    auto records = home->list(*filter);
    if (!records) return fail(records.error());
    if (args.json_output) {
        json array = json::array();
        for (const auto& r : *records)
            array.push_back(to_json(*home, r));
        fmt::print("{}\n", array.dump(2));
        return 0;
    }
    if (args.quiet) {
        for (const auto& r : *records)
            fmt::print("{}\n", r.name);
        return 0;
    }
    fmt::print("{:<24} {:<9} {:<12} {:<12} {}\n", "NAME", "STATUS", "CREATED", "STARTED", "REASON");
    for (const auto& r : *records) {
        fmt::print("{:<24} {:<9} {:<12} {:<12} {}\n", r.name, host::status_name(r.status), ago(r.created_ns),
                   ago(r.started_ns), r.exit_reason);
    }
    return 0;
}

int for_each_name(const std::vector<std::string>& names,
                  const std::function<Result<void>(host::SandboxHome&, const std::string&)>& action) {
    auto home = host::SandboxHome::open();
    if (!home) return fail(home.error());
    int code = 0;
    for (const auto& name : names) {
        if (auto done = action(*home, name); !done) {
            code = fail(done.error());
        } else {
            fmt::print("{}\n", name);
        }
    }
    return code;
}

}  // namespace

std::vector<std::pair<std::string, CommandRunner>> add_sandbox_commands(CLI::App& app) {
    auto args = std::make_shared<Args>();
    std::vector<std::pair<std::string, CommandRunner>> commands;

    auto* create = app.add_subcommand("create", "Create a named sandbox (start it with `sandlot start`)");
    create->add_option("name", args->name, "Sandbox name")->required();
    add_sandbox_options(*create, args->sandbox);
    create->add_option("-e,--env", args->process.env, "Default KEY=VALUE for every command")
        ->allow_extra_args(false);
    create->add_option("-w,--workdir", args->process.workdir, "Default working directory");
    create->add_option("-u,--user", args->process.user, "Default user");
    commands.emplace_back("create", [args]() -> int {
        auto config = to_config(args->sandbox);
        if (!config) return fail(config.error());
        auto env = resolve_env(args->process.env);
        if (!env) return fail(env.error());
        auto& defaults = config->storage;
        defaults.env.insert(defaults.env.end(), env->begin(), env->end());
        if (!args->process.workdir.empty()) defaults.workdir = args->process.workdir;
        if (!args->process.user.empty()) defaults.user = args->process.user;
        auto labels = to_labels(args->sandbox.labels);
        if (!labels) return fail(labels.error());
        auto home = host::SandboxHome::open();
        if (!home) return fail(home.error());
        auto record = home->create(args->name, *config, *labels);
        if (!record) return fail(record.error());
        fmt::print("{}\n", record->name);
        return 0;
    });

    auto* start = app.add_subcommand("start", "Boot named sandboxes; they run until stopped");
    start->add_option("names", args->names, "Sandbox names")->required();
    commands.emplace_back("start", [args] {
        return for_each_name(
            args->names, [](host::SandboxHome& home, const std::string& name) -> Result<void> {
                auto started = home.start(name);
                if (!started) {
                    auto record = home.get(name);
                    double boot_s = 60;
                    if (record) {
                        if (auto config = host::config_from_json(record->config))
                            boot_s = static_cast<double>(config->boot_timeout.count()) / 1000;
                    }
                    if (started.error().code == ETIMEDOUT)
                        return make_error(
                            fmt::format("sandbox \"{}\" did not become ready within {} s", name, boot_s));
                    if (started.error().code == EBUSY) return std::unexpected(started.error());
                    return make_error("could not start sandbox \"" + name + "\": " + started.error().message);
                }
                return {};
            });
    });

    auto* stop = app.add_subcommand("stop", "Stop sandboxes gracefully; kill them after the timeout");
    stop->add_option("-t,--time", args->stop_timeout_s, "Seconds to wait before killing")
        ->capture_default_str();
    stop->add_option("names", args->names, "Sandbox names")->required();
    commands.emplace_back("stop", [args] {
        return for_each_name(args->names,
                             [&](host::SandboxHome& home, const std::string& name) -> Result<void> {
                                 TRY(home.stop(name, to_ms(args->stop_timeout_s)));
                                 return {};
                             });
    });

    auto* drain = app.add_subcommand(
        "drain", "Refuse new commands, let running ones finish (killed after the timeout), then stop");
    drain->add_option("-t,--time", args->stop_timeout_s, "Seconds running commands get to finish")
        ->capture_default_str();
    drain->add_option("names", args->names, "Sandbox names")->required();
    commands.emplace_back("drain", [args] {
        return for_each_name(
            args->names, [&](host::SandboxHome& home, const std::string& name) -> Result<void> {
                TRY(home.request_drain(name, to_ms(args->stop_timeout_s)));
                // The drain, then the stop's own grace and bookkeeping.
                TRY(home.wait_until_stopped(name, to_ms(args->stop_timeout_s) + std::chrono::seconds(20)));
                return {};
            });
    });

    auto* kill = app.add_subcommand("kill", "Kill sandboxes' VMs at once");
    kill->add_option("names", args->names, "Sandbox names")->required();
    commands.emplace_back("kill", [args] {
        return for_each_name(args->names,
                             [](host::SandboxHome& home, const std::string& name) -> Result<void> {
                                 TRY(home.kill(name));
                                 return {};
                             });
    });

    auto* rm = app.add_subcommand("rm", "Remove sandboxes: record, writable layer and logs");
    rm->add_flag("-f,--force", args->force, "Kill a running sandbox first");
    rm->add_option("names", args->names, "Sandbox names")->required();
    commands.emplace_back("rm", [args] {
        return for_each_name(args->names,
                             [&](host::SandboxHome& home, const std::string& name) -> Result<void> {
                                 return home.remove(name, args->force);
                             });
    });

    for (const char* which : {"ls", "ps"}) {
        bool running_only = std::string(which) == "ps";
        auto* cmd = app.add_subcommand(which, running_only ? "List running sandboxes" : "List sandboxes");
        cmd->add_flag("--json", args->json_output, "JSON array of records");
        cmd->add_flag("-q,--quiet", args->quiet, "Only names");
        cmd->add_option("--label", args->labels, "Only with label KEY=VALUE (repeatable, all must match)")
            ->allow_extra_args(false);
        if (!running_only)
            cmd->add_option("--status", args->statuses, "Only with this status (repeatable)")
                ->allow_extra_args(false);
        commands.emplace_back(which, [args, running_only] { return list(*args, running_only); });
    }

    auto* inspect = app.add_subcommand("inspect", "Show a sandbox as JSON");
    inspect->add_option("name", args->name, "Sandbox name")->required();
    commands.emplace_back("inspect", [args]() -> int {
        auto home = host::SandboxHome::open();
        if (!home) return fail(home.error());
        auto record = home->get(args->name);
        if (!record) return fail(record.error());
        fmt::print("{}\n", to_json(*home, *record).dump(2));
        return 0;
    });

    auto* exec = app.add_subcommand("exec", "Run a command in a running sandbox");
    exec->positionals_at_end(true);
    add_process_options(*exec, args->process);
    exec->add_option("name", args->name, "Sandbox name")->required();
    exec->add_option("command", args->process.command, "The command and its arguments");
    commands.emplace_back("exec", [args]() -> int {
        // After NAME, CLI11 hands a "--" separator through as the command's first word.
        if (!args->process.command.empty() && args->process.command.front() == "--")
            args->process.command.erase(args->process.command.begin());
        auto request = make_request(args->process);
        if (!request) return fail(request.error().message);
        auto home = host::SandboxHome::open();
        if (!home) return fail(home.error());
        return run_in_sandbox(*home, args->name, *request, args->process);
    });
    return commands;
}

}  // namespace sandlot::cli
