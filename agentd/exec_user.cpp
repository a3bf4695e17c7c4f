#include "agentd/exec_user.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <optional>

#include "proto/base/unique_fd.h"

namespace sandlot::agent {

namespace {

// The databases are guest files a process may have rewritten: read at most this much.
constexpr size_t kMaxDbSize = 4 << 20;

std::string read_db(const std::string& path) {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return "";
    std::string text;
    char buf[16384];
    while (text.size() < kMaxDbSize) {
        ssize_t n = read(fd.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        text.append(buf, static_cast<size_t>(n));
    }
    return text;
}

std::vector<std::string_view> split(std::string_view line, char sep) {
    std::vector<std::string_view> fields;
    size_t start = 0;
    for (;;) {
        size_t end = line.find(sep, start);
        if (end == std::string_view::npos) {
            fields.push_back(line.substr(start));
            return fields;
        }
        fields.push_back(line.substr(start, end - start));
        start = end + 1;
    }
}

// Calls fn(fields) for each non-comment line with at least min_fields colon-separated fields.
template <class Fn>
void for_each_entry(const std::string& text, size_t min_fields, Fn fn) {
    std::string_view rest = text;
    while (!rest.empty()) {
        size_t nl = rest.find('\n');
        std::string_view line = rest.substr(0, nl);
        rest = nl == std::string_view::npos ? std::string_view{} : rest.substr(nl + 1);
        if (line.empty() || line.front() == '#') continue;
        auto fields = split(line, ':');
        if (fields.size() >= min_fields) fn(fields);
    }
}

// A decimal id below 2^32-1 ((uid_t)-1 means "no change" to setuid and friends).
std::optional<uint32_t> parse_id(std::string_view text) {
    uint32_t value = 0;
    if (text.empty()) return std::nullopt;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size() || value == UINT32_MAX) return std::nullopt;
    return value;
}

struct PasswdEntry {
    std::string name;
    uint32_t uid = 0;
    uint32_t gid = 0;
    std::string home;
    std::string shell;
};

std::optional<PasswdEntry> find_passwd(const std::string& db, std::optional<std::string_view> name,
                                       std::optional<uint32_t> uid) {
    std::optional<PasswdEntry> found;
    for_each_entry(db, 7, [&](const std::vector<std::string_view>& f) {
        if (found) return;
        auto entry_uid = parse_id(f[2]);
        auto entry_gid = parse_id(f[3]);
        if (!entry_uid || !entry_gid) return;
        if ((name && f[0] == *name) || (uid && *entry_uid == *uid)) {
            found =
                PasswdEntry{std::string(f[0]), *entry_uid, *entry_gid, std::string(f[5]), std::string(f[6])};
        }
    });
    return found;
}

std::optional<uint32_t> find_group_by_name(const std::string& db, std::string_view name) {
    std::optional<uint32_t> found;
    for_each_entry(db, 3, [&](const std::vector<std::string_view>& f) {
        if (!found && f[0] == name) found = parse_id(f[2]);
    });
    return found;
}

std::vector<gid_t> groups_of(const std::string& db, const std::string& user, gid_t primary) {
    std::vector<gid_t> groups{primary};
    if (user.empty()) return groups;
    for_each_entry(db, 4, [&](const std::vector<std::string_view>& f) {
        auto gid = parse_id(f[2]);
        if (!gid) return;
        for (std::string_view member : split(f[3], ',')) {
            if (member == user && std::find(groups.begin(), groups.end(), *gid) == groups.end()) {
                groups.push_back(*gid);
                break;
            }
        }
    });
    return groups;
}

}  // namespace

Result<ExecUser> resolve_user(std::string_view spec, const UserDbPaths& paths) {
    if (spec.find('\0') != std::string_view::npos) return make_error("user name contains a NUL byte");
    std::string_view user_part = spec;
    std::optional<std::string_view> group_part;
    if (size_t colon = spec.find(':'); colon != std::string_view::npos) {
        user_part = spec.substr(0, colon);
        group_part = spec.substr(colon + 1);
        if (group_part->empty()) return make_error("empty group in user '" + std::string(spec) + "'");
    }
    if (user_part.empty() && group_part) return make_error("empty user in '" + std::string(spec) + "'");
    if (user_part.empty()) user_part = "root";

    std::string passwd = read_db(paths.passwd);
    ExecUser user;
    if (auto uid = parse_id(user_part)) {
        user.uid = *uid;
        if (auto entry = find_passwd(passwd, std::nullopt, *uid)) {
            user.name = entry->name;
            user.gid = entry->gid;
            user.home = entry->home;
            user.shell = entry->shell;
        }
    } else if (auto entry = find_passwd(passwd, user_part, std::nullopt)) {
        user.uid = entry->uid;
        user.name = entry->name;
        user.gid = entry->gid;
        user.home = entry->home;
        user.shell = entry->shell;
    } else if (user_part == "root") {
        user.name = "root";  // a guest without /etc/passwd still has root
        user.home = "/root";
    } else {
        return make_error("no such user '" + std::string(user_part) + "' in " + paths.passwd);
    }

    std::string group = read_db(paths.group);
    if (group_part) {
        if (auto gid = parse_id(*group_part)) {
            user.gid = *gid;
        } else if (auto named = find_group_by_name(group, *group_part)) {
            user.gid = *named;
        } else {
            return make_error("no such group '" + std::string(*group_part) + "' in " + paths.group);
        }
    }
    if (user.home.empty()) user.home = "/";
    if (user.shell.empty()) user.shell = "/bin/sh";
    user.groups = groups_of(group, user.name, user.gid);
    return user;
}

}  // namespace sandlot::agent
