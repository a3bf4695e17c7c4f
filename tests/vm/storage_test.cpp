// Storage end to end in real microVMs: root images with their writable layer, volumes, patches and scripts,
// flush semantics, and a guest (as root) attacking a shared directory.
//
// Images come from image_dir() (guest/images in a build tree: `make images`); the VM suite in the nested rig
// gets the big ones as L1 disks (tools/test).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "host/lib/exec.h"
#include "host/lib/paths.h"
#include "host/lib/sandbox.h"
#include "host/lib/storage.h"
#include "tests/support/temp_dir.h"
#include "tests/vm/vm_test_support.h"

namespace sandlot::vmtest {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

void write_text(const std::string& path, const std::string& text) {
    std::ofstream(path, std::ios::binary) << text;
}

std::vector<std::string> with_command(std::vector<std::string> args, const std::string& script) {
    args.insert(args.end(), {"--", "sh", "-c", script});
    return args;
}

// Runs `script` with sh in a booted sandbox; returns {status, stdout+stderr}.
std::pair<int, std::string> sh(host::Sandbox& sandbox, const std::string& script) {
    host::ExecRequest request;
    request.argv = {"sh", "-c", script + " 2>&1"};
    auto result = sandbox.agent().exec(request);
    if (!result) return {-1, result.error().to_string()};
    return {result->status.shell_code(), result->stdout_data};
}

class StorageVm : public ::testing::Test {
  protected:
    void SetUp() override {
        SKIP_WITHOUT_KVM();
        ASSERT_FALSE(dir_.path().empty());
    }
    test::TempDir dir_{"sandlot-vm-storage"};
};

TEST_F(StorageVm, PythonImageRunsPythonWithSqliteAndSsl) {
    auto run = run_sandlot({"run", "--memory", "512", "--image", "python", "--", "python3", "-c",
                            "import sys,sqlite3,ssl; print(sys.version); print(sqlite3.sqlite_version)"});
    ASSERT_EQ(run.status, 0) << run.err;
    EXPECT_TRUE(run.out.starts_with("3.11")) << run.out;
}

TEST_F(StorageVm, DebianUserlandSeesItsOwnRootAndAWritableLayer) {
    auto run = run_sandlot(with_command({"run", "--memory", "512", "--image", "python"},
                                        "grep -q bookworm /etc/os-release && echo debian; "
                                        "touch /usr/new-file && echo writable; "
                                        "mount | grep -c ' / ' >/dev/null; id -un sandlot"));
    ASSERT_EQ(run.status, 0) << run.err << run.out;
    EXPECT_EQ(run.out, "debian\nwritable\nsandlot\n");
}

TEST_F(StorageVm, UpperLayerSurvivesARerunOnTheSameUpper) {
    std::string upper = dir_ / "upper.ext4";
    auto first =
        run_sandlot(with_command({"run", "--image", "base", "--upper", upper, "--upper-size", "256m"},
                                 "echo kept > /root/note && rm /etc/group"));
    ASSERT_EQ(first.status, 0) << first.err;
    auto second = run_sandlot(with_command({"run", "--image", "base", "--upper", upper},
                                           "cat /root/note; test -e /etc/group || echo whiteout-kept"));
    ASSERT_EQ(second.status, 0) << second.err;
    EXPECT_EQ(second.out, "kept\nwhiteout-kept\n");
    // A fresh upper starts clean.
    auto fresh =
        run_sandlot(with_command({"run", "--image", "base"}, "test ! -e /root/note && test -e /etc/group"));
    EXPECT_EQ(fresh.status, 0) << fresh.err;
}

TEST_F(StorageVm, ReadOnlyRootRefusesWrites) {
    auto run = run_sandlot(with_command({"run", "--image", "base", "--read-only"}, "touch /x"));
    EXPECT_NE(run.status, 0);
    EXPECT_NE(run.err.find("Read-only file system"), std::string::npos) << run.err;
}

TEST_F(StorageVm, BindMountSeesBothWaysAndReadOnlyRefusesWrites) {
    std::string share = dir_ / "share";
    fs::create_directory(share);
    write_text(share + "/from-host", "host data\n");
    auto run = run_sandlot(with_command({"run", "-v", share + ":/data", "-v", share + ":/ro:ro"},
                                        "cat /data/from-host; echo guest data > /data/from-guest; "
                                        "mkdir -p /data/d/e && ln -s from-guest /data/link && "
                                        "mv /data/d /data/moved; "
                                        "echo nope > /ro/x || echo refused"));
    ASSERT_EQ(run.status, 0) << run.err;
    EXPECT_EQ(run.out, "host data\nrefused\n");
    EXPECT_NE(run.err.find("Read-only file system"), std::string::npos) << run.err;
    EXPECT_EQ(read_file(share + "/from-guest"), "guest data\n");
    EXPECT_TRUE(fs::is_directory(share + "/moved/e"));
    EXPECT_EQ(fs::read_symlink(share + "/link"), "from-guest");
    EXPECT_FALSE(fs::exists(share + "/x"));
}

TEST_F(StorageVm, NamedTmpfsAndDiskVolumes) {
    std::string state = dir_ / "state";
    std::string disk = dir_ / "data.ext4";
    ASSERT_TRUE(host::create_ext4_image(disk, 64ull << 20));
    SandlotRunOptions options;
    options.env = {"SANDLOT_HOME=" + state};
    auto first = run_sandlot(with_command({"run", "--volume", "cache:/cache", "--tmpfs", "/scratch:16m",
                                           "--disk", disk + ":/mnt/disk"},
                                          "echo 1 > /cache/n; echo on-disk > /mnt/disk/f; "
                                          "df -k /scratch | tail -n 1 | awk '{print $2}'"),
                             options);
    ASSERT_EQ(first.status, 0) << first.err;
    EXPECT_EQ(first.out, "16384\n");
    EXPECT_EQ(read_file(state + "/volumes/cache/n"), "1\n");
    auto second =
        run_sandlot(with_command({"run", "--volume", "cache:/cache", "--disk", disk + ":/mnt/disk:ro"},
                                 "cat /cache/n /mnt/disk/f; touch /mnt/disk/g 2>/dev/null || echo ro"),
                    options);
    ASSERT_EQ(second.status, 0) << second.err;
    EXPECT_EQ(second.out, "1\non-disk\nro\n");
}

TEST_F(StorageVm, PatchesScriptsAndDefaultsApplyBeforeTheCommand) {
    write_text(dir_ / "host-file", "copied\n");
    fs::create_directory(dir_ / "tree");
    write_text(dir_ / "tree/inner", "tree\n");
    write_text(dir_ / "hello.sh", "#!/bin/sh\necho hello from a script \"$@\"\n");
    auto run = run_sandlot(with_command(
        {"run",
         "--image",
         "base",
         "--write",
         "/etc/greeting:0600=hi",
         "--append",
         "/etc/greeting=!",
         "--mkdir",
         "/opt/made:0700",
         "--symlink",
         "/opt/link=/etc/greeting",
         "--copy",
         dir_ / "host-file:/opt/file",
         "--copy",
         dir_ / "tree:/opt/tree",
         "--rm-path",
         "/etc/group",
         "--script",
         "hello=" + (dir_ / "hello.sh"),
         "--hostname",
         "box"},
        "cat /etc/greeting; echo; stat -c %a /etc/greeting /opt/made; readlink /opt/link; cat /opt/file "
        "/opt/tree/inner; test -e /etc/group || echo removed; hello there; hostname"));
    ASSERT_EQ(run.status, 0) << run.err;
    EXPECT_EQ(run.out,
              "hi!\n600\n700\n/etc/greeting\ncopied\ntree\nremoved\nhello from a script there\nbox\n");
}

TEST_F(StorageVm, PatchesOnTheInitramfsRootToo) {
    auto run = run_sandlot(with_command({"run", "--write", "/etc/x=y"}, "cat /etc/x"));
    ASSERT_EQ(run.status, 0) << run.err;
    EXPECT_EQ(run.out, "y");
}

TEST_F(StorageVm, HostDirectoryAsRoot) {
    // A tiny root made here: static busybox and a few applet links.
    std::string root = dir_ / "rootfs";
    for (const char* d : {"bin", "etc", "proc", "sys", "dev", "tmp", "run", "root"})
        fs::create_directories(root + "/" + d);
    fs::copy_file("/bin/busybox", root + "/bin/busybox");
    for (const char* applet : {"sh", "cat", "echo", "touch", "ls"})
        fs::create_symlink("busybox", root + "/bin/" + applet);
    write_text(root + "/etc/marker", "dir-root\n");
    auto run = run_sandlot(with_command({"run", "--image", root, "--tmpfs-upper"},
                                        "cat /etc/marker; touch /etc/new && echo upper-ok"));
    ASSERT_EQ(run.status, 0) << run.err;
    EXPECT_EQ(run.out, "dir-root\nupper-ok\n");
    EXPECT_FALSE(fs::exists(root + "/etc/new")) << "writes go to the upper, never into the shared lower";
}

TEST_F(StorageVm, SyncThenVmKillLosesNothing) {
    std::string upper = dir_ / "upper.ext4";
    auto options = default_options();
    options.storage.root.image = "base";
    options.storage.root.upper_path = upper;
    options.storage.root.upper_size = 256ull << 20;
    std::string sum;
    {
        auto sandbox = host::Sandbox::boot(options);
        ASSERT_TRUE(sandbox) << sandbox.error().to_string();
        auto [status, out] =
            sh(**sandbox,
               "dd if=/dev/urandom of=/root/blob bs=1M count=8 2>/dev/null && sha256sum /root/blob && sync");
        ASSERT_EQ(status, 0) << out;
        sum = out;
        (*sandbox)->kill();  // SIGKILL the VMM: no orderly unmount, no shutdown
    }
    auto sandbox = host::Sandbox::boot(options);
    ASSERT_TRUE(sandbox) << sandbox.error().to_string();
    auto [status, out] = sh(**sandbox, "sha256sum /root/blob");
    EXPECT_EQ(status, 0) << out;
    EXPECT_EQ(out, sum);
    expect_clean_shutdown(**sandbox);
}

TEST_F(StorageVm, CorruptRootImageIsAClearBootError) {
    // The superblock is fine (the host's probe accepts it) but the metadata behind it is garbage: the guest's
    // mount fails, and the error must reach the user.
    std::string image = dir_ / "corrupt.ext4";
    ASSERT_TRUE(host::create_ext4_image(image, 32ull << 20));
    {
        std::fstream f(image, std::ios::in | std::ios::out | std::ios::binary);
        // The block group descriptors (block 1 with 4 KiB blocks, block 2 with 1 KiB ones), not the
        // superblock at 1024: the guest kernel checks their checksums and refuses the mount.
        f.seekp(2048);
        std::string junk(6144, '\xa5');
        f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
    }
    auto run = run_sandlot({"run", "--image", image, "--", "true"});
    EXPECT_EQ(run.status, 125) << run.err;
    EXPECT_NE(run.err.find("agentd: storage"), std::string::npos) << run.err;
}

// The guest, as root, attacks a shared directory. Whatever it does, nothing outside the share on the host may
// change, and nothing it creates may be dangerous to the host.
TEST_F(StorageVm, EscapeAttemptsThroughASharedDirectoryAllFail) {
    std::string share = dir_ / "share", outside = dir_ / "outside";
    fs::create_directory(share);
    fs::create_directory(outside);
    write_text(outside + "/secret", "host secret\n");
    // Host-side traps a malicious image might also carry: links that point outside the share.
    fs::create_symlink(outside, share + "/abs-link");
    fs::create_symlink("../outside", share + "/rel-link");
    std::string attack =
        // follow host-planted links: the guest kernel resolves them in the guest, never on the host
        "cat /data/abs-link/secret /data/rel-link/secret; "
        "echo pwned > /data/abs-link/pwned; echo pwned > /data/rel-link/pwned; "
        // climb out of the mount
        "cat /data/../outside/secret /data/../../secret; "
        // device nodes: a host block device reachable through the share would be game over
        "mknod /data/sda b 8 0 && echo mknod-allowed; mknod /data/mem c 1 1 && echo mknod-allowed; "
        // setuid binaries planted for the host to run
        "cp /bin/busybox /data/suid && chmod 4755 /data/suid; "
        // hard links across filesystems, renames out of the share
        "ln /etc/passwd /data/hard 2>/dev/null && echo hardlink-allowed; "
        "echo x > /data/f && mv /data/f /data/../f-moved; "
        "true";
    auto run = run_sandlot(with_command({"run", "-v", share + ":/data"}, attack));
    EXPECT_EQ(run.status, 0) << run.err;
    EXPECT_EQ(run.out.find("host secret"), std::string::npos) << run.out;
    EXPECT_EQ(run.out.find("allowed"), std::string::npos) << run.out;
    // Nothing outside the share changed.
    std::vector<std::string> outside_entries;
    for (const auto& e : fs::directory_iterator(outside))
        outside_entries.push_back(e.path().filename());
    EXPECT_EQ(outside_entries, std::vector<std::string>{"secret"});
    EXPECT_FALSE(fs::exists(dir_ / "f-moved"));
    // Nothing dangerous inside it either.
    for (const auto& e : fs::recursive_directory_iterator(share)) {
        struct stat st;
        ASSERT_EQ(lstat(e.path().c_str(), &st), 0);
        EXPECT_FALSE(S_ISBLK(st.st_mode) || S_ISCHR(st.st_mode)) << e.path();
        EXPECT_EQ(st.st_mode & (S_ISUID | S_ISGID), 0u) << e.path() << " is setuid/setgid on the host";
    }
}

}  // namespace
}  // namespace sandlot::vmtest
