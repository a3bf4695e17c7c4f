#include "host/lib/atomic_file.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <span>

#include "proto/base/unique_fd.h"
#include "proto/frame.h"

namespace sandlot::host {

Result<void> write_file_atomically(const std::string& path, std::string_view content, mode_t mode) {
    size_t slash = path.rfind('/');
    std::string temp =
        (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) + ".tmp-XXXXXX";
    UniqueFd fd(mkostemp(temp.data(), O_CLOEXEC));
    if (!fd) return errno_error("create a temporary file for " + path);
    auto fail = [&](const std::string& what, int code) -> Result<void> {
        unlink(temp.c_str());
        return make_error(what, code);
    };
    if (fchmod(fd.get(), mode) != 0) return fail("chmod " + temp, errno);
    std::span bytes(reinterpret_cast<const uint8_t*>(content.data()), content.size());
    if (auto written = proto::write_all(fd.get(), bytes); !written)
        return fail("write " + temp, written.error().code);
    if (fsync(fd.get()) != 0) return fail("fsync " + temp, errno);
    if (rename(temp.c_str(), path.c_str()) != 0) return fail("rename " + temp + " to " + path, errno);
    return {};
}

}  // namespace sandlot::host
