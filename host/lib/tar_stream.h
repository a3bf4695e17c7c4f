// Tar streams for guest trees (libarchive): `sandlot cp - NAME:DIR` and `sandlot cp NAME:PATH -`.
//
//   auto writer = TRY(fs.put_tree("/work"));
//   TRY(tar_to_tree(STDIN_FILENO, *writer));          // tar (also cpio, zip, 7z), gzip/xz/zstd/... too
//   TRY(writer->commit());
//
//   auto reader = TRY(fs.get_tree("/work/src"));
//   TRY(tree_to_tar(*reader, STDOUT_FILENO, "src"));  // entries "src", "src/a.c", ...
//
// Names are bytes, not text: a name that is not UTF-8 is carried unchanged both ways (written under a pax
// "hdrcharset=BINARY" header). The written tar is pax, with extended headers only where ustar falls short
// (long names, large ids or sizes, non-ASCII names), so mtimes keep their nanoseconds only on such entries.
#pragma once

#include <functional>
#include <string>

#include "host/lib/guest_fs.h"
#include "proto/base/error.h"

namespace sandlot::host {

// Reads a tar stream from in_fd and adds each entry to `out` (without committing it). Names lose leading
// "/" and "./" and empty or "." components; the archive's own "." entry is skipped, so the destination
// directory keeps its mode and times. A name or hard link target that would leave the tree (a ".."
// component) fails with EINVAL before anything of that entry is added. Sockets are skipped.
Result<TransferStats> tar_to_tree(int in_fd, TreeWriter& out,
                                  const std::function<void(const TransferStats&)>& progress = {});

// Writes the tree as a pax tar to out_fd: the root entry is named `prefix`, the others prefix/PATH (with an
// empty prefix: PATH, and "." for the root). Hard links point at prefix/TARGET. Sockets are skipped. The
// tar's end-of-archive blocks are written before success is returned.
Result<TransferStats> tree_to_tar(TreeReader& in, int out_fd, const std::string& prefix,
                                  const std::function<void(const TransferStats&)>& progress = {});

}  // namespace sandlot::host
