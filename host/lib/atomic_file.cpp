#include "host/lib/atomic_file.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "proto/base/unique_fd.h"

namespace sandlot::host {

Result<void> write_file_atomically(const std::string& path, std::string_view content, mode_t mode) {
    size_t slash = path.rfind('/');
    std::string temp =
        (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) + ".tmp-XXXXXX";
    UniqueFd fd(mkostemp(temp.data(), O_CLOEXEC));
    if (!fd) return errno_error("create a temporary file for " + path);
    auto fail = [&](const std::string& what) -> Result<void> {
        int saved = errno;
        unlink(temp.c_str());
        return make_error(what, saved);
    };
    if (fchmod(fd.get(), mode) != 0) return fail("chmod " + temp);
    size_t done = 0;
    while (done < content.size()) {
        ssize_t n = write(fd.get(), content.data() + done, content.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail("write " + temp);
        done += static_cast<size_t>(n);
    }
    if (fsync(fd.get()) != 0) return fail("fsync " + temp);
    if (rename(temp.c_str(), path.c_str()) != 0) return fail("rename " + temp + " to " + path);
    return {};
}

}  // namespace sandlot::host
