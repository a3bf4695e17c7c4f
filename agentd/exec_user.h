// Who an exec runs as: ExecStart::user resolved against the guest's /etc/passwd and /etc/group.
//
// Accepted forms: "" or "root" (uid 0), "name", "uid", "uid:gid", "name:group" (each half a name or a
// number). A name must exist; a numeric uid need not (HOME=/ then, and gid 0 unless given, as container
// runtimes do). Supplementary groups: every /etc/group entry listing the user's name, plus the primary gid.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include "proto/base/error.h"

namespace sandlot::agent {

struct UserDbPaths {
    std::string passwd = "/etc/passwd";
    std::string group = "/etc/group";
};

struct ExecUser {
    uid_t uid = 0;
    gid_t gid = 0;
    std::string name;           // "" for a numeric uid not in passwd
    std::string home;           // "/" when unknown
    std::string shell;          // "/bin/sh" when unknown
    std::vector<gid_t> groups;  // supplementary groups, primary gid included, no duplicates
};

// Fails (the caller reports SpawnErrorKind::BadUser) for an unknown name, a malformed spec or an out-of-range
// id. Missing passwd/group files count as empty.
Result<ExecUser> resolve_user(std::string_view spec, const UserDbPaths& paths = {});

}  // namespace sandlot::agent
