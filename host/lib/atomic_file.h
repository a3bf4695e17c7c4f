// Replacing a small file so that readers see either the old content or the new, never a mix, even after a
// crash: a temporary file in the same directory, written, fsync'd, then renamed over the target.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>

#include "proto/base/error.h"

namespace sandlot::host {

// Writes `content` to `path` with permission bits `mode` (applied with fchmod, so the umask does not narrow
// them). On failure `path` is unchanged and no temporary file is left.
Result<void> write_file_atomically(const std::string& path, std::string_view content, mode_t mode);

}  // namespace sandlot::host
