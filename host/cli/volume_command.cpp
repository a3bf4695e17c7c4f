// `sandlot volume create|ls|rm|inspect`: named volumes (host/lib/volumes.h).
#include <ctime>
#include <memory>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "host/cli/commands.h"
#include "host/lib/names.h"
#include "host/lib/volumes.h"

namespace sandlot::cli {

namespace {

constexpr int kFailed = 125;

int fail(const Error& error) {
    fmt::print(stderr, "sandlot: error: {}\n", error.to_string());
    return kFailed;
}

nlohmann::json to_json(const host::VolumeInfo& info) {
    return {{"name", info.name},
            {"path", info.path},
            {"bytes", info.bytes},
            {"created_at", info.created_at},
            {"labels", info.labels}};
}

struct VolumeArgs {
    std::string name;
    std::vector<std::string> names;
    std::vector<std::string> labels;
    bool quiet = false;
};

}  // namespace

CommandRunner add_volume_command(CLI::App& app) {
    auto args = std::make_shared<VolumeArgs>();
    auto* cmd = app.add_subcommand("volume", "Manage named volumes");
    cmd->require_subcommand(1);
    auto* create = cmd->add_subcommand("create", "Create a named volume");
    create->add_option("name", args->name, "Volume name")->required();
    create->add_option("--label", args->labels, "Label KEY=VALUE (repeatable)")->allow_extra_args(false);
    auto* ls = cmd->add_subcommand("ls", "List named volumes");
    ls->add_flag("-q,--quiet", args->quiet, "Only print names");
    auto* rm = cmd->add_subcommand("rm", "Remove named volumes and their data");
    rm->add_option("names", args->names, "Volume names")->required();
    auto* inspect = cmd->add_subcommand("inspect", "Show a volume as JSON");
    inspect->add_option("name", args->name, "Volume name")->required();

    return [=]() -> int {
        if (create->parsed()) {
            std::map<std::string, std::string> labels;
            for (const auto& text : args->labels) {
                auto label = host::parse_label(text);
                if (!label) return fail(label.error());
                labels[label->first] = label->second;
            }
            auto info = host::create_volume(args->name, labels);
            if (!info) return fail(info.error());
            fmt::print("{}\n", info->name);
            return 0;
        }
        if (ls->parsed()) {
            auto volumes = host::list_volumes();
            if (!volumes) return fail(volumes.error());
            if (!args->quiet) fmt::print("{:<32} {:>12}  {}\n", "NAME", "BYTES", "PATH");
            for (const auto& v : *volumes) {
                if (args->quiet) {
                    fmt::print("{}\n", v.name);
                } else {
                    fmt::print("{:<32} {:>12}  {}\n", v.name, v.bytes, v.path);
                }
            }
            return 0;
        }
        if (rm->parsed()) {
            int status = 0;
            for (const auto& name : args->names) {
                if (auto removed = host::remove_volume(name); !removed) {
                    status = fail(removed.error());
                } else {
                    fmt::print("{}\n", name);
                }
            }
            return status;
        }
        if (inspect->parsed()) {
            auto info = host::inspect_volume(args->name);
            if (!info) return fail(info.error());
            fmt::print("{}\n", to_json(*info).dump(2));
            return 0;
        }
        return kFailed;
    };
}

}  // namespace sandlot::cli
