#include "host/cli/storage_args.h"

#include <fcntl.h>
#include <unistd.h>

#include "initramfs/cpio_writer.h"
#include "proto/base/unique_fd.h"

namespace sandlot::cli {

namespace {

using host::Patch;
using host::Volume;

// "A:B[:ro]" -> {A, B, read_only}. The source may not contain ':'.
Result<Volume> parse_volume(const std::string& spec, Volume::Kind kind, const char* option) {
    Volume volume;
    volume.kind = kind;
    std::string rest = spec;
    if (rest.ends_with(":ro")) {
        volume.read_only = true;
        rest.resize(rest.size() - 3);
    } else if (rest.ends_with(":rw")) {
        rest.resize(rest.size() - 3);
    }
    size_t colon = rest.find(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == rest.size())
        return make_error(std::string(option) + " " + spec + ": expected SOURCE:GUEST_PATH[:ro]");
    volume.source = rest.substr(0, colon);
    volume.target = rest.substr(colon + 1);
    return volume;
}

// "GUEST[:MODE]" -> path and mode.
Result<std::pair<std::string, std::optional<uint32_t>>> path_and_mode(const std::string& text,
                                                                      const char* option) {
    size_t colon = text.rfind(':');
    if (colon == std::string::npos) return std::pair{text, std::optional<uint32_t>{}};
    auto mode = initramfs::parse_mode(std::string_view(text).substr(colon + 1));
    if (!mode) return make_error(std::string(option) + " " + text + ": bad mode (expected octal, e.g. 0755)");
    return std::pair{text.substr(0, colon), std::optional<uint32_t>{*mode}};
}

// "LEFT=RIGHT" split at the first '='.
Result<std::pair<std::string, std::string>> split_eq(const std::string& text, const char* option,
                                                     const char* form) {
    size_t eq = text.find('=');
    if (eq == std::string::npos || eq == 0)
        return make_error(std::string(option) + " " + text + ": expected " + form);
    return std::pair{text.substr(0, eq), text.substr(eq + 1)};
}

Result<std::string> read_host_file(const std::string& path, const char* option) {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return errno_error(std::string(option) + " " + path);
    std::string content;
    char buf[65536];
    for (;;) {
        ssize_t n = read(fd.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error(std::string(option) + " " + path);
        if (n == 0) break;
        content.append(buf, static_cast<size_t>(n));
        if (content.size() > (64u << 20))
            return make_error(std::string(option) + " " + path + ": over 64 MiB");
    }
    return content;
}

Patch make_patch(Patch::Op op, std::string path) {
    Patch patch;
    patch.op = op;
    patch.path = std::move(path);
    return patch;
}

}  // namespace

void add_storage_options(CLI::App& cmd, StorageArgs& args) {
    const char* group = "Storage";
    cmd.add_option(
           "--image", args.image,
           "Root filesystem: base, debian, python, a host directory or a raw ext4 disk image (default: "
           "the minimal initramfs)")
        ->group(group);
    cmd.add_flag("--read-only", args.read_only, "Mount the image read-only, with no writable layer")
        ->group(group);
    cmd.add_flag("--tmpfs-upper", args.tmpfs_upper, "Keep the writable layer in guest memory (tmpfs)")
        ->group(group);
    cmd.add_option(
           "--upper", args.upper,
           "The writable layer's ext4 image, kept across runs (created when missing; default: a fresh "
           "one per sandbox)")
        ->group(group);
    cmd.add_option("--upper-size", args.upper_size, "Size of a new writable layer image (default 4g)")
        ->group(group);
    cmd.add_option("-v,--bind", args.binds, "Share a host directory: HOST:GUEST[:ro]")->group(group);
    cmd.add_option("--volume", args.named, "Mount a named volume (created on first use): NAME:GUEST[:ro]")
        ->group(group);
    cmd.add_option("--tmpfs", args.tmpfs, "Mount a tmpfs: GUEST[:SIZE]")->group(group);
    cmd.add_option("--disk", args.disks, "Mount a disk image: PATH:GUEST[:ro]")->group(group);
    cmd.add_option("--rm-path", args.removes, "Patch: remove a path (recursively)")->group(group);
    cmd.add_option("--mkdir", args.mkdirs, "Patch: create a directory: GUEST[:MODE]")->group(group);
    cmd.add_option("--copy", args.copies, "Patch: copy a host file or directory in: HOST:GUEST")
        ->group(group);
    cmd.add_option("--write", args.writes, "Patch: write a file: GUEST[:MODE]=TEXT")->group(group);
    cmd.add_option("--append", args.appends, "Patch: append to a file: GUEST=TEXT")->group(group);
    cmd.add_option("--symlink", args.symlinks, "Patch: create a symlink: GUEST=TARGET")->group(group);
    cmd.add_option("--script", args.scripts, "Install a host script as a command on PATH: NAME=HOSTFILE")
        ->group(group);
    cmd.add_option("--hostname", args.hostname, "The sandbox's hostname (default: sandlot)")->group(group);
}

Result<host::StorageOptions> to_storage_options(const StorageArgs& args) {
    host::StorageOptions options;
    auto& root = options.root;
    root.image = args.image;
    if (args.read_only && (args.tmpfs_upper || !args.upper.empty()))
        return make_error("--read-only cannot be combined with --tmpfs-upper or --upper");
    if (args.tmpfs_upper && !args.upper.empty())
        return make_error("--tmpfs-upper and --upper exclude each other");
    if (args.image.empty() &&
        (args.read_only || args.tmpfs_upper || !args.upper.empty() || !args.upper_size.empty()))
        return make_error("--read-only, --tmpfs-upper, --upper and --upper-size need an --image");
    root.writable = args.read_only     ? host::RootOptions::Writable::ReadOnly
                    : args.tmpfs_upper ? host::RootOptions::Writable::Tmpfs
                                       : host::RootOptions::Writable::Disk;
    root.upper_path = args.upper;
    if (!args.upper_size.empty()) root.upper_size = TRY(host::parse_size(args.upper_size));

    for (const auto& spec : args.binds)
        options.volumes.push_back(TRY(parse_volume(spec, Volume::Kind::Bind, "-v")));
    for (const auto& spec : args.named)
        options.volumes.push_back(TRY(parse_volume(spec, Volume::Kind::Named, "--volume")));
    for (const auto& spec : args.disks)
        options.volumes.push_back(TRY(parse_volume(spec, Volume::Kind::Disk, "--disk")));
    for (const auto& spec : args.tmpfs) {
        Volume volume;
        volume.kind = Volume::Kind::Tmpfs;
        size_t colon = spec.rfind(':');
        volume.target = spec.substr(0, colon);
        if (colon != std::string::npos) volume.size_bytes = TRY(host::parse_size(spec.substr(colon + 1)));
        options.volumes.push_back(std::move(volume));
    }

    // Patches from the command line run in a fixed order: removals, directories, copies, writes, appends,
    // symlinks (the C++ API keeps the caller's order).
    for (const auto& path : args.removes)
        options.patches.push_back(make_patch(Patch::Op::Remove, path));
    for (const auto& spec : args.mkdirs) {
        auto [path, mode] = TRY(path_and_mode(spec, "--mkdir"));
        Patch patch = make_patch(Patch::Op::Mkdir, path);
        patch.mode = mode;
        options.patches.push_back(std::move(patch));
    }
    for (const auto& spec : args.copies) {
        size_t colon = spec.rfind(':');
        if (colon == std::string::npos || colon == 0 || colon + 1 == spec.size())
            return make_error("--copy " + spec + ": expected HOST:GUEST");
        Patch patch = make_patch(Patch::Op::CopyIn, spec.substr(colon + 1));
        patch.host_path = spec.substr(0, colon);
        options.patches.push_back(std::move(patch));
    }
    for (const auto& spec : args.writes) {
        auto [left, text] = TRY(split_eq(spec, "--write", "GUEST[:MODE]=TEXT"));
        auto [path, mode] = TRY(path_and_mode(left, "--write"));
        Patch patch = make_patch(Patch::Op::Write, path);
        patch.content = text;
        patch.mode = mode;
        options.patches.push_back(std::move(patch));
    }
    for (const auto& spec : args.appends) {
        auto [path, text] = TRY(split_eq(spec, "--append", "GUEST=TEXT"));
        Patch patch = make_patch(Patch::Op::Append, path);
        patch.content = text;
        options.patches.push_back(std::move(patch));
    }
    for (const auto& spec : args.symlinks) {
        auto [path, target] = TRY(split_eq(spec, "--symlink", "GUEST=TARGET"));
        Patch patch = make_patch(Patch::Op::Symlink, path);
        patch.target = target;
        options.patches.push_back(std::move(patch));
    }
    for (const auto& spec : args.scripts) {
        auto [name, file] = TRY(split_eq(spec, "--script", "NAME=HOSTFILE"));
        std::string content = TRY(read_host_file(file, "--script"));
        options.scripts.push_back({name, content});
    }
    options.hostname = args.hostname;
    return options;
}

}  // namespace sandlot::cli
