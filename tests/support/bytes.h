// Building expected byte strings in wire-format tests: golden payloads are written as pieces, then joined.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sandlot::test {

using Bytes = std::vector<uint8_t>;

inline Bytes concat(std::initializer_list<Bytes> parts) {
    Bytes out;
    for (const Bytes& p : parts)
        out.insert(out.end(), p.begin(), p.end());
    return out;
}

// The characters of `s`, no length prefix and no terminator.
inline Bytes ascii(std::string_view s) {
    Bytes out;
    for (char c : s)
        out.push_back(static_cast<uint8_t>(c));
    return out;
}

// n pseudo-random bytes, the same for the same seed (test file contents).
inline std::string random_bytes(size_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::string out(n, '\0');
    for (size_t i = 0; i < n; i += 8) {
        uint64_t v = rng();
        std::memcpy(out.data() + i, &v, std::min<size_t>(8, n - i));
    }
    return out;
}

// A string's bytes as a span, for APIs that take binary data.
inline std::span<const uint8_t> as_bytes(std::string_view s) {
    return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace sandlot::test
