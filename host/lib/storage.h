// A sandbox's storage, as the host prepares it before boot: which root filesystem (built-in image, host
// directory or disk image) with which writable layer, which volumes, patches and scripts, and the defaults
// every command in the sandbox starts with.
//
// prepare_storage() turns StorageOptions into sandlot-vmm arguments (--disk / --fs) and a small per-sandbox
// cpio archive carrying agentd's boot configuration (proto/boot_config.h) and the patches' contents. Nothing
// boots here; everything that can be checked on the host is checked here, with one-line errors naming the
// option ("volume /nope: No such file or directory").
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "proto/base/error.h"

namespace sandlot::host {

inline constexpr uint64_t kDefaultUpperSize = 4ull << 30;

struct RootOptions {
    // "" (the initramfs itself: busybox and agentd, no disk at all), a built-in image name (base, debian,
    // python), a host directory, or a disk image file (raw ext4 and other filesystems Linux can mount).
    std::string image;
    enum class Writable {
        Disk,      // overlayfs with an ext4 upper image (upper_path, or a fresh sparse one per sandbox)
        Tmpfs,     // overlayfs with a tmpfs upper (guest RAM; gone with the sandbox)
        ReadOnly,  // the image as is, mounted read-only; patches are refused
    };
    Writable writable = Writable::Disk;
    std::string upper_path;  // Disk: an upper image kept across runs (created, sparse, when missing)
    uint64_t upper_size = kDefaultUpperSize;  // a new upper image's size
    uint64_t tmpfs_upper_size = 0;  // Tmpfs: size limit (0: the guest kernel's default, half of RAM)
};

struct Volume {
    enum class Kind {
        Bind,   // source: a host directory, shared through virtio-fs
        Named,  // source: a volume name; a directory under home_dir()/volumes, created on first use
        Tmpfs,  // size_bytes: size limit
        Disk,   // source: a disk image file, mounted at target
    };
    Kind kind = Kind::Bind;
    std::string source;
    std::string target;  // absolute guest path
    bool read_only = false;
    uint64_t size_bytes = 0;
};

struct Patch {
    enum class Op { Write, Append, Mkdir, Remove, Symlink, CopyIn };
    Op op = Op::Write;
    std::string path;       // absolute guest path
    std::string content;    // Write / Append
    std::string host_path;  // CopyIn: a host file or directory
    std::string target;     // Symlink
    std::optional<uint32_t> mode;
    std::optional<uint32_t> uid;
    std::optional<uint32_t> gid;
};

struct Script {
    std::string name;  // a plain file name; the script runs as NAME from any command in the sandbox
    std::string content;
};

struct StorageOptions {
    RootOptions root;
    std::vector<Volume> volumes;
    std::vector<Patch> patches;
    std::vector<Script> scripts;
    // Defaults for every command in the sandbox (a command's own settings win).
    std::vector<std::string> env;  // K=V
    std::string workdir;
    std::string user;
    std::string hostname;
};

struct PreparedStorage {
    std::vector<std::string> vmm_args;  // --disk ... / --fs ...
    std::string boot_initrd;            // the per-sandbox archive, to go after the shared initramfs
};

// Writes what the sandbox needs into `runtime_dir` (the boot archive, a fresh upper image) and returns the
// VMM arguments.
Result<PreparedStorage> prepare_storage(const StorageOptions& options, const std::string& runtime_dir);

// Creates a sparse ext4 image of `size` bytes at `path` with mkfs.ext4 (e2fsprogs).
Result<void> create_ext4_image(const std::string& path, uint64_t size);
// Creates an ext4 image file of `size` bytes at `path` holding a copy of `directory` (owners, modes, xattrs,
// hard links kept), with room for `inodes` inodes, for read-only use (no journal).
Result<void> create_ext4_image_from_directory(const std::string& path, const std::string& directory,
                                              uint64_t size, uint64_t inodes, const std::string& label);

// Parses a size: a number of bytes with an optional k, m, g or t suffix (powers of 1024), e.g. "64m", "4G".
Result<uint64_t> parse_size(std::string_view text);

}  // namespace sandlot::host
