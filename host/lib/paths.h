// Where the host library finds sandlot's own binaries and guest artifacts.
// A build tree and an install tree share one layout: <prefix>/bin/{sandlot,sandlot-vmm} and
// <prefix>/guest/{vmlinux,bzImage,initramfs.cpio.gz}. SANDLOT_BIN_DIR / SANDLOT_GUEST_DIR override.
#pragma once

#include <string>

namespace sandlot::host {

std::string bin_dir();    // $SANDLOT_BIN_DIR, else the directory of the running executable
std::string guest_dir();  // $SANDLOT_GUEST_DIR, else bin_dir()/../guest

}  // namespace sandlot::host
