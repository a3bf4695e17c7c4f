// Applies OCI image layers (tar, tar+gzip, tar+zstd) onto a directory tree, as a security boundary against
// hostile layers.
//
//   auto stats = TRY(apply_layer(blob_path, rootfs_dir));   // stats.diff_id: "sha256:<hex>" of the tar
//
// The compression is detected from the magic bytes (gzip, zstd, else plain tar), never from the media type.
// Decompression is streamed (never a whole entry in memory) and every uncompressed byte, the tar's trailing
// blocks and padding included, goes through SHA-256: diff_id is the OCI diff_id of the layer.
//
// Every entry is created relative to an fd of `root`: the parent directory of an entry is opened with
// openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS), so symlinks already in the tree resolve inside the root
// as they would in the container, and the final component is made with *at() calls that never follow a
// symlink. Names lose leading "/" and "./" (and empty or "." components); a ".." component, in a name or a
// hard link target, rejects the layer. Missing parents are created 0755. Hard links to directories are
// refused.
//
// OCI whiteouts: ".wh.NAME" removes NAME (recursively) from the layers below and is not created itself;
// ".wh..wh..opq" empties its directory of everything from the layers below (names this layer made survive).
// An entry replaces an existing one of another type; a directory over a directory keeps the contents and
// takes the new metadata. Modes (setuid/setgid/sticky included), owners, mtimes and xattrs (regular files and
// directories; security.capability included) are applied; xattrs the filesystem refuses (ENOTSUP, EPERM)
// are dropped. Device nodes and fifos that mknod refuses with EPERM are counted and skipped. Directory
// mtimes are set once the whole layer is in.
//
// On failure the tree may hold part of the layer: the caller discards it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "proto/base/error.h"

namespace sandlot::host {

struct LayerApplyStats {
    std::string diff_id;           // "sha256:<hex>" of the UNCOMPRESSED tar stream, trailing blocks included
    uint64_t entries = 0;          // tar entries applied (files, dirs, links, whiteouts, ...)
    uint64_t bytes = 0;            // regular file bytes written
    uint64_t skipped_devices = 0;  // device nodes / fifos that mknod refused (EPERM), skipped
};

// Applies one image layer onto `root`, an existing directory holding the layers below (already applied).
struct LayerApplyOptions {
    // Refuse the layer once the file system holding the root has less than this free (0: never check). By
    // default 256 MiB, or a sixteenth of the file system if that is less (a small tmpfs).
    std::optional<uint64_t> min_free_bytes;
};

Result<LayerApplyStats> apply_layer(const std::string& layer_path, const std::string& root,
                                    const LayerApplyOptions& options = {});

// Same, from a memory buffer.
Result<LayerApplyStats> apply_layer_buffer(std::span<const std::byte> layer, const std::string& root,
                                           const LayerApplyOptions& options = {});

}  // namespace sandlot::host
