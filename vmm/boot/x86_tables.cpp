#include "vmm/boot/x86_tables.h"

namespace sandlot::vmm::boot {

namespace {

constexpr uint64_t kEntriesPerTable = 512;
using PageTable = std::array<uint64_t, kEntriesPerTable>;

}  // namespace

Result<void> write_boot_gdt(const GuestMemory& mem) {
    return mem.write_obj(layout::kGdt, kBootGdt);
}

Result<void> write_identity_page_tables(const GuestMemory& mem) {
    PageTable pml4{}, pdpt{};
    pml4[0] = layout::kPdpt | kPtePresent | kPteWritable;
    for (uint64_t i = 0; i < kIdentityMapPds; i++) {
        uint64_t pd_gpa = layout::kPd + i * sizeof(PageTable);
        pdpt[i] = pd_gpa | kPtePresent | kPteWritable;
        PageTable pd{};
        for (uint64_t j = 0; j < kEntriesPerTable; j++) {
            uint64_t page = (i * kEntriesPerTable + j) << 21;  // 2 MiB pages
            pd[j] = page | kPtePresent | kPteWritable | kPteLarge;
        }
        TRY(mem.write_obj(pd_gpa, pd));
    }
    TRY(mem.write_obj(layout::kPml4, pml4));
    TRY(mem.write_obj(layout::kPdpt, pdpt));
    return {};
}

}  // namespace sandlot::vmm::boot
