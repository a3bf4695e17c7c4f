// The guest filesystem API and `sandlot cp` end to end in real microVMs: files of 0 B to 1 GiB checked with
// sha256 against the guest's own sha256sum, binary names, 10,000 files, modes and symlinks, concurrent
// transfers with execs running, ENOSPC on a small tmpfs keeping the old file, path errnos, permissions as
// another user, and the CLI (both directions, directories, tar streams) against a named sandbox.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "host/lib/guest_fs.h"
#include "host/lib/sandbox.h"
#include "host/lib/storage.h"
#include "tests/support/bytes.h"
#include "tests/support/temp_dir.h"
#include "tests/vm/vm_test_support.h"

extern char** environ;

namespace sandlot::vmtest {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// sha256sum of data fed through a pipe as it is produced, so a GiB is never held in memory.
class Sha256Pipe {
  public:
    Sha256Pipe() {
        int in[2], out[2];
        EXPECT_EQ(pipe2(in, O_CLOEXEC), 0);
        EXPECT_EQ(pipe2(out, O_CLOEXEC), 0);
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_adddup2(&actions, in[0], 0);
        posix_spawn_file_actions_adddup2(&actions, out[1], 1);
        const char* argv[] = {"sha256sum", nullptr};
        EXPECT_EQ(posix_spawnp(&pid_, "sha256sum", &actions, nullptr, const_cast<char**>(argv), environ), 0);
        posix_spawn_file_actions_destroy(&actions);
        close(in[0]);
        close(out[1]);
        write_fd_ = in[1];
        read_fd_ = out[0];
    }
    void feed(std::span<const uint8_t> data) {
        while (!data.empty()) {
            ssize_t n = ::write(write_fd_, data.data(), data.size());
            if (n <= 0) return;
            data = data.subspan(static_cast<size_t>(n));
        }
    }
    std::string digest() {
        close(write_fd_);
        std::string out(64, '\0');
        size_t got = 0;
        while (got < 64) {
            ssize_t n = ::read(read_fd_, out.data() + got, 64 - got);
            if (n <= 0) break;
            got += static_cast<size_t>(n);
        }
        close(read_fd_);
        waitpid(pid_, nullptr, 0);
        return out.substr(0, got);
    }

  private:
    pid_t pid_ = -1;
    int write_fd_ = -1, read_fd_ = -1;
};

class FsVm : public ::testing::Test {
  protected:
    void SetUp() override {
        SKIP_WITHOUT_KVM();
        std::string disk = dir_ / "data.ext4";
        ASSERT_TRUE(host::create_ext4_image(disk, 1300ull << 20));
        auto options = default_options();
        host::Volume data;
        data.kind = host::Volume::Kind::Disk;
        data.source = disk;
        data.target = "/data";
        host::Volume small;
        small.kind = host::Volume::Kind::Tmpfs;
        small.target = "/small";
        small.size_bytes = 1ull << 20;
        options.storage.volumes = {data, small};
        auto sandbox = host::Sandbox::boot(options);
        ASSERT_TRUE(sandbox) << sandbox.error().to_string();
        sandbox_ = std::move(*sandbox);
    }
    void TearDown() override {
        if (sandbox_) expect_clean_shutdown(*sandbox_);
    }

    std::pair<int, std::string> sh(const std::string& script) {
        auto result = sandbox_->agent().exec({.argv = {"sh", "-c", script + " 2>&1"}});
        if (!result) return {-1, result.error().to_string()};
        return {result->status.shell_code(), result->stdout_data};
    }
    std::string guest_sha256(const std::string& path) { return sh("sha256sum " + path).second.substr(0, 64); }

    test::TempDir dir_{"sandlot-vm-fs"};
    std::unique_ptr<host::Sandbox> sandbox_;
};

// The ASan/UBSan build streams 64 MiB instead: it runs the same code paths (the host's and agentd's are also
// checked for a whole GiB under ASan in host_guest_fs_test), and a GiB costs that pass minutes in the nested
// rig.
#if defined(__SANITIZE_ADDRESS__)
constexpr size_t kBigFileBytes = size_t{64} << 20;
#else
constexpr size_t kBigFileBytes = size_t{1} << 30;
#endif

TEST_F(FsVm, RoundTripsFromEmptyToAGibibyteCheckedWithSha256) {
    host::GuestFs gfs = sandbox_->fs();
    for (size_t size : {size_t{0}, size_t{1}, size_t{3} * 1024 * 1024 + 1}) {
        SCOPED_TRACE(size);
        std::string data = test::random_bytes(size, size + 1);
        std::string path = "/data/f" + std::to_string(size);
        ASSERT_TRUE(gfs.write(path, data));
        Sha256Pipe host_sum;
        host_sum.feed(test::as_bytes(data));
        EXPECT_EQ(guest_sha256(path), host_sum.digest());
        auto back = gfs.read(path);
        ASSERT_TRUE(back) << back.error().to_string();
        EXPECT_TRUE(*back == data);
    }
    // 1 GiB through the streams: sha256 of what we sent, of the guest's file, and of what came back.
    const size_t total = kBigFileBytes, chunk = 4 << 20;
    std::string block = test::random_bytes(chunk, 99);
    Sha256Pipe sent;
    auto writer = gfs.write_stream("/data/big");
    ASSERT_TRUE(writer) << writer.error().to_string();
    for (size_t done = 0; done < total; done += chunk) {
        std::memcpy(block.data(), &done, sizeof done);
        ASSERT_TRUE((*writer)->write(test::as_bytes(block)));
        sent.feed(test::as_bytes(block));
    }
    auto committed = (*writer)->commit();
    ASSERT_TRUE(committed) << committed.error().to_string();
    std::string sent_sum = sent.digest();
    EXPECT_EQ(guest_sha256("/data/big"), sent_sum);
    auto reader = gfs.read_stream("/data/big");
    ASSERT_TRUE(reader) << reader.error().to_string();
    Sha256Pipe received;
    uint64_t got = 0;
    for (;;) {
        auto data = (*reader)->next();
        ASSERT_TRUE(data) << data.error().to_string();
        if (data->empty()) break;
        received.feed(*data);
        got += data->size();
    }
    EXPECT_EQ(got, total);
    EXPECT_EQ(received.digest(), sent_sum);
}

TEST_F(FsVm, BinaryNamesModesSymlinksAndTenThousandFiles) {
    host::GuestFs gfs = sandbox_->fs();
    std::string src = dir_ / "src";
    for (int d = 0; d < 100; ++d) {
        fs::create_directories(src + "/d" + std::to_string(d));
        for (int f = 0; f < 100; ++f)
            std::ofstream(src + "/d" + std::to_string(d) + "/f" + std::to_string(f)) << d * 100 + f;
    }
    std::string odd = src + "/" + std::string("bin\xff\x01name");
    std::ofstream(odd, std::ios::binary) << std::string("\0\xff\0", 3);
    ::chmod(odd.c_str(), 0751);
    fs::create_symlink("d7/f3", src + "/link");
    ::chmod((src + "/d1").c_str(), 0700);
    auto in = gfs.copy_from_host(src, "/data/tree");
    ASSERT_TRUE(in) << in.error().to_string();
    EXPECT_EQ(in->entries, 10'103u);  // 10,000 files, 100 directories, the root, the odd name, the link
    auto [status, out] =
        sh("find /data/tree -type f | wc -l; cat /data/tree/link; echo; stat -c %a /data/tree/d1; "
           "stat -c %a /data/tree/bin*name; readlink /data/tree/link");
    EXPECT_EQ(status, 0) << out;
    EXPECT_EQ(out, "10001\n703\n700\n751\nd7/f3\n");
    auto back = gfs.copy_to_host("/data/tree", dir_ / "back");
    ASSERT_TRUE(back) << back.error().to_string();
    EXPECT_EQ(back->entries, 10'103u);
    EXPECT_EQ(fs::read_symlink(dir_ / "back/link"), "d7/f3");
    EXPECT_EQ(read_file(dir_ / "back/d42/f42"), "4242");
    EXPECT_EQ(read_file(dir_ / "back/bin\xff\x01name"), std::string("\0\xff\0", 3));
    EXPECT_EQ(fs::status(dir_ / "back/bin\xff\x01name").permissions(), fs::perms(0751));
    EXPECT_EQ(fs::status(dir_ / "back/d1").permissions(), fs::perms(0700));
}

TEST_F(FsVm, ConcurrentTransfersWhileExecsRun) {
    host::GuestFs gfs = sandbox_->fs();
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            std::string data = test::random_bytes((size_t{2} << 20) + static_cast<size_t>(t), t);
            std::string path = "/data/c" + std::to_string(t);
            for (int round = 0; round < 3; ++round) {
                auto written = gfs.write(path, data);
                auto read = gfs.read(path);
                if (!written || !read || *read != data) ++failures;
            }
        });
    }
    threads.emplace_back([&] {
        for (int round = 0; round < 5; ++round) {
            auto [status, out] = sh("head -c 1000000 /dev/zero | wc -c");
            if (status != 0 || out != "1000000\n") ++failures;
        }
    });
    for (auto& thread : threads)
        thread.join();
    EXPECT_EQ(failures.load(), 0);
}

TEST_F(FsVm, EnospcAndPathErrorsCarryTheGuestErrno) {
    host::GuestFs gfs = sandbox_->fs();
    ASSERT_TRUE(gfs.write("/small/f", "the old file"));
    auto full = gfs.write("/small/f", test::random_bytes(2 << 20, 3));
    ASSERT_FALSE(full);
    EXPECT_EQ(full.error().code, ENOSPC) << full.error().to_string();
    EXPECT_EQ(*gfs.read("/small/f"), "the old file");
    EXPECT_EQ(sh("ls -A /small").second, "f\n");  // no temporary file left

    EXPECT_EQ(gfs.write("/data/no/such/f", "x").error().code, ENOENT);
    EXPECT_EQ(gfs.write("/small/f/below", "x").error().code, ENOTDIR);
    EXPECT_EQ(gfs.read("/nope").error().to_string(), "open /nope: No such file or directory");
    ASSERT_TRUE(gfs.mkdir("/data/locked", 0700));
    host::GuestFs nobody = gfs.as("nobody");
    EXPECT_EQ(nobody.write("/data/locked/f", "x").error().code, EACCES);
    EXPECT_EQ(nobody.list("/data/locked").error().code, EACCES);
    ASSERT_TRUE(gfs.mkdir("/data/shared", 01777));
    ASSERT_TRUE(nobody.write("/data/shared/mine", "m"));
    EXPECT_EQ(gfs.stat("/data/shared/mine")->uid, 65534u);
}

// ---------------------------------------------------------------------------------------------------------
// `sandlot cp` against a named sandbox.

class CpVm : public ::testing::Test {
  protected:
    void SetUp() override {
        SKIP_WITHOUT_KVM();
        home_ = dir_ / "home";
        auto created = sandlot({"create", "box", "--memory", "192"});
        ASSERT_EQ(created.status, 0) << created.err;
        auto started = sandlot({"start", "box"});
        ASSERT_EQ(started.status, 0) << started.err;
    }
    void TearDown() override {
        if (!home_.empty()) sandlot({"rm", "-f", "box"});
    }
    SandlotRun sandlot(const std::vector<std::string>& args, const std::string& input = "") {
        SandlotRunOptions options;
        options.env = {"SANDLOT_HOME=" + home_};
        options.input = input;
        return run_sandlot(args, options);
    }

    test::TempDir dir_{"sandlot-vm-cp"};
    std::string home_;
};

TEST_F(CpVm, CopiesBothWaysLikeDockerCp) {
    std::string src = dir_ / "project";
    fs::create_directories(src + "/sub");
    std::ofstream(src + "/a.txt") << "alpha\n";
    std::ofstream(src + "/sub/b.sh") << "#!/bin/sh\necho b\n";
    ::chmod((src + "/sub/b.sh").c_str(), 0755);
    fs::create_symlink("a.txt", src + "/link");

    auto in = sandlot({"cp", src, "box:/root/"});
    ASSERT_EQ(in.status, 0) << in.err;
    auto check = sandlot({"exec", "box", "--", "sh", "-c",
                          "cat /root/project/a.txt; /root/project/sub/b.sh; readlink /root/project/link"});
    EXPECT_EQ(check.status, 0) << check.err;
    EXPECT_EQ(check.out, "alpha\nb\na.txt\n");

    auto out = sandlot({"cp", "box:/root/project", dir_ / "back"});
    ASSERT_EQ(out.status, 0) << out.err;
    EXPECT_EQ(read_file(dir_ / "back/sub/b.sh"), "#!/bin/sh\necho b\n");
    EXPECT_EQ(fs::status(dir_ / "back/sub/b.sh").permissions(), fs::perms(0755));
    EXPECT_EQ(fs::read_symlink(dir_ / "back/link"), "a.txt");

    // Into an existing host directory: the copy lands inside it.
    auto file = sandlot({"cp", "box:/root/project/a.txt", dir_.path()});
    ASSERT_EQ(file.status, 0) << file.err;
    EXPECT_EQ(read_file(dir_ / "a.txt"), "alpha\n");

    // Tar streams: out to stdout, and back in from stdin.
    auto tar = sandlot({"cp", "box:/root/project", "-"});
    ASSERT_EQ(tar.status, 0) << tar.err;
    auto mk = sandlot({"exec", "box", "--", "mkdir", "/tmp/untar"});
    ASSERT_EQ(mk.status, 0) << mk.err;
    auto untar = sandlot({"cp", "-", "box:/tmp/untar"}, tar.out);
    ASSERT_EQ(untar.status, 0) << untar.err;
    auto listed =
        sandlot({"exec", "box", "--", "sh", "-c", "cat /tmp/untar/project/a.txt; ls /tmp/untar/project/sub"});
    EXPECT_EQ(listed.out, "alpha\nb.sh\n") << listed.err;
}

TEST_F(CpVm, ErrorsAreOneLine) {
    auto missing = sandlot({"cp", "box:/no/such", dir_ / "x"});
    EXPECT_EQ(missing.status, 125);
    EXPECT_NE(missing.err.find("No such file or directory"), std::string::npos) << missing.err;
    EXPECT_EQ(std::count(missing.err.begin(), missing.err.end(), '\n'), 1) << missing.err;
    auto neither = sandlot({"cp", dir_ / "a", dir_ / "b"});
    EXPECT_EQ(neither.status, 125);
    auto unknown = sandlot({"cp", dir_.path(), "nobox:/tmp"});
    EXPECT_EQ(unknown.status, 125);
    EXPECT_NE(unknown.err.find("nobox"), std::string::npos) << unknown.err;
}

}  // namespace
}  // namespace sandlot::vmtest
