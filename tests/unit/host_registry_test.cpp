// The registry client against a real registry (docker-registry on loopback), image reference parsing, and
// the credentials store.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "host/lib/digest.h"
#include "host/lib/oci_reference.h"
#include "host/lib/registry_client.h"
#include "host/lib/registry_config.h"
#include "tests/support/local_registry.h"
#include "tests/support/run_command.h"
#include "tests/support/temp_dir.h"

namespace sandlot::test {
namespace {

using host::FetchedManifest;
using host::ImageReference;
using host::RegistryClient;
using host::RegistryCredentials;
using host::RegistrySettings;

constexpr uint64_t kBigFileSize = 16 << 20;

RegistrySettings settings(const std::function<void(RegistrySettings&)>& change) {
    RegistrySettings s;
    change(s);
    return s;
}

// ---- references ----

struct GoodReference {
    const char* text;
    const char* registry;
    const char* repository;
    const char* tag;
    const char* digest;
    const char* canonical;
};

const std::string kDigest = "sha256:" + std::string(64, 'a');

TEST(OciReference, ParsesDockerStyleNames) {
    std::string at = "@" + kDigest;
    std::vector<GoodReference> cases = {
        {"debian", "docker.io", "library/debian", "latest", "", "docker.io/library/debian:latest"},
        {"debian:12", "docker.io", "library/debian", "12", "", "docker.io/library/debian:12"},
        {"team/app", "docker.io", "team/app", "latest", "", "docker.io/team/app:latest"},
        {"docker.io/library/debian:bookworm-slim", "docker.io", "library/debian", "bookworm-slim", "",
         "docker.io/library/debian:bookworm-slim"},
        {"index.docker.io/ubuntu", "docker.io", "library/ubuntu", "latest", "",
         "docker.io/library/ubuntu:latest"},
        {"ghcr.io/org/sub/app:v1.2_3-rc", "ghcr.io", "org/sub/app", "v1.2_3-rc", "",
         "ghcr.io/org/sub/app:v1.2_3-rc"},
        {"localhost/app", "localhost", "app", "latest", "", "localhost/app:latest"},
        {"localhost:5000/app:x", "localhost:5000", "app", "x", "", "localhost:5000/app:x"},
        {"127.0.0.1:5000/test/app:v1", "127.0.0.1:5000", "test/app", "v1", "", "127.0.0.1:5000/test/app:v1"},
        {"Registry.Example.com/a_b/c__d/e--f.g", "Registry.Example.com", "a_b/c__d/e--f.g", "latest", "",
         "Registry.Example.com/a_b/c__d/e--f.g:latest"},
        {"[::1]:5000/app", "[::1]:5000", "app", "latest", "", "[::1]:5000/app:latest"},
    };
    std::string digest_only = "quay.io/x/y" + at;
    std::string both = "quay.io/x/y:1" + at;
    std::string canonical_digest = "quay.io/x/y" + at;
    std::string canonical_both = "quay.io/x/y:1" + at;
    cases.push_back({digest_only.c_str(), "quay.io", "x/y", "", kDigest.c_str(), canonical_digest.c_str()});
    cases.push_back({both.c_str(), "quay.io", "x/y", "1", kDigest.c_str(), canonical_both.c_str()});
    for (const auto& c : cases) {
        SCOPED_TRACE(c.text);
        auto ref = host::parse_image_reference(c.text);
        ASSERT_TRUE(ref) << ref.error().to_string();
        EXPECT_EQ(ref->registry, c.registry);
        EXPECT_EQ(ref->repository, c.repository);
        EXPECT_EQ(ref->tag, c.tag);
        EXPECT_EQ(ref->digest, c.digest);
        EXPECT_EQ(ref->to_string(), c.canonical);
    }
    EXPECT_EQ(host::parse_image_reference("debian")->api_host(), "registry-1.docker.io");
    EXPECT_EQ(host::parse_image_reference("localhost:5000/a")->api_host(), "localhost:5000");
}

TEST(OciReference, RefusesBadNames) {
    struct Bad {
        std::string text;
        std::string message;
    };
    std::vector<Bad> cases = {
        {"", "empty"},
        {"Foo", "repository names are lowercase"},
        {"team/App:v1", "repository names are lowercase"},
        {"debian:", "tag"},
        {"debian:-x", "tag"},
        {"debian:" + std::string(129, 'a'), "tag"},
        {"debian@sha256:abc", "digest"},
        {"debian@sha512:" + std::string(128, 'a'), "digest"},
        {"debian@sha256:" + std::string(64, 'A'), "digest"},
        {"a//b", "empty repository name component"},
        {"a/b/", "empty repository name component"},
        {"example.com/", "missing repository"},
        {"a/-b", "repository name components"},
        {"a/b_", "repository name components"},
        {"a/b...c", "repository name components"},
        {"deb ian", "whitespace"},
        {"exa_mple.com/app", "invalid registry"},
        {"host:port/app", "invalid registry"},
        {":tag", "missing repository"},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.text);
        auto ref = host::parse_image_reference(c.text);
        ASSERT_FALSE(ref) << ref->to_string();
        EXPECT_NE(ref.error().message.find(c.message), std::string::npos) << ref.error().message;
        EXPECT_TRUE(ref.error().message.starts_with("invalid image reference \"")) << ref.error().message;
        EXPECT_EQ(ref.error().message.find('\n'), std::string::npos);
    }
    EXPECT_EQ(host::parse_image_reference("Foo").error().message,
              "invalid image reference \"Foo\": repository names are lowercase");
}

// ---- credentials ----

struct EnvGuard {
    std::string name;
    std::optional<std::string> old;
    EnvGuard(std::string n, const std::string& value) : name(std::move(n)) {
        if (const char* v = getenv(name.c_str())) old = v;
        setenv(name.c_str(), value.c_str(), 1);
    }
    ~EnvGuard() {
        if (old) {
            setenv(name.c_str(), old->c_str(), 1);
        } else {
            unsetenv(name.c_str());
        }
    }
};

TEST(RegistryConfig, CredentialsRoundTrip) {
    TempDir home;
    TempDir docker;
    EnvGuard env("DOCKER_CONFIG", docker.path());

    auto none = host::find_registry_credentials(home.path(), "reg.example.com");
    ASSERT_TRUE(none) << none.error().to_string();
    EXPECT_FALSE(*none);

    ASSERT_TRUE(host::save_registry_credentials(home.path(), "reg.example.com", {"alice", "p:ss w0rd"}));
    ASSERT_TRUE(host::save_registry_credentials(home.path(), "127.0.0.1:5000", {"bob", "x"}));
    struct stat st;
    ASSERT_EQ(stat((home / "registry/auth.json").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);

    std::ifstream in(home / "registry/auth.json");
    auto json = nlohmann::json::parse(in, nullptr, false);
    ASSERT_FALSE(json.is_discarded());
    EXPECT_EQ(json["auths"]["127.0.0.1:5000"]["auth"], "Ym9iOng=");  // base64("bob:x")

    auto found = host::find_registry_credentials(home.path(), "reg.example.com");
    ASSERT_TRUE(found && *found);
    EXPECT_EQ((*found)->username, "alice");
    EXPECT_EQ((*found)->password, "p:ss w0rd");

    // Saving again replaces.
    ASSERT_TRUE(host::save_registry_credentials(home.path(), "reg.example.com", {"alice", "new"}));
    EXPECT_EQ((*host::find_registry_credentials(home.path(), "reg.example.com"))->password, "new");

    auto removed = host::remove_registry_credentials(home.path(), "reg.example.com");
    ASSERT_TRUE(removed);
    EXPECT_TRUE(*removed);
    EXPECT_FALSE(*host::find_registry_credentials(home.path(), "reg.example.com"));
    EXPECT_FALSE(*host::remove_registry_credentials(home.path(), "reg.example.com"));
    EXPECT_EQ((*host::find_registry_credentials(home.path(), "127.0.0.1:5000"))->username, "bob");
    ASSERT_EQ(stat((home / "registry/auth.json").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(RegistryConfig, ReadsDockerConfig) {
    TempDir home;
    TempDir docker;
    EnvGuard env("DOCKER_CONFIG", docker.path());
    {
        std::ofstream out(docker / "config.json");
        out << R"({"auths":{"https://index.docker.io/v1/":{"auth":"aHViOmh1YnBhc3M="},
                  "https://reg.example.com":{"auth":"cmVnOnJlZ3Bhc3M="},
                  "other:5000":{"username":"u","password":"p"}},
                  "credsStore":"desktop"})";
    }
    auto hub = host::find_registry_credentials(home.path(), "docker.io");
    ASSERT_TRUE(hub && *hub) << (hub ? "none" : hub.error().to_string());
    EXPECT_EQ((*hub)->username, "hub");
    EXPECT_EQ((*hub)->password, "hubpass");
    auto reg = host::find_registry_credentials(home.path(), "reg.example.com");
    ASSERT_TRUE(reg && *reg);
    EXPECT_EQ((*reg)->username, "reg");
    auto other = host::find_registry_credentials(home.path(), "other:5000");
    ASSERT_TRUE(other && *other);
    EXPECT_EQ((*other)->password, "p");
    EXPECT_FALSE(*host::find_registry_credentials(home.path(), "nowhere.example.com"));

    // sandlot's own file wins.
    ASSERT_TRUE(host::save_registry_credentials(home.path(), "docker.io", {"mine", "m"}));
    EXPECT_EQ((*host::find_registry_credentials(home.path(), "docker.io"))->username, "mine");

    // A broken Docker config is an error, not silently ignored.
    {
        std::ofstream out(docker / "config.json");
        out << "{not json";
    }
    EXPECT_FALSE(host::find_registry_credentials(home.path(), "reg.example.com"));
}

TEST(RegistryConfig, CaFile) {
    TempDir home;
    EXPECT_EQ(host::registry_ca_file(home.path(), "reg.example.com:5000"), "");
    std::filesystem::create_directories(home / "registry/certs.d/reg.example.com:5000");
    std::ofstream(home / "registry/certs.d/reg.example.com:5000/ca.crt") << "pem";
    EXPECT_EQ(host::registry_ca_file(home.path(), "reg.example.com:5000"),
              home / "registry/certs.d/reg.example.com:5000/ca.crt");
    EXPECT_EQ(host::registry_ca_file(home.path(), ".."), "");
}

// ---- against a real registry ----

std::string random_bytes(size_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::string out(n, '\0');
    for (size_t i = 0; i + 8 <= n; i += 8) {
        uint64_t v = rng();
        memcpy(out.data() + i, &v, 8);
    }
    return out;
}

void write(const std::string& path, const std::string& data) {
    std::ofstream(path, std::ios::binary) << data;
}

struct Layer {
    std::string digest;
    uint64_t size = 0;
};

struct PushedImage {
    std::string manifest_digest;
    std::string config_digest;
    uint64_t config_size = 0;
    std::vector<Layer> layers;
};

class RegistryTest : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        layout_ = new TempDir("sandlot-layout");
        std::string dir = *layout_ / "layout";
        auto built = build_oci_layout(dir, "v1",
                                      {[](const std::string& root) {
                                           std::filesystem::create_directories(root + "/etc/app");
                                           write(root + "/etc/app/config", std::string(4096, 'c'));
                                           write(root + "/etc/app/small", "hello\n");
                                       },
                                       [](const std::string& root) {
                                           write(root + "/big.bin", random_bytes(kBigFileSize, 42));
                                           std::filesystem::remove(root + "/etc/app/small");
                                       }},
                                      {"--config.entrypoint=/bin/sh", "--config.cmd=-c"});
        if (!built) setup_error_ = new std::string(built.error().to_string());
    }
    static void TearDownTestSuite() {
        delete layout_;
        layout_ = nullptr;
        delete setup_error_;
        setup_error_ = nullptr;
    }

    void SetUp() override {
        if (setup_error_) GTEST_SKIP() << "cannot build the test image: " << *setup_error_;
    }

    // Starts a registry and pushes the layout as test/app:v1 to it.
    std::unique_ptr<LocalRegistry> start(LocalRegistryOptions options = {}) {
        auto reg = LocalRegistry::start(options);
        if (!reg) {
            skip_reason_ = reg.error().to_string();
            return nullptr;
        }
        auto pushed = (*reg)->push_layout(*layout_ / "layout", "v1", "test/app:v1");
        EXPECT_TRUE(pushed) << pushed.error().to_string();
        if (!pushed) return nullptr;
        image_ = inspect(**reg, options);
        return std::move(*reg);
    }

    // What skopeo sees in the registry, computed without our client.
    static PushedImage inspect(const LocalRegistry& reg, const LocalRegistryOptions& options) {
        std::vector<std::string> argv = {"skopeo", "inspect", "--raw", "--tls-verify=false"};
        if (!options.username.empty()) argv.push_back("--creds=" + options.username + ":" + options.password);
        argv.push_back("docker://" + reg.host() + "/test/app:v1");
        auto result = testing::run_command(argv);
        EXPECT_EQ(result.status, 0) << result.output;
        PushedImage image;
        image.manifest_digest = host::sha256_digest(result.output);
        auto json = nlohmann::json::parse(result.output, nullptr, false);
        EXPECT_FALSE(json.is_discarded()) << result.output;
        if (json.is_discarded()) return image;
        image.config_digest = json["config"]["digest"];
        image.config_size = json["config"]["size"];
        for (const auto& l : json["layers"])
            image.layers.push_back({l["digest"], l["size"]});
        return image;
    }

    RegistryClient client(const LocalRegistry& reg, RegistrySettings settings = {}) {
        auto ref = host::parse_image_reference(reg.host() + "/test/app:v1");
        EXPECT_TRUE(ref);
        if (reg.ca_file().empty()) settings.insecure = true;
        return RegistryClient(*ref, settings);
    }

    static inline TempDir* layout_ = nullptr;
    static inline std::string* setup_error_ = nullptr;
    std::string skip_reason_;
    PushedImage image_;
    TempDir tmp_;
};

#define START_REGISTRY(var, ...)                                     \
    auto var = start(__VA_ARGS__);                                   \
    if (!var && !skip_reason_.empty()) GTEST_SKIP() << skip_reason_; \
    ASSERT_TRUE(var)

TEST_F(RegistryTest, FetchesManifestByTagAndDigest) {
    START_REGISTRY(reg);
    ASSERT_EQ(image_.layers.size(), 2u);
    auto c = client(*reg);
    auto by_tag = c.fetch_manifest("v1");
    ASSERT_TRUE(by_tag) << by_tag.error().to_string();
    EXPECT_EQ(by_tag->media_type, "application/vnd.oci.image.manifest.v1+json");
    EXPECT_EQ(by_tag->digest, image_.manifest_digest);
    EXPECT_EQ(host::sha256_digest(by_tag->body), image_.manifest_digest);

    auto by_digest = c.fetch_manifest(image_.manifest_digest);
    ASSERT_TRUE(by_digest) << by_digest.error().to_string();
    EXPECT_EQ(by_digest->body, by_tag->body);
    EXPECT_EQ(by_digest->digest, image_.manifest_digest);
    EXPECT_EQ(by_digest->media_type, by_tag->media_type);

    EXPECT_FALSE(c.fetch_manifest("bad/tag"));
    EXPECT_TRUE(c.check_access());
}

TEST_F(RegistryTest, FetchesConfigAndLayers) {
    START_REGISTRY(reg);
    auto c = client(*reg);
    auto config = c.fetch_blob_bytes(image_.config_digest, 1 << 20);
    ASSERT_TRUE(config) << config.error().to_string();
    EXPECT_EQ(config->size(), image_.config_size);
    auto json = nlohmann::json::parse(*config, nullptr, false);
    ASSERT_FALSE(json.is_discarded());
    EXPECT_EQ(json["config"]["Entrypoint"][0], "/bin/sh");

    auto small = c.fetch_blob_bytes(image_.config_digest, image_.config_size - 1);
    ASSERT_FALSE(small);
    EXPECT_NE(small.error().message.find("too large"), std::string::npos) << small.error().message;

    for (size_t i = 0; i < image_.layers.size(); ++i) {
        const auto& layer = image_.layers[i];
        std::string path = tmp_ / ("layer" + std::to_string(i));
        uint64_t last_done = 0, last_total = 0;
        int calls = 0;
        auto r = c.fetch_blob(layer.digest, layer.size, path, [&](uint64_t done, uint64_t total) {
            EXPECT_GE(done, last_done);
            last_done = done;
            last_total = total;
            ++calls;
        });
        ASSERT_TRUE(r) << r.error().to_string();
        EXPECT_EQ(*host::sha256_file(path), layer.digest);
        EXPECT_EQ(std::filesystem::file_size(path), layer.size);
        EXPECT_GT(calls, 0);
        EXPECT_EQ(last_done, layer.size);
        EXPECT_EQ(last_total, layer.size);
    }
    EXPECT_GT(image_.layers[1].size, kBigFileSize);

    // Without a known size, and fetching again over a complete file.
    std::string path = tmp_ / "layer0";
    auto again = c.fetch_blob(image_.layers[0].digest, 0, path, {});
    ASSERT_TRUE(again) << again.error().to_string();
    EXPECT_EQ(*host::sha256_file(path), image_.layers[0].digest);
}

TEST_F(RegistryTest, ReportsMissingThings) {
    START_REGISTRY(reg);
    auto c = client(*reg);
    auto tag = c.fetch_manifest("nope");
    ASSERT_FALSE(tag);
    EXPECT_NE(tag.error().message.find("not found"), std::string::npos) << tag.error().message;
    EXPECT_NE(tag.error().message.find("manifest unknown"), std::string::npos) << tag.error().message;
    EXPECT_EQ(tag.error().message.find('\n'), std::string::npos);

    auto other_repo = RegistryClient(*host::parse_image_reference(reg->host() + "/no/such"),
                                     settings([](RegistrySettings& s) { s.insecure = true; }))
                          .fetch_manifest("v1");
    ASSERT_FALSE(other_repo);
    EXPECT_NE(other_repo.error().message.find("not found"), std::string::npos) << other_repo.error().message;

    std::string missing = "sha256:" + std::string(64, '0');
    std::string path = tmp_ / "missing";
    auto blob = c.fetch_blob(missing, 0, path, {});
    ASSERT_FALSE(blob);
    EXPECT_NE(blob.error().message.find("not found"), std::string::npos) << blob.error().message;
    EXPECT_FALSE(std::filesystem::exists(path));

    // Not a valid digest: refused before any request.
    EXPECT_FALSE(c.fetch_blob("sha256:../../etc", 0, path, {}));

    // More than the expected size is refused, and nothing is left behind.
    auto too_big = c.fetch_blob(image_.layers[0].digest, image_.layers[0].size - 10, path, {});
    ASSERT_FALSE(too_big);
    EXPECT_NE(too_big.error().message.find("larger than"), std::string::npos) << too_big.error().message;
    EXPECT_FALSE(std::filesystem::exists(path));
}

TEST_F(RegistryTest, ConnectionRefused) {
    START_REGISTRY(reg);
    std::string host = reg->host();
    reg->kill();
    auto c = client(*reg, settings([](RegistrySettings& s) { s.max_attempts = 2; }));
    auto start = std::chrono::steady_clock::now();
    auto r = c.fetch_manifest("v1");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message, "pull " + host + "/test/app:v1: connection refused");
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST_F(RegistryTest, TlsAndBasicAuth) {
    LocalRegistryOptions options{.tls = true, .username = "alice", .password = "s3cret"};
    START_REGISTRY(reg, options);
    ASSERT_FALSE(reg->ca_file().empty());

    RegistryCredentials good{"alice", "s3cret"};
    auto ok = client(*reg, settings([&](RegistrySettings& s) {
        s.ca_file = reg->ca_file();
        s.credentials = good;
    }));
    EXPECT_TRUE(ok.check_access());
    auto manifest = ok.fetch_manifest("v1");
    ASSERT_TRUE(manifest) << manifest.error().to_string();
    EXPECT_EQ(manifest->digest, image_.manifest_digest);

    auto wrong = client(*reg, settings([&](RegistrySettings& s) {
        s.ca_file = reg->ca_file();
        s.credentials = RegistryCredentials{"alice", "nope"};
    }));
    auto denied = wrong.fetch_manifest("v1");
    ASSERT_FALSE(denied);
    EXPECT_NE(denied.error().message.find("authentication failed for " + reg->host()), std::string::npos)
        << denied.error().message;
    auto denied_check = wrong.check_access();
    ASSERT_FALSE(denied_check);
    EXPECT_NE(denied_check.error().message.find("authentication failed"), std::string::npos);

    auto anonymous = client(*reg, settings([&](RegistrySettings& s) { s.ca_file = reg->ca_file(); }));
    auto anon = anonymous.fetch_manifest("v1");
    ASSERT_FALSE(anon);
    EXPECT_NE(anon.error().message.find("authentication failed"), std::string::npos) << anon.error().message;
    EXPECT_NE(anon.error().message.find("sandlot registry login " + reg->host()), std::string::npos)
        << anon.error().message;

    auto untrusted = client(*reg, settings([&](RegistrySettings& s) {
        s.credentials = good;
        s.max_attempts = 1;
    }));
    auto tls = untrusted.fetch_manifest("v1");
    ASSERT_FALSE(tls);
    EXPECT_NE(tls.error().message.find("TLS certificate verification failed"), std::string::npos)
        << tls.error().message;

    // Plain HTTP against a TLS server fails rather than hanging.
    auto plain = RegistryClient(*host::parse_image_reference(reg->host() + "/test/app"),
                                settings([&](RegistrySettings& s) {
                                    s.insecure = true;
                                    s.credentials = good;
                                    s.max_attempts = 1;
                                }));
    EXPECT_FALSE(plain.fetch_manifest("v1"));
}

TEST_F(RegistryTest, TamperedBlobFailsVerification) {
    START_REGISTRY(reg);
    const Layer& layer = image_.layers[0];
    std::string stored = reg->blob_path(layer.digest);
    ASSERT_TRUE(std::filesystem::exists(stored)) << stored;
    {
        std::fstream f(stored, std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(static_cast<std::streamoff>(layer.size / 2));
        f.write("XXXX", 4);
    }
    auto c = client(*reg);
    std::string path = tmp_ / "tampered";
    auto r = c.fetch_blob(layer.digest, layer.size, path, {});
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("blob " + layer.digest + " failed verification: got sha256:"),
              std::string::npos)
        << r.error().message;
    EXPECT_FALSE(std::filesystem::exists(path));

    auto bytes = c.fetch_blob_bytes(layer.digest, 1 << 20);
    ASSERT_FALSE(bytes);
    EXPECT_NE(bytes.error().message.find("failed verification"), std::string::npos) << bytes.error().message;
}

TEST_F(RegistryTest, ResumesAfterRegistryDiesMidDownload) {
    START_REGISTRY(reg);
    const Layer& layer = image_.layers[1];
    std::string path = tmp_ / "big";

    // One attempt only: the kill leaves a partial file behind.
    auto once = client(*reg, settings([](RegistrySettings& s) { s.max_attempts = 1; }));
    bool killed = false;
    auto r = once.fetch_blob(layer.digest, layer.size, path, [&](uint64_t done, uint64_t) {
        if (!killed && done >= (1 << 20)) {
            killed = true;
            reg->kill();
        }
    });
    ASSERT_TRUE(killed);
    ASSERT_FALSE(r) << "the whole blob arrived before the registry died";
    EXPECT_NE(r.error().message.find("connection to " + reg->host() + " lost"), std::string::npos)
        << r.error().message;
    ASSERT_TRUE(std::filesystem::exists(path));
    uint64_t partial = std::filesystem::file_size(path);
    EXPECT_GE(partial, 1u << 20);
    EXPECT_LT(partial, layer.size);

    // While it is down: connection refused, the partial file is kept.
    auto down = once.fetch_blob(layer.digest, layer.size, path, {});
    ASSERT_FALSE(down);
    EXPECT_NE(down.error().message.find("connection refused"), std::string::npos) << down.error().message;
    EXPECT_EQ(std::filesystem::file_size(path), partial);

    ASSERT_TRUE(reg->restart());
    uint64_t first_done = 0;
    auto resumed = once.fetch_blob(layer.digest, layer.size, path, [&](uint64_t done, uint64_t) {
        if (first_done == 0) first_done = done;
    });
    ASSERT_TRUE(resumed) << resumed.error().to_string();
    EXPECT_GT(first_done, partial);  // the first bytes reported continue the partial file
    EXPECT_EQ(*host::sha256_file(path), layer.digest);

    // With retries, one call survives the registry dying and coming back.
    std::filesystem::remove(path);
    auto retrying = client(*reg, settings([](RegistrySettings& s) { s.max_attempts = 5; }));
    std::thread restarter;
    std::atomic<bool> restarted{false};
    killed = false;
    uint64_t lowest_after_kill = UINT64_MAX;
    auto survived = retrying.fetch_blob(layer.digest, layer.size, path, [&](uint64_t done, uint64_t) {
        if (killed) lowest_after_kill = std::min(lowest_after_kill, done);
        if (!killed && done >= (1 << 20)) {
            killed = true;
            reg->kill();
            restarter = std::thread([&] {
                std::this_thread::sleep_for(std::chrono::milliseconds(300));
                restarted = static_cast<bool>(reg->restart());
            });
        }
    });
    if (restarter.joinable()) restarter.join();
    ASSERT_TRUE(survived) << survived.error().to_string();
    EXPECT_TRUE(restarted);
    EXPECT_EQ(*host::sha256_file(path), layer.digest);
    EXPECT_GT(lowest_after_kill, 1u << 20);  // resumed, not restarted from 0
}

TEST_F(RegistryTest, ConcurrentDownloadsOnOneClient) {
    LocalRegistryOptions options{.tls = true, .username = "bob", .password = "pw"};
    START_REGISTRY(reg, options);
    auto c = client(*reg, settings([&](RegistrySettings& s) {
        s.ca_file = reg->ca_file();
        s.credentials = RegistryCredentials{"bob", "pw"};
    }));
    std::vector<Layer> blobs = {
        image_.layers[0], image_.layers[1], image_.layers[1], {image_.config_digest, image_.config_size}};
    std::vector<Result<void>> results(blobs.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < blobs.size(); ++i) {
        threads.emplace_back([&, i] {
            results[i] =
                c.fetch_blob(blobs[i].digest, blobs[i].size, tmp_ / ("blob" + std::to_string(i)), {});
        });
    }
    for (auto& t : threads)
        t.join();
    for (size_t i = 0; i < blobs.size(); ++i) {
        ASSERT_TRUE(results[i]) << results[i].error().to_string();
        EXPECT_EQ(*host::sha256_file(tmp_ / ("blob" + std::to_string(i))), blobs[i].digest);
    }
}

}  // namespace
}  // namespace sandlot::test
