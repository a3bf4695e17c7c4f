// The OCI image store against a real registry (Debian's docker-registry on loopback, filled by skopeo from
// layouts umoci builds here): pulls by tag and digest, integrity, auth, a registry dying mid-pull, concurrent
// pulls, docker-archive and OCI-layout imports, rmi and prune. Roots are checked with debugfs, no mount.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "host/lib/digest.h"
#include "host/lib/image_store.h"
#include "host/lib/paths.h"
#include "host/lib/registry_config.h"
#include "host/lib/sandbox_config.h"
#include "host/lib/state_db.h"
#include "tests/support/local_registry.h"
#include "tests/support/run_command.h"
#include "tests/support/temp_dir.h"

namespace sandlot::host {
namespace {

namespace fs = std::filesystem;
using test::LocalRegistry;
using test::TempDir;

void write_text(const std::string& path, const std::string& text) {
    fs::create_directories(fs::path(path).parent_path());
    std::ofstream(path) << text;
}

// What debugfs says of a root (without its version banner): a file's contents, or its inode.
std::string debugfs(const std::string& root, const std::string& request) {
    auto program = find_program("debugfs");
    if (!program) return "<no debugfs>";
    std::string output = testing::run_command({*program, "-R", request, root}).output;
    if (output.starts_with("debugfs ")) output.erase(0, output.find('\n') + 1);
    return output;
}
std::string root_cat(const std::string& root, const std::string& path) {
    return debugfs(root, "cat " + path);
}
std::string root_stat(const std::string& root, const std::string& path) {
    return debugfs(root, "stat " + path);
}

size_t count_files(const std::string& dir) {
    std::error_code ec;
    size_t n = 0;
    for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); ++it)
        ++n;
    return n;
}

// Three layers: files, a hard link and a symlink; a deletion (a whiteout); a changed file. Plus a config.
Result<void> build_app_layout(const std::string& layout, const std::string& tag,
                              const std::string& big = "") {
    return test::build_oci_layout(
        layout, tag,
        {[&](const std::string& rootfs) {
             write_text(rootfs + "/data/kept", "kept\n");
             write_text(rootfs + "/data/gone", "gone\n");
             write_text(rootfs + "/data/file", "linked\n");
             link((rootfs + "/data/file").c_str(), (rootfs + "/data/hardlink").c_str());
             symlink("kept", (rootfs + "/data/symlink").c_str());
             if (!big.empty()) write_text(rootfs + "/data/big", big);
         },
         [](const std::string& rootfs) { unlink((rootfs + "/data/gone").c_str()); },
         [&](const std::string& rootfs) { write_text(rootfs + "/data/kept", "kept, " + tag + "\n"); }},
        {"--config.entrypoint=/bin/echo", "--config.cmd=hello", "--config.env=APP=1",
         "--config.workingdir=/data", "--config.user=1000:1000"});
}

class ImageStoreTest : public ::testing::Test {
  protected:
    void SetUp() override {
        if (!find_program("umoci") || !find_program("skopeo") || !find_program("docker-registry"))
            GTEST_SKIP() << "umoci, skopeo or docker-registry is not installed (tools/setup installs them)";
        if (!find_program("mkfs.ext4") || !find_program("debugfs"))
            GTEST_SKIP() << "e2fsprogs is not installed";
    }

    std::unique_ptr<LocalRegistry> start_registry(test::LocalRegistryOptions options = {}) {
        auto registry = LocalRegistry::start(options);
        EXPECT_TRUE(registry) << registry.error().to_string();
        return registry ? std::move(*registry) : nullptr;
    }

    void push(LocalRegistry& registry, const std::string& repo_tag, const std::string& big = "") {
        std::string layout = layouts_ / repo_tag.substr(0, repo_tag.find(':'));
        auto built = build_app_layout(layout, "v", big);
        ASSERT_TRUE(built) << built.error().to_string();
        auto pushed = registry.push_layout(layout, "v", repo_tag);
        ASSERT_TRUE(pushed) << pushed.error().to_string();
    }

    PullOptions insecure() {
        PullOptions options;
        options.insecure = true;
        return options;
    }

    TempDir home_{"sandlot-images-home"};
    TempDir layouts_{"sandlot-layouts"};
};

TEST_F(ImageStoreTest, PullsByTagAndDigestAndPreparesTheRoot) {
    auto registry = start_registry();
    ASSERT_TRUE(registry);
    push(*registry, "team/app:v1");
    ImageStore store(home_.path());
    std::string reference = registry->host() + "/team/app:v1";
    auto image = store.pull(reference, insecure());
    ASSERT_TRUE(image) << image.error().to_string();
    EXPECT_EQ(image->name, reference);
    EXPECT_EQ(image->layers.size(), 3u);
    EXPECT_EQ(image->config.entrypoint, std::vector<std::string>{"/bin/echo"});
    EXPECT_EQ(image->config.cmd, std::vector<std::string>{"hello"});
    EXPECT_NE(std::find(image->config.env.begin(), image->config.env.end(), "APP=1"),
              image->config.env.end());
    EXPECT_EQ(image->config.workdir, "/data");
    EXPECT_EQ(image->config.user, "1000:1000");

    // The root holds the layers applied in order: the whiteout removed a file, the last layer's change won.
    EXPECT_EQ(root_cat(image->root_path, "/data/kept"), "kept, v\n");
    EXPECT_EQ(root_cat(image->root_path, "/data/hardlink"), "linked\n");
    EXPECT_NE(root_stat(image->root_path, "/data/hardlink").find("Links: 2"), std::string::npos)
        << root_stat(image->root_path, "/data/hardlink");
    EXPECT_NE(root_stat(image->root_path, "/data/symlink").find("Fast link dest: \"kept\""),
              std::string::npos)
        << root_stat(image->root_path, "/data/symlink");
    EXPECT_NE(root_stat(image->root_path, "/data/gone").find("File not found"), std::string::npos);
    struct stat st;
    ASSERT_EQ(stat(image->root_path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0222, 0u) << "the prepared root is read-only";

    // By digest: the same image under a second name, nothing downloaded again.
    auto by_digest = store.pull(registry->host() + "/team/app@" + image->manifest_digest, insecure());
    ASSERT_TRUE(by_digest) << by_digest.error().to_string();
    EXPECT_EQ(by_digest->id, image->id);
    EXPECT_EQ(by_digest->root_path, image->root_path);
    auto all = store.list();
    ASSERT_TRUE(all);
    EXPECT_EQ(all->size(), 2u);

    // The default policy finds it without the registry; never refuses what is missing.
    registry->kill();
    PullOptions missing = insecure();
    auto again = store.pull(reference, missing);
    ASSERT_TRUE(again) << again.error().to_string();
    EXPECT_EQ(again->id, image->id);
    PullOptions never = insecure();
    never.policy = PullPolicy::Never;
    auto absent = store.pull(registry->host() + "/team/other:v1", never);
    ASSERT_FALSE(absent);
    EXPECT_NE(absent.error().message.find("not in the store"), std::string::npos) << absent.error().message;

    // Found by short id too.
    auto by_id = store.find(image->id.substr(7, 12));
    ASSERT_TRUE(by_id && *by_id);
    EXPECT_EQ((*by_id)->id, image->id);
}

std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST_F(ImageStoreTest, PullsDockerSchema2ManifestsAndPicksLinuxAmd64FromAnIndex) {
    auto registry = start_registry();
    ASSERT_TRUE(registry);
    std::string v = layouts_ / "v", w = layouts_ / "w";
    ASSERT_TRUE(build_app_layout(v, "v"));
    ASSERT_TRUE(build_app_layout(w, "w"));
    auto copy = [&](const std::string& source, const std::string& dest, std::vector<std::string> extra) {
        std::vector<std::string> argv = {"skopeo", "copy", "--quiet", "--insecure-policy",
                                         "--dest-tls-verify=false"};
        argv.insert(argv.end(), extra.begin(), extra.end());
        argv.push_back(source);
        argv.push_back("docker://" + registry->host() + "/" + dest);
        return testing::run_command(argv);
    };
    auto v2s2 = copy("oci:" + v + ":v", "team/schema2:v1", {"--format", "v2s2"});
    ASSERT_EQ(v2s2.status, 0) << v2s2.output;
    ImageStore store(home_.path());
    auto schema2 = store.pull(registry->host() + "/team/schema2:v1", insecure());
    ASSERT_TRUE(schema2) << schema2.error().to_string();
    EXPECT_EQ(schema2->layers.front().media_type, "application/vnd.docker.image.rootfs.diff.tar.gzip");
    EXPECT_EQ(root_cat(schema2->root_path, "/data/kept"), "kept, v\n");

    // An image index listing w's manifest for linux/arm64 first and v's for linux/amd64.
    auto manifest_of = [](const std::string& layout) {
        auto index = nlohmann::json::parse(read_text(layout + "/index.json"));
        return index["manifests"][0];
    };
    nlohmann::json arm = manifest_of(w), amd = manifest_of(v);
    arm.erase("annotations");
    amd.erase("annotations");
    arm["platform"] = {{"os", "linux"}, {"architecture", "arm64"}};
    amd["platform"] = {{"os", "linux"}, {"architecture", "amd64"}};
    for (const auto& entry : fs::directory_iterator(w + "/blobs/sha256"))
        fs::copy_file(entry.path(), v + "/blobs/sha256/" + entry.path().filename().string(),
                      fs::copy_options::skip_existing);
    std::string index = nlohmann::json{
        {"schemaVersion", 2},
        {"mediaType", "application/vnd.oci.image.index.v1+json"},
        {"manifests",
         {arm, amd}}}.dump();
    std::string index_digest = sha256_digest(index);
    write_text(v + "/blobs/sha256/" + index_digest.substr(7), index);
    write_text(v + "/index.json",
               nlohmann::json{{"schemaVersion", 2},
                              {"manifests",
                               {{{"mediaType", "application/vnd.oci.image.index.v1+json"},
                                 {"digest", index_digest},
                                 {"size", index.size()},
                                 {"annotations", {{"org.opencontainers.image.ref.name", "multi"}}}}}}}
                   .dump());
    auto multi = copy("oci:" + v + ":multi", "team/multi:v1", {"--all"});
    ASSERT_EQ(multi.status, 0) << multi.output;
    auto picked = store.pull(registry->host() + "/team/multi:v1", insecure());
    ASSERT_TRUE(picked) << picked.error().to_string();
    // (skopeo may rewrite the manifests it copies, so the content tells which one was picked: v's, not w's.)
    EXPECT_EQ(root_cat(picked->root_path, "/data/kept"), "kept, v\n");

    // The same layout as a tar imports too, the index resolved the same way.
    std::string tar = layouts_ / "multi.tar";
    auto packed = testing::run_command({"tar", "-C", v, "-cf", tar, "."});
    ASSERT_EQ(packed.status, 0) << packed.output;
    auto imported = store.import(tar, "local/multi:v1");
    ASSERT_TRUE(imported) << imported.error().to_string();
    EXPECT_EQ(imported->front().id, picked->id);
}

TEST_F(ImageStoreTest, TamperedBlobIsRejectedAndNothingEntersTheStore) {
    auto registry = start_registry();
    ASSERT_TRUE(registry);
    push(*registry, "team/app:v1");
    // Find the biggest layer (the first) through a clean pull elsewhere, then corrupt it in the registry.
    TempDir other("sandlot-images-other");
    auto clean = ImageStore(other.path()).pull(registry->host() + "/team/app:v1", insecure());
    ASSERT_TRUE(clean) << clean.error().to_string();
    std::string blob = registry->blob_path(clean->layers[0].digest);
    {
        std::fstream file(blob, std::ios::in | std::ios::out | std::ios::binary);
        ASSERT_TRUE(file);
        file.seekp(20);
        file.write("XXXX", 4);
    }
    ImageStore store(home_.path());
    auto image = store.pull(registry->host() + "/team/app:v1", insecure());
    ASSERT_FALSE(image);
    EXPECT_NE(image.error().to_string().find("verification"), std::string::npos) << image.error().to_string();
    auto all = store.list();
    ASSERT_TRUE(all);
    EXPECT_TRUE(all->empty());
    EXPECT_FALSE(fs::exists(store.dir() + "/blobs/sha256/" + clean->layers[0].digest.substr(7)));
    EXPECT_EQ(count_files(store.dir() + "/roots"), 0u);
    EXPECT_EQ(count_files(store.dir() + "/images"), 0u);
}

TEST_F(ImageStoreTest, RegistryKilledMidPullLeavesNoImageAndTheNextPullSucceeds) {
    auto registry = start_registry();
    ASSERT_TRUE(registry);
    // 48 MiB that gzip cannot shrink: more than loopback's socket buffers hold (up to 32 MiB here), so the
    // registry dies with most of the blob unsent.
    std::string big(48 << 20, '\0');
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (auto& c : big) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        c = static_cast<char>(x);
    }
    push(*registry, "team/big:v1", big);
    ImageStore store(home_.path());
    PullOptions options = insecure();
    std::atomic<bool> killed{false};
    options.progress = [&](const PullProgress& p) {
        if (p.state == PullProgress::State::Downloading && p.done > (1 << 20) && !killed.exchange(true))
            registry->kill();
    };
    auto image = store.pull(registry->host() + "/team/big:v1", options);
    ASSERT_TRUE(killed.load());
    ASSERT_FALSE(image) << "the pull should fail with its registry gone";
    EXPECT_FALSE(image.error().to_string().empty());
    auto all = store.list();
    ASSERT_TRUE(all);
    EXPECT_TRUE(all->empty());
    EXPECT_EQ(count_files(store.dir() + "/roots"), 0u);

    ASSERT_TRUE(registry->restart());
    auto retried = store.pull(registry->host() + "/team/big:v1", insecure());
    ASSERT_TRUE(retried) << retried.error().to_string();
    EXPECT_EQ(root_cat(retried->root_path, "/data/big").size(), big.size());
}

TEST_F(ImageStoreTest, ConcurrentPullsOfOneImageBothSucceed) {
    auto registry = start_registry();
    ASSERT_TRUE(registry);
    push(*registry, "team/app:v1");
    std::string reference = registry->host() + "/team/app:v1";
    Result<StoredImage> first = make_error("unset"), second = make_error("unset");
    std::thread a([&] { first = ImageStore(home_.path()).pull(reference, insecure()); });
    std::thread b([&] { second = ImageStore(home_.path()).pull(reference, insecure()); });
    a.join();
    b.join();
    ASSERT_TRUE(first) << first.error().to_string();
    ASSERT_TRUE(second) << second.error().to_string();
    EXPECT_EQ(first->id, second->id);
    ImageStore store(home_.path());
    // Three layers, the config and the manifest: each once.
    EXPECT_EQ(count_files(store.dir() + "/blobs/sha256"), 5u);
    EXPECT_EQ(count_files(store.dir() + "/roots"), 1u);
    for (const auto& entry : fs::directory_iterator(store.dir() + "/tmp"))
        ADD_FAILURE() << "left in tmp/: " << entry.path();
}

TEST_F(ImageStoreTest, AuthenticatedTlsRegistry) {
    auto registry = start_registry({.tls = true, .username = "alice", .password = "s3cret"});
    ASSERT_TRUE(registry);
    push(*registry, "team/app:v1");
    ImageStore store(home_.path());
    std::string reference = registry->host() + "/team/app:v1";

    PullOptions options;
    options.ca_file = registry->ca_file();
    auto anonymous = store.pull(reference, options);
    ASSERT_FALSE(anonymous);
    EXPECT_NE(anonymous.error().to_string().find("authentication"), std::string::npos)
        << anonymous.error().to_string();

    ASSERT_TRUE(save_registry_credentials(home_.path(), registry->host(), {"alice", "wrong"}));
    auto wrong = store.pull(reference, options);
    ASSERT_FALSE(wrong);
    EXPECT_NE(wrong.error().to_string().find("authentication failed"), std::string::npos)
        << wrong.error().to_string();

    // Without a CA the certificate is not trusted.
    ASSERT_TRUE(save_registry_credentials(home_.path(), registry->host(), {"alice", "s3cret"}));
    auto untrusted = store.pull(reference, PullOptions{});
    ASSERT_FALSE(untrusted);

    // The CA where `registry login` users put it: home/registry/certs.d/HOST/ca.crt.
    std::string ca_dir = home_.path() + "/registry/certs.d/" + registry->host();
    fs::create_directories(ca_dir);
    fs::copy_file(registry->ca_file(), ca_dir + "/ca.crt");
    auto image = store.pull(reference, PullOptions{});
    ASSERT_TRUE(image) << image.error().to_string();
    EXPECT_EQ(root_cat(image->root_path, "/data/kept"), "kept, v\n");
}

TEST_F(ImageStoreTest, ImportsDockerArchivesAndOciLayouts) {
    std::string layout = layouts_ / "app";
    ASSERT_TRUE(build_app_layout(layout, "v"));
    std::string archive = layouts_ / "app-docker.tar";
    auto copied = testing::run_command({"skopeo", "copy", "--quiet", "oci:" + layout + ":v",
                                        "docker-archive:" + archive + ":team/imported:v2"});
    ASSERT_EQ(copied.status, 0) << copied.output;

    ImageStore store(home_.path());
    auto imported = store.import(archive, "");
    ASSERT_TRUE(imported) << imported.error().to_string();
    ASSERT_EQ(imported->size(), 1u);
    const auto& image = imported->front();
    EXPECT_EQ(image.name, "docker.io/team/imported:v2");
    EXPECT_EQ(image.config.cmd, std::vector<std::string>{"hello"});
    EXPECT_EQ(root_cat(image.root_path, "/data/kept"), "kept, v\n");
    EXPECT_NE(root_stat(image.root_path, "/data/gone").find("File not found"), std::string::npos);

    // An OCI layout names its image by tag only: --name gives the rest. Same content, same image.
    auto unnamed = store.import(layout, "");
    ASSERT_FALSE(unnamed);
    EXPECT_NE(unnamed.error().message.find("--name"), std::string::npos) << unnamed.error().message;
    auto named = store.import(layout, "local/app:v3");
    ASSERT_TRUE(named) << named.error().to_string();
    EXPECT_EQ(named->front().name, "docker.io/local/app:v3");
    EXPECT_EQ(named->front().id, image.id);

    // Garbage is refused with one line.
    std::string junk = layouts_ / "junk.tar";
    write_text(junk, std::string(4096, 'j'));
    auto refused = store.import(junk, "x/y:z");
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().to_string().find('\n'), std::string::npos);
}

// A hostile manifest naming its own config as a layer: an error (the config is no tar), not a deadlock
// between the image's lock and the blob's.
TEST_F(ImageStoreTest, AManifestNamingItsConfigAsALayerIsRefused) {
    std::string layout = layouts_ / "app";
    ASSERT_TRUE(build_app_layout(layout, "v"));
    auto index = nlohmann::json::parse(read_text(layout + "/index.json"));
    std::string blobs = layout + "/blobs/sha256/";
    auto manifest = nlohmann::json::parse(
        read_text(blobs + index["manifests"][0]["digest"].get<std::string>().substr(7)));
    auto config =
        nlohmann::json::parse(read_text(blobs + manifest["config"]["digest"].get<std::string>().substr(7)));
    config["rootfs"]["diff_ids"].push_back(sha256_digest("anything"));
    std::string config_text = config.dump();
    std::string config_digest = sha256_digest(config_text);
    write_text(blobs + config_digest.substr(7), config_text);
    manifest["config"]["digest"] = config_digest;
    manifest["config"]["size"] = config_text.size();
    manifest["layers"].push_back({{"mediaType", "application/vnd.oci.image.layer.v1.tar"},
                                  {"digest", config_digest},
                                  {"size", config_text.size()}});
    std::string manifest_text = manifest.dump();
    std::string manifest_digest = sha256_digest(manifest_text);
    write_text(blobs + manifest_digest.substr(7), manifest_text);
    index["manifests"][0]["digest"] = manifest_digest;
    index["manifests"][0]["size"] = manifest_text.size();
    write_text(layout + "/index.json", index.dump());

    ImageStore store(home_.path());
    auto imported = store.import(layout, "evil/app:v1");
    ASSERT_FALSE(imported);
    EXPECT_NE(imported.error().to_string().find("not a tar archive"), std::string::npos)
        << imported.error().to_string();
    EXPECT_EQ(count_files(store.dir() + "/roots"), 0u);
}

TEST_F(ImageStoreTest, RmiRefusesAnImageInUseAndPruneCollects) {
    std::string layout = layouts_ / "app";
    ASSERT_TRUE(build_app_layout(layout, "v"));
    ImageStore store(home_.path());
    auto imported = store.import(layout, "local/app:v1");
    ASSERT_TRUE(imported) << imported.error().to_string();
    const auto image = imported->front();

    auto db = StateDb::open(home_.path() + "/sandlot.db");
    ASSERT_TRUE(db);
    SandboxConfig config;
    config.storage.root.image = image.root_path;
    auto sandbox = db->insert_sandbox("web", config_to_json(config), {});
    ASSERT_TRUE(sandbox);
    auto refused = store.remove("local/app:v1");
    ASSERT_FALSE(refused);
    EXPECT_NE(refused.error().message.find("in use by sandbox \"web\""), std::string::npos)
        << refused.error().message;
    // Prune leaves a named image alone.
    auto pruned = store.prune();
    ASSERT_TRUE(pruned);
    EXPECT_TRUE(pruned->removed_images.empty());
    EXPECT_TRUE(fs::exists(image.root_path));

    ASSERT_TRUE(db->delete_sandbox(sandbox->id));
    ASSERT_TRUE(store.remove("local/app:v1"));
    EXPECT_FALSE(fs::exists(image.root_path));
    EXPECT_EQ(count_files(store.dir() + "/blobs/sha256"), 0u);
    auto gone = store.find("local/app:v1");
    ASSERT_TRUE(gone);
    EXPECT_FALSE(*gone);
    auto missing = store.remove("local/app:v1");
    ASSERT_FALSE(missing);
    EXPECT_NE(missing.error().message.find("no image"), std::string::npos);
}

TEST_F(ImageStoreTest, PruneRemovesAnImageWhoseTagMovedOn) {
    auto registry = start_registry();
    ASSERT_TRUE(registry);
    push(*registry, "team/app:v1");
    ImageStore store(home_.path());
    auto first = store.pull(registry->host() + "/team/app:v1", insecure());
    ASSERT_TRUE(first) << first.error().to_string();
    // The tag now names another image.
    std::string layout = layouts_ / "second";
    ASSERT_TRUE(build_app_layout(layout, "w"));
    ASSERT_TRUE(registry->push_layout(layout, "w", "team/app:v1"));
    PullOptions always = insecure();
    always.policy = PullPolicy::Always;
    auto second = store.pull(registry->host() + "/team/app:v1", always);
    ASSERT_TRUE(second) << second.error().to_string();
    ASSERT_NE(second->id, first->id);
    EXPECT_TRUE(fs::exists(first->root_path));
    auto pruned = store.prune();
    ASSERT_TRUE(pruned) << pruned.error().to_string();
    EXPECT_EQ(pruned->removed_images, std::vector<std::string>{first->id});
    EXPECT_FALSE(fs::exists(first->root_path));
    EXPECT_TRUE(fs::exists(second->root_path));
    EXPECT_GT(pruned->reclaimed_bytes, 0u);
}

// The CLI over the same store: pull with login, images, inspect, rmi, prune; one-line errors with status 125.
TEST_F(ImageStoreTest, CliPullLoginListInspectRemove) {
    auto registry = start_registry({.tls = true, .username = "bob", .password = "pw"});
    ASSERT_TRUE(registry);
    push(*registry, "team/app:v1");
    auto sandlot = [&](std::vector<std::string> args, const std::string& input = "") {
        args.insert(args.begin(),
                    {"env", "SANDLOT_HOME=" + home_.path(), std::string(SANDLOT_BIN_DIR) + "/sandlot"});
        return testing::run_command(args, input);
    };
    std::string ref = registry->host() + "/team/app:v1";
    auto denied = sandlot({"pull", "--ca-file", registry->ca_file(), ref});
    EXPECT_EQ(denied.status, 125);
    EXPECT_NE(denied.output.find("sandlot registry login"), std::string::npos) << denied.output;
    auto bad_login = sandlot({"registry", "login", registry->host(), "-u", "bob", "--password-stdin",
                              "--ca-file", registry->ca_file()},
                             "nope\n");
    EXPECT_EQ(bad_login.status, 125);
    EXPECT_NE(bad_login.output.find("authentication failed"), std::string::npos) << bad_login.output;
    auto login = sandlot({"registry", "login", registry->host(), "-u", "bob", "--password-stdin", "--ca-file",
                          registry->ca_file()},
                         "pw\n");
    ASSERT_EQ(login.status, 0) << login.output;
    struct stat st;
    ASSERT_EQ(stat((home_.path() + "/registry/auth.json").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);

    auto pulled = sandlot({"pull", "-q", "--ca-file", registry->ca_file(), ref});
    ASSERT_EQ(pulled.status, 0) << pulled.output;
    EXPECT_TRUE(pulled.output.starts_with("sha256:")) << pulled.output;
    auto images = sandlot({"images"});
    EXPECT_EQ(images.status, 0);
    EXPECT_NE(images.output.find(registry->host() + "/team/app"), std::string::npos) << images.output;
    EXPECT_NE(images.output.find(pulled.output.substr(7, 12)), std::string::npos) << images.output;
    auto inspect = sandlot({"image", "inspect", ref});
    ASSERT_EQ(inspect.status, 0) << inspect.output;
    auto json = nlohmann::json::parse(inspect.output, nullptr, false);
    ASSERT_FALSE(json.is_discarded()) << inspect.output;
    EXPECT_EQ(json[0]["config"]["Entrypoint"][0], "/bin/echo");
    EXPECT_EQ(json[0]["layers"].size(), 3u);
    auto missing = sandlot({"image", "inspect", "nothing/here:v9"});
    EXPECT_EQ(missing.status, 125);
    EXPECT_EQ(missing.output, "sandlot: error: no image nothing/here:v9\n");

    auto rmi = sandlot({"rmi", ref});
    EXPECT_EQ(rmi.status, 0) << rmi.output;
    auto empty = sandlot({"images", "-q"});
    EXPECT_EQ(empty.output, "");
    auto prune = sandlot({"image", "prune"});
    EXPECT_EQ(prune.status, 0) << prune.output;
    auto logout = sandlot({"registry", "logout", registry->host()});
    EXPECT_EQ(logout.status, 0) << logout.output;
    auto again = sandlot({"registry", "logout", registry->host()});
    EXPECT_EQ(again.status, 125);
}

TEST(ImageSpecTest, TellsOciReferencesFromBuiltinsAndPaths) {
    EXPECT_FALSE(is_oci_image_spec(""));
    EXPECT_FALSE(is_oci_image_spec("base"));
    EXPECT_FALSE(is_oci_image_spec("debian"));
    EXPECT_FALSE(is_oci_image_spec("/srv/root.ext4"));
    EXPECT_FALSE(is_oci_image_spec("./rootfs"));
    EXPECT_TRUE(is_oci_image_spec("debian:12"));
    EXPECT_TRUE(is_oci_image_spec("python:3.12"));
    EXPECT_TRUE(is_oci_image_spec("127.0.0.1:5000/team/app:v1"));
    EXPECT_TRUE(is_oci_image_spec("alpine"));
    EXPECT_TRUE(parse_pull_policy("missing"));
    EXPECT_FALSE(parse_pull_policy("sometimes"));
}

}  // namespace
}  // namespace sandlot::host
