#include "host/lib/storage.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <filesystem>
#include <vector>

#include <fmt/format.h>

#include "host/lib/images.h"
#include "host/lib/paths.h"
#include "host/lib/process.h"
#include "host/lib/volumes.h"
#include "initramfs/cpio_writer.h"
#include "proto/boot_config.h"
#include "proto/frame.h"

namespace sandlot::host {

namespace {

namespace fs = std::filesystem;
using proto::BootConfig;
using proto::BootMount;
using proto::BootPatch;
using proto::BootRoot;

std::span<const uint8_t> bytes_of(const std::string& text) {
    return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

Result<void> check_guest_path(const std::string& path, const std::string& what) {
    if (path.empty() || path.front() != '/')
        return make_error(what + " \"" + path + "\" must be an absolute guest path");
    if (path.find('\0') != std::string::npos) return make_error(what + " contains a NUL byte");
    for (size_t start = 1; start <= path.size();) {
        size_t slash = path.find('/', start);
        if (slash == std::string::npos) slash = path.size();
        std::string_view part(path.data() + start, slash - start);
        if (part == "..") return make_error(what + " \"" + path + "\" must not contain ..");
        start = slash + 1;
    }
    return {};
}

Result<std::string> existing_directory(const std::string& path, const std::string& what) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0) return errno_error(what + " " + path);
    if (!S_ISDIR(st.st_mode)) return make_error(what + " " + path + ": not a directory");
    std::error_code ec;
    return fs::canonical(path, ec).string();
}

// Accumulates the VMM's devices and the boot archive's payload files.
class Assembly {
  public:
    explicit Assembly(std::string runtime_dir) : runtime_dir_(std::move(runtime_dir)) {}

    void add_disk(const std::string& path, bool read_only, const std::string& serial) {
        vmm_args_.push_back("--disk");
        vmm_args_.push_back(path + (read_only ? ",ro" : "") + ",serial=" + serial);
    }
    void add_share(const std::string& tag, const std::string& dir, bool read_only) {
        vmm_args_.push_back("--fs");
        vmm_args_.push_back(tag + "=" + dir + (read_only ? ",ro" : ""));
    }
    std::string next_volume_source() { return proto::kVolumeSourcePrefix + std::to_string(volumes_++); }

    // A payload file in the boot archive; returns its guest path.
    Result<std::string> add_payload(const std::string& content) {
        std::string path = next_payload_path();
        TRY(cpio_.add_file(path, bytes_of(content), 0600));
        return path;
    }
    Result<std::string> add_host_payload(const std::string& host_path) {
        struct stat st;
        if (stat(host_path.c_str(), &st) != 0) return errno_error("copy " + host_path);
        std::string path = next_payload_path();
        if (S_ISDIR(st.st_mode)) {
            TRY(cpio_.add_tree(path, host_path));
        } else if (S_ISREG(st.st_mode)) {
            TRY(cpio_.add_file_from_path(path, host_path));
        } else {
            return make_error("copy " + host_path + ": not a regular file or directory");
        }
        return path;
    }

    Result<PreparedStorage> finish(const BootConfig& config) {
        TRY(cpio_.add_file(proto::kBootConfigPath, bytes_of(proto::boot_config_to_json(config)), 0600));
        std::vector<uint8_t> archive = cpio_.finish();
        std::string path = runtime_dir_ + "/boot.cpio";
        UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
        if (!fd) return errno_error("write " + path);
        if (auto written = proto::write_all(fd.get(), archive); !written)
            return make_error("write " + path, written.error().code);
        return PreparedStorage{std::move(vmm_args_), path};
    }

    const std::string& runtime_dir() const { return runtime_dir_; }

  private:
    std::string next_payload_path() {
        return std::string(proto::kBootFilesDir) + "/" + std::to_string(payloads_++);
    }

    std::string runtime_dir_;
    std::vector<std::string> vmm_args_;
    initramfs::CpioWriter cpio_;
    unsigned volumes_ = 0;
    unsigned payloads_ = 0;
};

Result<void> prepare_root(const RootOptions& options, Assembly& assembly, BootRoot& root) {
    if (options.image.empty()) {
        // The initramfs is the root: already private and writable, nothing to attach.
        if (!options.upper_path.empty()) return make_error("--upper needs an --image");
        return {};
    }
    ResolvedImage image = TRY(resolve_image(options.image));
    root.source = proto::kRootSource;
    if (image.kind == ResolvedImage::Kind::Directory) {
        root.kind = BootRoot::Kind::VirtioFs;
        assembly.add_share(proto::kRootSource, image.path, /*read_only=*/true);
    } else {
        root.kind = BootRoot::Kind::Disk;
        root.fstype = image.fstype;
        assembly.add_disk(image.path, /*read_only=*/true, proto::kRootSource);
    }

    switch (options.writable) {
        case RootOptions::Writable::ReadOnly:
            root.upper = BootRoot::Upper::None;
            break;
        case RootOptions::Writable::Tmpfs:
            root.upper = BootRoot::Upper::Tmpfs;
            root.upper_size_bytes = options.tmpfs_upper_size;
            break;
        case RootOptions::Writable::Disk: {
            std::string upper = options.upper_path;
            if (upper.empty()) {
                upper = assembly.runtime_dir() + "/upper.ext4";
                TRY(create_ext4_image(upper, options.upper_size));
            } else if (struct stat st; stat(upper.c_str(), &st) != 0) {
                if (errno != ENOENT) return errno_error("upper image " + upper);
                TRY(create_ext4_image(upper, options.upper_size));
            } else {
                auto fstype = probe_disk_filesystem(upper);
                if (!fstype) return std::unexpected(with_context(fstype.error(), "upper image"));
            }
            root.upper = BootRoot::Upper::Disk;
            root.upper_source = proto::kUpperSource;
            assembly.add_disk(upper, /*read_only=*/false, proto::kUpperSource);
            break;
        }
    }
    return {};
}

Result<BootMount> prepare_volume(const Volume& volume, Assembly& assembly) {
    TRY(check_guest_path(volume.target, "volume target"));
    if (volume.target == "/") return make_error("a volume cannot be mounted on /");
    BootMount mount;
    mount.target = volume.target;
    mount.read_only = volume.read_only;
    switch (volume.kind) {
        case Volume::Kind::Bind:
        case Volume::Kind::Named: {
            std::string dir = volume.kind == Volume::Kind::Bind
                                  ? TRY(existing_directory(volume.source, "volume"))
                                  : TRY(ensure_volume(volume.source));
            mount.kind = BootMount::Kind::VirtioFs;
            mount.source = assembly.next_volume_source();
            assembly.add_share(mount.source, dir, volume.read_only);
            break;
        }
        case Volume::Kind::Tmpfs:
            mount.kind = BootMount::Kind::Tmpfs;
            mount.size_bytes = volume.size_bytes;
            break;
        case Volume::Kind::Disk: {
            std::error_code ec;
            std::string path = fs::canonical(volume.source, ec).string();
            if (ec) return make_error("disk volume " + volume.source + ": " + ec.message());
            mount.kind = BootMount::Kind::Disk;
            mount.fstype = TRY(probe_disk_filesystem(path));
            mount.source = assembly.next_volume_source();
            assembly.add_disk(path, volume.read_only, mount.source);
            break;
        }
    }
    return mount;
}

Result<BootPatch> prepare_patch(const Patch& patch, Assembly& assembly) {
    TRY(check_guest_path(patch.path, "patch path"));
    if (patch.mode && *patch.mode > 07777)
        return make_error(
            fmt::format("patch {}: mode {:o} is not a permission mode", patch.path, *patch.mode));
    BootPatch boot;
    boot.path = patch.path;
    boot.mode = patch.mode;
    boot.uid = patch.uid;
    boot.gid = patch.gid;
    switch (patch.op) {
        case Patch::Op::Write:
            boot.op = BootPatch::Op::Write;
            boot.source = TRY(assembly.add_payload(patch.content));
            break;
        case Patch::Op::Append:
            boot.op = BootPatch::Op::Append;
            boot.source = TRY(assembly.add_payload(patch.content));
            break;
        case Patch::Op::Mkdir:
            boot.op = BootPatch::Op::Mkdir;
            break;
        case Patch::Op::Remove:
            if (patch.path == "/") return make_error("a patch cannot remove /");
            boot.op = BootPatch::Op::Remove;
            break;
        case Patch::Op::Symlink:
            if (patch.target.empty()) return make_error("symlink patch " + patch.path + " needs a target");
            boot.op = BootPatch::Op::Symlink;
            boot.target = patch.target;
            break;
        case Patch::Op::CopyIn:
            boot.op = BootPatch::Op::Copy;
            boot.source = TRY(assembly.add_host_payload(patch.host_path));
            break;
    }
    return boot;
}

}  // namespace

Result<uint64_t> parse_size(std::string_view text) {
    auto bad = [&] {
        return make_error("bad size \"" + std::string(text) + "\" (a number of bytes, or with k, m, g or t)");
    };
    uint64_t value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end == text.data()) return bad();
    std::string_view suffix(end, static_cast<size_t>(text.data() + text.size() - end));
    // "4g", "4G", "4GB", "4GiB" are all 4 GiB.
    if (suffix.ends_with("iB")) {
        suffix.remove_suffix(2);
    } else if (suffix.size() == 2 && suffix.ends_with("B")) {
        suffix.remove_suffix(1);
    }
    unsigned shift = 0;
    if (suffix.size() > 1) return bad();
    if (!suffix.empty()) {
        switch (suffix[0]) {
            case 'b':
            case 'B':
                shift = 0;
                break;
            case 'k':
            case 'K':
                shift = 10;
                break;
            case 'm':
            case 'M':
                shift = 20;
                break;
            case 'g':
            case 'G':
                shift = 30;
                break;
            case 't':
            case 'T':
                shift = 40;
                break;
            default:
                return bad();
        }
    }
    if (shift && value > (UINT64_MAX >> shift))
        return make_error("size \"" + std::string(text) + "\" is too large");
    return value << shift;
}

namespace {

// Runs mkfs.ext4 with `options` on the image file `path` (already sized); a failure removes the file and says
// what mkfs printed.
Result<void> run_mkfs_ext4(const std::string& path, std::vector<std::string> options) {
    auto mkfs = find_program("mkfs.ext4");
    if (!mkfs) return make_error("mkfs.ext4 not found: install e2fsprogs");
    std::string log = path + ".mkfs.log";
    std::vector<std::string> argv = {*mkfs, "-q", "-F", "-t", "ext4"};
    argv.insert(argv.end(), options.begin(), options.end());
    argv.push_back(path);
    auto child = ChildProcess::spawn(argv, log);
    Result<int> status = child ? child->wait(std::chrono::minutes(10)) : std::unexpected(child.error());
    std::string output;
    if (!status || *status != 0) {
        std::error_code ec;
        if (auto size_of_log = fs::file_size(log, ec); !ec && size_of_log < 4096) {
            UniqueFd fd(open(log.c_str(), O_RDONLY | O_CLOEXEC));
            output.resize(size_of_log);
            if (fd) (void)!read(fd.get(), output.data(), output.size());
        }
    }
    unlink(log.c_str());
    if (!status) {
        unlink(path.c_str());
        return std::unexpected(with_context(status.error(), "mkfs.ext4 " + path));
    }
    if (*status != 0) {
        unlink(path.c_str());
        while (!output.empty() && output.back() == '\n')
            output.pop_back();
        return make_error(fmt::format("mkfs.ext4 {} failed with status {}: {}", path, *status, output));
    }
    return {};
}

Result<void> create_sized_file(const std::string& path, uint64_t size) {
    UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!fd) return errno_error("create " + path);
    if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
        int saved = errno;
        unlink(path.c_str());
        return make_error("size " + path, saved);
    }
    return {};
}

}  // namespace

Result<void> create_ext4_image(const std::string& path, uint64_t size) {
    constexpr uint64_t kMinSize = 16ull << 20;
    if (size < kMinSize) return make_error(fmt::format("upper size {} is below the minimum of 16 MiB", size));
    TRY(create_sized_file(path, size));
    // Lazy init: the image stays sparse and mkfs takes milliseconds; the guest kernel finishes in the
    // background.
    return run_mkfs_ext4(path, {"-L", "sandlot-upper", "-E", "lazy_itable_init=1,lazy_journal_init=1"});
}

Result<void> create_ext4_image_from_directory(const std::string& path, const std::string& directory,
                                              uint64_t size, uint64_t inodes, const std::string& label) {
    TRY(create_sized_file(path, size));
    // No journal and no reserved blocks: the image is only ever mounted read-only.
    return run_mkfs_ext4(path, {"-L", label, "-O", "^has_journal", "-m", "0", "-b", "4096", "-N",
                                std::to_string(inodes), "-d", directory});
}

Result<PreparedStorage> prepare_storage(const StorageOptions& options, const std::string& runtime_dir) {
    Assembly assembly(runtime_dir);
    BootConfig config;
    TRY(prepare_root(options.root, assembly, config.root));

    for (const Volume& volume : options.volumes)
        config.mounts.push_back(TRY(prepare_volume(volume, assembly)));

    bool read_only_root =
        !options.root.image.empty() && options.root.writable == RootOptions::Writable::ReadOnly;
    // Scripts go to a tmpfs (kScriptDir) and work on any root.
    if (read_only_root && !options.patches.empty())
        return make_error("patches need a writable root; this sandbox's root is read-only (--read-only)");
    for (const Patch& patch : options.patches)
        config.patches.push_back(TRY(prepare_patch(patch, assembly)));
    for (const Script& script : options.scripts) {
        if (script.name.empty() || script.name.find('/') != std::string::npos || script.name == "." ||
            script.name == "..") {
            return make_error("script name \"" + script.name + "\" is not a plain file name");
        }
        std::string source = TRY(assembly.add_payload(script.content));
        config.scripts.push_back({script.name, source});
    }
    for (const std::string& entry : options.env) {
        if (entry.empty() || entry.front() == '=' || entry.find('=') == std::string::npos)
            return make_error("environment entry \"" + entry + "\" is not KEY=VALUE");
    }
    config.env = options.env;
    if (!options.workdir.empty()) TRY(check_guest_path(options.workdir, "workdir"));
    config.workdir = options.workdir;
    config.user = options.user;
    if (options.hostname.size() > 64) return make_error("hostname is longer than 64 characters");
    config.hostname = options.hostname;
    return assembly.finish(config);
}

}  // namespace sandlot::host
