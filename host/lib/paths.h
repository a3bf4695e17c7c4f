// Where the host library finds sandlot's own binaries and guest artifacts.
// A build tree and an install tree share one layout: <prefix>/bin/{sandlot,sandlot-vmm} and
// <prefix>/guest/{vmlinux,bzImage,initramfs.cpio.gz,images/NAME.ext4}. SANDLOT_BIN_DIR / SANDLOT_GUEST_DIR
// override. Sandlot's own state (its database, sandboxes, logs, named volumes) lives in home_dir().
#pragma once

#include <optional>
#include <string>

namespace sandlot::host {

std::string bin_dir();    // $SANDLOT_BIN_DIR, else the directory of the running executable
std::string guest_dir();  // $SANDLOT_GUEST_DIR, else bin_dir()/../guest
std::string image_dir();  // $SANDLOT_IMAGE_DIR, else guest_dir()/images (built-in images, NAME.ext4)
// $SANDLOT_HOME, else $XDG_DATA_HOME/sandlot, else ~/.local/share/sandlot.
std::string home_dir();
// The first executable NAME in $PATH, /usr/sbin or /sbin (mkfs.ext4 lives in sbin, often not on a user's
// PATH); nullopt if there is none.
std::optional<std::string> find_program(const std::string& name);

}  // namespace sandlot::host
