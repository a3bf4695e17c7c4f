#include "host/lib/paths.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>

namespace sandlot::host {

namespace fs = std::filesystem;

std::string bin_dir() {
    if (const char* env = std::getenv("SANDLOT_BIN_DIR"); env && *env) return env;
    std::error_code ec;
    fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    return ec ? std::string(".") : exe.parent_path().string();
}

std::string guest_dir() {
    if (const char* env = std::getenv("SANDLOT_GUEST_DIR"); env && *env) return env;
    return (fs::path(bin_dir()).parent_path() / "guest").string();
}

std::string image_dir() {
    if (const char* env = std::getenv("SANDLOT_IMAGE_DIR"); env && *env) return env;
    return guest_dir() + "/images";
}

std::string home_dir() {
    if (const char* env = std::getenv("SANDLOT_HOME"); env && *env) return env;
    if (const char* data = std::getenv("XDG_DATA_HOME"); data && *data) return std::string(data) + "/sandlot";
    const char* home = std::getenv("HOME");
    return std::string(home && *home ? home : "/tmp") + "/.local/share/sandlot";
}

std::optional<std::string> find_program(const std::string& name) {
    std::string dirs = std::getenv("PATH") ? std::getenv("PATH") : "";
    dirs += ":/usr/sbin:/sbin:/usr/bin:/bin";
    size_t start = 0;
    while (start <= dirs.size()) {
        size_t colon = dirs.find(':', start);
        if (colon == std::string::npos) colon = dirs.size();
        std::string dir = dirs.substr(start, colon - start);
        start = colon + 1;
        if (dir.empty()) continue;
        std::string candidate = dir + "/" + name;
        if (access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    return std::nullopt;
}

}  // namespace sandlot::host
