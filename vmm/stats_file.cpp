#include "vmm/stats_file.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include <new>

#include "proto/base/unique_fd.h"

namespace sandlot::vmm {

namespace {

// Builds a VmmStats in `memory` (sizeof(VmmStats) bytes, page-aligned).
proto::VmmStats* construct(void* memory) {
    return new (memory) proto::VmmStats();
}

}  // namespace

Result<StatsFile> StatsFile::create(const std::string& path) {
    auto fail = [&](const std::string& what) {
        return std::unexpected(Error{errno, "stats file " + path + ": " + what});
    };
    std::string temp = path + ".tmp." + std::to_string(getpid());
    unlink(temp.c_str());  // left over by a VMM that died with our pid; O_EXCL below refuses anything else
    UniqueFd fd(open(temp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd) return fail("create " + temp);
    auto remove_temp = [&] { unlink(temp.c_str()); };
    if (ftruncate(fd.get(), sizeof(proto::VmmStats)) != 0) {
        auto error = fail("size");
        remove_temp();
        return error;
    }
    void* memory = mmap(nullptr, sizeof(proto::VmmStats), PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (memory == MAP_FAILED) {
        auto error = fail("mmap");
        remove_temp();
        return error;
    }
    StatsFile file(construct(memory));
    if (rename(temp.c_str(), path.c_str()) != 0) {
        auto error = fail("rename");
        remove_temp();
        return error;
    }
    return file;
}

Result<StatsFile> StatsFile::private_instance() {
    void* memory =
        mmap(nullptr, sizeof(proto::VmmStats), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) return errno_error("mmap counters");
    return StatsFile(construct(memory));
}

void StatsFile::release() {
    if (!stats_) return;
    stats_->~VmmStats();
    munmap(stats_, sizeof(proto::VmmStats));
    stats_ = nullptr;
}

StatsFile::~StatsFile() {
    release();
}

StatsFile& StatsFile::operator=(StatsFile&& other) noexcept {
    if (this != &other) {
        release();
        stats_ = std::exchange(other.stats_, nullptr);
    }
    return *this;
}

}  // namespace sandlot::vmm
