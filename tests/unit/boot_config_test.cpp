#include <gtest/gtest.h>

#include "proto/boot_config.h"

namespace sandlot::proto {
namespace {

BootConfig full_config() {
    BootConfig config;
    config.root = {BootRoot::Kind::Disk, kRootSource, "", BootRoot::Upper::Disk, kUpperSource, 0};
    config.mounts.push_back({BootMount::Kind::VirtioFs, "sandlot-vol0", "/data", true, 0, ""});
    config.mounts.push_back({BootMount::Kind::Tmpfs, "", "/scratch", false, 64 << 20, ""});
    config.patches.push_back({BootPatch::Op::Write, "/etc/motd", "/sandlot/files/0", "", 0600, 1000, 1000});
    config.patches.push_back({BootPatch::Op::Symlink, "/usr/bin/py", "", "python3", {}, {}, {}});
    config.patches.push_back({BootPatch::Op::Remove, "/etc/issue", "", "", {}, {}, {}});
    config.scripts.push_back({"hello", "/sandlot/files/1"});
    config.env = {"A=1", "EMPTY="};
    config.workdir = "/home/sandlot";
    config.user = "sandlot";
    config.hostname = "box";
    return config;
}

TEST(BootConfig, RoundTripsEveryField) {
    BootConfig config = full_config();
    auto parsed = parse_boot_config(boot_config_to_json(config));
    ASSERT_TRUE(parsed) << parsed.error().to_string();
    EXPECT_EQ(*parsed, config);
}

TEST(BootConfig, EmptyObjectMeansInitramfsRoot) {
    auto parsed = parse_boot_config("{}");
    ASSERT_TRUE(parsed);
    EXPECT_EQ(parsed->root.kind, BootRoot::Kind::Initramfs);
    EXPECT_TRUE(parsed->mounts.empty());
}

TEST(BootConfig, UnknownKeysAreIgnored) {
    auto parsed = parse_boot_config(R"({"future": [1, 2], "hostname": "x"})");
    ASSERT_TRUE(parsed);
    EXPECT_EQ(parsed->hostname, "x");
}

TEST(BootConfig, BadInputIsAnErrorNotACrash) {
    const char* bad[] = {
        "",
        "not json",
        "[]",
        R"({"root": 5})",
        R"({"root": {"kind": "floppy"}})",
        R"({"root": {"kind": "disk"}})",
        R"({"root": {"kind": "disk", "source": "r", "upper": "disk"}})",
        R"({"mounts": [{"kind": "tmpfs", "target": "relative"}]})",
        R"({"mounts": [{"kind": "virtiofs", "target": "/x"}]})",
        R"({"mounts": {"kind": "tmpfs"}})",
        R"({"patches": [{"path": "/x"}]})",
        R"({"patches": [{"op": "write", "path": "/x"}]})",
        R"({"patches": [{"op": "mkdir", "path": "/x", "mode": 99999}]})",
        R"({"patches": [{"op": "mkdir", "path": "/x", "mode": -1}]})",
        R"({"patches": [{"op": "symlink", "path": "/x"}]})",
        R"({"scripts": [{"name": "../evil", "source": "/sandlot/files/0"}]})",
        R"({"env": ["NOEQUALS"]})",
        R"({"env": [1]})",
        R"({"workdir": "home"})",
        R"({"hostname": 7})",
    };
    for (const char* text : bad) {
        auto parsed = parse_boot_config(text);
        EXPECT_FALSE(parsed) << text;
        if (!parsed) {
            EXPECT_NE(parsed.error().to_string().find("boot configuration"), std::string::npos) << text;
        }
    }
}

}  // namespace
}  // namespace sandlot::proto
