// A real OCI distribution registry (Debian's docker-registry, CNCF distribution 2.8) on loopback for tests,
// plus a helper that builds OCI image layouts with umoci and pushes them with skopeo.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "proto/base/error.h"
#include "tests/support/temp_dir.h"

namespace sandlot::test {

struct LocalRegistryOptions {
    bool tls = false;
    // Non-empty => htpasswd auth (bcrypt via `htpasswd -Bbn`). The registry requires tls for this.
    std::string username{}, password{};
    // A registry storage directory (docker/registry/v2/...) copied in before the start: a registry filled
    // elsewhere (tools/build-oci-image --registry-storage), where skopeo is not at hand.
    std::string seed_storage{};
};

class LocalRegistry {
  public:
    // Starts `docker-registry serve CONFIG` on 127.0.0.1 with a free port and storage in a temporary
    // directory; with tls, generates a CA and a server certificate for 127.0.0.1/localhost and serves https.
    // Waits until the port answers (20 s). An error (tests GTEST_SKIP with it) if docker-registry is not
    // installed.
    static Result<std::unique_ptr<LocalRegistry>> start(LocalRegistryOptions options = {});
    ~LocalRegistry();
    LocalRegistry(const LocalRegistry&) = delete;
    LocalRegistry& operator=(const LocalRegistry&) = delete;

    std::string host() const;     // "127.0.0.1:PORT"
    std::string ca_file() const;  // PEM of the CA ("" without tls)
    std::string storage_dir() const;
    // SIGKILL the server now (for "registry killed mid-pull" tests).
    void kill();
    // Starts it again on the same port and storage.
    Result<void> restart();
    // skopeo copy oci:<layout_dir>:<layout_tag> docker://<host>/<repo_tag>.
    Result<void> push_layout(const std::string& layout_dir, const std::string& layout_tag,
                             const std::string& repo_tag);
    // Where the registry stores a blob (docker/registry/v2/blobs/sha256/xx/<hex>/data), to tamper with it.
    std::string blob_path(const std::string& digest) const;
    // The registry's own log (errors only).
    std::string log_path() const;

  private:
    explicit LocalRegistry(LocalRegistryOptions options);
    Result<void> spawn();

    LocalRegistryOptions options_;
    TempDir dir_{"sandlot-registry"};
    int port_ = 0;
    pid_t pid_ = -1;
};

// Builds an OCI image layout at `layout_dir` with tag `tag` using umoci: init, new, then per step unpack to a
// bundle, step(rootfs), repack (one layer per step; deletions become whiteouts); then
// `umoci config --image L:tag <config_args...>` when config_args is non-empty.
Result<void> build_oci_layout(const std::string& layout_dir, const std::string& tag,
                              const std::vector<std::function<void(const std::string& rootfs)>>& steps,
                              const std::vector<std::string>& config_args = {});

}  // namespace sandlot::test
