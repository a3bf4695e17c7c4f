#include "vmm/memory/guest_memory.h"

#include <sys/mman.h>

#include <string>

#include "vmm/memory/layout.h"

namespace sandlot::vmm {

namespace {

Result<uint8_t*> map_anonymous(uint64_t bytes) {
    void* p =
        mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return errno_error("mmap " + std::to_string(bytes >> 20) + " MiB of guest memory");
    // Guest RAM never belongs in a host core dump, and transparent huge pages make faults cheaper.
    madvise(p, bytes, MADV_DONTDUMP);
    madvise(p, bytes, MADV_HUGEPAGE);
    return static_cast<uint8_t*>(p);
}

}  // namespace

Result<GuestMemory> GuestMemory::create(uint64_t bytes) {
    if (bytes == 0 || bytes % layout::kMiB != 0)
        return make_error("guest memory must be a positive whole number of MiB");
    GuestMemory mem;
    uint64_t low = std::min(bytes, layout::kMmioHoleStart);
    mem.regions_.push_back({0, low, TRY(map_anonymous(low))});
    if (bytes > low) {
        uint64_t high = bytes - low;
        auto host = map_anonymous(high);
        if (!host) return std::unexpected(host.error());  // `mem` unmaps the low region
        mem.regions_.push_back({layout::kMmioHoleEnd, high, *host});
    }
    mem.size_ = bytes;
    return mem;
}

GuestMemory::GuestMemory(GuestMemory&& other) noexcept
    : regions_(std::move(other.regions_)), size_(other.size_) {
    other.regions_.clear();
    other.size_ = 0;
}

GuestMemory& GuestMemory::operator=(GuestMemory&& other) noexcept {
    if (this != &other) {
        unmap();
        regions_ = std::move(other.regions_);
        size_ = other.size_;
        other.regions_.clear();
        other.size_ = 0;
    }
    return *this;
}

GuestMemory::~GuestMemory() {
    unmap();
}

void GuestMemory::unmap() {
    for (auto& r : regions_)
        munmap(r.host, r.size);
    regions_.clear();
}

Result<std::span<uint8_t>> GuestMemory::slice(uint64_t gpa, uint64_t len) const {
    for (const auto& r : regions_) {
        // Written to avoid overflow: gpa and len are guest-controlled.
        if (gpa >= r.gpa && gpa - r.gpa <= r.size && len <= r.size - (gpa - r.gpa)) {
            return std::span<uint8_t>(r.host + (gpa - r.gpa), len);
        }
    }
    return make_error("guest address range outside RAM (gpa=0x" + [&] {
        char buf[48];
        snprintf(buf, sizeof buf, "%llx len=0x%llx)", (unsigned long long)gpa, (unsigned long long)len);
        return std::string(buf);
    }());
}

Result<void> GuestMemory::write(uint64_t gpa, std::span<const uint8_t> data) const {
    auto dst = TRY(slice(gpa, data.size()));
    if (!data.empty()) std::memcpy(dst.data(), data.data(), data.size());
    return {};
}

Result<void> GuestMemory::read(uint64_t gpa, std::span<uint8_t> out) const {
    auto src = TRY(slice(gpa, out.size()));
    if (!out.empty()) std::memcpy(out.data(), src.data(), out.size());
    return {};
}

}  // namespace sandlot::vmm
