// Image references as Docker writes them: "debian", "team/app:v1", "ghcr.io/org/app@sha256:...",
// "127.0.0.1:5000/test/app:v1". Parsed into registry, repository, tag and digest with Docker's normalization
// (bare names live on Docker Hub under "library/").
#pragma once

#include <string>
#include <string_view>

#include "proto/base/error.h"

namespace sandlot::host {

struct ImageReference {
    std::string registry;    // "docker.io" for Docker Hub, else "host[:port]" as written
    std::string repository;  // "library/debian" for bare Hub names, else as written ("team/app")
    std::string tag;         // "latest" when neither tag nor digest is given; "" when only a digest is given
    std::string digest;      // "sha256:<hex>" or ""

    // Canonical "registry/repository[:tag][@digest]".
    std::string to_string() const;
    // Where the registry API lives: "registry-1.docker.io" for docker.io, else the registry itself.
    std::string api_host() const;
};

// Docker's rules: the first component is a registry if it contains '.' or ':' or is "localhost"; repository
// components are lowercase [a-z0-9] joined by '.', '_', '__' or dashes; a tag is
// [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}; a digest must be sha256:<64 lowercase hex>. Errors are one line:
// `invalid image reference "Foo": repository names are lowercase`.
Result<ImageReference> parse_image_reference(std::string_view text);

// True for a valid tag (as above).
bool is_valid_tag(std::string_view tag);

}  // namespace sandlot::host
