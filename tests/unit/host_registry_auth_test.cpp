// What Docker Hub does and Debian's docker-registry cannot be made to do here: Bearer tokens from a separate
// realm, blobs redirected to another host (which must not see the registry's credentials), and transient
// 503s. A small scripted HTTP server on loopback plays registry, token service and blob store, and records
// what the client sent it.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "host/lib/digest.h"
#include "host/lib/registry_client.h"
#include "proto/base/unique_fd.h"
#include "tests/support/temp_dir.h"

namespace sandlot::host {
namespace {

struct Request {
    std::string method, target, authorization;
};

// One HTTP/1.1 request per connection (the server answers with Connection: close).
class ScriptedServer {
  public:
    using Handler = std::function<std::string(const Request&)>;  // the whole response

    explicit ScriptedServer(Handler handler) : handler_(std::move(handler)) {
        fd_ = UniqueFd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof addr;
        if (bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0 || listen(fd_.get(), 16) != 0 ||
            getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0)
            return;
        port_ = ntohs(addr.sin_port);
        thread_ = std::thread([this] { serve(); });
    }
    ~ScriptedServer() {
        stop_ = true;
        shutdown(fd_.get(), SHUT_RDWR);
        if (thread_.joinable()) thread_.join();
    }

    std::string host() const { return "127.0.0.1:" + std::to_string(port_); }
    std::vector<Request> requests() {
        std::lock_guard lock(mutex_);
        return requests_;
    }

  private:
    void serve() {
        while (!stop_) {
            UniqueFd client(accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
            if (!client) return;
            std::string head;
            char c;
            while (head.find("\r\n\r\n") == std::string::npos && head.size() < 65536 &&
                   read(client.get(), &c, 1) == 1)
                head += c;
            Request request;
            auto sp1 = head.find(' '), sp2 = head.find(' ', sp1 + 1);
            if (sp1 == std::string::npos || sp2 == std::string::npos) continue;
            request.method = head.substr(0, sp1);
            request.target = head.substr(sp1 + 1, sp2 - sp1 - 1);
            for (size_t at = head.find("\r\n"); at != std::string::npos; at = head.find("\r\n", at + 2)) {
                std::string line = head.substr(at + 2, head.find("\r\n", at + 2) - at - 2);
                if (line.size() > 15 && strncasecmp(line.c_str(), "authorization: ", 15) == 0)
                    request.authorization = line.substr(15);
            }
            {
                std::lock_guard lock(mutex_);
                requests_.push_back(request);
            }
            std::string response = handler_(request);
            for (size_t done = 0; done < response.size();) {
                ssize_t n = write(client.get(), response.data() + done, response.size() - done);
                if (n <= 0) break;
                done += static_cast<size_t>(n);
            }
        }
    }

    Handler handler_;
    UniqueFd fd_;
    int port_ = 0;
    std::atomic<bool> stop_{false};
    std::thread thread_;
    std::mutex mutex_;
    std::vector<Request> requests_;
};

std::string respond(int status, const std::string& body, const std::vector<std::string>& headers = {}) {
    std::string text = "HTTP/1.1 " + std::to_string(status) +
                       " X\r\nConnection: close\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
    for (const auto& h : headers)
        text += h + "\r\n";
    return text + "\r\n" + body;
}

TEST(RegistryAuth, BearerTokenRedirectedBlobWithoutCredentialsAndRetriedUnavailable) {
    std::string blob(300000, 'b');
    std::string blob_digest = sha256_digest(blob);
    std::string manifest = R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"})";

    // The blob store on another port: it must never see the registry's token.
    ScriptedServer cdn([&](const Request&) { return respond(200, blob); });
    std::atomic<int> unavailable{1};
    std::string registry_host;
    ScriptedServer registry([&](const Request& r) -> std::string {
        if (r.target.starts_with("/token?")) {
            // Basic credentials for the token, as Docker Hub wants them: alice:pw.
            if (r.authorization != "Basic YWxpY2U6cHc=") return respond(401, "{}");
            return respond(200, R"({"token":"tok-123","expires_in":300})");
        }
        if (r.authorization != "Bearer tok-123")
            return respond(401, R"({"errors":[{"code":"UNAUTHORIZED"}]})",
                           {"WWW-Authenticate: Bearer realm=\"http://" + registry_host +
                            "/token\",service=\"fake.registry\",scope=\"repository:team/app:pull\""});
        if (r.target == "/v2/team/app/manifests/v1")
            return respond(200, manifest, {"Content-Type: application/vnd.oci.image.manifest.v1+json"});
        if (r.target == "/v2/team/app/blobs/" + blob_digest) {
            if (unavailable.fetch_sub(1) > 0) return respond(503, "busy");
            return respond(307, "", {"Location: http://" + cdn.host() + "/blob-data"});
        }
        return respond(404, "{}");
    });
    registry_host = registry.host();

    ImageReference ref{registry.host(), "team/app", "v1", ""};
    RegistrySettings settings;
    settings.insecure = true;
    settings.credentials = RegistryCredentials{"alice", "pw"};
    RegistryClient client(ref, settings);
    auto fetched = client.fetch_manifest("v1");
    ASSERT_TRUE(fetched) << fetched.error().to_string();
    EXPECT_EQ(fetched->body, manifest);
    EXPECT_EQ(fetched->digest, sha256_digest(manifest));

    test::TempDir dir("sandlot-auth");
    std::string path = dir / "blob";
    auto got = client.fetch_blob(blob_digest, blob.size(), path, {});
    ASSERT_TRUE(got) << got.error().to_string();
    EXPECT_EQ(std::filesystem::file_size(path), blob.size());

    bool token_asked = false;
    for (const auto& r : registry.requests())
        token_asked = token_asked || (r.target.find("service=fake.registry") != std::string::npos &&
                                      r.target.find("scope=repository") != std::string::npos);
    EXPECT_TRUE(token_asked);
    auto at_cdn = cdn.requests();
    ASSERT_FALSE(at_cdn.empty());
    for (const auto& r : at_cdn)
        EXPECT_EQ(r.authorization, "") << "the redirected host got the registry's credentials";
    EXPECT_LT(unavailable.load(), 0) << "the 503 was not retried";

    // Wrong credentials: the token service refuses them, and the error says so in one line.
    settings.credentials = RegistryCredentials{"alice", "nope"};
    RegistryClient wrong(ref, settings);
    auto refused = wrong.fetch_manifest("v1");
    ASSERT_FALSE(refused);
    EXPECT_NE(refused.error().to_string().find("authentication failed"), std::string::npos)
        << refused.error().to_string();
    EXPECT_EQ(refused.error().to_string().find('\n'), std::string::npos);
}

}  // namespace
}  // namespace sandlot::host
