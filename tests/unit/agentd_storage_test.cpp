// agentd's storage setup without a VM: patches on a temp directory used as the root (every op, modes,
// owners, and confinement against symlinks in the "image"), disk lookup over a fake sysfs tree, boot
// configuration loading, exec defaults through a host-mode agentd, and — as root — the whole root switch
// (disk root, overlay upper, volumes) in a forked child with its own mount namespace over loop devices.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/loop.h>
#include <linux/magic.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "agentd/disk_lookup.h"
#include "agentd/patches.h"
#include "agentd/storage.h"
#include "proto/base/unique_fd.h"
#include "proto/boot_config.h"
#include "proto/exec.h"
#include "proto/frame.h"
#include "proto/messages.h"
#include "tests/support/run_command.h"
#include "tests/support/temp_dir.h"

extern char** environ;

namespace sandlot::agent::storage_test {
namespace {

using proto::BootPatch;
using test::TempDir;
using namespace std::chrono_literals;

// ---- small file helpers ----

void write_file(const std::string& path, const std::string& content, mode_t mode = 0644) {
    std::ofstream(path, std::ios::binary) << content;
    chmod(path.c_str(), mode);
}

std::optional<std::string> read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

struct stat lstat_of(const std::string& path) {
    struct stat st {};
    if (lstat(path.c_str(), &st) != 0) st.st_mode = 0;
    return st;
}

mode_t perms(const std::string& path) {
    return lstat_of(path).st_mode & 07777;
}

bool is_regular(const std::string& path) {
    return S_ISREG(lstat_of(path).st_mode);
}
bool is_dir(const std::string& path) {
    return S_ISDIR(lstat_of(path).st_mode);
}
bool is_symlink(const std::string& path) {
    return S_ISLNK(lstat_of(path).st_mode);
}
bool exists(const std::string& path) {
    return lstat_of(path).st_mode != 0;
}

std::string link_target(const std::string& path) {
    char buf[4096];
    ssize_t n = readlink(path.c_str(), buf, sizeof buf);
    return n < 0 ? "" : std::string(buf, static_cast<size_t>(n));
}

// Every path below `dir` with its type and content, to prove a tree was not touched.
std::string snapshot(const std::string& dir) {
    std::string out;
    std::function<void(const std::string&, const std::string&)> walk = [&](const std::string& path,
                                                                           const std::string& rel) {
        DIR* d = opendir(path.c_str());
        if (!d) return;
        std::set<std::string> names;
        while (dirent* e = readdir(d)) {
            std::string name = e->d_name;
            if (name != "." && name != "..") names.insert(name);
        }
        closedir(d);
        for (const auto& name : names) {
            std::string p = path + "/" + name;
            struct stat st = lstat_of(p);
            out += rel + "/" + name + " " + std::to_string(st.st_mode) + " ";
            if (S_ISREG(st.st_mode)) out += read_file(p).value_or("?");
            if (S_ISLNK(st.st_mode)) out += "-> " + link_target(p);
            out += "\n";
            if (S_ISDIR(st.st_mode)) walk(p, rel + "/" + name);
        }
    };
    walk(dir, "");
    return out;
}

BootPatch patch(BootPatch::Op op, std::string path) {
    BootPatch p;
    p.op = op;
    p.path = std::move(path);
    return p;
}

// ---- patches on a temp root ----

class AgentdStoragePatches : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_FALSE(root_.path().empty());
        ASSERT_FALSE(initramfs_.path().empty());
        ASSERT_FALSE(outside_.path().empty());
        root_fd_ = UniqueFd(open(root_.path().c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
        initramfs_fd_ = UniqueFd(open(initramfs_.path().c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
        ASSERT_TRUE(root_fd_ && initramfs_fd_);
        mkdir((initramfs_.path() + "/sandlot").c_str(), 0755);
        mkdir((initramfs_.path() + "/sandlot/files").c_str(), 0755);
        write_file(outside_ / "keep", "host data\n");
        outside_before_ = snapshot(outside_.path());
    }
    void TearDown() override {
        // Nothing any test did may reach the directory outside the root.
        EXPECT_EQ(snapshot(outside_.path()), outside_before_);
    }

    // A payload file in the fake initramfs; returns its path there.
    std::string payload(const std::string& name, const std::string& content, mode_t mode = 0600) {
        write_file(initramfs_.path() + "/sandlot/files/" + name, content, mode);
        return "/sandlot/files/" + name;
    }
    std::string in_root(const std::string& path) const { return root_.path() + path; }
    PatchRoots roots() const { return {root_fd_.get(), initramfs_fd_.get()}; }

    Result<void> apply(const BootPatch& p) { return apply_patch(roots(), p); }
    void apply_ok(const BootPatch& p) {
        auto ok = apply(p);
        ASSERT_TRUE(ok) << proto::to_string(p.op) << " " << p.path << ": " << ok.error().to_string();
    }

    TempDir root_{"agentstore-root"};
    TempDir initramfs_{"agentstore-initramfs"};
    TempDir outside_{"agentstore-outside"};
    UniqueFd root_fd_, initramfs_fd_;
    std::string outside_before_;
};

TEST_F(AgentdStoragePatches, WriteCreatesParentsAndUsesExactModes) {
    mode_t old_umask = umask(077);  // modes must not depend on the agent's umask
    BootPatch p = patch(BootPatch::Op::Write, "/etc/app/app.conf");
    p.source = payload("0", "key=value\n");
    auto ok = apply(p);
    umask(old_umask);
    ASSERT_TRUE(ok) << ok.error().to_string();
    EXPECT_EQ(read_file(in_root("/etc/app/app.conf")), "key=value\n");
    EXPECT_EQ(perms(in_root("/etc/app/app.conf")), 0644u);
    EXPECT_EQ(perms(in_root("/etc")), 0755u);
    EXPECT_EQ(perms(in_root("/etc/app")), 0755u);

    // Writing again replaces the content and applies the given mode.
    p.source = payload("1", "new\n");
    p.mode = 0600;
    apply_ok(p);
    EXPECT_EQ(read_file(in_root("/etc/app/app.conf")), "new\n");
    EXPECT_EQ(perms(in_root("/etc/app/app.conf")), 0600u);
}

TEST_F(AgentdStoragePatches, WriteSetsOwnerThenSetIdMode) {
    if (geteuid() != 0) GTEST_SKIP() << "chown needs root";
    BootPatch p = patch(BootPatch::Op::Write, "/usr/bin/tool");
    p.source = payload("0", "#!/bin/sh\n");
    p.mode = 04750;
    p.uid = 1234;
    p.gid = 5678;
    apply_ok(p);
    struct stat st = lstat_of(in_root("/usr/bin/tool"));
    EXPECT_EQ(st.st_uid, 1234u);
    EXPECT_EQ(st.st_gid, 5678u);
    EXPECT_EQ(st.st_mode & 07777, 04750u);  // chown came first, so the set-uid bit survived
}

TEST_F(AgentdStoragePatches, WriteReplacesASymlinkInsteadOfFollowingIt) {
    mkdir(in_root("/etc").c_str(), 0755);
    ASSERT_EQ(symlink((outside_ / "keep").c_str(), in_root("/etc/resolv.conf").c_str()), 0);
    BootPatch p = patch(BootPatch::Op::Write, "/etc/resolv.conf");
    p.source = payload("0", "nameserver 10.0.0.1\n");
    apply_ok(p);
    EXPECT_FALSE(is_symlink(in_root("/etc/resolv.conf")));
    EXPECT_TRUE(is_regular(in_root("/etc/resolv.conf")));
    EXPECT_EQ(read_file(in_root("/etc/resolv.conf")), "nameserver 10.0.0.1\n");
}

TEST_F(AgentdStoragePatches, WriteOntoADirectoryOrFromAMissingSourceFails) {
    mkdir(in_root("/dir").c_str(), 0755);
    BootPatch p = patch(BootPatch::Op::Write, "/dir");
    p.source = payload("0", "x");
    auto ok = apply(p);
    ASSERT_FALSE(ok);
    EXPECT_EQ(ok.error().code, EISDIR) << ok.error().to_string();

    p = patch(BootPatch::Op::Write, "/file");
    p.source = "/sandlot/files/missing";
    ok = apply(p);
    ASSERT_FALSE(ok);
    EXPECT_EQ(ok.error().code, ENOENT);
    EXPECT_NE(ok.error().message.find("/sandlot/files/missing"), std::string::npos) << ok.error().message;
}

TEST_F(AgentdStoragePatches, AppendAddsToExistingFilesAndCreatesMissingOnes) {
    mkdir(in_root("/etc").c_str(), 0755);
    write_file(in_root("/etc/hosts"), "127.0.0.1 localhost\n", 0600);
    BootPatch p = patch(BootPatch::Op::Append, "/etc/hosts");
    p.source = payload("0", "10.0.0.2 db\n");
    apply_ok(p);
    EXPECT_EQ(read_file(in_root("/etc/hosts")), "127.0.0.1 localhost\n10.0.0.2 db\n");
    EXPECT_EQ(perms(in_root("/etc/hosts")), 0600u);  // an existing file keeps its mode unless one is given

    p = patch(BootPatch::Op::Append, "/var/log/new.log");
    p.source = payload("1", "first\n");
    apply_ok(p);
    EXPECT_EQ(read_file(in_root("/var/log/new.log")), "first\n");
    EXPECT_EQ(perms(in_root("/var/log/new.log")), 0644u);

    // A symlink inside the root is followed, inside the root.
    ASSERT_EQ(symlink("hosts", in_root("/etc/hosts.link").c_str()), 0);
    p = patch(BootPatch::Op::Append, "/etc/hosts.link");
    p.source = payload("2", "10.0.0.3 cache\n");
    p.mode = 0640;
    apply_ok(p);
    EXPECT_EQ(read_file(in_root("/etc/hosts")), "127.0.0.1 localhost\n10.0.0.2 db\n10.0.0.3 cache\n");
    EXPECT_EQ(perms(in_root("/etc/hosts")), 0640u);
}

TEST_F(AgentdStoragePatches, AppendToAFifoFailsWithoutHanging) {
    ASSERT_EQ(mkfifo(in_root("/pipe").c_str(), 0644), 0);
    BootPatch p = patch(BootPatch::Op::Append, "/pipe");
    p.source = payload("0", "x");
    EXPECT_FALSE(apply(p));
}

TEST_F(AgentdStoragePatches, MkdirMakesParentsAndAppliesModeAndOwner) {
    BootPatch p = patch(BootPatch::Op::Mkdir, "/srv/app/data");
    p.mode = 0700;
    apply_ok(p);
    EXPECT_EQ(perms(in_root("/srv/app/data")), 0700u);
    EXPECT_EQ(perms(in_root("/srv/app")), 0755u);
    EXPECT_EQ(perms(in_root("/srv")), 0755u);

    apply_ok(patch(BootPatch::Op::Mkdir, "/srv/app/data"));  // exists, no mode: unchanged
    EXPECT_EQ(perms(in_root("/srv/app/data")), 0700u);
    apply_ok(patch(BootPatch::Op::Mkdir, "/srv/plain"));
    EXPECT_EQ(perms(in_root("/srv/plain")), 0755u);

    p.mode = 01777;
    if (geteuid() == 0) {
        p.uid = 42;
        p.gid = 43;
    }
    apply_ok(p);
    EXPECT_EQ(perms(in_root("/srv/app/data")), 01777u);
    if (geteuid() == 0) {
        EXPECT_EQ(lstat_of(in_root("/srv/app/data")).st_uid, 42u);
        EXPECT_EQ(lstat_of(in_root("/srv/app/data")).st_gid, 43u);
    }

    write_file(in_root("/srv/file"), "x");
    EXPECT_FALSE(apply(patch(BootPatch::Op::Mkdir, "/srv/file/sub")));
}

TEST_F(AgentdStoragePatches, RemoveDeletesTreesWithoutFollowingSymlinks) {
    mkdir(in_root("/data").c_str(), 0755);
    mkdir(in_root("/data/sub").c_str(), 0555);  // read-only directories are no obstacle for root
    write_file(in_root("/data/x"), "x");
    ASSERT_EQ(symlink(outside_.path().c_str(), in_root("/data/abs").c_str()), 0);
    ASSERT_EQ(symlink("../../../../../../..", in_root("/data/up").c_str()), 0);
    ASSERT_EQ(symlink("/", in_root("/data/root").c_str()), 0);
    write_file(in_root("/data/sub/y"), "y");
    if (geteuid() != 0) chmod(in_root("/data/sub").c_str(), 0755);
    write_file(in_root("/other"), "stays");

    apply_ok(patch(BootPatch::Op::Remove, "/data"));
    EXPECT_FALSE(exists(in_root("/data")));
    EXPECT_EQ(read_file(in_root("/other")), "stays");

    apply_ok(patch(BootPatch::Op::Remove, "/other"));
    EXPECT_FALSE(exists(in_root("/other")));
    apply_ok(patch(BootPatch::Op::Remove, "/not/there"));  // missing is fine
    apply_ok(patch(BootPatch::Op::Remove, "/not"));

    // A symlink as the last component is removed itself, not what it points at.
    ASSERT_EQ(symlink(outside_.path().c_str(), in_root("/link").c_str()), 0);
    apply_ok(patch(BootPatch::Op::Remove, "/link"));
    EXPECT_FALSE(exists(in_root("/link")));

    EXPECT_FALSE(apply(patch(BootPatch::Op::Remove, "/")));
    EXPECT_FALSE(apply(patch(BootPatch::Op::Remove, "/a/..")));
}

TEST_F(AgentdStoragePatches, SymlinkCreatesAndReplacesButNeverReplacesADirectory) {
    BootPatch p = patch(BootPatch::Op::Symlink, "/usr/local/bin/py");
    p.target = "/usr/bin/python3";
    apply_ok(p);
    EXPECT_EQ(link_target(in_root("/usr/local/bin/py")), "/usr/bin/python3");

    p.target = "python3.11";  // replaces the existing link (ln -sfn)
    apply_ok(p);
    EXPECT_EQ(link_target(in_root("/usr/local/bin/py")), "python3.11");

    write_file(in_root("/usr/local/bin/file"), "x");
    p = patch(BootPatch::Op::Symlink, "/usr/local/bin/file");
    p.target = "elsewhere";
    if (geteuid() == 0) p.uid = 7;
    apply_ok(p);
    EXPECT_EQ(link_target(in_root("/usr/local/bin/file")), "elsewhere");
    if (geteuid() == 0) {
        EXPECT_EQ(lstat_of(in_root("/usr/local/bin/file")).st_uid, 7u);
    }

    p = patch(BootPatch::Op::Symlink, "/usr/local");
    p.target = "x";
    auto ok = apply(p);
    ASSERT_FALSE(ok);
    EXPECT_EQ(ok.error().code, EISDIR);
    EXPECT_TRUE(is_dir(in_root("/usr/local/bin")));
}

TEST_F(AgentdStoragePatches, CopyOfAFileKeepsTheSourceModeUnlessOneIsGiven) {
    BootPatch p = patch(BootPatch::Op::Copy, "/opt/tool");
    p.source = payload("0", "binary", 0750);
    apply_ok(p);
    EXPECT_EQ(read_file(in_root("/opt/tool")), "binary");
    EXPECT_EQ(perms(in_root("/opt/tool")), 0750u);

    p.mode = 0555;
    apply_ok(p);
    EXPECT_EQ(perms(in_root("/opt/tool")), 0555u);
}

TEST_F(AgentdStoragePatches, CopyOfATreeMergesAndKeepsModesAndSymlinks) {
    std::string src = initramfs_.path() + "/sandlot/files/3";
    mkdir(src.c_str(), 0750);
    mkdir((src + "/bin").c_str(), 0755);
    mkdir((src + "/etc").c_str(), 0700);
    mkdir((src + "/empty").c_str(), 0555);
    write_file(src + "/bin/tool", "tool", 0755);
    write_file(src + "/etc/conf", "new conf", 0640);
    ASSERT_EQ(symlink("bin/tool", (src + "/tool").c_str()), 0);
    ASSERT_EQ(mkfifo((src + "/fifo").c_str(), 0600), 0);  // skipped

    // New destination: made with the source's mode.
    BootPatch p = patch(BootPatch::Op::Copy, "/opt/app");
    p.source = "/sandlot/files/3";
    apply_ok(p);
    EXPECT_EQ(perms(in_root("/opt/app")), 0750u);
    EXPECT_EQ(read_file(in_root("/opt/app/bin/tool")), "tool");
    EXPECT_EQ(perms(in_root("/opt/app/bin/tool")), 0755u);
    EXPECT_EQ(perms(in_root("/opt/app/etc")), 0700u);
    EXPECT_EQ(perms(in_root("/opt/app/etc/conf")), 0640u);
    EXPECT_EQ(perms(in_root("/opt/app/empty")), 0555u);
    EXPECT_EQ(link_target(in_root("/opt/app/tool")), "bin/tool");
    EXPECT_FALSE(exists(in_root("/opt/app/fifo")));

    // Existing destination: merged; existing directories keep their mode, files are replaced.
    mkdir(in_root("/srv").c_str(), 0711);
    mkdir(in_root("/srv/etc").c_str(), 0755);
    write_file(in_root("/srv/etc/conf"), "old conf", 0600);
    write_file(in_root("/srv/etc/mine"), "mine");
    write_file(in_root("/srv/bin"), "a file where the tree has a directory");
    p.path = "/srv";
    apply_ok(p);
    EXPECT_EQ(perms(in_root("/srv")), 0711u);
    EXPECT_EQ(perms(in_root("/srv/etc")), 0755u);
    EXPECT_EQ(read_file(in_root("/srv/etc/conf")), "new conf");
    EXPECT_EQ(perms(in_root("/srv/etc/conf")), 0640u);
    EXPECT_EQ(read_file(in_root("/srv/etc/mine")), "mine");
    EXPECT_TRUE(is_dir(in_root("/srv/bin")));
    EXPECT_EQ(read_file(in_root("/srv/bin/tool")), "tool");
}

TEST_F(AgentdStoragePatches, CopyOfATreeAppliesTheOwnerToEverything) {
    if (geteuid() != 0) GTEST_SKIP() << "chown needs root";
    std::string src = initramfs_.path() + "/sandlot/files/4";
    mkdir(src.c_str(), 0755);
    mkdir((src + "/d").c_str(), 0755);
    write_file(src + "/d/f", "f");
    ASSERT_EQ(symlink("d/f", (src + "/l").c_str()), 0);
    BootPatch p = patch(BootPatch::Op::Copy, "/home/user");
    p.source = "/sandlot/files/4";
    p.uid = 1000;
    p.gid = 1001;
    apply_ok(p);
    for (const char* path : {"/home/user", "/home/user/d", "/home/user/d/f", "/home/user/l"}) {
        struct stat st = lstat_of(in_root(path));
        EXPECT_EQ(st.st_uid, 1000u) << path;
        EXPECT_EQ(st.st_gid, 1001u) << path;
    }
    EXPECT_EQ(lstat_of(in_root("/home")).st_uid, 0u);  // a parent made on the way belongs to root
}

// The root image may hold any symlinks at all; none may lead a patch outside the root.
TEST_F(AgentdStoragePatches, SymlinksInTheImageCannotLeadOutsideTheRoot) {
    ASSERT_EQ(symlink("/", in_root("/escape").c_str()), 0);
    ASSERT_EQ(symlink("../../../../../../../..", in_root("/up").c_str()), 0);
    ASSERT_EQ(symlink(outside_.path().c_str(), in_root("/abs").c_str()), 0);
    // Inside the root, the absolute target names this directory (as it would in the guest).
    ASSERT_TRUE(std::filesystem::create_directories(in_root(outside_.path())));
    std::string src_dir = initramfs_.path() + "/sandlot/files/tree";
    mkdir(src_dir.c_str(), 0755);
    write_file(src_dir + "/t", "t");

    std::string data = payload("0", "data\n");
    for (const std::string& via : {std::string("/escape"), std::string("/up"), std::string("/abs")}) {
        SCOPED_TRACE(via);
        BootPatch w = patch(BootPatch::Op::Write, via + "/w");
        w.source = data;
        apply_ok(w);
        BootPatch a = patch(BootPatch::Op::Append, via + "/a");
        a.source = data;
        apply_ok(a);
        apply_ok(patch(BootPatch::Op::Mkdir, via + "/m/n"));
        BootPatch s = patch(BootPatch::Op::Symlink, via + "/s");
        s.target = "/etc/passwd";
        apply_ok(s);
        BootPatch cf = patch(BootPatch::Op::Copy, via + "/cf");
        cf.source = data;
        apply_ok(cf);
        BootPatch cd = patch(BootPatch::Op::Copy, via + "/cd");
        cd.source = "/sandlot/files/tree";
        apply_ok(cd);
        apply_ok(patch(BootPatch::Op::Remove, via + "/keep"));  // the outside "keep" must survive
    }
    // "/" and ".." stopped at the root: both landed at the top of the root.
    EXPECT_EQ(read_file(in_root("/w")), "data\n");
    EXPECT_EQ(read_file(in_root("/a")),
              "data\n"
              "data\n");
    EXPECT_TRUE(is_dir(in_root("/m/n")));
    EXPECT_EQ(read_file(in_root("/cd/t")), "t");
    // The absolute symlink was resolved as if the root were "/".
    EXPECT_EQ(read_file(in_root(outside_.path() + "/w")), "data\n");
    EXPECT_EQ(link_target(in_root(outside_.path() + "/s")), "/etc/passwd");
    // A symlink whose target does not exist inside the root is not an entrance either: creating through it
    // fails (as mkdir -p would), and nothing appears outside.
    ASSERT_EQ(symlink((outside_.path() + "/sub").c_str(), in_root("/dangling").c_str()), 0);
    BootPatch through = patch(BootPatch::Op::Write, "/dangling/w");
    through.source = data;
    EXPECT_FALSE(apply(through));
    EXPECT_FALSE(apply(patch(BootPatch::Op::Mkdir, "/dangling/m")));
    // Sources are confined to the initramfs root the same way.
    BootPatch sneaky = patch(BootPatch::Op::Write, "/stolen");
    sneaky.source = "/sandlot/files/../../../../../../" + outside_.path() + "/keep";
    EXPECT_FALSE(apply(sneaky));
    EXPECT_FALSE(exists(in_root("/stolen")));
    // TearDown checks the outside directory is unchanged.
}

TEST_F(AgentdStoragePatches, PatchesApplyInOrderAndAFailureNamesThePatch) {
    std::vector<BootPatch> patches;
    patches.push_back(patch(BootPatch::Op::Mkdir, "/a"));
    BootPatch w = patch(BootPatch::Op::Write, "/a/f");
    w.source = payload("0", "1");
    patches.push_back(w);
    patches.push_back(patch(BootPatch::Op::Remove, "/a/f"));
    BootPatch bad = patch(BootPatch::Op::Write, "/a/g");
    bad.source = "/sandlot/files/nope";
    patches.push_back(bad);
    patches.push_back(patch(BootPatch::Op::Mkdir, "/never"));
    auto ok = apply_patches(roots(), patches);
    ASSERT_FALSE(ok);
    EXPECT_EQ(ok.error().message.rfind("patch 3 (write /a/g): ", 0), 0u) << ok.error().message;
    EXPECT_TRUE(is_dir(in_root("/a")));
    EXPECT_FALSE(exists(in_root("/a/f")));
    EXPECT_FALSE(exists(in_root("/never")));
}

TEST_F(AgentdStoragePatches, ScriptsAreInstalledExecutableInTheScriptDirectory) {
    mode_t old_umask = umask(077);
    std::vector<proto::BootScript> scripts = {{"hello", payload("0", "#!/bin/sh\necho hi\n")},
                                              {"bye", payload("1", "#!/bin/sh\necho bye\n")}};
    auto ok = install_scripts(roots(), scripts);
    umask(old_umask);
    ASSERT_TRUE(ok) << ok.error().to_string();
    std::string dir = in_root(proto::kScriptDir);
    EXPECT_EQ(perms(dir), 0755u);
    EXPECT_EQ(perms(in_root("/run/sandlot")), 0755u);
    EXPECT_EQ(read_file(dir + "/hello"), "#!/bin/sh\necho hi\n");
    EXPECT_EQ(perms(dir + "/hello"), 0755u);
    EXPECT_EQ(perms(dir + "/bye"), 0755u);

    std::vector<proto::BootScript> missing = {{"x", "/sandlot/files/none"}};
    ok = install_scripts(roots(), missing);
    ASSERT_FALSE(ok);
    EXPECT_EQ(ok.error().message.rfind("script x: ", 0), 0u) << ok.error().message;
}

TEST_F(AgentdStoragePatches, RemoveTreeContentsEmptiesADirectory) {
    mkdir(in_root("/d").c_str(), 0755);
    write_file(in_root("/d/f"), "f");
    write_file(in_root("/top"), "t");
    ASSERT_EQ(symlink(outside_.path().c_str(), in_root("/link").c_str()), 0);
    UniqueFd dir(open(root_.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    ASSERT_TRUE(remove_tree_contents(dir.get()));
    EXPECT_EQ(snapshot(root_.path()), "");
}

// ---- disks by serial ----

TEST(AgentdStorageDisks, SerialsAreTrimmedAtNulOrNewline) {
    EXPECT_EQ(trim_serial("sandlot-root\n"), "sandlot-root");
    EXPECT_EQ(trim_serial(std::string_view("vol\0\0\0\n", 7)), "vol");
    EXPECT_EQ(trim_serial("12345678901234567890"), "12345678901234567890");
    EXPECT_EQ(trim_serial(""), "");
}

TEST(AgentdStorageDisks, ProbeCandidatesAreBlockFilesystemsExt4First) {
    std::string text =
        "nodev\tsysfs\nnodev\ttmpfs\n\text3\n\text2\n\text4\n\tsquashfs\nnodev\toverlay\n\txfs\n";
    EXPECT_EQ(probe_candidates(text), (std::vector<std::string>{"ext4", "ext3", "ext2", "squashfs", "xfs"}));
    EXPECT_EQ(probe_candidates("\tvfat\n"), std::vector<std::string>{"vfat"});
    EXPECT_TRUE(probe_candidates("garbage without tabs\n").empty());
}

class FakeSysfs {
  public:
    FakeSysfs() {
        mkdir((dir_.path() + "/sys").c_str(), 0755);
        mkdir((dir_.path() + "/sys/block").c_str(), 0755);
        mkdir((dir_.path() + "/dev").c_str(), 0755);
        paths_.sysfs = dir_.path() + "/sys";
        paths_.dev = dir_.path() + "/dev";
    }
    void add_disk(const std::string& name, const std::string& serial, bool node = true) {
        std::string d = paths_.sysfs + "/block/" + name;
        mkdir(d.c_str(), 0755);
        // Write to a temporary name and rename: a concurrent lookup never reads a half-written serial.
        write_file(d + "/serial.tmp", serial);
        rename((d + "/serial.tmp").c_str(), (d + "/serial").c_str());
        if (node) add_node(name);
    }
    void add_node(const std::string& name) {
        std::string path = paths_.dev + "/" + name;
        if (mknod(path.c_str(), S_IFBLK | 0600, makedev(254, 0)) != 0) ADD_FAILURE() << "mknod " << path;
    }
    const DiskLookupPaths& paths() const { return paths_; }

  private:
    TempDir dir_{"agentstore-sysfs"};
    DiskLookupPaths paths_;
};

TEST(AgentdStorageDisks, FindsTheDiskWithTheSerial) {
    if (geteuid() != 0) GTEST_SKIP() << "block device nodes need root";
    FakeSysfs sys;
    sys.add_disk("vda", "sandlot-root\n");
    sys.add_disk("vdb", std::string("sandlot-upper\0\0\0\0\0\0\0\n", 21));
    sys.add_disk("vdaa", "sandlot-vol0\n");
    sys.add_disk("sda", "sandlot-vol1\n");  // not a virtio disk: never considered
    auto root = find_disk_by_serial("sandlot-root", sys.paths(), 0ms);
    ASSERT_TRUE(root) << root.error().to_string();
    EXPECT_EQ(*root, sys.paths().dev + "/vda");
    EXPECT_EQ(find_disk_by_serial("sandlot-upper", sys.paths(), 0ms).value_or(""), sys.paths().dev + "/vdb");
    EXPECT_EQ(find_disk_by_serial("sandlot-vol0", sys.paths(), 0ms).value_or(""), sys.paths().dev + "/vdaa");
    auto other = find_disk_by_serial("sandlot-vol1", sys.paths(), 0ms);
    ASSERT_FALSE(other);
    EXPECT_EQ(other.error().code, ENODEV);
    EXPECT_NE(other.error().message.find("sandlot-vol1"), std::string::npos);
    // A prefix of a serial is not that serial.
    EXPECT_FALSE(find_disk_by_serial("sandlot-roo", sys.paths(), 0ms));
}

TEST(AgentdStorageDisks, MissingNodesDuplicatesAndEmptySerialsAreErrors) {
    FakeSysfs sys;
    sys.add_disk("vdc", "nodeless\n", /*node=*/false);
    auto nodeless = find_disk_by_serial("nodeless", sys.paths(), 20ms);
    ASSERT_FALSE(nodeless);
    EXPECT_NE(nodeless.error().message.find("no block device at " + sys.paths().dev + "/vdc"),
              std::string::npos)
        << nodeless.error().message;

    write_file(sys.paths().dev + "/vdd", "a regular file is not a disk");
    sys.add_disk("vdd", "regular\n", /*node=*/false);
    EXPECT_FALSE(find_disk_by_serial("regular", sys.paths(), 0ms));

    sys.add_disk("vde", "twin\n", false);
    sys.add_disk("vdf", "twin\n", false);
    auto twins = find_disk_by_serial("twin", sys.paths(), 0ms);
    ASSERT_FALSE(twins);
    EXPECT_NE(twins.error().message.find("vde, vdf"), std::string::npos) << twins.error().message;

    EXPECT_FALSE(find_disk_by_serial("", sys.paths(), 0ms));
    DiskLookupPaths nowhere{"/nonexistent-sysfs", "/nonexistent-dev"};
    EXPECT_FALSE(find_disk_by_serial("x", nowhere, 0ms));
}

TEST(AgentdStorageDisks, WaitsForADiskThatAppearsLate) {
    if (geteuid() != 0) GTEST_SKIP() << "block device nodes need root";
    FakeSysfs sys;
    std::thread late([&] {
        std::this_thread::sleep_for(100ms);  // the disk's arrival, not synchronisation
        sys.add_disk("vdz", "late\n");
    });
    auto start = std::chrono::steady_clock::now();
    auto found = find_disk_by_serial("late", sys.paths(), 10s);
    late.join();
    ASSERT_TRUE(found) << found.error().to_string();
    EXPECT_EQ(*found, sys.paths().dev + "/vdz");
    EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
}

// ---- boot configuration ----

TEST(AgentdStorageConfig, AbsentFileMeansNoConfiguration) {
    TempDir dir;
    auto config = load_boot_config(dir / "boot.json");
    ASSERT_TRUE(config) << config.error().to_string();
    EXPECT_FALSE(config->has_value());
}

TEST(AgentdStorageConfig, MalformedOrUnreadableFilesAreErrors) {
    TempDir dir;
    write_file(dir / "bad.json", "{not json");
    auto bad = load_boot_config(dir / "bad.json");
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().message.find(dir / "bad.json"), std::string::npos) << bad.error().message;

    write_file(dir / "wrong.json", R"({"root": {"kind": "floppy"}})");
    EXPECT_FALSE(load_boot_config(dir / "wrong.json"));

    mkdir((dir / "a-directory").c_str(), 0755);
    EXPECT_FALSE(load_boot_config(dir / "a-directory"));
}

TEST(AgentdStorageConfig, ValidFileParses) {
    TempDir dir;
    proto::BootConfig config;
    config.root.kind = proto::BootRoot::Kind::Disk;
    config.root.source = proto::kRootSource;
    config.root.upper = proto::BootRoot::Upper::Tmpfs;
    config.env = {"A=1"};
    config.workdir = "/work";
    config.hostname = "box";
    write_file(dir / "boot.json", proto::boot_config_to_json(config));
    auto loaded = load_boot_config(dir / "boot.json");
    ASSERT_TRUE(loaded) << loaded.error().to_string();
    ASSERT_TRUE(loaded->has_value());
    EXPECT_EQ(**loaded, config);
}

// ---- exec defaults through a host-mode agentd ----

const std::string kAgentd = std::string(SANDLOT_BIN_DIR) + "/agentd";

class HostAgent {
  public:
    explicit HostAgent(std::vector<std::string> extra) {
        socket_ = dir_ / "a.sock";
        std::vector<std::string> args = {kAgentd, "--listen-unix", socket_};
        args.insert(args.end(), extra.begin(), extra.end());
        std::vector<char*> argv;
        for (auto& a : args)
            argv.push_back(a.data());
        argv.push_back(nullptr);
        int rc = posix_spawn(&pid_, argv[0], nullptr, nullptr, argv.data(), environ);
        if (rc != 0) {
            ADD_FAILURE() << "spawn agentd: " << std::strerror(rc);
            pid_ = -1;
        }
    }
    ~HostAgent() {
        if (pid_ > 0) {
            kill(pid_, SIGKILL);
            waitpid(pid_, nullptr, 0);
        }
    }

    // Connected and past HELLO, with a receive timeout so a broken agent fails the test instead of hanging.
    UniqueFd connect() {
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, socket_.c_str(), sizeof addr.sun_path - 1);
        auto deadline = std::chrono::steady_clock::now() + 10s;
        while (std::chrono::steady_clock::now() < deadline) {
            UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
            if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
                timeval tv{10, 0};
                setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
                auto hello = proto::read_frame(fd.get());
                if (!hello || hello->type != static_cast<uint16_t>(proto::MessageType::Hello)) return {};
                return fd;
            }
            if (pid_ <= 0 || waitpid(pid_, nullptr, WNOHANG) == pid_) {
                pid_ = -1;
                return {};
            }
            std::this_thread::sleep_for(5ms);
        }
        return {};
    }
    // True once the agent exited (with its status).
    std::optional<int> exited(std::chrono::milliseconds timeout) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            int status = 0;
            if (pid_ > 0 && waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                return status;
            }
            std::this_thread::sleep_for(5ms);
        }
        return std::nullopt;
    }

  private:
    TempDir dir_{"agentstore-agent"};
    std::string socket_;
    pid_t pid_ = -1;
};

struct ExecOutcome {
    std::string out;
    std::optional<int> exit_code;
    std::string error;
};

ExecOutcome exec_once(int fd, proto::ExecStart request, uint32_t stream) {
    ExecOutcome outcome;
    request.output_window = 1 << 20;
    auto payload = proto::encode_exec_start(request);
    if (!payload) return {"", std::nullopt, payload.error().to_string()};
    if (!proto::write_frame(fd, proto::make_frame(proto::MessageType::ExecStart, stream, *payload)))
        return {"", std::nullopt, "write failed"};
    for (;;) {
        auto frame = proto::read_frame(fd);
        if (!frame) return {outcome.out, std::nullopt, "read: " + frame.error().to_string()};
        if (frame->stream_id != stream) continue;
        auto type = static_cast<proto::MessageType>(frame->type);
        if (type == proto::MessageType::Stdout)
            outcome.out.append(frame->payload.begin(), frame->payload.end());
        if (type == proto::MessageType::Exit) {
            outcome.exit_code = proto::decode_exit(frame->payload).value().exit_code;
            return outcome;
        }
        if (type == proto::MessageType::Error) {
            outcome.error = proto::decode_error(frame->payload).value().message;
            return outcome;
        }
    }
}

proto::ExecStart shell(const std::string& script) {
    proto::ExecStart request;
    request.argv = {"/bin/sh", "-c", script};
    return request;
}

TEST(AgentdStorageExec, BootConfigDefaultsForEnvCwdAndUser) {
    TempDir dir{"agentstore-exec"};
    chmod(dir.path().c_str(), 0755);  // the default user below must reach the workdir
    std::string workdir = dir / "work";
    mkdir(workdir.c_str(), 0777);
    chmod(workdir.c_str(), 0777);
    bool root = geteuid() == 0;
    proto::BootConfig config;
    config.env = {"FOO=boot", "BAR=boot", "PATH=/usr/bin:/bin:/boot-path"};
    config.workdir = workdir;
    config.user = root ? "65534:65534" : "";
    write_file(dir / "boot.json", proto::boot_config_to_json(config));

    HostAgent agent({"--boot-config", dir / "boot.json"});
    UniqueFd fd = agent.connect();
    ASSERT_TRUE(fd) << "agentd did not come up";

    // Nothing in the request: every default applies.
    ExecOutcome o = exec_once(fd.get(), shell("echo \"$FOO|$BAR|$PATH\"; pwd; id -u"), 1);
    ASSERT_EQ(o.exit_code, 0) << o.error;
    EXPECT_EQ(o.out, "boot|boot|/usr/bin:/bin:/boot-path\n" + workdir + "\n" +
                         (root ? std::string("65534") : std::to_string(geteuid())) + "\n");

    // The request's own env (by key), cwd and user win.
    proto::ExecStart request = shell("echo \"$FOO|$BAR|$NEW\"; pwd; id -u");
    request.env = {"BAR=request", "NEW=x"};
    request.cwd = "/";
    if (root) request.user = "0";
    o = exec_once(fd.get(), request, 3);
    ASSERT_EQ(o.exit_code, 0) << o.error;
    EXPECT_EQ(o.out, "boot|request|x\n/\n" + std::to_string(geteuid()) + "\n");
}

TEST(AgentdStorageExec, WithoutBootConfigNothingChanges) {
    HostAgent agent({});
    UniqueFd fd = agent.connect();
    ASSERT_TRUE(fd) << "agentd did not come up";
    ExecOutcome o = exec_once(fd.get(), shell("echo \"$PATH\""), 1);
    ASSERT_EQ(o.exit_code, 0) << o.error;
    EXPECT_EQ(o.out, "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
}

TEST(AgentdStorageExec, BadBootConfigStopsTheAgent) {
    TempDir dir{"agentstore-exec"};
    write_file(dir / "boot.json", "[]");
    HostAgent agent({"--boot-config", dir / "boot.json"});
    auto status = agent.exited(10s);
    ASSERT_TRUE(status) << "agentd kept running with a bad boot configuration";
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 1);
}

// ---- the whole setup in a private mount namespace (root only) ----

bool have_program(const std::string& name) {
    for (const char* dir : {"/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"})
        if (access((dir + name).c_str(), X_OK) == 0) return true;
    return false;
}

// A loop device over an image file, detached on destruction (or when its last user goes, if still mounted).
class LoopDevice {
  public:
    static std::optional<LoopDevice> attach(const std::string& image, bool read_only) {
        UniqueFd control(open("/dev/loop-control", O_RDWR | O_CLOEXEC));
        if (!control) return std::nullopt;
        UniqueFd file(open(image.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC));
        if (!file) return std::nullopt;
        for (int attempt = 0; attempt < 16; ++attempt) {
            int n = ioctl(control.get(), LOOP_CTL_GET_FREE);
            if (n < 0) return std::nullopt;
            std::string path = "/dev/loop" + std::to_string(n);
            UniqueFd dev(open(path.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC));
            if (!dev) return std::nullopt;
            loop_config config{};
            config.fd = static_cast<uint32_t>(file.get());
            config.info.lo_flags = LO_FLAGS_AUTOCLEAR | (read_only ? LO_FLAGS_READ_ONLY : 0);
            if (ioctl(dev.get(), LOOP_CONFIGURE, &config) != 0) {
                if (errno == EBUSY) continue;  // someone else took it first
                return std::nullopt;
            }
            struct stat st {};
            fstat(dev.get(), &st);
            LoopDevice loop;
            loop.fd_ = std::move(dev);
            loop.rdev_ = st.st_rdev;
            return loop;
        }
        return std::nullopt;
    }
    dev_t rdev() const { return rdev_; }

  private:
    LoopDevice() = default;
    UniqueFd fd_;  // closing it lets autoclear detach the device once nothing has it mounted
    dev_t rdev_ = 0;
};

// Runs `body` in a forked child with private mount and UTS namespaces; "" from it means success.
std::string in_private_namespace(const std::function<std::string()>& body) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return "pipe failed";
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        std::string result;
        if (unshare(CLONE_NEWNS | CLONE_NEWUTS) != 0) {
            result = std::string("unshare: ") + std::strerror(errno);
        } else if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
            result = std::string("make-rprivate: ") + std::strerror(errno);
        } else {
            result = body();
        }
        (void)!write(fds[1], result.data(), result.size());
        _exit(0);
    }
    close(fds[1]);
    std::string result;
    char buf[4096];
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0)
        result.append(buf, static_cast<size_t>(n));
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        result += " (child ended with status " + std::to_string(status) + ")";
    return result;
}

class AgentdStorageSwitchRoot : public ::testing::Test {
  protected:
    void SetUp() override {
        if (geteuid() != 0) GTEST_SKIP() << "mount namespaces and loop devices need root";
        if (!have_program("mkfs.ext4")) GTEST_SKIP() << "no mkfs.ext4";
        if (access("/dev/loop-control", R_OK | W_OK) != 0) GTEST_SKIP() << "no /dev/loop-control";
        if (unshare_works() == false) GTEST_SKIP() << "cannot make a mount namespace here";
    }

    static bool unshare_works() {
        return in_private_namespace([] { return std::string(); }).empty();
    }

    // An ext4 image of `size_mib` holding the tree at `content` (if given).
    std::string make_image(const std::string& name, int size_mib, const std::string& content = "") {
        std::string image = dir_ / name;
        std::vector<std::string> argv = {"mkfs.ext4", "-q", "-F"};
        if (!content.empty()) argv.insert(argv.end(), {"-d", content});
        argv.insert(argv.end(), {image, std::to_string(size_mib) + "M"});
        auto result = testing::run_command(argv);
        EXPECT_EQ(result.status, 0) << result.output;
        return image;
    }

    TempDir dir_{"agentstore-ns"};
};

// Checks collected inside the child: each failed one appends a line.
struct Checks {
    std::string failures;
    void expect(bool ok, const std::string& what) {
        if (!ok) failures += what + "\n";
    }
};

bool is_mount_root(const std::string& path) {
    struct statx stx {};
    if (statx(AT_FDCWD, path.c_str(), AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, &stx) != 0) return false;
    return (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0;
}

// Prepares a fake initramfs at `old_root` (a tmpfs) the way setup_pid1 leaves one, with fake sysfs disks.
std::string build_fake_initramfs(const std::string& old_root,
                                 const std::vector<std::pair<std::string, dev_t>>& disks) {
    auto fail = [](const std::string& what) { return what + ": " + std::strerror(errno); };
    if (mount("tmpfs", old_root.c_str(), "tmpfs", 0, "mode=0755") != 0) return fail("mount tmpfs old root");
    for (const char* d :
         {"/proc", "/sys", "/dev", "/tmp", "/run", "/sandlot", "/sandlot/files", "/sandlot/files/tree"})
        if (mkdir((old_root + d).c_str(), 0755) != 0) return fail(std::string("mkdir ") + d);
    if (mount("proc", (old_root + "/proc").c_str(), "proc", 0, nullptr) != 0) return fail("mount proc");
    // A fake sysfs and /dev: the disks' serials and block nodes for the loop devices.
    if (mount("tmpfs", (old_root + "/sys").c_str(), "tmpfs", 0, nullptr) != 0) return fail("mount sys");
    if (mount("tmpfs", (old_root + "/dev").c_str(), "tmpfs", 0, "mode=0755") != 0) return fail("mount dev");
    mkdir((old_root + "/sys/block").c_str(), 0755);
    char letter = 'a';
    for (const auto& [serial, rdev] : disks) {
        std::string name = std::string("vd") + letter++;
        mkdir((old_root + "/sys/block/" + name).c_str(), 0755);
        write_file(old_root + "/sys/block/" + name + "/serial", serial + "\n");
        if (mknod((old_root + "/dev/" + name).c_str(), S_IFBLK | 0600, rdev) != 0)
            return fail("mknod " + name);
    }
    if (mkdir((old_root + "/dev/shm").c_str(), 01777) != 0) return fail("mkdir /dev/shm");
    if (mount("tmpfs", (old_root + "/dev/shm").c_str(), "tmpfs", 0, "mode=1777") != 0)
        return fail("mount shm");
    if (symlink("pts/ptmx", (old_root + "/dev/ptmx").c_str()) != 0) return fail("symlink ptmx");
    if (mount("tmpfs", (old_root + "/tmp").c_str(), "tmpfs", 0, "mode=1777") != 0) return fail("mount tmp");
    if (mount("tmpfs", (old_root + "/run").c_str(), "tmpfs", 0, "mode=0755") != 0) return fail("mount run");
    write_file(old_root + "/init", "agentd itself", 0755);
    write_file(old_root + "/sandlot/files/0", "hello from the host\n");
    write_file(old_root + "/sandlot/files/1", "#!/bin/sh\necho script\n");
    write_file(old_root + "/sandlot/files/tree/inner", "inner\n", 0640);
    return "";
}

TEST_F(AgentdStorageSwitchRoot, DiskRootWithDiskUpperVolumesPatchesAndScripts) {
    // The root image: a tiny tree without /dev, /tmp or /run (the overlay's upper gets them).
    std::string content = dir_ / "content";
    mkdir(content.c_str(), 0755);
    mkdir((content + "/etc").c_str(), 0755);
    write_file(content + "/etc/os-release", "ID=test\n");
    symlink("/", (content + "/etc/evil").c_str());  // confinement still holds through the overlay
    std::string volume_content = dir_ / "volume";
    mkdir(volume_content.c_str(), 0755);
    write_file(volume_content + "/hello.txt", "volume data\n");

    std::string root_image = make_image("root.ext4", 16, content);
    std::string upper_image = make_image("upper.ext4", 24);
    std::string volume_image = make_image("vol.ext4", 16, volume_content);
    auto root_loop = LoopDevice::attach(root_image, true);
    auto upper_loop = LoopDevice::attach(upper_image, false);
    auto volume_loop = LoopDevice::attach(volume_image, true);
    if (!root_loop || !upper_loop || !volume_loop) GTEST_SKIP() << "cannot attach loop devices here";

    proto::BootConfig config;
    config.root.kind = proto::BootRoot::Kind::Disk;
    config.root.source = proto::kRootSource;
    config.root.upper = proto::BootRoot::Upper::Disk;
    config.root.upper_source = proto::kUpperSource;
    proto::BootMount data;
    data.kind = proto::BootMount::Kind::Disk;
    data.source = "sandlot-vol0";
    data.target = "/data";
    data.read_only = true;
    proto::BootMount scratch;
    scratch.kind = proto::BootMount::Kind::Tmpfs;
    scratch.target = "/mnt/scratch";
    scratch.size_bytes = 1 << 20;
    config.mounts = {data, scratch};
    BootPatch greeting = patch(BootPatch::Op::Write, "/etc/greeting");
    greeting.source = "/sandlot/files/0";
    BootPatch evil = patch(BootPatch::Op::Write, "/etc/evil/sandlot/files/0");  // lands in the new root
    evil.source = "/sandlot/files/0";
    BootPatch tree = patch(BootPatch::Op::Copy, "/opt/tree");
    tree.source = "/sandlot/files/tree";
    config.patches = {greeting, evil, tree};
    config.scripts = {{"hello", "/sandlot/files/1"}};
    config.hostname = "storage-test";

    std::string old_root = dir_ / "initramfs";
    mkdir(old_root.c_str(), 0755);
    std::vector<std::pair<std::string, dev_t>> disks = {{proto::kRootSource, root_loop->rdev()},
                                                        {proto::kUpperSource, upper_loop->rdev()},
                                                        {"sandlot-vol0", volume_loop->rdev()}};
    std::string result = in_private_namespace([&]() -> std::string {
        std::string built = build_fake_initramfs(old_root, disks);
        if (!built.empty()) return built;
        UniqueFd old_root_fd(open(old_root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (chroot(old_root.c_str()) != 0 || chdir("/") != 0)
            return std::string("chroot: ") + std::strerror(errno);

        StorageEnvironment env;
        env.disk_wait = 0ms;
        auto ok = setup_storage(config, env);
        if (!ok) return "setup_storage: " + ok.error().to_string();

        Checks c;
        struct statfs sfs {};
        c.expect(statfs("/", &sfs) == 0 && sfs.f_type == OVERLAYFS_SUPER_MAGIC, "/ is an overlay");
        // statfs of an overlay reports its upper: the 24 MiB disk, not a tmpfs.
        uint64_t upper_bytes = static_cast<uint64_t>(sfs.f_blocks) * static_cast<uint64_t>(sfs.f_bsize);
        c.expect(upper_bytes > (16ull << 20) && upper_bytes <= (24ull << 20),
                 "the upper is the disk (" + std::to_string(upper_bytes) + " bytes)");
        c.expect(read_file("/etc/os-release") == "ID=test\n", "lower content visible");
        c.expect(read_file("/etc/greeting") == "hello from the host\n", "write patch applied");
        c.expect(read_file("/sandlot/files/0") == "hello from the host\n",
                 "patch through /etc/evil stayed inside");
        c.expect(read_file("/opt/tree/inner") == "inner\n" && perms("/opt/tree/inner") == 0640,
                 "copy patch applied from the hidden initramfs");
        c.expect(read_file("/run/sandlot/bin/hello") == "#!/bin/sh\necho script\n" &&
                     perms("/run/sandlot/bin/hello") == 0755,
                 "script installed");
        c.expect(is_mount_root("/tmp") && perms("/tmp") == 01777, "fresh /tmp");
        c.expect(is_mount_root("/run") && perms("/run") == 0755, "fresh /run");
        c.expect(is_mount_root("/dev") && is_mount_root("/dev/shm"), "/dev moved with /dev/shm");
        c.expect(link_target("/dev/ptmx") == "pts/ptmx", "/dev/ptmx kept");
        c.expect(exists("/dev/vda"), "/dev content moved");
        c.expect(is_mount_root("/proc") && exists("/proc/self/mountinfo"), "/proc moved");
        c.expect(is_mount_root("/sys") && exists("/sys/block/vda/serial"), "/sys moved");
        c.expect(read_file("/data/hello.txt") == "volume data\n", "disk volume mounted");
        c.expect(open("/data/new", O_WRONLY | O_CREAT | O_CLOEXEC, 0644) < 0 && errno == EROFS,
                 "read-only volume refuses writes");
        struct statfs scratch_fs {};
        c.expect(statfs("/mnt/scratch", &scratch_fs) == 0 && scratch_fs.f_type == TMPFS_MAGIC &&
                     static_cast<uint64_t>(scratch_fs.f_blocks) * scratch_fs.f_bsize == (1u << 20) &&
                     perms("/mnt/scratch") == 01777,
                 "tmpfs volume with its size and mode 1777");
        c.expect(!exists("/sandlot/newroot") && !exists("/sandlot/lower"), "staging is not in the new root");
        utsname names{};
        uname(&names);
        c.expect(std::string(names.nodename) == "storage-test", "hostname set");
        // The initramfs's files were freed: the old root (still reachable through its fd) is empty.
        std::string left;
        DIR* d = fdopendir(dup(old_root_fd.get()));
        while (dirent* e = d ? readdir(d) : nullptr)
            if (std::string(e->d_name) != "." && std::string(e->d_name) != "..")
                left += std::string(e->d_name) + " ";
        if (d) closedir(d);
        c.expect(left.empty(), "initramfs freed (left: " + left + ")");
        return c.failures;
    });
    EXPECT_EQ(result, "");
    // The lower image was never written.
    auto listing = testing::run_command({"debugfs", "-R", "ls -l /etc", root_image});
    EXPECT_EQ(listing.output.find("greeting"), std::string::npos) << listing.output;
    EXPECT_NE(listing.output.find("os-release"), std::string::npos) << listing.output;
}

TEST_F(AgentdStorageSwitchRoot, ReadOnlyRootIsUsedAsIsAndRefusesPatches) {
    std::string content = dir_ / "content";
    for (const char* d : {"", "/dev", "/proc", "/sys", "/tmp", "/run", "/etc"})
        mkdir((content + d).c_str(), 0755);
    write_file(content + "/etc/os-release", "ID=ro\n");
    std::string root_image = make_image("root.ext4", 16, content);
    auto root_loop = LoopDevice::attach(root_image, true);
    if (!root_loop) GTEST_SKIP() << "cannot attach loop devices here";

    proto::BootConfig config;
    config.root.kind = proto::BootRoot::Kind::Disk;
    config.root.source = proto::kRootSource;
    config.root.fstype = "ext4";
    std::string old_root = dir_ / "initramfs";
    mkdir(old_root.c_str(), 0755);
    std::vector<std::pair<std::string, dev_t>> disks = {{proto::kRootSource, root_loop->rdev()}};
    std::string result = in_private_namespace([&]() -> std::string {
        std::string built = build_fake_initramfs(old_root, disks);
        if (!built.empty()) return built;
        if (chroot(old_root.c_str()) != 0 || chdir("/") != 0)
            return std::string("chroot: ") + std::strerror(errno);
        StorageEnvironment env;
        env.disk_wait = 0ms;
        auto ok = setup_storage(config, env);
        if (!ok) return "setup_storage: " + ok.error().to_string();
        Checks c;
        c.expect(read_file("/etc/os-release") == "ID=ro\n", "root content");
        c.expect(open("/etc/x", O_WRONLY | O_CREAT | O_CLOEXEC, 0644) < 0 && errno == EROFS,
                 "root is read-only");
        c.expect(is_mount_root("/tmp") && is_mount_root("/run") && is_mount_root("/dev"), "basic mounts");
        c.expect(exists("/run/sandlot/bin"), "script directory on /run");
        // A patch on a read-only root is an error naming it.
        proto::BootConfig more;
        more.patches = {patch(BootPatch::Op::Mkdir, "/srv")};
        auto refused = setup_storage(more, env);
        c.expect(!refused && refused.error().message.starts_with("patch 0 (mkdir /srv)") &&
                     refused.error().code == EROFS,
                 "patch refused: " + (refused ? std::string("ok") : refused.error().to_string()));
        return c.failures;
    });
    EXPECT_EQ(result, "");
}

TEST_F(AgentdStorageSwitchRoot, MissingRootDiskIsAClearError) {
    proto::BootConfig config;
    config.root.kind = proto::BootRoot::Kind::Disk;
    config.root.source = "no-such-disk";
    config.root.upper = proto::BootRoot::Upper::Tmpfs;
    std::string old_root = dir_ / "initramfs";
    mkdir(old_root.c_str(), 0755);
    std::string result = in_private_namespace([&]() -> std::string {
        std::string built = build_fake_initramfs(old_root, {});
        if (!built.empty()) return built;
        if (chroot(old_root.c_str()) != 0 || chdir("/") != 0)
            return std::string("chroot: ") + std::strerror(errno);
        StorageEnvironment env;
        env.disk_wait = 0ms;
        auto ok = setup_storage(config, env);
        if (ok) return "setup_storage succeeded without a disk";
        return ok.error().to_string();
    });
    EXPECT_EQ(
        result,
        "root: root disk no-such-disk: no disk with serial \"no-such-disk\" in /sys/block: No such device");
}

}  // namespace
}  // namespace sandlot::agent::storage_test
