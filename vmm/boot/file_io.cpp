#include "vmm/boot/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>

namespace sandlot::vmm::boot {

Result<OpenFile> open_regular_file(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return errno_error("open");
    struct stat st {};
    if (fstat(fd.get(), &st) != 0) return errno_error("stat");
    if (!S_ISREG(st.st_mode)) return make_error("not a regular file");
    return OpenFile{std::move(fd), static_cast<uint64_t>(st.st_size)};
}

Result<void> read_exact(int fd, std::span<uint8_t> out) {
    uint64_t done = 0;
    while (done < out.size()) {
        // pread takes at most ~2 GiB per call on Linux; keep chunks well under that.
        size_t chunk = std::min<uint64_t>(out.size() - done, 1ull << 30);
        ssize_t n = ::pread(fd, out.data() + done, chunk, static_cast<off_t>(done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("read");
        if (n == 0)
            return make_error(fmt::format("file shrank while reading ({} of {} bytes)", done, out.size()));
        done += static_cast<uint64_t>(n);
    }
    return {};
}

Result<FileBytes> read_whole_file(const std::string& path, uint64_t max_size) {
    auto file = TRY(open_regular_file(path));
    if (file.size == 0) return make_error("file is empty");
    if (file.size > max_size) {
        return make_error(
            fmt::format("file is too large ({} MiB, limit {} MiB)", file.size >> 20, max_size >> 20));
    }
    FileBytes bytes{std::make_unique_for_overwrite<uint8_t[]>(file.size), file.size};
    TRY(read_exact(file.fd.get(), {bytes.data.get(), file.size}));
    return bytes;
}

}  // namespace sandlot::vmm::boot
