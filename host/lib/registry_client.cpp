#include "host/lib/registry_client.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "host/lib/digest.h"
#include "host/lib/registry_config.h"
#include "proto/base/unique_fd.h"

namespace sandlot::host {

namespace {

constexpr size_t kMaxErrorBody = 64 << 10;
constexpr size_t kMaxTokenBody = 1 << 20;
constexpr int kMaxRedirects = 10;
constexpr const char* kUserAgent = "sandlot/0.1";
constexpr const char* kManifestAccept =
    "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json";

void global_init() {
    static std::once_flag once;
    std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct CurlDeleter {
    void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
using CurlPtr = std::unique_ptr<CURL, CurlDeleter>;
struct SlistDeleter {
    void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};
using SlistPtr = std::unique_ptr<curl_slist, SlistDeleter>;
struct UrlDeleter {
    void operator()(CURLU* u) const { curl_url_cleanup(u); }
};
using UrlPtr = std::unique_ptr<CURLU, UrlDeleter>;
struct CurlStringDeleter {
    void operator()(char* s) const { curl_free(s); }
};
using CurlString = std::unique_ptr<char, CurlStringDeleter>;

std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front())))
        s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back())))
        s.remove_suffix(1);
    return s;
}

// "scheme://host:port" with the default port filled in, or "" if the URL does not parse.
std::string origin_of(const std::string& url) {
    UrlPtr u(curl_url());
    if (!u || curl_url_set(u.get(), CURLUPART_URL, url.c_str(), 0) != CURLUE_OK) return "";
    auto part = [&](CURLUPart which, unsigned flags) -> std::string {
        char* out = nullptr;
        if (curl_url_get(u.get(), which, &out, flags) != CURLUE_OK) return "";
        CurlString holder(out);
        return out ? lower(out) : "";
    };
    return part(CURLUPART_SCHEME, 0) + "://" + part(CURLUPART_HOST, 0) + ":" +
           part(CURLUPART_PORT, CURLU_DEFAULT_PORT);
}

// One HTTP exchange's inputs and what came back. Bodies of 2xx responses go to on_begin/on_data; other
// bodies are kept (capped) in error_body for the error message.
struct Exchange {
    std::vector<std::string> headers;
    // Called at the start of each 2xx body (again on each retry): reset buffers, check Content-Range.
    std::function<Result<void>(const Exchange&)> on_begin;
    std::function<Result<void>(std::string_view)> on_data;

    long status = 0;
    std::map<std::string, std::string> response_headers;  // lowercase names
    std::string error_body;
    bool begun = false;
    std::optional<Error> sink_error;
    char error_buffer[CURL_ERROR_SIZE] = {};

    void reset_response() {
        status = 0;
        response_headers.clear();
        error_body.clear();
        begun = false;
        sink_error.reset();
        error_buffer[0] = '\0';
    }
    std::string header(const std::string& name) const {
        auto it = response_headers.find(name);
        return it == response_headers.end() ? std::string() : it->second;
    }
    Result<void> begin() {
        begun = true;
        if (on_begin) return on_begin(*this);
        return {};
    }
};

size_t header_callback(char* data, size_t size, size_t count, void* user) {
    auto* ex = static_cast<Exchange*>(user);
    std::string_view line(data, size * count);
    if (line.starts_with("HTTP/")) {
        ex->response_headers.clear();
        size_t sp = line.find(' ');
        long status = 0;
        if (sp != std::string_view::npos) {
            std::string_view code = line.substr(sp + 1, 3);
            std::from_chars(code.data(), code.data() + code.size(), status);
        }
        ex->status = status;
        return size * count;
    }
    size_t colon = line.find(':');
    if (colon != std::string_view::npos && ex->response_headers.size() < 200) {
        ex->response_headers[lower(trim(line.substr(0, colon)))] = std::string(trim(line.substr(colon + 1)));
    }
    return size * count;
}

size_t write_callback(char* data, size_t size, size_t count, void* user) {
    auto* ex = static_cast<Exchange*>(user);
    size_t n = size * count;
    if (ex->status < 200 || ex->status >= 300) {
        if (ex->error_body.size() < kMaxErrorBody) {
            ex->error_body.append(data, std::min(n, kMaxErrorBody - ex->error_body.size()));
        }
        return n;
    }
    if (!ex->begun) {
        if (auto r = ex->begin(); !r) {
            ex->sink_error = r.error();
            return 0;
        }
    }
    if (ex->on_data) {
        if (auto r = ex->on_data(std::string_view(data, n)); !r) {
            ex->sink_error = r.error();
            return 0;
        }
    }
    return n;
}

bool is_transient(CURLcode code) {
    switch (code) {
        case CURLE_COULDNT_CONNECT:
        case CURLE_OPERATION_TIMEDOUT:
        case CURLE_PARTIAL_FILE:
        case CURLE_RECV_ERROR:
        case CURLE_SEND_ERROR:
        case CURLE_GOT_NOTHING:
        case CURLE_HTTP2:
        case CURLE_HTTP2_STREAM:
        case CURLE_SSL_CONNECT_ERROR:
            return true;
        default:
            return false;
    }
}

bool is_transient_status(long status) {
    return status == 429 || (status >= 500 && status <= 599);
}

std::chrono::milliseconds backoff(int attempt, const Exchange& ex) {
    std::chrono::milliseconds delay(250 << std::min(attempt - 1, 4));
    std::string retry_after = ex.header("retry-after");
    long seconds = 0;
    if (!retry_after.empty() &&
        std::from_chars(retry_after.data(), retry_after.data() + retry_after.size(), seconds).ec ==
            std::errc()) {
        delay = std::max(delay, std::chrono::milliseconds(std::min(seconds, 10L) * 1000));
    }
    return std::min(delay, std::chrono::milliseconds(10000));
}

// "manifest unknown" from {"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown",...}]}.
std::string registry_error_detail(const std::string& body) {
    auto json = nlohmann::json::parse(body, nullptr, false);
    if (json.is_discarded() || !json.is_object()) return "";
    auto errors = json.find("errors");
    if (errors == json.end() || !errors->is_array() || errors->empty()) return "";
    const auto& first = (*errors)[0];
    if (!first.is_object()) return "";
    std::string out;
    if (auto m = first.find("message"); m != first.end() && m->is_string()) out = m->get<std::string>();
    if (out.empty()) {
        if (auto c = first.find("code"); c != first.end() && c->is_string())
            out = lower(c->get<std::string>());
    }
    for (char& c : out)
        if (c == '\n' || c == '\r') c = ' ';
    if (out.size() > 200) out.resize(200);
    return out;
}

// Parses `Bearer realm="...",service="...",scope="..."` into a scheme and parameters.
struct Challenge {
    std::string scheme;  // lowercase
    std::map<std::string, std::string> params;
};

Challenge parse_challenge(std::string_view header) {
    Challenge c;
    header = trim(header);
    size_t sp = header.find(' ');
    c.scheme = lower(header.substr(0, sp));
    if (sp == std::string_view::npos) return c;
    std::string_view rest = header.substr(sp + 1);
    while (!rest.empty()) {
        rest = trim(rest);
        if (!rest.empty() && rest.front() == ',') {
            rest.remove_prefix(1);
            continue;
        }
        size_t eq = rest.find('=');
        if (eq == std::string_view::npos) break;
        std::string key = lower(trim(rest.substr(0, eq)));
        rest.remove_prefix(eq + 1);
        rest = trim(rest);
        std::string value;
        if (!rest.empty() && rest.front() == '"') {
            size_t i = 1;
            for (; i < rest.size() && rest[i] != '"'; ++i) {
                if (rest[i] == '\\' && i + 1 < rest.size()) ++i;
                value += rest[i];
            }
            rest.remove_prefix(std::min(i + 1, rest.size()));
        } else {
            size_t comma = rest.find(',');
            value = std::string(trim(rest.substr(0, comma)));
            rest.remove_prefix(comma == std::string_view::npos ? rest.size() : comma);
        }
        c.params[key] = value;
    }
    return c;
}

}  // namespace

struct RegistryClient::Impl {
    ImageReference reference;
    RegistrySettings settings;
    std::string base_url;  // "https://host"
    std::string base_origin;

    std::mutex auth_mutex;     // guards authorization
    std::mutex refresh_mutex;  // serializes token requests so concurrent 401s fetch one token
    std::string authorization;

    Impl(ImageReference r, RegistrySettings s) : reference(std::move(r)), settings(std::move(s)) {
        global_init();
        if (settings.max_attempts < 1) settings.max_attempts = 1;
        base_url = (settings.insecure ? "http://" : "https://") + reference.api_host();
        base_origin = origin_of(base_url + "/");
    }

    std::string name() const { return reference.registry + "/" + reference.repository; }

    std::string current_authorization() {
        std::lock_guard lock(auth_mutex);
        return authorization;
    }

    std::string auth_failed_message() const {
        std::string msg = "authentication failed for " + reference.registry;
        if (settings.credentials) return msg + ": check the username and password";
        return msg + ": run `sandlot registry login " + reference.registry + "`";
    }

    // One curl request, no redirects followed.
    CURLcode perform_raw(CURL* h, const std::string& url, const std::string& authorization, Exchange& ex) {
        curl_easy_reset(h);
        ex.reset_response();
        SlistPtr headers;
        auto add = [&](const std::string& line) {
            curl_slist* next = curl_slist_append(headers.get(), line.c_str());
            if (next) {
                (void)headers.release();
                headers.reset(next);
            }
        };
        for (const auto& line : ex.headers)
            add(line);
        if (!authorization.empty()) add("Authorization: " + authorization);
        curl_easy_setopt(h, CURLOPT_URL, url.c_str());
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(h, CURLOPT_USERAGENT, kUserAgent);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, settings.connect_timeout_s);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, settings.stall_timeout_s);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers.get());
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, header_callback);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, &ex);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, write_callback);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &ex);
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, ex.error_buffer);
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
        if (!settings.ca_file.empty()) curl_easy_setopt(h, CURLOPT_CAINFO, settings.ca_file.c_str());
        CURLcode code = curl_easy_perform(h);
        if (code == CURLE_OK && ex.status >= 200 && ex.status < 300 && !ex.begun) {
            // An empty body: let the sink see the response anyway.
            if (auto r = ex.begin(); !r) {
                ex.sink_error = r.error();
                return CURLE_WRITE_ERROR;
            }
        }
        return code;
    }

    Error curl_error(CURL* h, CURLcode code, const Exchange& ex, const std::string& url) const {
        std::string host = reference.api_host();
        if (std::string o = origin_of(url); !o.empty() && o != base_origin) host = url;
        std::string detail = ex.error_buffer[0] ? std::string(ex.error_buffer) : curl_easy_strerror(code);
        long os_errno = 0;
        curl_easy_getinfo(h, CURLINFO_OS_ERRNO, &os_errno);
        switch (code) {
            case CURLE_COULDNT_CONNECT:
                if (os_errno == ECONNREFUSED) return Error{0, "connection refused"};
                if (os_errno != 0)
                    return Error{
                        0, "cannot connect to " + host + ": " + std::strerror(static_cast<int>(os_errno))};
                return Error{0, "cannot connect to " + host + ": " + detail};
            case CURLE_COULDNT_RESOLVE_HOST:
                return Error{0, "cannot resolve host " + host};
            case CURLE_OPERATION_TIMEDOUT:
                return Error{0, "timed out talking to " + host + ": " + detail};
            case CURLE_PEER_FAILED_VERIFICATION:
            case CURLE_SSL_CACERT_BADFILE:
            case CURLE_SSL_ISSUER_ERROR:
                return Error{0, "TLS certificate verification failed for " + host + ": " + detail};
            case CURLE_SSL_CONNECT_ERROR:
                return Error{0, "TLS handshake with " + host + " failed: " + detail};
            case CURLE_PARTIAL_FILE:
            case CURLE_RECV_ERROR:
            case CURLE_SEND_ERROR:
            case CURLE_GOT_NOTHING:
                return Error{0, "connection to " + host + " lost: " + detail};
            default:
                return Error{0, detail};
        }
    }

    // Fetches a bearer token for the challenge, or builds a Basic header. Returns the new Authorization
    // value.
    Result<std::string> authenticate(const std::string& www_authenticate, const std::string& used) {
        std::lock_guard refresh(refresh_mutex);
        {
            std::lock_guard lock(auth_mutex);
            if (!authorization.empty() && authorization != used) return authorization;  // refreshed meanwhile
        }
        Challenge challenge = parse_challenge(www_authenticate);
        std::string basic;
        if (settings.credentials) {
            basic = "Basic " + basic_credentials(*settings.credentials);
        }
        std::string value;
        if (challenge.scheme == "basic") {
            if (basic.empty() || basic == used) return make_error(auth_failed_message());
            value = basic;
        } else if (challenge.scheme == "bearer") {
            value = "Bearer " + TRY(fetch_token(challenge, basic));
            if (value == used) return make_error(auth_failed_message());
        } else {
            return make_error("registry " + reference.registry + " asks for unsupported authentication \"" +
                              challenge.scheme + "\"");
        }
        std::lock_guard lock(auth_mutex);
        authorization = value;
        return value;
    }

    Result<std::string> fetch_token(const Challenge& challenge, const std::string& basic) {
        auto realm = challenge.params.find("realm");
        if (realm == challenge.params.end() || realm->second.empty()) {
            return make_error("registry " + reference.registry + " sent a bearer challenge without a realm");
        }
        if (!realm->second.starts_with("https://") && !realm->second.starts_with("http://")) {
            return make_error("registry " + reference.registry + " sent a bad token realm");
        }
        CurlPtr h(curl_easy_init());
        if (!h) return make_error("curl_easy_init failed");
        auto escape = [&](const std::string& s) {
            CurlString e(curl_easy_escape(h.get(), s.c_str(), static_cast<int>(s.size())));
            return e ? std::string(e.get()) : std::string();
        };
        std::string url = realm->second;
        char sep = url.find('?') == std::string::npos ? '?' : '&';
        if (auto it = challenge.params.find("service"); it != challenge.params.end()) {
            url += sep + std::string("service=") + escape(it->second);
            sep = '&';
        }
        std::string scope;
        if (auto it = challenge.params.find("scope"); it != challenge.params.end()) scope = it->second;
        if (scope.empty() && !reference.repository.empty())
            scope = "repository:" + reference.repository + ":pull";
        if (!scope.empty()) url += sep + std::string("scope=") + escape(scope);

        std::string body;
        Exchange ex;
        ex.on_begin = [&](const Exchange&) -> Result<void> {
            body.clear();
            return {};
        };
        ex.on_data = [&](std::string_view data) -> Result<void> {
            if (body.size() + data.size() > kMaxTokenBody) return make_error("token response too large");
            body.append(data);
            return {};
        };
        long status = 0;
        for (int attempt = 1;; ++attempt) {
            CURLcode code = perform_raw(h.get(), url, basic, ex);
            if (code != CURLE_OK) {
                if (ex.sink_error) return std::unexpected(*ex.sink_error);
                if (!is_transient(code) || attempt >= settings.max_attempts) {
                    return std::unexpected(with_context(curl_error(h.get(), code, ex, url), "token request"));
                }
            } else {
                status = ex.status;
                if (!is_transient_status(status) || attempt >= settings.max_attempts) break;
            }
            std::this_thread::sleep_for(backoff(attempt, ex));
        }
        if (status == 401 || status == 403) return make_error(auth_failed_message());
        if (status != 200) {
            std::string detail = registry_error_detail(ex.error_body);
            return make_error("token request to " + realm->second + " failed: HTTP " +
                              std::to_string(status) + (detail.empty() ? "" : " (" + detail + ")"));
        }
        auto json = nlohmann::json::parse(body, nullptr, false);
        if (json.is_discarded() || !json.is_object()) return make_error("token response is not JSON");
        for (const char* key : {"token", "access_token"}) {
            auto it = json.find(key);
            if (it != json.end() && it->is_string() && !it->get<std::string>().empty()) {
                std::string token = it->get<std::string>();
                for (char c : token)
                    if (static_cast<unsigned char>(c) < 0x21 || c == 0x7f)
                        return make_error("token response holds a malformed token");
                return token;
            }
        }
        return make_error("token response has no token");
    }

    // One attempt at `path`: follows redirects (dropping Authorization off the registry's origin) and answers
    // one 401 with authentication. Returns the final HTTP status; `transient` says whether an error may pass.
    Result<long> perform_once(CURL* h, const std::string& path, Exchange& ex, bool& transient) {
        transient = false;
        std::string start = base_url + path;
        std::string url = start;
        std::string auth = current_authorization();
        bool authenticated_retry = false;
        for (int hops = 0;;) {
            bool same_origin = origin_of(url) == base_origin;
            CURLcode code = perform_raw(h, url, same_origin ? auth : std::string(), ex);
            if (code == CURLE_PARTIAL_FILE && ex.status >= 300 && !ex.sink_error) {
                // A short error body (distribution answers 416 with the blob's Content-Length and no body):
                // the status is what matters.
                code = CURLE_OK;
            }
            if (code != CURLE_OK) {
                if (ex.sink_error) return std::unexpected(*ex.sink_error);
                transient = is_transient(code);
                return std::unexpected(curl_error(h, code, ex, url));
            }
            long status = ex.status;
            if (status >= 300 && status < 400 && status != 304) {
                char* location = nullptr;
                curl_easy_getinfo(h, CURLINFO_REDIRECT_URL, &location);
                if (!location)
                    return make_error("redirect (HTTP " + std::to_string(status) + ") without Location");
                if (++hops > kMaxRedirects) return make_error("too many redirects");
                url = location;
                if (!url.starts_with("https://") && !url.starts_with("http://")) {
                    return make_error("redirect to unsupported URL");
                }
                continue;
            }
            if (status == 401 && same_origin) {
                if (authenticated_retry) return make_error(auth_failed_message());
                std::string challenge = ex.header("www-authenticate");
                if (challenge.empty()) return make_error(auth_failed_message());
                auth = TRY(authenticate(challenge, auth));
                authenticated_retry = true;
                url = start;
                hops = 0;
                continue;
            }
            return status;
        }
    }

    Error http_error(long status, const Exchange& ex, const std::string& what) const {
        std::string detail = registry_error_detail(ex.error_body);
        std::string suffix = detail.empty() ? "" : " (" + detail + ")";
        switch (status) {
            case 401:
                return Error{0, auth_failed_message()};
            case 403:
                return Error{0, "access to " + what + " denied" + suffix};
            case 404:
                return Error{0, what + " not found" + suffix};
            case 429:
                return Error{0, "too many requests (HTTP 429)" + suffix};
            default:
                return Error{0, "HTTP " + std::to_string(status) + " for " + what + suffix};
        }
    }

    // Retries transient failures. On return the exchange holds the final response (status 2xx), or an error.
    Result<void> request(CURL* h, const std::string& path, Exchange& ex, const std::string& what) {
        for (int attempt = 1;; ++attempt) {
            bool transient = false;
            auto status = perform_once(h, path, ex, transient);
            if (!status) {
                if (!transient || attempt >= settings.max_attempts) return std::unexpected(status.error());
            } else if (*status >= 200 && *status < 300) {
                return {};
            } else if (!is_transient_status(*status) || attempt >= settings.max_attempts) {
                return std::unexpected(http_error(*status, ex, what));
            }
            std::this_thread::sleep_for(backoff(attempt, ex));
        }
    }

    Result<std::string> get_bytes(const std::string& path, std::vector<std::string> headers, uint64_t cap,
                                  const std::string& what, Exchange& ex) {
        CurlPtr h(curl_easy_init());
        if (!h) return make_error("curl_easy_init failed");
        std::string body;
        ex.headers = std::move(headers);
        ex.on_begin = [&](const Exchange& e) -> Result<void> {
            body.clear();
            std::string length = e.header("content-length");
            uint64_t n = 0;
            if (!length.empty() &&
                std::from_chars(length.data(), length.data() + length.size(), n).ec == std::errc() &&
                n > cap) {
                return make_error(what + " is too large (" + std::to_string(n) + " bytes, limit " +
                                  std::to_string(cap) + ")");
            }
            return {};
        };
        ex.on_data = [&](std::string_view data) -> Result<void> {
            if (body.size() + data.size() > cap) {
                return make_error(what + " is too large (over " + std::to_string(cap) + " bytes)");
            }
            body.append(data);
            return {};
        };
        TRY(request(h.get(), path, ex, what));
        return body;
    }

    std::unexpected<Error> fail(const std::string& context, Error e) const {
        return std::unexpected(with_context(std::move(e), context));
    }
};

RegistryClient::RegistryClient(ImageReference reference, RegistrySettings settings)
    : impl_(std::make_unique<Impl>(std::move(reference), std::move(settings))) {}
RegistryClient::~RegistryClient() = default;
RegistryClient::RegistryClient(RegistryClient&&) noexcept = default;
RegistryClient& RegistryClient::operator=(RegistryClient&&) noexcept = default;

const ImageReference& RegistryClient::reference() const {
    return impl_->reference;
}

Result<FetchedManifest> RegistryClient::fetch_manifest(std::string_view tag_or_digest) {
    bool by_digest = is_sha256_digest(tag_or_digest);
    std::string ref(tag_or_digest);
    std::string context = "pull " + impl_->name() + (by_digest ? "@" : ":") + ref;
    if (!by_digest && !is_valid_tag(tag_or_digest)) {
        return make_error(context + ": not a valid tag or sha256 digest");
    }
    Exchange ex;
    auto body = impl_->get_bytes("/v2/" + impl_->reference.repository + "/manifests/" + ref,
                                 {kManifestAccept}, kMaxManifestBytes, "manifest", ex);
    if (!body) return impl_->fail(context, body.error());
    FetchedManifest out;
    out.digest = sha256_digest(*body);
    if (by_digest && out.digest != ref) {
        return make_error(context + ": manifest failed verification: got " + out.digest);
    }
    std::string header_digest = ex.header("docker-content-digest");
    if (!by_digest && is_sha256_digest(header_digest) && header_digest != out.digest) {
        return make_error(context + ": manifest digest " + out.digest + " does not match the registry's " +
                          header_digest);
    }
    std::string type = ex.header("content-type");
    type = std::string(trim(type.substr(0, type.find(';'))));
    auto json = nlohmann::json::parse(*body, nullptr, false);
    if (json.is_discarded() || !json.is_object())
        return make_error(context + ": manifest is not a JSON object");
    if (auto it = json.find("mediaType"); it != json.end() && it->is_string()) {
        std::string declared = it->get<std::string>();
        if (type.empty() || type == "application/json" || type == "application/octet-stream" ||
            type == "text/plain")
            type = declared;
    }
    if (type.empty() || type == "application/json") {
        // An OCI manifest without mediaType: tell a manifest from an index by its fields.
        type = json.contains("manifests") ? "application/vnd.oci.image.index.v1+json"
                                          : "application/vnd.oci.image.manifest.v1+json";
    }
    out.media_type = std::move(type);
    out.body = std::move(*body);
    return out;
}

Result<std::string> RegistryClient::fetch_blob_bytes(std::string_view digest, uint64_t max_bytes) {
    std::string d(digest);
    std::string context = "pull " + impl_->name() + ": blob " + d;
    if (!is_sha256_digest(digest))
        return make_error("pull " + impl_->name() + ": invalid blob digest \"" + d + "\"");
    Exchange ex;
    auto body =
        impl_->get_bytes("/v2/" + impl_->reference.repository + "/blobs/" + d, {}, max_bytes, "blob", ex);
    if (!body) return impl_->fail(context, body.error());
    std::string got = sha256_digest(*body);
    if (got != d)
        return make_error("pull " + impl_->name() + ": blob " + d + " failed verification: got " + got);
    return std::move(*body);
}

Result<void> RegistryClient::fetch_blob(std::string_view digest, uint64_t expected_size,
                                        const std::string& path,
                                        const std::function<void(uint64_t, uint64_t)>& progress) {
    std::string d(digest);
    std::string context = "pull " + impl_->name() + ": blob " + d;
    if (!is_sha256_digest(digest))
        return make_error("pull " + impl_->name() + ": invalid blob digest \"" + d + "\"");
    CurlPtr h(curl_easy_init());
    if (!h) return make_error("curl_easy_init failed");
    const std::string url_path = "/v2/" + impl_->reference.repository + "/blobs/" + d;
    auto remove_if_empty = [&] {
        struct stat st;
        if (stat(path.c_str(), &st) == 0 && st.st_size == 0) unlink(path.c_str());
    };

    bool restarted_after_bad_resume = false;
    for (int attempt = 1;; ++attempt) {
        struct stat st;
        uint64_t offset = 0;
        if (stat(path.c_str(), &st) == 0) {
            if (!S_ISREG(st.st_mode)) return make_error(context + ": " + path + " is not a regular file");
            offset = static_cast<uint64_t>(st.st_size);
        }
        UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
        if (!fd.valid()) return std::unexpected(Error{errno, context + ": open " + path});
        if (expected_size > 0 && offset > expected_size) {
            if (ftruncate(fd.get(), 0) < 0)
                return std::unexpected(Error{errno, context + ": truncate " + path});
            offset = 0;
        }
        const uint64_t resumed_from = offset;
        bool transfer_ok = true;
        bool transient = false;
        std::optional<Error> failure;
        Exchange ex;
        if (expected_size == 0 || offset < expected_size) {
            if (offset > 0) ex.headers.push_back("Range: bytes=" + std::to_string(offset) + "-");
            uint64_t pos = offset;
            uint64_t total = expected_size;
            ex.on_begin = [&](const Exchange& e) -> Result<void> {
                if (e.status == 206) {
                    // "bytes START-END/TOTAL": it must continue where the file ends.
                    std::string range = e.header("content-range");
                    uint64_t start = 0;
                    size_t digits = range.find_first_of("0123456789");
                    if (!range.starts_with("bytes") || digits == std::string::npos ||
                        std::from_chars(range.data() + digits, range.data() + range.size(), start).ec !=
                            std::errc() ||
                        start != offset) {
                        return make_error("server answered the range request with \"" + range + "\"");
                    }
                    pos = offset;
                } else {
                    // The whole blob: start over.
                    if (ftruncate(fd.get(), 0) < 0) return std::unexpected(Error{errno, "truncate " + path});
                    pos = 0;
                }
                if (lseek(fd.get(), static_cast<off_t>(pos), SEEK_SET) < 0) {
                    return std::unexpected(Error{errno, "seek " + path});
                }
                if (expected_size == 0) {
                    std::string length = e.header("content-length");
                    uint64_t n = 0;
                    if (std::from_chars(length.data(), length.data() + length.size(), n).ec == std::errc())
                        total = pos + n;
                }
                return {};
            };
            ex.on_data = [&](std::string_view data) -> Result<void> {
                if (expected_size > 0 && pos + data.size() > expected_size) {
                    return make_error("blob is larger than the expected " + std::to_string(expected_size) +
                                      " bytes");
                }
                size_t done = 0;
                while (done < data.size()) {
                    ssize_t n = write(fd.get(), data.data() + done, data.size() - done);
                    if (n < 0) {
                        if (errno == EINTR) continue;
                        return std::unexpected(Error{errno, "write " + path});
                    }
                    done += static_cast<size_t>(n);
                }
                pos += data.size();
                if (progress) progress(pos, total);
                return {};
            };
            auto status = impl_->perform_once(h.get(), url_path, ex, transient);
            if (!status) {
                transfer_ok = false;
                failure = status.error();
                if (failure->message.starts_with("server answered the range request")) transient = true;
                if (failure->message.starts_with("blob is larger")) {
                    fd.reset();
                    unlink(path.c_str());
                    return impl_->fail(context, *failure);
                }
            } else if (*status == 416) {
                // "bytes */N": with N == offset the file is already complete (verified below); otherwise the
                // partial file does not fit the blob: start over.
                std::string range = ex.header("content-range");
                uint64_t blob_size = 0;
                size_t star = range.find("*/");
                bool complete =
                    star != std::string::npos &&
                    std::from_chars(range.data() + star + 2, range.data() + range.size(), blob_size).ec ==
                        std::errc() &&
                    blob_size == offset;
                if (!complete) {
                    transfer_ok = false;
                    transient = true;
                    failure = Error{0, "server refused to resume the download (HTTP 416)"};
                    if (ftruncate(fd.get(), 0) < 0) {
                        return std::unexpected(Error{errno, context + ": truncate " + path});
                    }
                }
            } else if (*status < 200 || *status >= 300) {
                transfer_ok = false;
                transient = is_transient_status(*status);
                failure = impl_->http_error(*status, ex, "blob");
            }
            if (failure && failure->message.starts_with("server answered the range request")) {
                if (ftruncate(fd.get(), 0) < 0)
                    return std::unexpected(Error{errno, context + ": truncate " + path});
            }
        }
        fd.reset();
        if (!transfer_ok) {
            if (transient && attempt < impl_->settings.max_attempts) {
                std::this_thread::sleep_for(backoff(attempt, ex));
                continue;
            }
            remove_if_empty();
            return impl_->fail(context, *failure);
        }

        struct stat done_st;
        if (stat(path.c_str(), &done_st) < 0)
            return std::unexpected(Error{errno, context + ": stat " + path});
        auto size = static_cast<uint64_t>(done_st.st_size);
        std::string got;
        if (expected_size > 0 && size != expected_size) {
            got = std::to_string(size) + " bytes instead of " + std::to_string(expected_size);
        } else {
            auto file_digest = sha256_file(path);
            if (!file_digest) return impl_->fail(context, file_digest.error());
            if (*file_digest == d) return {};
            got = *file_digest;
        }
        unlink(path.c_str());
        if (resumed_from > 0 && !restarted_after_bad_resume && attempt < impl_->settings.max_attempts) {
            // The partial file we resumed from may have been bad: one fresh download.
            restarted_after_bad_resume = true;
            continue;
        }
        return make_error(context + " failed verification: got " + got);
    }
}

Result<void> RegistryClient::check_access() {
    CurlPtr h(curl_easy_init());
    if (!h) return make_error("curl_easy_init failed");
    Exchange ex;
    if (auto r = impl_->request(h.get(), "/v2/", ex, "registry API"); !r) {
        return impl_->fail("registry " + impl_->reference.registry, r.error());
    }
    return {};
}

}  // namespace sandlot::host
