#include "vmm/devices/bus.h"

#include <string>

namespace sandlot::vmm {

Result<void> Bus::insert(uint64_t base, uint64_t length, std::shared_ptr<BusDevice> device) {
    if (length == 0 || base + length < base) return make_error("bus: empty or wrapping range");
    auto next = ranges_.lower_bound(base);
    if (next != ranges_.end() && next->first < base + length) return make_error("bus: overlapping range");
    if (next != ranges_.begin()) {
        auto prev = std::prev(next);
        if (prev->first + prev->second.length > base) return make_error("bus: overlapping range");
    }
    ranges_.emplace(base, Range{length, std::move(device)});
    return {};
}

const std::pair<uint64_t, const Bus::Range*> Bus::find(uint64_t addr, uint64_t len) const {
    auto it = ranges_.upper_bound(addr);
    if (it == ranges_.begin()) return {0, nullptr};
    --it;
    uint64_t offset = addr - it->first;
    if (offset >= it->second.length || len > it->second.length - offset) return {0, nullptr};
    return {offset, &it->second};
}

bool Bus::read(uint64_t addr, std::span<uint8_t> data) const {
    auto [offset, range] = find(addr, data.size());
    if (!range) return false;
    range->device->read(offset, data);
    return true;
}

bool Bus::write(uint64_t addr, std::span<const uint8_t> data) const {
    auto [offset, range] = find(addr, data.size());
    if (!range) return false;
    range->device->write(offset, data);
    return true;
}

}  // namespace sandlot::vmm
