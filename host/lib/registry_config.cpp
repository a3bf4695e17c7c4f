#include "host/lib/registry_config.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <vector>

#include "host/lib/atomic_file.h"
#include "proto/base/unique_fd.h"

namespace sandlot::host {

namespace {

constexpr size_t kMaxConfigBytes = 4 << 20;

std::optional<std::string> base64_decode(std::string_view in) {
    std::string clean;
    for (char c : in)
        if (c != '\n' && c != '\r' && c != ' ') clean += c;
    if (clean.size() % 4 != 0) return std::nullopt;
    std::string out(clean.size() / 4 * 3, '\0');
    int n =
        EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                        reinterpret_cast<const unsigned char*>(clean.data()), static_cast<int>(clean.size()));
    if (n < 0) return std::nullopt;
    size_t len = static_cast<size_t>(n);
    // EVP_DecodeBlock counts the padding as zero bytes.
    if (!clean.empty() && clean.back() == '=') --len;
    if (clean.size() >= 2 && clean[clean.size() - 2] == '=') --len;
    out.resize(len);
    return out;
}

std::string auth_file(const std::string& home) {
    return home + "/registry/auth.json";
}

// The file's contents, or nullopt if it does not exist.
Result<std::optional<std::string>> read_small_file(const std::string& path) {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) {
        if (errno == ENOENT) return std::optional<std::string>();
        return errno_error("open " + path);
    }
    std::string data;
    char buf[8192];
    while (true) {
        ssize_t n = read(fd.get(), buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno_error("read " + path);
        }
        if (n == 0) break;
        data.append(buf, static_cast<size_t>(n));
        if (data.size() > kMaxConfigBytes) return make_error(path + " is too large");
    }
    return std::optional<std::string>(std::move(data));
}

// The JSON object in `path`; an empty object when the file does not exist.
Result<nlohmann::json> read_config(const std::string& path) {
    auto data = TRY(read_small_file(path));
    if (!data || data->empty()) return nlohmann::json::object();
    auto json = nlohmann::json::parse(*data, nullptr, false);
    if (json.is_discarded() || !json.is_object()) return make_error(path + ": not a JSON object");
    return json;
}

Result<void> write_config_atomically(const std::string& path, const nlohmann::json& json) {
    std::string dir = path.substr(0, path.rfind('/'));
    if (mkdir(dir.c_str(), 0700) < 0 && errno != EEXIST) return errno_error("mkdir " + dir);
    return write_file_atomically(path, json.dump(1, '\t') + "\n", 0600);
}

std::vector<std::string> keys_for(const std::string& registry) {
    std::vector<std::string> keys = {registry, "https://" + registry, "http://" + registry,
                                     "https://" + registry + "/v1/", "https://" + registry + "/v2/"};
    if (registry == "docker.io") {
        for (const char* k : {"https://index.docker.io/v1/", "index.docker.io", "https://index.docker.io/v1",
                              "registry-1.docker.io", "https://registry-1.docker.io"})
            keys.emplace_back(k);
    }
    return keys;
}

// Credentials from one config's "auths" map, by any of the registry's keys.
Result<std::optional<RegistryCredentials>> lookup(const nlohmann::json& config, const std::string& registry,
                                                  const std::string& path) {
    auto auths = config.find("auths");
    if (auths == config.end() || !auths->is_object()) return std::optional<RegistryCredentials>();
    for (const auto& key : keys_for(registry)) {
        auto entry = auths->find(key);
        if (entry == auths->end() || !entry->is_object()) continue;
        if (auto a = entry->find("auth");
            a != entry->end() && a->is_string() && !a->get<std::string>().empty()) {
            auto decoded = base64_decode(a->get<std::string>());
            size_t colon = decoded ? decoded->find(':') : std::string::npos;
            if (colon == std::string::npos) {
                return make_error(path + ": credentials for " + key + " are not base64 of user:password");
            }
            return std::optional<RegistryCredentials>(
                RegistryCredentials{decoded->substr(0, colon), decoded->substr(colon + 1)});
        }
        auto u = entry->find("username");
        auto p = entry->find("password");
        if (u != entry->end() && p != entry->end() && u->is_string() && p->is_string()) {
            return std::optional<RegistryCredentials>(
                RegistryCredentials{u->get<std::string>(), p->get<std::string>()});
        }
    }
    return std::optional<RegistryCredentials>();
}

}  // namespace

std::string basic_credentials(const RegistryCredentials& credentials) {
    std::string in = credentials.username + ":" + credentials.password;
    std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
    int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                            reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
    out.resize(n > 0 ? static_cast<size_t>(n) : 0);
    return out;
}

Result<void> save_registry_credentials(const std::string& home, const std::string& registry,
                                       const RegistryCredentials& credentials) {
    if (registry.empty()) return make_error("save credentials: empty registry name");
    if (credentials.username.find(':') != std::string::npos) {
        return make_error("save credentials for " + registry + ": the username cannot contain ':'");
    }
    std::string dir = home + "/registry";
    if (mkdir(dir.c_str(), 0700) < 0 && errno != EEXIST) return errno_error("mkdir " + dir);
    std::string path = auth_file(home);
    auto config = TRY(read_config(path));
    if (!config.contains("auths") || !config["auths"].is_object()) config["auths"] = nlohmann::json::object();
    config["auths"][registry] = {{"auth", basic_credentials(credentials)}};
    return write_config_atomically(path, config);
}

Result<bool> remove_registry_credentials(const std::string& home, const std::string& registry) {
    std::string path = auth_file(home);
    auto config = TRY(read_config(path));
    auto auths = config.find("auths");
    if (auths == config.end() || !auths->is_object()) return false;
    bool removed = false;
    for (const auto& key : keys_for(registry))
        removed = auths->erase(key) > 0 || removed;
    if (!removed) return false;
    TRY(write_config_atomically(path, config));
    return true;
}

Result<std::optional<RegistryCredentials>> find_registry_credentials(const std::string& home,
                                                                     const std::string& registry) {
    std::string own = auth_file(home);
    auto config = TRY(read_config(own));
    auto found = TRY(lookup(config, registry, own));
    if (found) return found;

    std::string docker;
    if (const char* dc = getenv("DOCKER_CONFIG"); dc && *dc) {
        docker = std::string(dc) + "/config.json";
    } else if (const char* h = getenv("HOME"); h && *h) {
        docker = std::string(h) + "/.docker/config.json";
    }
    if (docker.empty()) return std::optional<RegistryCredentials>();
    auto docker_config = read_config(docker);
    if (!docker_config) return std::unexpected(docker_config.error());
    return lookup(*docker_config, registry, docker);
}

std::string registry_ca_file(const std::string& home, const std::string& registry) {
    if (registry.empty() || registry.find('/') != std::string::npos || registry == "." || registry == "..")
        return "";
    std::string path = home + "/registry/certs.d/" + registry + "/ca.crt";
    struct stat st;
    if (stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) return path;
    return "";
}

}  // namespace sandlot::host
