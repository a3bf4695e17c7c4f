#include "host/lib/sandbox_config.h"

#include <nlohmann/json.hpp>

namespace sandlot::host {

NLOHMANN_JSON_SERIALIZE_ENUM(RootOptions::Writable, {
                                                        {RootOptions::Writable::Disk, "disk"},
                                                        {RootOptions::Writable::Tmpfs, "tmpfs"},
                                                        {RootOptions::Writable::ReadOnly, "read-only"},
                                                    })
NLOHMANN_JSON_SERIALIZE_ENUM(Volume::Kind, {
                                               {Volume::Kind::Bind, "bind"},
                                               {Volume::Kind::Named, "named"},
                                               {Volume::Kind::Tmpfs, "tmpfs"},
                                               {Volume::Kind::Disk, "disk"},
                                           })
NLOHMANN_JSON_SERIALIZE_ENUM(Patch::Op, {
                                            {Patch::Op::Write, "write"},
                                            {Patch::Op::Append, "append"},
                                            {Patch::Op::Mkdir, "mkdir"},
                                            {Patch::Op::Remove, "remove"},
                                            {Patch::Op::Symlink, "symlink"},
                                            {Patch::Op::CopyIn, "copy"},
                                        })

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(RootOptions, image, writable, upper_path, upper_size,
                                                tmpfs_upper_size)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(Volume, kind, source, target, read_only, size_bytes)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(Script, name, content)
// Optional members are written only when set.
void to_json(nlohmann::json& j, const Patch& p) {
    j = {{"op", p.op}, {"path", p.path}};
    if (!p.content.empty()) j["content"] = p.content;
    if (!p.host_path.empty()) j["host_path"] = p.host_path;
    if (!p.target.empty()) j["target"] = p.target;
    if (p.mode) j["mode"] = *p.mode;
    if (p.uid) j["uid"] = *p.uid;
    if (p.gid) j["gid"] = *p.gid;
}

void from_json(const nlohmann::json& j, Patch& p) {
    j.at("op").get_to(p.op);
    j.at("path").get_to(p.path);
    p.content = j.value("content", std::string());
    p.host_path = j.value("host_path", std::string());
    p.target = j.value("target", std::string());
    if (j.contains("mode")) p.mode = j.at("mode").get<uint32_t>();
    if (j.contains("uid")) p.uid = j.at("uid").get<uint32_t>();
    if (j.contains("gid")) p.gid = j.at("gid").get<uint32_t>();
}

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(StorageOptions, root, volumes, patches, scripts, env, workdir,
                                                user, hostname)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(InitCommand, argv, env, cwd, user)

std::string config_to_json(const SandboxConfig& c) {
    nlohmann::json j = {
        {"memory_mib", c.memory_mib},
        {"cpus", c.cpus},
        {"storage", c.storage},
        {"boot_timeout_ms", c.boot_timeout.count()},
        {"max_duration_ms", c.max_duration.count()},
        {"idle_timeout_ms", c.idle_timeout.count()},
        {"drain_timeout_ms", c.drain_timeout.count()},
        {"ephemeral", c.ephemeral},
        {"init", c.init},
    };
    // Patch contents are arbitrary bytes: keep invalid UTF-8 rather than throw.
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

Result<SandboxConfig> config_from_json(std::string_view text) {
    try {
        auto j = nlohmann::json::parse(text);
        SandboxConfig c;
        c.memory_mib = j.value("memory_mib", c.memory_mib);
        c.cpus = j.value("cpus", c.cpus);
        if (j.contains("storage")) j.at("storage").get_to(c.storage);
        c.boot_timeout = std::chrono::milliseconds(j.value("boot_timeout_ms", c.boot_timeout.count()));
        c.max_duration = std::chrono::milliseconds(j.value("max_duration_ms", int64_t{0}));
        c.idle_timeout = std::chrono::milliseconds(j.value("idle_timeout_ms", int64_t{0}));
        c.drain_timeout = std::chrono::milliseconds(j.value("drain_timeout_ms", c.drain_timeout.count()));
        c.ephemeral = j.value("ephemeral", false);
        if (j.contains("init")) j.at("init").get_to(c.init);
        return c;
    } catch (const nlohmann::json::exception& e) {
        return make_error(std::string("sandbox configuration: ") + e.what());
    }
}

}  // namespace sandlot::host
