// Building expected byte strings in wire-format tests: golden payloads are written as pieces, then joined.
#pragma once

#include <cstdint>
#include <initializer_list>
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

}  // namespace sandlot::test
