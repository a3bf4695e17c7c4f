#include "host/lib/names.h"

#include <fmt/format.h>

#include <array>

namespace sandlot::host {

namespace {

// For error messages: at most 40 bytes, non-printable bytes as \xNN.
std::string shown(std::string_view text) {
    std::string out;
    for (size_t i = 0; i < text.size() && i < 40; ++i) {
        auto c = static_cast<unsigned char>(text[i]);
        if (c < 0x20 || c == 0x7f || c == '"' || c == '\\' || c >= 0x80)
            out += fmt::format("\\x{:02x}", c);
        else
            out += static_cast<char>(c);
    }
    if (text.size() > 40) out += "...";
    return out;
}

bool has_control(std::string_view text) {
    for (char c : text)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return true;
    return false;
}

}  // namespace

bool valid_utf8(std::string_view text) {
    size_t i = 0;
    while (i < text.size()) {
        auto c = static_cast<unsigned char>(text[i]);
        size_t length;
        uint32_t code;
        if (c < 0x80) {
            ++i;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            length = 2;
            code = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            length = 3;
            code = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            length = 4;
            code = c & 0x07;
        } else {
            return false;
        }
        if (i + length > text.size()) return false;
        for (size_t k = 1; k < length; ++k) {
            auto next = static_cast<unsigned char>(text[i + k]);
            if ((next & 0xc0) != 0x80) return false;
            code = (code << 6) | (next & 0x3f);
        }
        constexpr std::array<uint32_t, 5> kMinimum = {0, 0, 0x80, 0x800, 0x10000};
        if (code < kMinimum[length] || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return false;
        i += length;
    }
    return true;
}

Result<void> validate_sandbox_name(std::string_view name) {
    auto invalid = [&](const char* why) {
        return make_error(fmt::format("invalid sandbox name \"{}\": {}", shown(name), why));
    };
    if (name.empty()) return invalid("it is empty");
    if (name.size() > 128) return invalid("longer than 128 bytes");
    if (!valid_utf8(name)) return invalid("not valid UTF-8");
    if (has_control(name)) return invalid("it contains control characters");
    if (name.find('/') != std::string_view::npos) return invalid("it contains '/'");
    if (name.front() == '-' || name.front() == '.') return invalid("it starts with '-' or '.'");
    return {};
}

Result<std::pair<std::string, std::string>> parse_label(std::string_view text) {
    auto eq = text.find('=');
    if (eq == std::string_view::npos)
        return make_error(fmt::format("label \"{}\": expected KEY=VALUE", shown(text)));
    auto key = text.substr(0, eq), value = text.substr(eq + 1);
    if (key.empty() || key.size() > 128)
        return make_error(fmt::format("label key \"{}\": must be 1 to 128 bytes", shown(key)));
    auto alnum = [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    };
    if (!alnum(key.front()))
        return make_error(fmt::format("label key \"{}\": must start with a letter or digit", shown(key)));
    for (char c : key)
        if (!alnum(c) && c != '.' && c != '_' && c != '-' && c != '/')
            return make_error(
                fmt::format("label key \"{}\": only letters, digits and . _ - / are allowed", shown(key)));
    for (std::string_view reserved : {"sandlot.", "io.sandlot."})
        if (key.starts_with(reserved))
            return make_error(
                fmt::format("label key \"{}\" uses the reserved prefix \"{}\"", shown(key), reserved));
    if (value.size() > 1024)
        return make_error(fmt::format("label \"{}\": the value is over 1024 bytes", shown(key)));
    if (!valid_utf8(value) || has_control(value))
        return make_error(
            fmt::format("label \"{}\": the value must be UTF-8 text without control characters", shown(key)));
    return std::pair{std::string(key), std::string(value)};
}

}  // namespace sandlot::host
