// Named volumes: directories under home_dir()/volumes/NAME that outlive sandboxes, each with a record (and
// its labels) in the state database. `sandlot run --volume NAME:/path` creates one on first use; `sandlot
// volume create/ls/rm/inspect` manage them. A volume is shared into a guest through virtio-fs like any host
// directory.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "proto/base/error.h"

namespace sandlot::host {

struct VolumeInfo {
    std::string name;
    std::string path;
    uint64_t bytes = 0;      // apparent size of everything in it
    int64_t created_at = 0;  // seconds since the epoch (the directory's mtime when first made)
    std::map<std::string, std::string> labels{};
};

// Names: 1-64 characters of [A-Za-z0-9_.-], starting with a letter or digit.
Result<void> check_volume_name(const std::string& name);
std::string volumes_dir();

// Fails if it exists already.
Result<VolumeInfo> create_volume(const std::string& name,
                                 const std::map<std::string, std::string>& labels = {});
// Creates it if missing; returns its directory.
Result<std::string> ensure_volume(const std::string& name);
Result<VolumeInfo> inspect_volume(const std::string& name);
Result<std::vector<VolumeInfo>> list_volumes();
Result<void> remove_volume(const std::string& name);

}  // namespace sandlot::host
