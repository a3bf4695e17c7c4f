#include "host/lib/image_store.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "host/lib/atomic_file.h"
#include "host/lib/digest.h"
#include "host/lib/images.h"
#include "host/lib/oci_layer.h"
#include "host/lib/oci_reference.h"
#include "host/lib/paths.h"
#include "host/lib/registry_client.h"
#include "host/lib/registry_config.h"
#include "host/lib/sandbox_config.h"
#include "host/lib/state_db.h"
#include "host/lib/storage.h"
#include "proto/base/unique_fd.h"

namespace sandlot::host {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr std::string_view kOciIndex = "application/vnd.oci.image.index.v1+json";
constexpr std::string_view kOciManifest = "application/vnd.oci.image.manifest.v1+json";
constexpr std::string_view kDockerList = "application/vnd.docker.distribution.manifest.list.v2+json";
constexpr std::string_view kDockerManifest = "application/vnd.docker.distribution.manifest.v2+json";
constexpr std::string_view kDockerConfig = "application/vnd.docker.container.image.v1+json";
constexpr std::string_view kDockerLayer = "application/vnd.docker.image.rootfs.diff.tar.gzip";
constexpr std::string_view kRefNameAnnotation = "org.opencontainers.image.ref.name";

constexpr uint64_t kMaxStoredManifestBytes = 4 << 20;
constexpr uint64_t kMaxConfigBytes = 8 << 20;
constexpr size_t kMaxLayers = 512;
constexpr int kDownloadThreads = 4;

std::string random_suffix() {
    std::random_device random;
    return fmt::format("{:08x}{:08x}", random(), random());
}

// An flock(2) held for the object's lifetime.
class FileLock {
  public:
    static Result<FileLock> acquire(const std::string& path, int operation) {
        FileLock lock;
        lock.fd_ = UniqueFd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
        if (!lock.fd_) return errno_error("lock " + path);
        while (flock(lock.fd_.get(), operation) != 0) {
            if (errno != EINTR) return errno_error("lock " + path);
        }
        return lock;
    }

  private:
    UniqueFd fd_;
};

// Opens `path` under the directory `dir_fd` without leaving it, symlinks included (an archive being
// imported may hold links pointing anywhere).
Result<UniqueFd> open_beneath(int dir_fd, const std::string& path) {
    struct open_how how {};
    how.flags = O_RDONLY | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    UniqueFd fd(static_cast<int>(syscall(SYS_openat2, dir_fd, path.c_str(), &how, sizeof how)));
    if (!fd) return errno_error("open " + path);
    return fd;
}

Result<std::string> read_small_fd(const UniqueFd& fd, const std::string& path, uint64_t max_bytes) {
    struct stat st;
    if (fstat(fd.get(), &st) != 0) return errno_error("stat " + path);
    if (!S_ISREG(st.st_mode)) return make_error(path + ": not a regular file");
    if (static_cast<uint64_t>(st.st_size) > max_bytes)
        return make_error(
            fmt::format("{}: {} bytes is more than the {} allowed", path, st.st_size, max_bytes));
    std::string content(static_cast<size_t>(st.st_size), '\0');
    size_t done = 0;
    while (done < content.size()) {
        ssize_t n = read(fd.get(), content.data() + done, content.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("read " + path);
        if (n == 0) break;
        done += static_cast<size_t>(n);
    }
    content.resize(done);
    return content;
}

Result<std::string> read_small_file(const std::string& path, uint64_t max_bytes) {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!fd) return errno_error("open " + path);
    return read_small_fd(fd, path, max_bytes);
}

Result<json> parse_json(std::string_view text, const std::string& what) {
    json parsed = json::parse(text, nullptr, false);
    if (parsed.is_discarded() || !parsed.is_object()) return make_error(what + ": not a JSON object");
    return parsed;
}

std::string string_field(const json& object, const char* key) {
    auto it = object.find(key);
    return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::vector<std::string> string_list(const json& object, const char* key) {
    std::vector<std::string> result;
    auto it = object.find(key);
    if (it == object.end() || !it->is_array()) return result;
    for (const auto& item : *it)
        if (item.is_string()) result.push_back(item.get<std::string>());
    return result;
}

struct Descriptor {
    std::string media_type, digest;
    uint64_t size = 0;
};

Result<Descriptor> parse_descriptor(const json& value, const std::string& what) {
    if (!value.is_object()) return make_error(what + ": not a descriptor");
    Descriptor d{string_field(value, "mediaType"), string_field(value, "digest"), 0};
    if (!is_sha256_digest(d.digest))
        return make_error(what + ": unsupported digest \"" + d.digest + "\" (sandlot verifies sha256)");
    auto size = value.find("size");
    if (size == value.end() || !size->is_number_unsigned()) return make_error(what + ": no size");
    d.size = size->get<uint64_t>();
    if (value.contains("urls"))
        return make_error(what + ": foreign layers (fetched from other URLs) are not supported");
    return d;
}

bool is_index(std::string_view media_type, const json& body) {
    if (media_type == kOciIndex || media_type == kDockerList) return true;
    if (media_type == kOciManifest || media_type == kDockerManifest) return false;
    return body.contains("manifests") && !body.contains("layers");
}

// The linux/amd64 entry of an image index.
Result<Descriptor> pick_platform(const json& index) {
    auto manifests = index.find("manifests");
    if (manifests == index.end() || !manifests->is_array() || manifests->empty())
        return make_error("image index lists no manifests");
    std::vector<std::string> seen;
    for (const auto& entry : *manifests) {
        auto platform = entry.find("platform");
        if (platform == entry.end() || !platform->is_object()) {
            if (manifests->size() == 1) return parse_descriptor(entry, "image index");
            continue;
        }
        std::string os = string_field(*platform, "os"), arch = string_field(*platform, "architecture");
        if (os == "linux" && arch == "amd64") return parse_descriptor(entry, "image index");
        seen.push_back(os + "/" + arch);
    }
    std::string list;
    for (const auto& p : seen)
        list += (list.empty() ? "" : ", ") + p;
    return make_error("the image has no linux/amd64 variant (it has " + (list.empty() ? "none" : list) + ")");
}

struct ParsedManifest {
    Descriptor config;
    std::vector<Descriptor> layers;
};

Result<ParsedManifest> parse_manifest(const json& body) {
    ParsedManifest m;
    auto config = body.find("config");
    if (config == body.end()) return make_error("image manifest has no config");
    m.config = TRY(parse_descriptor(*config, "manifest config"));
    if (m.config.size > kMaxConfigBytes) return make_error("image config is too large");
    auto layers = body.find("layers");
    if (layers == body.end() || !layers->is_array()) return make_error("image manifest has no layers");
    if (layers->size() > kMaxLayers) return make_error(fmt::format("image has over {} layers", kMaxLayers));
    for (const auto& layer : *layers) {
        Descriptor d = TRY(parse_descriptor(layer, "manifest layer"));
        if (d.media_type.find("nondistributable") != std::string::npos ||
            d.media_type.find("foreign") != std::string::npos)
            return make_error("image layer " + d.digest + " is a foreign layer, which is not supported");
        m.layers.push_back(std::move(d));
    }
    return m;
}

// The "config" object of an image config (the same names in our metadata).
ImageRunConfig run_config_from(const json& parent) {
    ImageRunConfig config;
    if (auto run = parent.find("config"); run != parent.end() && run->is_object()) {
        config.entrypoint = string_list(*run, "Entrypoint");
        config.cmd = string_list(*run, "Cmd");
        config.env = string_list(*run, "Env");
        config.workdir = string_field(*run, "WorkingDir");
        config.user = string_field(*run, "User");
    }
    return config;
}

// The parts of the config an image runs with, and its layers' diff_ids.
Result<StoredImage> parse_config(std::string_view bytes, const ParsedManifest& manifest) {
    json config = TRY(parse_json(bytes, "image config"));
    StoredImage image;
    image.architecture = string_field(config, "architecture");
    image.os = string_field(config, "os");
    image.created = string_field(config, "created");
    if (!image.os.empty() && image.os != "linux")
        return make_error("the image is for " + image.os + ", not linux");
    if (!image.architecture.empty() && image.architecture != "amd64")
        return make_error("the image is for " + image.architecture + ", not amd64");
    image.config = run_config_from(config);
    std::vector<std::string> diff_ids;
    if (auto rootfs = config.find("rootfs"); rootfs != config.end() && rootfs->is_object())
        diff_ids = string_list(*rootfs, "diff_ids");
    if (diff_ids.size() != manifest.layers.size())
        return make_error(fmt::format("image config lists {} layer diff_ids for {} layers", diff_ids.size(),
                                      manifest.layers.size()));
    for (size_t i = 0; i < diff_ids.size(); ++i) {
        if (!is_sha256_digest(diff_ids[i]))
            return make_error("image config: bad diff_id \"" + diff_ids[i] + "\"");
        image.layers.push_back(
            {manifest.layers[i].digest, diff_ids[i], manifest.layers[i].size, manifest.layers[i].media_type});
        image.layers_bytes += manifest.layers[i].size;
    }
    return image;
}

Result<StoredImage> image_from_json(std::string_view text) {
    json j = TRY(parse_json(text, "image metadata"));
    StoredImage image;
    image.id = string_field(j, "id");
    image.manifest_digest = string_field(j, "manifest_digest");
    image.created = string_field(j, "created");
    image.architecture = string_field(j, "architecture");
    image.os = string_field(j, "os");
    image.root_bytes = j.value("root_bytes", uint64_t{0});
    image.layers_bytes = j.value("layers_bytes", uint64_t{0});
    image.config = run_config_from(j);
    if (auto layers = j.find("layers"); layers != j.end() && layers->is_array()) {
        for (const auto& l : *layers)
            image.layers.push_back({string_field(l, "digest"), string_field(l, "diff_id"),
                                    l.value("size", uint64_t{0}), string_field(l, "media_type")});
    }
    if (!is_sha256_digest(image.id)) return make_error("image metadata: bad id");
    return image;
}

// Space an ext4 image needs to hold `root`, and its inode count.
struct TreeSize {
    uint64_t bytes = 0;
    uint64_t inodes = 0;
};

TreeSize measure_tree(const std::string& root) {
    TreeSize size{4096, 1};
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(root, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        struct stat st;
        if (lstat(it->path().c_str(), &st) != 0) continue;
        size.inodes += 1;
        if (S_ISREG(st.st_mode)) {
            // Hard links share blocks; counting them twice only over-provisions.
            size.bytes += (static_cast<uint64_t>(st.st_size) + 4095) / 4096 * 4096;
            // Extent tree blocks for big files.
            size.bytes += static_cast<uint64_t>(st.st_size) / (128ull << 20) * 4096;
        } else if (S_ISDIR(st.st_mode) || (S_ISLNK(st.st_mode) && st.st_size >= 60)) {
            size.bytes += 4096;
        }
    }
    return size;
}

// Runs `work` over indexes [0, count) on up to `threads` threads; the first error wins.
Result<void> parallel_for(size_t count, int threads, const std::function<Result<void>(size_t)>& work) {
    std::atomic<size_t> next{0};
    std::mutex mutex;
    std::optional<Error> first_error;
    auto worker = [&] {
        for (;;) {
            {
                std::lock_guard lock(mutex);
                if (first_error) return;
            }
            size_t i = next.fetch_add(1);
            if (i >= count) return;
            auto done = work(i);
            if (!done) {
                std::lock_guard lock(mutex);
                if (!first_error) first_error = done.error();
            }
        }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < std::min<int>(threads, static_cast<int>(count)); ++t)
        pool.emplace_back(worker);
    worker();
    for (auto& thread : pool)
        thread.join();
    if (first_error) return std::unexpected(*first_error);
    return {};
}

// Copies the file `in` into `dest` (a temporary name) while hashing it; refuses more than `max_bytes`.
Result<std::string> copy_hashing(const UniqueFd& in, const std::string& source, const std::string& dest,
                                 uint64_t max_bytes) {
    struct stat st;
    if (fstat(in.get(), &st) != 0 || !S_ISREG(st.st_mode)) return make_error(source + ": not a regular file");
    UniqueFd out(open(dest.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!out) return errno_error("create " + dest);
    Sha256 hasher;
    std::vector<std::byte> buffer(1 << 20);
    uint64_t total = 0;
    for (;;) {
        ssize_t n = read(in.get(), buffer.data(), buffer.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("read " + source);
        if (n == 0) break;
        total += static_cast<uint64_t>(n);
        if (max_bytes && total > max_bytes) return make_error(source + ": larger than its descriptor says");
        hasher.update(std::span(buffer.data(), static_cast<size_t>(n)));
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(out.get(), buffer.data() + done, static_cast<size_t>(n - done));
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) return errno_error("write " + dest);
            done += w;
        }
    }
    if (fsync(out.get()) != 0) return errno_error("sync " + dest);
    return hasher.finish();
}

bool is_hex_prefix(std::string_view text) {
    if (text.starts_with("sha256:")) text.remove_prefix(7);
    if (text.size() < 12 || text.size() > 64) return false;
    return std::all_of(text.begin(), text.end(),
                       [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

}  // namespace

nlohmann::json image_to_json(const StoredImage& image) {
    json layers = json::array();
    for (const auto& l : image.layers)
        layers.push_back(
            {{"digest", l.digest}, {"diff_id", l.diff_id}, {"size", l.size}, {"media_type", l.media_type}});
    json result = {{"id", image.id},
                   {"manifest_digest", image.manifest_digest},
                   {"root_bytes", image.root_bytes},
                   {"layers_bytes", image.layers_bytes},
                   {"created", image.created},
                   {"architecture", image.architecture},
                   {"os", image.os},
                   {"config",
                    {{"Entrypoint", image.config.entrypoint},
                     {"Cmd", image.config.cmd},
                     {"Env", image.config.env},
                     {"WorkingDir", image.config.workdir},
                     {"User", image.config.user}}},
                   {"layers", layers}};
    if (!image.name.empty()) result["name"] = image.name;
    if (!image.root_path.empty()) result["root"] = image.root_path;
    return result;
}

Result<PullPolicy> parse_pull_policy(std::string_view text) {
    if (text == "always") return PullPolicy::Always;
    if (text == "missing" || text == "if-missing") return PullPolicy::IfMissing;
    if (text == "never") return PullPolicy::Never;
    return make_error("unknown pull policy \"" + std::string(text) + "\": use always, missing or never");
}

bool is_oci_image_spec(const std::string& spec) {
    if (spec.empty() || spec.find('/') == 0 || spec.starts_with(".")) return false;
    if (std::find(kBuiltinImages.begin(), kBuiltinImages.end(), spec) != kBuiltinImages.end()) return false;
    // A relative host path names an existing file or directory; a reference never has to.
    struct stat st;
    if (spec.find('/') != std::string::npos && stat(spec.c_str(), &st) == 0) return false;
    return true;
}

ImageStore::ImageStore(std::string home) : home_(home.empty() ? home_dir() : std::move(home)) {
    dir_ = home_ + "/oci";
}

namespace {

struct StoreLayout {
    const std::string& dir;
    std::string blob(std::string_view digest) const {
        return dir + "/blobs/sha256/" + std::string(digest_hex(digest));
    }
    std::string meta(std::string_view id) const {
        return dir + "/images/" + std::string(digest_hex(id)) + ".json";
    }
    std::string root(std::string_view id) const {
        return dir + "/roots/" + std::string(digest_hex(id)) + ".ext4";
    }
    // One lock per blob and one per image, apart: a manifest may name its config as a layer too.
    std::string blob_lock(std::string_view digest) const {
        return dir + "/locks/blob-" + std::string(digest_hex(digest));
    }
    std::string image_lock(std::string_view id) const {
        return dir + "/locks/image-" + std::string(digest_hex(id));
    }
    std::string tmp(std::string_view name) const { return dir + "/tmp/" + std::string(name); }
    std::string global_lock() const { return dir + "/lock"; }

    Result<void> ensure() const {
        for (const char* sub : {"/blobs/sha256", "/images", "/roots", "/locks", "/tmp"}) {
            std::error_code ec;
            fs::create_directories(dir + sub, ec);
            if (ec) return make_error("create " + dir + sub + ": " + ec.message());
        }
        return {};
    }

    bool has(const std::string& path) const {
        struct stat st;
        return stat(path.c_str(), &st) == 0;
    }

    // Puts bytes known by their digest into the store (verified).
    Result<void> put_bytes(std::string_view bytes, const std::string& digest) const {
        if (sha256_digest(bytes) != digest) return make_error("blob " + digest + " failed verification");
        if (has(blob(digest))) return {};
        return write_file_atomically(blob(digest), bytes, 0644);
    }
};

Result<StateDb> open_db(const std::string& home) {
    std::error_code ec;
    fs::create_directories(home, ec);
    return StateDb::open(home + "/sandlot.db");
}

// Root images that sandboxes (running or not) boot from, with a sandbox name for each.
Result<std::map<std::string, std::string>> roots_in_use(StateDb& db) {
    std::map<std::string, std::string> used;
    for (const auto& record : TRY(db.list_sandboxes())) {
        auto config = config_from_json(record.config);
        if (config && !config->storage.root.image.empty())
            used.emplace(config->storage.root.image, record.name);
    }
    return used;
}

// Applies every layer in order into a fresh directory, checks each diff_id, and makes the ext4 root.
Result<uint64_t> prepare_root(const StoreLayout& store, const StoredImage& image,
                              const std::function<void(const std::string&)>& status) {
    std::string work =
        store.tmp("root-" + std::string(digest_hex(image.id)).substr(0, 12) + "-" + random_suffix());
    struct Cleanup {
        std::string path;
        ~Cleanup() {
            std::error_code ec;
            fs::remove_all(path, ec);
        }
    } cleanup{work};
    std::string rootfs = work + "/rootfs";
    std::error_code ec;
    fs::create_directories(rootfs, ec);
    if (ec) return make_error("create " + rootfs + ": " + ec.message());
    chmod(rootfs.c_str(), 0755);
    for (size_t i = 0; i < image.layers.size(); ++i) {
        const auto& layer = image.layers[i];
        if (status)
            status(fmt::format("applying layer {}/{} {}", i + 1, image.layers.size(),
                               layer.digest.substr(7, 12)));
        auto applied = apply_layer(store.blob(layer.digest), rootfs);
        if (!applied) return std::unexpected(with_context(applied.error(), "layer " + layer.digest));
        if (applied->diff_id != layer.diff_id)
            return make_error(
                fmt::format("layer {} does not match the image config: its content is {}, the config says {}",
                            layer.digest, applied->diff_id, layer.diff_id));
    }
    if (status) status("making the root filesystem image");
    TreeSize size = measure_tree(rootfs);
    uint64_t inodes = size.inodes + size.inodes / 4 + 1024;
    uint64_t bytes = size.bytes + size.bytes / 8 + inodes * 256 + (16ull << 20);
    bytes = (bytes + (1 << 20) - 1) / (1 << 20) * (1 << 20);
    std::string built = work + "/root.ext4";
    auto made = create_ext4_image_from_directory(built, rootfs, bytes, inodes, "sandlot-root");
    if (!made) {
        // Our estimate was short (very many small directories, long names): once more with plenty.
        made = create_ext4_image_from_directory(built, rootfs, bytes * 2, inodes * 2, "sandlot-root");
    }
    if (!made) return std::unexpected(made.error());
    chmod(built.c_str(), 0444);
    if (rename(built.c_str(), store.root(image.id).c_str()) != 0) return errno_error("rename " + built);
    return bytes;
}

}  // namespace

namespace {

// The shared tail of pull and import: blobs into the store, the root prepared, the metadata and names
// written. `fetch_layer(i, temp_path)` writes layer i's verified blob to temp_path.
struct CommitInput {
    std::vector<std::string> names;
    std::string manifest_bytes, manifest_digest, config_bytes;
    ParsedManifest manifest;
};

Result<StoredImage> commit_image(const std::string& home, const StoreLayout& store, const CommitInput& input,
                                 const std::function<Result<void>(size_t, const std::string&)>& fetch_layer,
                                 const std::function<void(size_t, bool)>& layer_present,
                                 const std::function<void(const std::string&)>& status) {
    StoredImage image = TRY(parse_config(input.config_bytes, input.manifest));
    image.id = input.manifest.config.digest;
    image.manifest_digest = input.manifest_digest;
    TRY(store.put_bytes(input.manifest_bytes, input.manifest_digest));
    TRY(store.put_bytes(input.config_bytes, image.id));

    auto image_guard = TRY(FileLock::acquire(store.image_lock(image.id), LOCK_EX));
    if (store.has(store.root(image.id)) && store.has(store.meta(image.id))) {
        image = TRY(image_from_json(TRY(read_small_file(store.meta(image.id), kMaxConfigBytes))));
        image.manifest_digest =
            input.manifest_digest;  // this name's manifest, maybe another of the same image
        for (size_t i = 0; i < image.layers.size(); ++i)
            if (layer_present) layer_present(i, true);
    } else {
        TRY(parallel_for(image.layers.size(), kDownloadThreads, [&](size_t i) -> Result<void> {
            const auto& layer = image.layers[i];
            auto blob_guard = TRY(FileLock::acquire(store.blob_lock(layer.digest), LOCK_EX));
            std::string final_path = store.blob(layer.digest);
            if (store.has(final_path)) {
                if (layer_present) layer_present(i, true);
                return {};
            }
            // Kept on failure: a download picks up where the last one stopped.
            std::string partial = store.tmp(std::string(digest_hex(layer.digest)) + ".partial");
            TRY(fetch_layer(i, partial));
            if (rename(partial.c_str(), final_path.c_str()) != 0) return errno_error("rename " + partial);
            if (layer_present) layer_present(i, false);
            return {};
        }));
        if (status) status("preparing the root filesystem");
        image.root_bytes = TRY(prepare_root(store, image, status));
        TRY(write_file_atomically(store.meta(image.id), image_to_json(image).dump(2), 0644));
    }
    image.root_path = store.root(image.id);

    auto db = TRY(open_db(home));
    for (const auto& name : input.names) {
        ImageRecord record;
        record.name = name;
        record.reference = image.manifest_digest;
        record.path = image.root_path;
        record.digest = image.id;
        record.size_bytes = image.root_bytes;
        TRY(db.upsert_image(record));
    }
    if (!input.names.empty()) image.name = input.names.front();
    return image;
}

}  // namespace

Result<StoredImage> ImageStore::pull(const std::string& reference, const PullOptions& options) {
    ImageReference ref = TRY(parse_image_reference(reference));
    std::string name = ref.to_string();
    if (options.policy != PullPolicy::Always) {
        if (auto found = TRY(find(name)); found && fs::exists(found->root_path)) return *found;
        if (options.policy == PullPolicy::Never)
            return make_error("image " + name + " is not in the store, and the pull policy is never");
    }
    StoreLayout store{dir_};
    TRY(store.ensure());
    auto shared_lock = TRY(FileLock::acquire(store.global_lock(), LOCK_SH));

    RegistrySettings settings;
    settings.insecure = options.insecure;
    settings.ca_file = options.ca_file.empty() ? registry_ca_file(home_, ref.registry) : options.ca_file;
    settings.credentials = TRY(find_registry_credentials(home_, ref.registry));
    RegistryClient client(ref, settings);

    // The client's errors name the image already ("pull REF: connection refused"); ours get the same prefix.
    auto pull_error = [&](const Error& error) {
        return std::unexpected(error.message.starts_with("pull ") ? error
                                                                  : with_context(error, "pull " + name));
    };
    auto fetched = client.fetch_manifest(ref.digest.empty() ? ref.tag : ref.digest);
    if (!fetched) return pull_error(fetched.error());
    json body = TRY(parse_json(fetched->body, "manifest of " + name));
    if (is_index(fetched->media_type, body)) {
        Descriptor chosen = TRY(pick_platform(body));
        fetched = client.fetch_manifest(chosen.digest);
        if (!fetched) return pull_error(fetched.error());
        body = TRY(parse_json(fetched->body, "manifest of " + name));
        if (is_index(fetched->media_type, body)) return make_error("pull " + name + ": nested image indexes");
    }
    CommitInput input;
    input.names = {name};
    input.manifest = TRY(parse_manifest(body));
    input.manifest_bytes = fetched->body;
    input.manifest_digest = fetched->digest;
    auto config = client.fetch_blob_bytes(input.manifest.config.digest, kMaxConfigBytes);
    if (!config) return pull_error(config.error());
    input.config_bytes = std::move(*config);

    std::mutex progress_mutex;
    size_t layer_count = input.manifest.layers.size();
    auto report = [&](size_t i, uint64_t done, uint64_t total, PullProgress::State state) {
        if (!options.progress) return;
        std::lock_guard lock(progress_mutex);
        options.progress({i, layer_count, input.manifest.layers[i].digest, done, total, state});
    };
    for (size_t i = 0; i < layer_count; ++i)
        report(i, 0, input.manifest.layers[i].size, PullProgress::State::Waiting);
    auto fetch_layer = [&](size_t i, const std::string& path) -> Result<void> {
        const auto& layer = input.manifest.layers[i];
        auto done = client.fetch_blob(layer.digest, layer.size, path, [&](uint64_t got, uint64_t total) {
            report(i, got, total ? total : layer.size, PullProgress::State::Downloading);
        });
        if (!done) return pull_error(done.error());
        return {};
    };
    auto present = [&](size_t i, bool already) {
        uint64_t size = input.manifest.layers[i].size;
        report(i, size, size, already ? PullProgress::State::Present : PullProgress::State::Done);
    };
    auto image = commit_image(home_, store, input, fetch_layer, present, options.status);
    if (!image) return pull_error(image.error());
    return image;
}

Result<std::vector<StoredImage>> ImageStore::import(const std::string& path, const std::string& name,
                                                    const std::function<void(const std::string&)>& status) {
    StoreLayout store{dir_};
    TRY(store.ensure());
    auto shared_lock = TRY(FileLock::acquire(store.global_lock(), LOCK_SH));

    struct stat st;
    if (stat(path.c_str(), &st) != 0) return errno_error("import " + path);
    std::string source = path;
    struct Cleanup {
        std::string path;
        ~Cleanup() {
            std::error_code ec;
            if (!path.empty()) fs::remove_all(path, ec);
        }
    } cleanup;
    if (!S_ISDIR(st.st_mode)) {
        // An archive: unpacked with the same hostile-input-safe extraction as layers.
        cleanup.path = store.tmp("import-" + random_suffix());
        std::error_code ec;
        fs::create_directories(cleanup.path, ec);
        if (ec) return make_error("create " + cleanup.path + ": " + ec.message());
        if (status) status("unpacking " + path);
        auto unpacked = apply_layer(path, cleanup.path);
        if (!unpacked) return make_error("import " + path + ": " + unpacked.error().to_string());
        source = cleanup.path;
    }

    UniqueFd source_fd(open(source.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!source_fd) return errno_error("import " + path);
    auto exists = [&](const char* file) {
        return faccessat(source_fd.get(), file, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
    };
    auto open_file = [&](const std::string& rel) -> Result<UniqueFd> {
        auto fd = open_beneath(source_fd.get(), rel);
        if (!fd) return make_error("import " + path + ": " + fd.error().to_string());
        return fd;
    };
    auto read_file = [&](const std::string& rel, uint64_t max) -> Result<std::string> {
        return read_small_fd(TRY(open_file(rel)), rel, max);
    };

    struct Candidate {
        CommitInput input;
        std::vector<std::string> layer_files;  // relative to the source directory
    };
    std::vector<Candidate> candidates;
    auto resolve_name = [&](const std::string& text) -> Result<std::string> {
        auto ref = parse_image_reference(text);
        if (!ref)
            return make_error("import " + path + ": the archive names its image \"" + text +
                              "\", which is not a valid reference; name it with --name");
        return ref->to_string();
    };

    if (exists("index.json")) {
        auto layout_blob = [](const std::string& digest) {
            return "blobs/sha256/" + std::string(digest_hex(digest));
        };
        auto read_blob = [&](const Descriptor& d, uint64_t max) -> Result<std::string> {
            std::string bytes = TRY(read_file(layout_blob(d.digest), max));
            if (sha256_digest(bytes) != d.digest)
                return make_error("import " + path + ": blob " + d.digest + " failed verification");
            return bytes;
        };
        json index = TRY(parse_json(TRY(read_file("index.json", kMaxStoredManifestBytes)), "index.json"));
        auto manifests = index.find("manifests");
        if (manifests == index.end() || !manifests->is_array() || manifests->empty())
            return make_error("import " + path + ": index.json lists no images");
        for (const auto& entry : *manifests) {
            Descriptor d = TRY(parse_descriptor(entry, "index.json"));
            std::string ref_name;
            if (auto a = entry.find("annotations"); a != entry.end() && a->is_object())
                ref_name = string_field(*a, std::string(kRefNameAnnotation).c_str());
            std::string bytes = TRY(read_blob(d, kMaxStoredManifestBytes));
            json body = TRY(parse_json(bytes, "manifest " + d.digest));
            if (is_index(d.media_type, body)) {
                d = TRY(pick_platform(body));
                bytes = TRY(read_blob(d, kMaxStoredManifestBytes));
                body = TRY(parse_json(bytes, "manifest " + d.digest));
            }
            Candidate c;
            c.input.manifest = TRY(parse_manifest(body));
            c.input.manifest_bytes = bytes;
            c.input.manifest_digest = d.digest;
            c.input.config_bytes = TRY(read_blob(c.input.manifest.config, kMaxConfigBytes));
            for (const auto& layer : c.input.manifest.layers)
                c.layer_files.push_back(layout_blob(layer.digest));
            // skopeo and umoci name a layout's image by its tag alone ("v1"); a name with a repository is a
            // whole reference.
            if (ref_name.find('/') != std::string::npos) c.input.names.push_back(TRY(resolve_name(ref_name)));
            candidates.push_back(std::move(c));
        }
    } else if (exists("manifest.json")) {
        json list = json::parse(TRY(read_file("manifest.json", kMaxStoredManifestBytes)), nullptr, false);
        if (list.is_discarded() || !list.is_array() || list.empty())
            return make_error("import " + path + ": manifest.json lists no images");
        auto member = [&](const json& value) -> Result<std::string> {
            if (!value.is_string() || value.get<std::string>().empty())
                return make_error("import " + path + ": manifest.json names no file");
            return value.get<std::string>();
        };
        for (const auto& entry : list) {
            if (!entry.is_object()) return make_error("import " + path + ": bad manifest.json entry");
            Candidate c;
            c.input.config_bytes =
                TRY(read_file(TRY(member(entry.value("Config", json()))), kMaxConfigBytes));
            c.input.manifest.config = {std::string(kDockerConfig), sha256_digest(c.input.config_bytes),
                                       c.input.config_bytes.size()};
            auto layers = entry.find("Layers");
            if (layers == entry.end() || !layers->is_array() || layers->size() > kMaxLayers)
                return make_error("import " + path + ": manifest.json entry without layers");
            json manifest_layers = json::array();
            for (const auto& layer : *layers) {
                std::string file = TRY(member(layer));
                if (status) status("hashing " + file);
                UniqueFd fd = TRY(open_file(file));
                struct stat layer_st;
                if (fstat(fd.get(), &layer_st) != 0 || !S_ISREG(layer_st.st_mode))
                    return make_error("import " + path + ": " + file + " is not a regular file");
                std::string digest = TRY(sha256_fd(fd.get(), file));
                auto size = static_cast<uint64_t>(layer_st.st_size);
                c.input.manifest.layers.push_back({std::string(kDockerLayer), digest, size});
                c.layer_files.push_back(file);
                manifest_layers.push_back({{"mediaType", kDockerLayer}, {"size", size}, {"digest", digest}});
            }
            // docker save carries no registry manifest: one is written for the store, as docker does.
            json manifest = {{"schemaVersion", 2},
                             {"mediaType", kDockerManifest},
                             {"config",
                              {{"mediaType", kDockerConfig},
                               {"size", c.input.config_bytes.size()},
                               {"digest", c.input.manifest.config.digest}}},
                             {"layers", manifest_layers}};
            c.input.manifest_bytes = manifest.dump();
            c.input.manifest_digest = sha256_digest(c.input.manifest_bytes);
            for (const auto& tag : string_list(entry, "RepoTags"))
                c.input.names.push_back(TRY(resolve_name(tag)));
            candidates.push_back(std::move(c));
        }
    } else {
        return make_error(
            "import " + path +
            ": not a docker save archive or an OCI image layout (no index.json or manifest.json)");
    }

    if (!name.empty()) {
        if (candidates.size() != 1)
            return make_error(fmt::format("import {}: --name names one image, the archive holds {}", path,
                                          candidates.size()));
        candidates[0].input.names = {TRY(resolve_name(name))};
    }
    std::vector<StoredImage> imported;
    for (auto& c : candidates) {
        if (c.input.names.empty())
            return make_error("import " + path +
                              ": the archive does not name its image; name it with --name");
        auto fetch_layer = [&](size_t i, const std::string& temp) -> Result<void> {
            const auto& layer = c.input.manifest.layers[i];
            std::string digest =
                TRY(copy_hashing(TRY(open_file(c.layer_files[i])), c.layer_files[i], temp, layer.size));
            if (digest != layer.digest) {
                unlink(temp.c_str());
                return make_error("import " + path + ": layer " + layer.digest +
                                  " failed verification (its content is " + digest + ")");
            }
            return {};
        };
        imported.push_back(TRY(commit_image(home_, store, c.input, fetch_layer, {}, status)));
    }
    return imported;
}

Result<std::optional<StoredImage>> ImageStore::find(const std::string& reference) {
    auto db = TRY(open_db(home_));
    std::vector<ImageRecord> rows = TRY(db.list_images());
    const ImageRecord* match = nullptr;
    if (auto ref = parse_image_reference(reference)) {
        std::string name = ref->to_string();
        for (const auto& row : rows)
            if (row.name == name) match = &row;
    }
    if (!match && is_hex_prefix(reference)) {
        std::string prefix = reference.starts_with("sha256:") ? reference : "sha256:" + reference;
        for (const auto& row : rows) {
            if (!row.digest.starts_with(prefix)) continue;
            if (match && match->digest != row.digest)
                return make_error("image id prefix " + reference + " is ambiguous");
            match = &row;
        }
    }
    if (!match) return std::optional<StoredImage>();
    StoreLayout store{dir_};
    auto meta = read_small_file(store.meta(match->digest), kMaxConfigBytes);
    if (!meta) return std::optional<StoredImage>();
    StoredImage image = TRY(image_from_json(*meta));
    image.name = match->name;
    image.root_path = match->path;
    image.created_ns = match->created_ns;
    return std::optional<StoredImage>(std::move(image));
}

Result<std::vector<StoredImage>> ImageStore::list() {
    auto db = TRY(open_db(home_));
    StoreLayout store{dir_};
    std::vector<StoredImage> result;
    for (const auto& row : TRY(db.list_images())) {
        StoredImage image;
        if (auto meta = read_small_file(store.meta(row.digest), kMaxConfigBytes)) {
            if (auto parsed = image_from_json(*meta)) image = std::move(*parsed);
        }
        image.name = row.name;
        image.id = row.digest;
        image.manifest_digest = row.reference;
        image.root_path = row.path;
        image.root_bytes = row.size_bytes;
        image.created_ns = row.created_ns;
        result.push_back(std::move(image));
    }
    return result;
}

namespace {

// Removes blobs no image metadata refers to; returns the bytes freed.
uint64_t collect_blobs(const StoreLayout& store) {
    std::set<std::string> keep;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(store.dir + "/images", ec)) {
        auto meta = read_small_file(entry.path().string(), kMaxConfigBytes);
        if (!meta) continue;
        auto image = image_from_json(*meta);
        if (!image) continue;
        keep.insert(std::string(digest_hex(image->id)));
        if (is_sha256_digest(image->manifest_digest))
            keep.insert(std::string(digest_hex(image->manifest_digest)));
        for (const auto& layer : image->layers)
            if (is_sha256_digest(layer.digest)) keep.insert(std::string(digest_hex(layer.digest)));
    }
    uint64_t freed = 0;
    for (const auto& entry : fs::directory_iterator(store.dir + "/blobs/sha256", ec)) {
        if (keep.contains(entry.path().filename().string())) continue;
        std::error_code size_ec;
        uint64_t size = entry.file_size(size_ec);
        if (fs::remove(entry.path(), size_ec)) freed += size;
    }
    return freed;
}

uint64_t remove_image_files(const StoreLayout& store, const std::string& id) {
    std::error_code ec;
    uint64_t size = fs::file_size(store.root(id), ec);
    if (ec) size = 0;
    fs::remove(store.root(id), ec);
    fs::remove(store.meta(id), ec);
    return size;
}

}  // namespace

Result<void> ImageStore::remove(const std::string& reference) {
    StoreLayout store{dir_};
    TRY(store.ensure());
    auto lock = TRY(FileLock::acquire(store.global_lock(), LOCK_EX));
    auto db = TRY(open_db(home_));
    std::vector<ImageRecord> rows = TRY(db.list_images());
    auto image = TRY(find(reference));
    if (!image) return make_error("no image " + reference);
    size_t names =
        std::count_if(rows.begin(), rows.end(), [&](const ImageRecord& r) { return r.digest == image->id; });
    if (names <= 1) {
        auto used = TRY(roots_in_use(db));
        if (auto it = used.find(image->root_path); it != used.end())
            return make_error("image " + image->name + " is in use by sandbox \"" + it->second +
                              "\"; remove the sandbox first (sandlot rm " + it->second + ")");
    }
    TRY(db.delete_image(image->name));
    if (names <= 1) {
        remove_image_files(store, image->id);
        collect_blobs(store);
    }
    return {};
}

Result<ImageStore::PruneResult> ImageStore::prune() {
    StoreLayout store{dir_};
    TRY(store.ensure());
    auto lock = TRY(FileLock::acquire(store.global_lock(), LOCK_EX));
    auto db = TRY(open_db(home_));
    std::set<std::string> named;
    for (const auto& row : TRY(db.list_images()))
        named.insert(std::string(digest_hex(row.digest)));
    auto used = TRY(roots_in_use(db));
    PruneResult result;
    std::error_code ec;
    // Roots and metadata of images nobody names and no sandbox boots from.
    std::set<std::string> ids;
    for (const auto& dir : {"/images", "/roots"})
        for (const auto& entry : fs::directory_iterator(dir_ + dir, ec))
            ids.insert(entry.path().stem().string());
    for (const auto& hex : ids) {
        std::string id = "sha256:" + hex;
        if (!is_sha256_digest(id) || named.contains(hex) || used.contains(store.root(id))) continue;
        result.reclaimed_bytes += remove_image_files(store, id);
        result.removed_images.push_back(id);
    }
    result.reclaimed_bytes += collect_blobs(store);
    // Nothing runs in tmp/ or holds locks/ while we hold the store's lock exclusively.
    for (const auto& dir : {"/tmp", "/locks"}) {
        for (const auto& entry : fs::directory_iterator(dir_ + dir, ec)) {
            std::error_code size_ec;
            uint64_t size = entry.is_regular_file(size_ec) ? entry.file_size(size_ec) : 0;
            if (fs::remove_all(entry.path(), size_ec) != static_cast<std::uintmax_t>(-1))
                result.reclaimed_bytes += size;
        }
    }
    return result;
}

}  // namespace sandlot::host
