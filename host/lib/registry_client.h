// A client for the OCI distribution API (Docker Registry HTTP API v2) over libcurl: manifests, blobs, and
// the token/basic authentication dance. One client serves one repository and may be used from several threads
// at once (each call uses its own curl handle; the bearer token is shared under a mutex).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "host/lib/oci_reference.h"
#include "proto/base/error.h"

namespace sandlot::host {

struct RegistryCredentials {
    std::string username, password;
};

struct RegistrySettings {
    bool insecure = false;  // plain HTTP (http://); otherwise HTTPS with verification
    std::string ca_file;    // extra PEM CA to trust for this registry ("" = system store)
    std::optional<RegistryCredentials> credentials;
    int max_attempts = 4;  // per request, on transient failures (connect errors, 5xx, 429, partial transfer)
    long connect_timeout_s = 15;
    long stall_timeout_s = 30;  // abort a transfer that moves < 1 byte/s for this long
};

struct FetchedManifest {
    std::string media_type;
    std::string digest;  // sha256 of body
    std::string body;
};

inline constexpr uint64_t kMaxManifestBytes = 4 << 20;

class RegistryClient {
  public:
    RegistryClient(ImageReference reference, RegistrySettings settings);
    ~RegistryClient();
    RegistryClient(RegistryClient&&) noexcept;
    RegistryClient& operator=(RegistryClient&&) noexcept;

    // GET /v2/<repo>/manifests/<tag-or-digest>, accepting OCI manifests and indexes and Docker v2 schema2
    // manifests and lists. When `tag_or_digest` is a digest, a body with another digest is an error.
    Result<FetchedManifest> fetch_manifest(std::string_view tag_or_digest);

    // A small blob (the image config) in memory, at most `max_bytes`, verified against `digest`.
    Result<std::string> fetch_blob_bytes(std::string_view digest, uint64_t max_bytes);

    // Downloads blob `digest` to `path`, resuming a partial download found there with a Range request
    // (restarting from 0 if the server ignores Range). Transient failures retry (with resume) up to
    // max_attempts; a partial file is kept when they run out, so a later call resumes. More than
    // `expected_size` bytes (when > 0) is refused. The whole file is verified at the end; a mismatch deletes
    // it. progress(done, total) runs on the calling thread as bytes arrive (total is 0 when unknown).
    Result<void> fetch_blob(std::string_view digest, uint64_t expected_size, const std::string& path,
                            const std::function<void(uint64_t, uint64_t)>& progress);

    // GET /v2/ with authentication: checks that the registry answers and accepts the credentials.
    Result<void> check_access();

    const ImageReference& reference() const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace sandlot::host
