#include "vmm/kvm/kvm.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <string>

#include "vmm/kvm/kvm_flex.h"
#include "vmm/memory/layout.h"

namespace sandlot::vmm {

namespace {

constexpr int kKvmApiVersion = 12;

struct RequiredCap {
    int cap;
    const char* name;
};

// Everything the VMM uses without a fallback.
constexpr RequiredCap kRequiredCaps[] = {
    {KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"},
    {KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD"},
    {KVM_CAP_IRQFD, "KVM_CAP_IRQFD"},
    {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"},
    {KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"},
    {KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"},
};

// Generous upper bounds for the "ask with a bigger buffer" loops below.
constexpr size_t kMaxCpuidEntries = 4096;
constexpr size_t kMaxMsrIndices = 16384;

}  // namespace

Result<Kvm> Kvm::open() {
    Kvm kvm;
    kvm.fd_ = UniqueFd(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
    if (!kvm.fd_) return errno_error("open /dev/kvm");

    int version = ioctl(kvm.fd(), KVM_GET_API_VERSION, 0);
    if (version != kKvmApiVersion) {
        return make_error("/dev/kvm reports API version " + std::to_string(version) + ", need " +
                          std::to_string(kKvmApiVersion));
    }
    for (const auto& [cap, name] : kRequiredCaps) {
        if (ioctl(kvm.fd(), KVM_CHECK_EXTENSION, cap) <= 0) {
            return make_error(std::string("/dev/kvm lacks required capability ") + name);
        }
    }

    // KVM_CAP_MAX_VCPUS is the hard limit; older kernels only report the recommended NR_VCPUS, and the
    // documented default when neither is present is 4.
    int max_vcpus = ioctl(kvm.fd(), KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS);
    if (max_vcpus <= 0) max_vcpus = ioctl(kvm.fd(), KVM_CHECK_EXTENSION, KVM_CAP_NR_VCPUS);
    kvm.max_vcpus_ = max_vcpus > 0 ? static_cast<uint32_t>(max_vcpus) : 4;

    int mmap_size = ioctl(kvm.fd(), KVM_GET_VCPU_MMAP_SIZE, 0);
    if (mmap_size < static_cast<int>(sizeof(kvm_run))) return errno_error("KVM_GET_VCPU_MMAP_SIZE");
    kvm.vcpu_mmap_size_ = static_cast<size_t>(mmap_size);
    return kvm;
}

int Kvm::check_extension(long capability) const {
    int value = ioctl(fd(), KVM_CHECK_EXTENSION, capability);
    return value > 0 ? value : 0;
}

Result<std::vector<kvm_cpuid_entry2>> Kvm::supported_cpuid() const {
    // KVM answers E2BIG until the buffer is large enough; start near today's typical size and double.
    for (size_t capacity = 128; capacity <= kMaxCpuidEntries; capacity *= 2) {
        KvmFlexBuffer<KvmCpuid2Header, kvm_cpuid_entry2> cpuid(capacity);
        cpuid.set_header({.nent = static_cast<uint32_t>(capacity), .padding = 0});
        if (ioctl(fd(), kIoctlGetSupportedCpuid, cpuid.data()) == 0)
            return cpuid.entries(cpuid.header().nent);
        if (errno != E2BIG) return errno_error("KVM_GET_SUPPORTED_CPUID");
    }
    return make_error("KVM_GET_SUPPORTED_CPUID: more than " + std::to_string(kMaxCpuidEntries) + " entries");
}

Result<std::vector<uint32_t>> Kvm::msr_index_list() const {
    // The first call, with room for none, fails with E2BIG and reports how many there are.
    KvmMsrListHeader probe{0};
    if (ioctl(fd(), kIoctlGetMsrIndexList, &probe) == 0) return std::vector<uint32_t>{};
    if (errno != E2BIG) return errno_error("KVM_GET_MSR_INDEX_LIST");
    if (probe.nmsrs > kMaxMsrIndices) return make_error("KVM_GET_MSR_INDEX_LIST: implausibly many MSRs");

    KvmFlexBuffer<KvmMsrListHeader, uint32_t> list(probe.nmsrs);
    list.set_header(probe);
    if (ioctl(fd(), kIoctlGetMsrIndexList, list.data()) < 0) return errno_error("KVM_GET_MSR_INDEX_LIST");
    return list.entries(list.header().nmsrs);
}

Result<Vm> Vm::create(const Kvm& kvm) {
    Vm vm;
    vm.vcpu_mmap_size_ = kvm.vcpu_mmap_size();
    vm.fd_ = UniqueFd(ioctl(kvm.fd(), KVM_CREATE_VM, 0));
    if (!vm.fd_) return errno_error("KVM_CREATE_VM");

    // Intel needs these guest-physical pages for its own use; they must not overlap RAM or devices.
    if (ioctl(vm.fd(), KVM_SET_TSS_ADDR, layout::kKvmTssAddr) < 0) return errno_error("KVM_SET_TSS_ADDR");
    uint64_t identity_map = layout::kKvmIdentityMapAddr;
    if (ioctl(vm.fd(), KVM_SET_IDENTITY_MAP_ADDR, &identity_map) < 0) {
        return errno_error("KVM_SET_IDENTITY_MAP_ADDR");
    }

    if (ioctl(vm.fd(), KVM_CREATE_IRQCHIP, 0) < 0) return errno_error("KVM_CREATE_IRQCHIP");
    // The PIT is Linux's fallback clock source and calibrates the TSC; "speaker dummy" makes KVM also
    // answer port 0x61 (speaker / PIT gate), which Linux reads during calibration.
    kvm_pit_config pit{};
    pit.flags = KVM_PIT_SPEAKER_DUMMY;
    if (ioctl(vm.fd(), KVM_CREATE_PIT2, &pit) < 0) return errno_error("KVM_CREATE_PIT2");
    return vm;
}

Result<void> Vm::set_memory_regions(const GuestMemory& memory) {
    uint32_t slot = 0;
    for (const MemoryRegion& region : memory.regions()) {
        kvm_userspace_memory_region mem{};
        mem.slot = slot++;
        mem.guest_phys_addr = region.gpa;
        mem.memory_size = region.size;
        mem.userspace_addr = reinterpret_cast<uint64_t>(region.host);
        if (ioctl(fd(), KVM_SET_USER_MEMORY_REGION, &mem) < 0)
            return errno_error("KVM_SET_USER_MEMORY_REGION");
    }
    return {};
}

Result<void> Vm::add_ioeventfd(uint64_t mmio_addr, uint32_t len, std::optional<uint64_t> datamatch,
                               int eventfd) {
    kvm_ioeventfd ioeventfd{};
    ioeventfd.addr = mmio_addr;
    ioeventfd.len = len;
    ioeventfd.fd = eventfd;
    if (datamatch) {
        ioeventfd.datamatch = *datamatch;
        ioeventfd.flags = KVM_IOEVENTFD_FLAG_DATAMATCH;
    }
    if (ioctl(fd(), KVM_IOEVENTFD, &ioeventfd) < 0) return errno_error("KVM_IOEVENTFD");
    return {};
}

Result<void> Vm::add_irqfd(int eventfd, uint32_t gsi) {
    kvm_irqfd irqfd{};
    irqfd.fd = static_cast<uint32_t>(eventfd);
    irqfd.gsi = gsi;
    if (ioctl(fd(), KVM_IRQFD, &irqfd) < 0) return errno_error("KVM_IRQFD");
    return {};
}

Result<Vcpu> Vm::create_vcpu(uint32_t index) const {
    UniqueFd vcpu_fd(ioctl(fd(), KVM_CREATE_VCPU, static_cast<unsigned long>(index)));
    if (!vcpu_fd) return errno_error("KVM_CREATE_VCPU " + std::to_string(index));
    void* run = mmap(nullptr, vcpu_mmap_size_, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_fd.get(), 0);
    if (run == MAP_FAILED) return errno_error("mmap kvm_run");
    return Vcpu(std::move(vcpu_fd), static_cast<kvm_run*>(run), vcpu_mmap_size_, index);
}

}  // namespace sandlot::vmm
