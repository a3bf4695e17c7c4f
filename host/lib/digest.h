// SHA-256 content digests in the OCI form "sha256:<64 hex>", computed incrementally (OpenSSL's EVP).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "proto/base/error.h"

namespace sandlot::host {

class Sha256 {
  public:
    Sha256();
    ~Sha256();
    Sha256(Sha256&&) noexcept;
    Sha256& operator=(Sha256&&) noexcept;

    void update(std::span<const std::byte> data);
    void update(std::string_view data) { update(std::as_bytes(std::span(data.data(), data.size()))); }
    // "sha256:<hex>"; the hasher is spent afterwards.
    std::string finish();

  private:
    struct State;
    std::unique_ptr<State> state_;
};

std::string sha256_digest(std::string_view data);

// The digest of a whole file's contents; sha256_fd reads `fd` from its current offset to the end.
Result<std::string> sha256_file(const std::string& path);
Result<std::string> sha256_fd(int fd, const std::string& what);

// "sha256:" followed by exactly 64 lowercase hex digits. Anything else (other algorithms included) is
// refused, so a digest can safely name a file.
bool is_sha256_digest(std::string_view digest);

// The 64 hex digits of a valid digest.
inline std::string_view digest_hex(std::string_view digest) {
    return digest.substr(7);
}

}  // namespace sandlot::host
