#include "host/lib/paths.h"

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

}  // namespace sandlot::host
