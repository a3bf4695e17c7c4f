// The storage options `sandlot run` (and later `sandlot create`) share: root image, writable layer, volumes,
// patches, scripts. Parsed into host::StorageOptions.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "host/lib/storage.h"
#include "proto/base/error.h"

namespace sandlot::cli {

struct StorageArgs {
    std::string image;
    bool read_only = false;
    bool tmpfs_upper = false;
    std::string upper;
    std::string upper_size;
    std::vector<std::string> binds;     // HOST:GUEST[:ro]
    std::vector<std::string> named;     // NAME:GUEST[:ro]
    std::vector<std::string> tmpfs;     // GUEST[:SIZE]
    std::vector<std::string> disks;     // PATH:GUEST[:ro]
    std::vector<std::string> removes;   // GUEST
    std::vector<std::string> mkdirs;    // GUEST[:MODE]
    std::vector<std::string> copies;    // HOST:GUEST
    std::vector<std::string> writes;    // GUEST[:MODE]=TEXT
    std::vector<std::string> appends;   // GUEST=TEXT
    std::vector<std::string> symlinks;  // GUEST=TARGET
    std::vector<std::string> scripts;   // NAME=HOSTFILE
    std::string hostname;
};

void add_storage_options(CLI::App& cmd, StorageArgs& args);
Result<host::StorageOptions> to_storage_options(const StorageArgs& args);

}  // namespace sandlot::cli
