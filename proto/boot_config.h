// The boot configuration: what the host tells agentd to set up before it serves (root filesystem, volumes,
// patches, scripts, exec defaults).
//
// The host appends a second, uncompressed cpio archive to the guest's initramfs holding kBootConfigPath (this
// structure as JSON) and the payload files the patches and scripts name, under kBootFilesDir. agentd reads it
// once, as PID 1, before it listens. Absent file: the initramfs itself is the root, as before.
//
// The JSON is ours on both ends but is still parsed as untrusted input (a bad file is an error, never a
// crash). Unknown keys are ignored, so fields can be added; see docs/design.md "Storage".
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proto/base/error.h"

namespace sandlot::proto {

inline constexpr const char* kBootConfigPath = "/sandlot/boot.json";
inline constexpr const char* kBootFilesDir = "/sandlot/files";
// Named scripts land here, mode 0755; agentd puts the directory on every exec's default PATH.
inline constexpr const char* kScriptDir = "/run/sandlot/bin";

// Well-known virtio-blk serials and virtio-fs tags.
inline constexpr const char* kRootSource = "sandlot-root";
inline constexpr const char* kUpperSource = "sandlot-upper";
inline constexpr const char* kVolumeSourcePrefix = "sandlot-vol";  // + index

struct BootRoot {
    enum class Kind { Initramfs, VirtioFs, Disk };
    enum class Upper { None, Tmpfs, Disk };

    Kind kind = Kind::Initramfs;
    std::string source;             // virtio-fs tag, or the disk's virtio-blk serial
    std::string fstype;             // Disk: "" = probe
    Upper upper = Upper::None;      // None: the root is mounted read-only
    std::string upper_source;       // Disk upper: its serial (an ext4 image the host formatted)
    uint64_t upper_size_bytes = 0;  // Tmpfs upper: size= (0: the kernel's default)

    bool operator==(const BootRoot&) const = default;
};

struct BootMount {
    enum class Kind { VirtioFs, Disk, Tmpfs };

    Kind kind = Kind::Tmpfs;
    std::string source;  // tag or serial; unused for tmpfs
    std::string target;  // absolute guest path, created if missing
    bool read_only = false;
    uint64_t size_bytes = 0;  // tmpfs size= (0: default)
    std::string fstype;       // Disk: "" = probe

    bool operator==(const BootMount&) const = default;
};

struct BootPatch {
    enum class Op { Write, Append, Mkdir, Remove, Symlink, Copy };

    Op op = Op::Write;
    std::string path;              // absolute guest path in the new root
    std::string source;            // Write/Append/Copy: a path inside the initramfs (under kBootFilesDir)
    std::string target;            // Symlink: the link's target
    std::optional<uint32_t> mode;  // Write/Mkdir/Copy of a file: permission bits (default 0644, dirs 0755)
    std::optional<uint32_t> uid;
    std::optional<uint32_t> gid;

    bool operator==(const BootPatch&) const = default;
};

struct BootScript {
    std::string name;    // a plain file name
    std::string source;  // inside the initramfs (under kBootFilesDir)

    bool operator==(const BootScript&) const = default;
};

struct BootConfig {
    BootRoot root;
    std::vector<BootMount> mounts;    // mounted in order, after the root switch
    std::vector<BootPatch> patches;   // applied in order to the new root before serving
    std::vector<BootScript> scripts;  // written to kScriptDir
    std::vector<std::string> env;     // "K=V": defaults for every exec (the request's env overrides)
    std::string workdir;              // default exec cwd ("" = "/")
    std::string user;                 // default exec user ("" = root)
    std::string hostname;             // "" = "sandlot"

    bool operator==(const BootConfig&) const = default;
};

Result<BootConfig> parse_boot_config(std::string_view json);
std::string boot_config_to_json(const BootConfig& config);

std::string_view to_string(BootPatch::Op op);

}  // namespace sandlot::proto
