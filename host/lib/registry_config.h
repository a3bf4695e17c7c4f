// Registry credentials and per-registry CA certificates on the host.
//
// Credentials live in <home>/registry/auth.json in Docker's config.json format
// {"auths":{"<registry>":{"auth":"<base64 user:pass>"}}}, mode 0600, written atomically (temp file + rename).
// Docker's own config ($DOCKER_CONFIG/config.json or ~/.docker/config.json) is read as a fallback; its
// credential helpers (credsStore, credHelpers) are not used.
#pragma once

#include <optional>
#include <string>

#include "host/lib/registry_client.h"
#include "proto/base/error.h"

namespace sandlot::host {

// base64("user:password"): the "auth" of a config.json entry and the value of a Basic Authorization header.
std::string basic_credentials(const RegistryCredentials& credentials);

Result<void> save_registry_credentials(const std::string& home, const std::string& registry,
                                       const RegistryCredentials& credentials);

// True if an entry was removed.
Result<bool> remove_registry_credentials(const std::string& home, const std::string& registry);

// Looks in <home>/registry/auth.json, then $DOCKER_CONFIG/config.json or ~/.docker/config.json ("auths"
// entries keyed by "host", "https://host", "http://host", or for docker.io "https://index.docker.io/v1/").
// nullopt when none is found.
Result<std::optional<RegistryCredentials>> find_registry_credentials(const std::string& home,
                                                                     const std::string& registry);

// <home>/registry/certs.d/<registry>/ca.crt if present (Docker's layout), else "".
std::string registry_ca_file(const std::string& home, const std::string& registry);

}  // namespace sandlot::host
