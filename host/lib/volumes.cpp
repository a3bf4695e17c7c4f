#include "host/lib/volumes.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>

#include "host/lib/paths.h"
#include "host/lib/state_db.h"

namespace sandlot::host {

namespace {

namespace fs = std::filesystem;

uint64_t tree_bytes(const std::string& dir) {
    uint64_t total = 0;
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        std::error_code size_ec;
        if (it->is_regular_file(size_ec)) {
            auto size = it->file_size(size_ec);
            if (!size_ec) total += size;
        }
    }
    return total;
}

Result<StateDb> open_db() {
    std::error_code ec;
    fs::create_directories(home_dir(), ec);
    return StateDb::open(home_dir() + "/sandlot.db");
}

Result<VolumeInfo> describe(const std::string& name) {
    std::string path = volumes_dir() + "/" + name;
    struct stat st;
    if (lstat(path.c_str(), &st) != 0) {
        if (errno == ENOENT) return make_error("no volume named " + name);
        return errno_error("volume " + name);
    }
    if (!S_ISDIR(st.st_mode)) return make_error("volume " + name + ": " + path + " is not a directory");
    VolumeInfo info{name, path, tree_bytes(path), static_cast<int64_t>(st.st_mtime)};
    if (auto db = open_db()) {
        if (auto record = db->find_volume(name); record && *record) info.labels = (*record)->labels;
    }
    return info;
}

}  // namespace

Result<void> check_volume_name(const std::string& name) {
    bool ok = !name.empty() && name.size() <= 64 && std::isalnum(static_cast<unsigned char>(name[0]));
    for (char c : name)
        ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-');
    if (!ok) {
        return make_error("bad volume name \"" + name +
                          "\": use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit");
    }
    return {};
}

std::string volumes_dir() {
    return home_dir() + "/volumes";
}

Result<VolumeInfo> create_volume(const std::string& name, const std::map<std::string, std::string>& labels) {
    TRY(check_volume_name(name));
    auto db = TRY(open_db());
    std::error_code ec;
    fs::create_directories(volumes_dir(), ec);
    if (ec) return make_error("cannot create " + volumes_dir() + ": " + ec.message());
    std::string path = volumes_dir() + "/" + name;
    if (mkdir(path.c_str(), 0755) != 0) {
        if (errno == EEXIST) return make_error("volume " + name + " already exists");
        return errno_error("create volume " + name);
    }
    // A record left by a volume whose directory was deleted by hand is replaced.
    (void)db.delete_volume(name);
    VolumeRecord record;
    record.name = name;
    record.path = path;
    record.labels = labels;
    if (auto inserted = db.insert_volume(record); !inserted) {
        rmdir(path.c_str());
        return std::unexpected(inserted.error());
    }
    return describe(name);
}

Result<std::string> ensure_volume(const std::string& name) {
    TRY(check_volume_name(name));
    auto created = create_volume(name);
    if (created) return created->path;
    auto existing = describe(name);
    if (!existing) return std::unexpected(created.error());
    return existing->path;
}

Result<VolumeInfo> inspect_volume(const std::string& name) {
    TRY(check_volume_name(name));
    return describe(name);
}

Result<std::vector<VolumeInfo>> list_volumes() {
    std::vector<VolumeInfo> volumes;
    std::error_code ec;
    if (!fs::exists(volumes_dir(), ec)) return volumes;
    for (const auto& entry : fs::directory_iterator(volumes_dir(), ec)) {
        std::string name = entry.path().filename().string();
        if (!check_volume_name(name)) continue;
        if (auto info = describe(name)) volumes.push_back(std::move(*info));
    }
    if (ec) return make_error("cannot list " + volumes_dir() + ": " + ec.message());
    std::sort(volumes.begin(), volumes.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
    return volumes;
}

Result<void> remove_volume(const std::string& name) {
    auto info = TRY(inspect_volume(name));
    std::error_code ec;
    fs::remove_all(info.path, ec);
    if (ec) return make_error("remove volume " + name + ": " + ec.message());
    return TRY(open_db()).delete_volume(name);
}

}  // namespace sandlot::host
