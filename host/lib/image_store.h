// OCI images: pulled from registries or imported from archives, kept in a content-addressed store, each
// prepared once into the read-only ext4 root a sandbox boots from.
//
// Layout under home_dir()/oci:
//   blobs/sha256/HEX   manifests, configs and compressed layers, by digest; shared by every image using them
//   images/HEX.json    one image (HEX: its id, the config digest): manifest digest, layers, the parsed config
//   roots/HEX.ext4     its prepared root: every layer applied in order, made into an ext4 image (read-only)
//   tmp/               downloads (kept across failures, so the next pull resumes) and roots being prepared
//   lock               flock: pulls and imports hold it shared, rmi and prune exclusive
//   locks/blob-HEX, locks/image-HEX   flocks: one download of a blob, one preparation of an image at a time
// The database's images table names images: name = the reference ("127.0.0.1:5000/app:v1", canonical),
// digest = the image id, reference = the manifest digest, path = the prepared root.
//
// Nothing unverified enters the store: every blob is checked against its digest on the way in, every layer's
// uncompressed stream against the config's diff_ids while it is applied, and files appear under their final
// names only by rename.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "proto/base/error.h"

namespace sandlot::host {

// What the image says a container runs, and how (the OCI config's "config" object).
struct ImageRunConfig {
    std::vector<std::string> entrypoint;
    std::vector<std::string> cmd;
    std::vector<std::string> env;  // K=V
    std::string workdir;
    std::string user;
};

struct ImageLayer {
    std::string digest;   // of the blob as stored (compressed or not)
    std::string diff_id;  // of the uncompressed tar
    uint64_t size = 0;
    std::string media_type;
};

struct StoredImage {
    std::string name;             // the canonical reference it is known by
    std::string id;               // the config digest
    std::string manifest_digest;  // as pulled or imported
    std::string root_path;        // the prepared ext4 root
    uint64_t root_bytes = 0;
    uint64_t layers_bytes = 0;  // compressed
    int64_t created_ns = 0;     // when it entered the store
    std::string created;        // the config's "created" timestamp, if any
    std::string architecture, os;
    ImageRunConfig config;
    std::vector<ImageLayer> layers;
};

enum class PullPolicy { Always, IfMissing, Never };
Result<PullPolicy> parse_pull_policy(std::string_view text);  // always, missing (if-missing), never

// One layer's download, reported as bytes arrive (from the downloading thread; calls are serialized).
struct PullProgress {
    size_t layer = 0;  // index in the manifest
    size_t layers = 0;
    std::string digest;
    uint64_t done = 0, total = 0;
    enum class State { Waiting, Downloading, Present, Done } state = State::Waiting;
};

struct PullOptions {
    PullPolicy policy = PullPolicy::IfMissing;
    bool insecure = false;  // plain HTTP
    std::string ca_file;    // "" = home/registry/certs.d/REGISTRY/ca.crt if present, else the system's
    std::function<void(const PullProgress&)> progress;
    std::function<void(const std::string&)> status;  // "preparing the root filesystem", ...
};

// The store in `home` (home_dir() when empty).
class ImageStore {
  public:
    explicit ImageStore(std::string home = {});

    // Pulls `reference` per the policy and returns the stored image, its root prepared.
    Result<StoredImage> pull(const std::string& reference, const PullOptions& options);
    // Imports every image in a `docker save` archive, or an OCI image layout (a directory or its tar).
    // `name` names an archive's single image (needed when the archive names none).
    Result<std::vector<StoredImage>> import(const std::string& path, const std::string& name,
                                            const std::function<void(const std::string&)>& status = {});

    // By reference ("debian" is docker.io/library/debian:latest), or by id or an id prefix of 12+ digits.
    Result<std::optional<StoredImage>> find(const std::string& reference);
    Result<std::vector<StoredImage>> list();
    // Removes the name; the image's root and unshared blobs go with its last name. Refused while a sandbox
    // (running or not) boots from it.
    Result<void> remove(const std::string& reference);
    struct PruneResult {
        std::vector<std::string> removed_images;  // ids
        uint64_t reclaimed_bytes = 0;
    };
    // Removes images nobody names and no sandbox uses, blobs no image uses, and stale temporary files.
    Result<PruneResult> prune();

    const std::string& dir() const { return dir_; }

  private:
    std::string home_;
    std::string dir_;
};

// The image as `sandlot image inspect` prints it (and as the store keeps its metadata, without name and
// root).
nlohmann::json image_to_json(const StoredImage& image);

// Whether `spec` (an --image value) names an OCI image rather than a built-in image or a host path.
bool is_oci_image_spec(const std::string& spec);

}  // namespace sandlot::host
