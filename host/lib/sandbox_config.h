// What a named sandbox is: everything `sandlot create` (or `run`) was told, kept as JSON in the state
// database so that `sandlot start` and the supervisor boot the same sandbox every time.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "host/lib/storage.h"
#include "proto/base/error.h"

namespace sandlot::host {

// The command `sandlot run -d` starts in the background once the sandbox is ready; its output goes to the
// sandbox's log.
struct InitCommand {
    std::vector<std::string> argv{};
    std::vector<std::string> env{};
    std::string cwd{};
    std::string user{};
};

struct SandboxConfig {
    uint64_t memory_mib = 256;
    uint32_t cpus = 1;
    StorageOptions storage{};  // host paths in it are absolute
    std::chrono::milliseconds boot_timeout{60'000};
    std::chrono::milliseconds max_duration{0};        // 0: none. Then the sandbox is drained and stopped.
    std::chrono::milliseconds idle_timeout{0};        // 0: none. No exec activity for this long stops it.
    std::chrono::milliseconds drain_timeout{10'000};  // how long running commands may take to finish
    bool ephemeral = false;                           // --rm: everything is removed when it stops
    InitCommand init{};                               // argv empty: none
};

std::string config_to_json(const SandboxConfig& config);
Result<SandboxConfig> config_from_json(std::string_view text);

}  // namespace sandlot::host
