#include "host/lib/digest.h"

#include <fcntl.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "proto/base/unique_fd.h"

namespace sandlot::host {

struct Sha256::State {
    EVP_MD_CTX* ctx = nullptr;
    ~State() { EVP_MD_CTX_free(ctx); }
};

Sha256::Sha256() : state_(std::make_unique<State>()) {
    state_->ctx = EVP_MD_CTX_new();
    if (!state_->ctx || EVP_DigestInit_ex(state_->ctx, EVP_sha256(), nullptr) != 1) std::abort();
}
Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::update(std::span<const std::byte> data) {
    if (!data.empty()) EVP_DigestUpdate(state_->ctx, data.data(), data.size());
}

std::string Sha256::finish() {
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    EVP_DigestFinal_ex(state_->ctx, out, &length);
    static constexpr char kHex[] = "0123456789abcdef";
    std::string text = "sha256:";
    for (unsigned int i = 0; i < length; ++i) {
        text += kHex[out[i] >> 4];
        text += kHex[out[i] & 15];
    }
    return text;
}

std::string sha256_digest(std::string_view data) {
    Sha256 hasher;
    hasher.update(data);
    return hasher.finish();
}

Result<std::string> sha256_file(const std::string& path) {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return errno_error("open " + path);
    return sha256_fd(fd.get(), path);
}

Result<std::string> sha256_fd(int fd, const std::string& path) {
    Sha256 hasher;
    std::byte buffer[1 << 16];
    for (;;) {
        ssize_t n = read(fd, buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("read " + path);
        if (n == 0) break;
        hasher.update(std::span(buffer, static_cast<size_t>(n)));
    }
    return hasher.finish();
}

bool is_sha256_digest(std::string_view digest) {
    if (digest.size() != 71 || !digest.starts_with("sha256:")) return false;
    for (char c : digest.substr(7))
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    return true;
}

}  // namespace sandlot::host
