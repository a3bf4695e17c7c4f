// KVM structs that end in a flexible array: kvm_cpuid2, kvm_msrs, kvm_msr_list.
//
// We do not use their <linux/kvm.h> declarations from C++: older UAPI headers (Debian 12's among them)
// declare the arrays with __DECLARE_FLEX_ARRAY, whose C version puts an empty struct in front of the array.
// An empty struct has size 0 in C but 1 in C++, so in C++ the entries move (offset 12 instead of 8 for
// kvm_cpuid2) and the ioctl numbers, which encode sizeof(struct), change: KVM answers EINVAL. So the fixed
// parts and the ioctl numbers are declared here with the kernel's C layout, and the entries (whose own layout
// is fine) follow.
#pragma once

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace sandlot::vmm {

struct KvmCpuid2Header {  // struct kvm_cpuid2, then kvm_cpuid_entry2[nent]
    uint32_t nent;
    uint32_t padding;
};
struct KvmMsrsHeader {  // struct kvm_msrs, then kvm_msr_entry[nmsrs]
    uint32_t nmsrs;
    uint32_t pad;
};
struct KvmMsrListHeader {  // struct kvm_msr_list, then uint32_t[nmsrs]
    uint32_t nmsrs;
};
static_assert(sizeof(KvmCpuid2Header) == 8 && sizeof(KvmMsrsHeader) == 8 && sizeof(KvmMsrListHeader) == 4);
static_assert(sizeof(kvm_cpuid_entry2) == 40 && sizeof(kvm_msr_entry) == 16);

inline constexpr unsigned long kIoctlGetMsrIndexList = _IOWR(KVMIO, 0x02, KvmMsrListHeader);
inline constexpr unsigned long kIoctlGetSupportedCpuid = _IOWR(KVMIO, 0x05, KvmCpuid2Header);
inline constexpr unsigned long kIoctlSetMsrs = _IOW(KVMIO, 0x89, KvmMsrsHeader);
inline constexpr unsigned long kIoctlSetCpuid2 = _IOW(KVMIO, 0x90, KvmCpuid2Header);

// A header followed by room for `capacity` entries, as one buffer to pass to an ioctl. Values are copied
// in and out, so the buffer is only ever bytes to C++.
template <class Header, class Entry>
class KvmFlexBuffer {
  public:
    static_assert(sizeof(Header) % alignof(Entry) == 0, "entries must follow the header without padding");

    explicit KvmFlexBuffer(size_t capacity)
        : capacity_(capacity), bytes_(sizeof(Header) + capacity * sizeof(Entry)) {}

    void* data() { return bytes_.data(); }
    size_t capacity() const { return capacity_; }

    Header header() const {
        Header header;
        std::memcpy(&header, bytes_.data(), sizeof header);
        return header;
    }
    void set_header(const Header& header) { std::memcpy(bytes_.data(), &header, sizeof header); }

    // The first `count` entries (at most capacity()).
    std::vector<Entry> entries(size_t count) const {
        std::vector<Entry> out(std::min(count, capacity_));
        std::memcpy(out.data(), bytes_.data() + sizeof(Header), out.size() * sizeof(Entry));
        return out;
    }
    // Fills entries from the front; at most capacity() of them.
    void set_entries(std::span<const Entry> entries) {
        std::memcpy(bytes_.data() + sizeof(Header), entries.data(),
                    std::min(entries.size(), capacity_) * sizeof(Entry));
    }

  private:
    size_t capacity_;
    std::vector<uint8_t> bytes_;  // zero-initialized
};

}  // namespace sandlot::vmm
