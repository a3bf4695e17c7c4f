#include "host/lib/oci_reference.h"

#include <cctype>
#include <vector>

#include "host/lib/digest.h"

namespace sandlot::host {

namespace {

constexpr size_t kMaxNameLength = 255;

bool is_lower_alnum(char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}
bool is_alnum(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0;
}

// [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
bool is_valid_path_component(std::string_view c) {
    if (c.empty() || !is_lower_alnum(c.front()) || !is_lower_alnum(c.back())) return false;
    size_t i = 0;
    while (i < c.size()) {
        if (is_lower_alnum(c[i])) {
            ++i;
            continue;
        }
        size_t j = i;
        while (j < c.size() && !is_lower_alnum(c[j]))
            ++j;
        std::string_view sep = c.substr(i, j - i);
        bool ok =
            sep == "." || sep == "_" || sep == "__" || sep.find_first_not_of('-') == std::string_view::npos;
        if (!ok) return false;
        i = j;
    }
    return true;
}

// host ("a.b-c.d" or "[v6]") with an optional ":port".
bool is_valid_registry(std::string_view r) {
    std::string_view host = r;
    std::string_view port;
    if (!r.empty() && r.front() == '[') {
        size_t close = r.find(']');
        if (close == std::string_view::npos || close == 1) return false;
        for (char c : r.substr(1, close - 1))
            if (!std::isxdigit(static_cast<unsigned char>(c)) && c != ':') return false;
        std::string_view rest = r.substr(close + 1);
        if (!rest.empty()) {
            if (rest.front() != ':') return false;
            port = rest.substr(1);
            if (port.empty()) return false;
        }
        host = {};
    } else {
        size_t colon = r.find(':');
        if (colon != std::string_view::npos) {
            host = r.substr(0, colon);
            port = r.substr(colon + 1);
            if (port.empty()) return false;
        }
        if (host.empty()) return false;
        size_t start = 0;
        while (start <= host.size()) {
            size_t dot = host.find('.', start);
            std::string_view label =
                host.substr(start, dot == std::string_view::npos ? host.npos : dot - start);
            if (label.empty() || !is_alnum(label.front()) || !is_alnum(label.back())) return false;
            for (char c : label)
                if (!is_alnum(c) && c != '-') return false;
            if (dot == std::string_view::npos) break;
            start = dot + 1;
        }
    }
    if (port.size() > 5) return false;
    for (char c : port)
        if (c < '0' || c > '9') return false;
    return true;
}

std::unexpected<Error> invalid(std::string_view text, std::string_view why) {
    return make_error("invalid image reference \"" + std::string(text) + "\": " + std::string(why));
}

}  // namespace

bool is_valid_tag(std::string_view tag) {
    if (tag.empty() || tag.size() > 128) return false;
    if (!is_alnum(tag.front()) && tag.front() != '_') return false;
    for (char c : tag)
        if (!is_alnum(c) && c != '_' && c != '.' && c != '-') return false;
    return true;
}

std::string ImageReference::to_string() const {
    std::string s = registry + "/" + repository;
    if (!tag.empty()) s += ":" + tag;
    if (!digest.empty()) s += "@" + digest;
    return s;
}

std::string ImageReference::api_host() const {
    if (registry == "docker.io") return "registry-1.docker.io";
    return registry;
}

Result<ImageReference> parse_image_reference(std::string_view text) {
    if (text.empty()) return make_error("invalid image reference \"\": empty");
    for (char c : text)
        if (std::isspace(static_cast<unsigned char>(c)) || std::iscntrl(static_cast<unsigned char>(c)))
            return invalid(text, "contains whitespace or control characters");

    ImageReference ref;
    std::string_view rest = text;

    size_t at = rest.find('@');
    if (at != std::string_view::npos) {
        std::string_view digest = rest.substr(at + 1);
        if (!is_sha256_digest(digest)) {
            return invalid(text, "digest must be sha256: followed by 64 lowercase hex digits");
        }
        ref.digest = std::string(digest);
        rest = rest.substr(0, at);
    }

    // The tag is after the last ':' that follows the last '/' (a ':' before that belongs to a registry port).
    size_t last_slash = rest.rfind('/');
    size_t colon = rest.rfind(':');
    if (colon != std::string_view::npos && (last_slash == std::string_view::npos || colon > last_slash)) {
        std::string_view tag = rest.substr(colon + 1);
        if (!is_valid_tag(tag)) {
            return invalid(text,
                           "tag must be 1-128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'");
        }
        ref.tag = std::string(tag);
        rest = rest.substr(0, colon);
    }

    if (rest.empty()) return invalid(text, "missing repository name");

    size_t slash = rest.find('/');
    std::string_view first = rest.substr(0, slash);
    if (slash != std::string_view::npos &&
        (first.find('.') != std::string_view::npos || first.find(':') != std::string_view::npos ||
         first == "localhost" || (!first.empty() && first.front() == '['))) {
        if (!is_valid_registry(first))
            return invalid(text, "invalid registry \"" + std::string(first) + "\"");
        ref.registry = std::string(first);
        rest = rest.substr(slash + 1);
    } else {
        ref.registry = "docker.io";
    }
    if (ref.registry == "index.docker.io" || ref.registry == "registry-1.docker.io")
        ref.registry = "docker.io";

    if (rest.empty()) return invalid(text, "missing repository name");
    size_t start = 0;
    while (true) {
        size_t next = rest.find('/', start);
        std::string_view component =
            rest.substr(start, next == std::string_view::npos ? rest.npos : next - start);
        if (!is_valid_path_component(component)) {
            for (char c : component)
                if (c >= 'A' && c <= 'Z') return invalid(text, "repository names are lowercase");
            if (component.empty()) return invalid(text, "empty repository name component");
            return invalid(text, "repository name components are [a-z0-9] joined by '.', '_', '__' or '-'");
        }
        if (next == std::string_view::npos) break;
        start = next + 1;
    }
    ref.repository = std::string(rest);
    if (ref.registry == "docker.io" && ref.repository.find('/') == std::string::npos) {
        ref.repository = "library/" + ref.repository;
    }
    if (ref.registry.size() + 1 + ref.repository.size() > kMaxNameLength) {
        return invalid(text, "name longer than 255 characters");
    }
    if (ref.tag.empty() && ref.digest.empty()) ref.tag = "latest";
    return ref;
}

}  // namespace sandlot::host
