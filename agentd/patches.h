// Confined file operations on a root directory, and the boot configuration's patches and scripts built on
// them.
//
// The root image is someone else's content: a symlink in it (absolute, or full of "..") must never send a
// patch outside the root, into the initramfs or anywhere else. So every path is resolved inside a root
// directory fd with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS), where "/" and ".." stop at that root
// and symlinks are followed as if it were "/". Final components that are created, replaced or removed are
// handled with *at() calls on the confined parent and are never followed; tree walks (Copy, Remove and
// remove_tree_contents) never follow symlinks and never cross into another mount.
//
// Patch semantics (the host builds them, see proto/boot_config.h), each making missing parents (0755):
//   Write    replaces whatever non-directory is at the path (a symlink too: it is not followed) with a new
//            file holding the source's bytes; mode default 0644, owner uid/gid (default root).
//   Append   appends the source's bytes to the file at the path (symlinks followed, inside the root),
//            creating it (0644) if missing; mode/uid/gid applied when given.
//   Mkdir    mkdir -p; a directory it creates gets `mode` (default 0755); mode/uid/gid given are applied to
//            an existing directory too.
//   Remove   rm -rf; a missing path is fine; refuses to remove "/" or to reach into another mount.
//   Symlink  ln -sfn: replaces a non-directory at the path; an existing directory is an error.
//   Copy     the source file (like Write, but mode defaults to the source's) or directory tree (merged into
//   an
//            existing directory: existing directories keep their mode and owner, other entries are replaced;
//            new entries keep the source's mode and owner unless uid/gid are given). Symlinks are copied as
//            symlinks; other special files are skipped with a log line.
//
// Used once at boot by PID 1, single-threaded.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <span>
#include <string_view>

#include "proto/base/error.h"
#include "proto/base/unique_fd.h"
#include "proto/boot_config.h"

namespace sandlot::agent {

// Opens `path` inside `root_fd` (an absolute path starts at that root). `flags` are open(2) flags
// (O_CLOEXEC is added); `mode` is used only with O_CREAT.
Result<UniqueFd> open_in_root(int root_fd, std::string_view path, int flags, mode_t mode = 0);

// mkdir -p inside `root_fd`. If it creates the last directory, that one gets exactly `mode`, and parents it
// creates get `parents_mode` (no umask). Returns an fd of the directory (usable as a dirfd).
Result<UniqueFd> make_dirs_in_root(int root_fd, std::string_view path, mode_t mode = 0755,
                                   mode_t parents_mode = 0755);

struct PatchRoots {
    int root = -1;     // the new root, where patches land
    int sources = -1;  // the initramfs root, where patch and script sources are read
};

Result<void> apply_patch(const PatchRoots& roots, const proto::BootPatch& patch);

// Applies in order and stops at the first failure, which names the patch: "patch 2 (write /etc/hosts): ...".
Result<void> apply_patches(const PatchRoots& roots, std::span<const proto::BootPatch> patches);

// Creates proto::kScriptDir (0755) in the root and copies each script there with mode 0755, replacing any
// file of that name.
Result<void> install_scripts(const PatchRoots& roots, std::span<const proto::BootScript> scripts);

// Deletes everything below the directory `dir_fd` without following symlinks. Directories that are mount
// points are left alone (skipped, with what is below them). Used to free the initramfs after a root switch.
Result<void> remove_tree_contents(int dir_fd);

}  // namespace sandlot::agent
