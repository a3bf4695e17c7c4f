// What may be a sandbox name and a label: checked once, here, for the CLI and the library alike.
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include "proto/base/error.h"

namespace sandlot::host {

// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool valid_utf8(std::string_view text);

// 1..128 bytes of valid UTF-8, no control characters, no '/', not starting with '-' or '.'.
Result<void> validate_sandbox_name(std::string_view name);

// "KEY=VALUE". Key: 1..128 bytes of [A-Za-z0-9._/-] starting alphanumeric, not under the reserved prefixes
// "sandlot." and "io.sandlot."; value: up to 1024 bytes of UTF-8 without control characters.
Result<std::pair<std::string, std::string>> parse_label(std::string_view text);

}  // namespace sandlot::host
