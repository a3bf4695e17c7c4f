#include "proto/boot_config.h"

#include <array>
#include <nlohmann/json.hpp>
#include <utility>

namespace sandlot::proto {

namespace {

using nlohmann::json;

// Enum <-> JSON string tables: one place per enum.
template <class E, size_t N>
using Names = std::array<std::pair<E, const char*>, N>;

constexpr Names<BootRoot::Kind, 3> kRootKinds{{
    {BootRoot::Kind::Initramfs, "initramfs"},
    {BootRoot::Kind::VirtioFs, "virtiofs"},
    {BootRoot::Kind::Disk, "disk"},
}};
constexpr Names<BootRoot::Upper, 3> kUppers{{
    {BootRoot::Upper::None, "none"},
    {BootRoot::Upper::Tmpfs, "tmpfs"},
    {BootRoot::Upper::Disk, "disk"},
}};
constexpr Names<BootMount::Kind, 3> kMountKinds{{
    {BootMount::Kind::VirtioFs, "virtiofs"},
    {BootMount::Kind::Disk, "disk"},
    {BootMount::Kind::Tmpfs, "tmpfs"},
}};
constexpr Names<BootPatch::Op, 6> kPatchOps{{
    {BootPatch::Op::Write, "write"},
    {BootPatch::Op::Append, "append"},
    {BootPatch::Op::Mkdir, "mkdir"},
    {BootPatch::Op::Remove, "remove"},
    {BootPatch::Op::Symlink, "symlink"},
    {BootPatch::Op::Copy, "copy"},
}};

template <class E, size_t N>
const char* name_of(const Names<E, N>& names, E value) {
    for (const auto& [e, name] : names)
        if (e == value) return name;
    return "?";
}

template <class E, size_t N>
Result<E> value_of(const Names<E, N>& names, const json& j, const char* what) {
    if (!j.is_string()) return make_error(std::string(what) + " must be a string");
    const auto& text = j.get_ref<const std::string&>();
    for (const auto& [e, name] : names)
        if (text == name) return e;
    return make_error(std::string("unknown ") + what + " \"" + text + "\"");
}

// Reads an optional member: absent or null leaves `out` alone; a wrong type is an error.
Result<void> get_string(const json& object, const char* key, std::string& out) {
    auto it = object.find(key);
    if (it == object.end() || it->is_null()) return {};
    if (!it->is_string()) return make_error(std::string(key) + " must be a string");
    out = it->get<std::string>();
    return {};
}

Result<void> get_u64(const json& object, const char* key, uint64_t& out) {
    auto it = object.find(key);
    if (it == object.end() || it->is_null()) return {};
    if (!it->is_number_unsigned()) return make_error(std::string(key) + " must be a non-negative integer");
    out = it->get<uint64_t>();
    return {};
}

Result<void> get_u32(const json& object, const char* key, std::optional<uint32_t>& out) {
    auto it = object.find(key);
    if (it == object.end() || it->is_null()) return {};
    if (!it->is_number_unsigned() || it->get<uint64_t>() > UINT32_MAX)
        return make_error(std::string(key) + " must be a 32-bit unsigned integer");
    out = it->get<uint32_t>();
    return {};
}

Result<void> get_bool(const json& object, const char* key, bool& out) {
    auto it = object.find(key);
    if (it == object.end() || it->is_null()) return {};
    if (!it->is_boolean()) return make_error(std::string(key) + " must be true or false");
    out = it->get<bool>();
    return {};
}

Result<void> require_absolute(const std::string& path, const char* what) {
    if (path.empty() || path.front() != '/')
        return make_error(std::string(what) + " must be an absolute path");
    return {};
}

Result<BootRoot> parse_root(const json& j) {
    if (!j.is_object()) return make_error("root must be an object");
    BootRoot root;
    if (auto it = j.find("kind"); it != j.end()) root.kind = TRY(value_of(kRootKinds, *it, "root kind"));
    if (auto it = j.find("upper"); it != j.end()) root.upper = TRY(value_of(kUppers, *it, "upper kind"));
    TRY(get_string(j, "source", root.source));
    TRY(get_string(j, "fstype", root.fstype));
    TRY(get_string(j, "upper_source", root.upper_source));
    TRY(get_u64(j, "upper_size_bytes", root.upper_size_bytes));
    if (root.kind != BootRoot::Kind::Initramfs && root.source.empty())
        return make_error("root needs a source");
    if (root.upper == BootRoot::Upper::Disk && root.upper_source.empty())
        return make_error("a disk upper needs upper_source");
    return root;
}

Result<BootMount> parse_mount(const json& j) {
    if (!j.is_object()) return make_error("each mount must be an object");
    BootMount mount;
    if (auto it = j.find("kind"); it != j.end()) mount.kind = TRY(value_of(kMountKinds, *it, "mount kind"));
    TRY(get_string(j, "source", mount.source));
    TRY(get_string(j, "target", mount.target));
    TRY(get_bool(j, "read_only", mount.read_only));
    TRY(get_u64(j, "size_bytes", mount.size_bytes));
    TRY(get_string(j, "fstype", mount.fstype));
    TRY(require_absolute(mount.target, "mount target"));
    if (mount.kind != BootMount::Kind::Tmpfs && mount.source.empty())
        return make_error("mount " + mount.target + " needs a source");
    return mount;
}

Result<BootPatch> parse_patch(const json& j) {
    if (!j.is_object()) return make_error("each patch must be an object");
    BootPatch patch;
    auto op = j.find("op");
    if (op == j.end()) return make_error("patch without op");
    patch.op = TRY(value_of(kPatchOps, *op, "patch op"));
    TRY(get_string(j, "path", patch.path));
    TRY(get_string(j, "source", patch.source));
    TRY(get_string(j, "target", patch.target));
    TRY(get_u32(j, "mode", patch.mode));
    TRY(get_u32(j, "uid", patch.uid));
    TRY(get_u32(j, "gid", patch.gid));
    TRY(require_absolute(patch.path, "patch path"));
    bool needs_source = patch.op == BootPatch::Op::Write || patch.op == BootPatch::Op::Append ||
                        patch.op == BootPatch::Op::Copy;
    if (needs_source) TRY(require_absolute(patch.source, "patch source"));
    if (patch.op == BootPatch::Op::Symlink && patch.target.empty())
        return make_error("symlink patch needs a target");
    if (patch.mode && *patch.mode > 07777) return make_error("patch mode must be at most 07777");
    return patch;
}

Result<BootScript> parse_script(const json& j) {
    if (!j.is_object()) return make_error("each script must be an object");
    BootScript script;
    TRY(get_string(j, "name", script.name));
    TRY(get_string(j, "source", script.source));
    if (script.name.empty() || script.name == "." || script.name == ".." ||
        script.name.find('/') != std::string::npos || script.name.find('\0') != std::string::npos) {
        return make_error("script name \"" + script.name + "\" is not a plain file name");
    }
    TRY(require_absolute(script.source, "script source"));
    return script;
}

template <class T, class Parse>
Result<void> parse_array(const json& object, const char* key, std::vector<T>& out, Parse parse) {
    auto it = object.find(key);
    if (it == object.end() || it->is_null()) return {};
    if (!it->is_array()) return make_error(std::string(key) + " must be an array");
    for (const json& item : *it)
        out.push_back(TRY(parse(item)));
    return {};
}

Result<BootConfig> parse_config(const json& j) {
    if (!j.is_object()) return make_error("the boot configuration must be a JSON object");
    BootConfig config;
    if (auto it = j.find("root"); it != j.end() && !it->is_null()) config.root = TRY(parse_root(*it));
    TRY(parse_array(j, "mounts", config.mounts, parse_mount));
    TRY(parse_array(j, "patches", config.patches, parse_patch));
    TRY(parse_array(j, "scripts", config.scripts, parse_script));
    TRY(parse_array(j, "env", config.env, [](const json& item) -> Result<std::string> {
        if (!item.is_string()) return make_error("env entries must be strings");
        auto text = item.get<std::string>();
        if (text.empty() || text.front() == '=' || text.find('=') == std::string::npos)
            return make_error("env entry \"" + text + "\" is not K=V");
        return text;
    }));
    TRY(get_string(j, "workdir", config.workdir));
    TRY(get_string(j, "user", config.user));
    TRY(get_string(j, "hostname", config.hostname));
    if (!config.workdir.empty()) TRY(require_absolute(config.workdir, "workdir"));
    if (config.hostname.size() > 64) return make_error("hostname is longer than 64 bytes");
    return config;
}

template <class T>
void put_optional(json& j, const char* key, const std::optional<T>& value) {
    if (value) j[key] = *value;
}

}  // namespace

Result<BootConfig> parse_boot_config(std::string_view text) {
    json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return make_error("the boot configuration is not valid JSON");
    try {
        auto config = parse_config(j);
        if (!config) return std::unexpected(with_context(config.error(), "boot configuration"));
        return config;
    } catch (const json::exception& e) {  // a type mix-up deep in nlohmann; never expected, never fatal
        return make_error(std::string("boot configuration: ") + e.what());
    }
}

std::string boot_config_to_json(const BootConfig& config) {
    json j;
    const BootRoot& root = config.root;
    j["root"] = {{"kind", name_of(kRootKinds, root.kind)},
                 {"source", root.source},
                 {"fstype", root.fstype},
                 {"upper", name_of(kUppers, root.upper)},
                 {"upper_source", root.upper_source},
                 {"upper_size_bytes", root.upper_size_bytes}};
    j["mounts"] = json::array();
    for (const BootMount& m : config.mounts) {
        j["mounts"].push_back({{"kind", name_of(kMountKinds, m.kind)},
                               {"source", m.source},
                               {"target", m.target},
                               {"read_only", m.read_only},
                               {"size_bytes", m.size_bytes},
                               {"fstype", m.fstype}});
    }
    j["patches"] = json::array();
    for (const BootPatch& p : config.patches) {
        json patch = {{"op", name_of(kPatchOps, p.op)}, {"path", p.path}};
        if (!p.source.empty()) patch["source"] = p.source;
        if (!p.target.empty()) patch["target"] = p.target;
        put_optional(patch, "mode", p.mode);
        put_optional(patch, "uid", p.uid);
        put_optional(patch, "gid", p.gid);
        j["patches"].push_back(std::move(patch));
    }
    j["scripts"] = json::array();
    for (const BootScript& s : config.scripts)
        j["scripts"].push_back({{"name", s.name}, {"source", s.source}});
    j["env"] = config.env;
    j["workdir"] = config.workdir;
    j["user"] = config.user;
    j["hostname"] = config.hostname;
    return j.dump(2) + "\n";
}

std::string_view to_string(BootPatch::Op op) {
    return name_of(kPatchOps, op);
}

}  // namespace sandlot::proto
