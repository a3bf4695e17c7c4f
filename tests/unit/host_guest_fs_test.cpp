// The guest filesystem API (host/lib/guest_fs.h) against the real agentd running as a host process on a Unix
// socket: the "guest" file system is this machine's, under a temporary directory. And against a scripted fake
// agent for what a hostile guest might send to copy_to_host.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "host/lib/agent_connection.h"
#include "host/lib/guest_fs.h"
#include "proto/frame.h"
#include "proto/fs.h"
#include "tests/support/agentd_process.h"
#include "tests/support/bytes.h"
#include "tests/support/run_command.h"
#include "tests/support/temp_dir.h"

namespace sandlot::host {
namespace {

using test::Agentd;
using test::TempDir;
namespace fs = std::filesystem;

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

void spit(const std::string& path, std::string_view data, mode_t mode = 0644) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
    ASSERT_EQ(::write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    ::close(fd);
    ::chmod(path.c_str(), mode);
}

std::string sha256_of(const std::string& path) {
    auto out = testing::run_command({"sha256sum", path});
    return out.output.substr(0, 64);
}

class HostGuestFs : public ::testing::Test {
  protected:
    void SetUp() override {
        agent_ = agentd_.connect();
        ASSERT_TRUE(agent_);
        ASSERT_TRUE(agent_->hello().features & proto::kFeatureFs) << "agentd does not advertise filesystem";
        ::chmod(dir_.path().c_str(), 0755);
    }

    std::string path(std::string_view name) const { return dir_ / name; }

    Agentd agentd_;
    std::unique_ptr<AgentConnection> agent_;
    TempDir dir_{"sandlot-guestfs"};
};

// ---------------------------------------------------------------------------------------------------------

TEST_F(HostGuestFs, RoundTripsFilesOfEverySize) {
    GuestFs gfs(*agent_);
    for (size_t size : {size_t{0}, size_t{1}, size_t{3} * 1024 * 1024 + 1, size_t{9} * 1024 * 1024}) {
        SCOPED_TRACE(size);
        std::string data = test::random_bytes(size, size);
        std::string file = path("f" + std::to_string(size));
        auto written = gfs.write(file, data, {.mode = 0640});
        ASSERT_TRUE(written) << written.error().to_string();
        EXPECT_EQ(slurp(file), data);
        struct stat st;
        ASSERT_EQ(::stat(file.c_str(), &st), 0);
        EXPECT_EQ(st.st_mode & 07777, 0640u);
        auto back = gfs.read(file);
        ASSERT_TRUE(back) << back.error().to_string();
        EXPECT_TRUE(*back == data);
    }
}

TEST_F(HostGuestFs, StreamsAGibibyteWithBoundedMemory) {
    // 1 GiB each way through write_stream/read_stream, checked with sha256; never held whole in memory.
    GuestFs gfs(*agent_);
    const std::string file = path("big");
    const size_t chunk = 4 << 20, total = size_t{1} << 30;
    std::string block = test::random_bytes(chunk, 7);
    {
        auto writer = gfs.write_stream(file, {.sync = false});
        ASSERT_TRUE(writer) << writer.error().to_string();
        for (size_t done = 0; done < total; done += chunk) {
            block[0] = static_cast<char>(done / chunk);  // every block differs
            ASSERT_TRUE((*writer)->write(test::as_bytes(block)));
        }
        auto committed = (*writer)->commit();
        ASSERT_TRUE(committed) << committed.error().to_string();
        EXPECT_EQ(*committed, total);
    }
    ASSERT_EQ(fs::file_size(file), total);
    const std::string copy = path("big.copy");
    {
        auto reader = gfs.read_stream(file);
        ASSERT_TRUE(reader) << reader.error().to_string();
        EXPECT_EQ((*reader)->info().size, total);
        int out = ::open(copy.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        ASSERT_GE(out, 0);
        size_t got = 0;
        for (;;) {
            auto data = (*reader)->next();
            ASSERT_TRUE(data) << data.error().to_string();
            if (data->empty()) break;
            ASSERT_EQ(::write(out, data->data(), data->size()), static_cast<ssize_t>(data->size()));
            got += data->size();
        }
        ::close(out);
        EXPECT_EQ(got, total);
    }
    EXPECT_EQ(sha256_of(copy), sha256_of(file));
    fs::remove(file);
    fs::remove(copy);
}

TEST_F(HostGuestFs, BinaryDataAndNonUtf8Names) {
    GuestFs gfs(*agent_);
    std::string data("a\0b\0\xff\xfe\n\r\0", 9);
    std::string name = path(std::string("caf\xe9-\x01\x7f-\xff.bin"));
    ASSERT_TRUE(gfs.write(name, data));
    EXPECT_EQ(slurp(name), data);
    auto listed = gfs.list(dir_.path());
    ASSERT_TRUE(listed) << listed.error().to_string();
    ASSERT_EQ(listed->size(), 1u);
    EXPECT_EQ((*listed)[0].path, std::string("caf\xe9-\x01\x7f-\xff.bin"));
    EXPECT_EQ((*listed)[0].size, data.size());
    EXPECT_EQ(*gfs.read(name), data);
}

TEST_F(HostGuestFs, RangesAppendsAndExclusiveWrites) {
    GuestFs gfs(*agent_);
    std::string file = path("r");
    ASSERT_TRUE(gfs.write(file, "0123456789"));
    EXPECT_EQ(*gfs.read(file, 3, 4), "3456");
    EXPECT_EQ(*gfs.read(file, 8), "89");
    EXPECT_EQ(*gfs.read(file, 20), "");
    ASSERT_TRUE(gfs.append(file, "ab"));
    EXPECT_EQ(slurp(file), "0123456789ab");
    auto again = gfs.write(file, "x", {.exclusive = true});
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, EEXIST);
    EXPECT_EQ(slurp(file), "0123456789ab");
    // An existing file keeps its mode when none is given.
    ::chmod(file.c_str(), 0751);
    ASSERT_TRUE(gfs.write(file, "new"));
    struct stat st;
    ::stat(file.c_str(), &st);
    EXPECT_EQ(st.st_mode & 07777, 0751u);
    ASSERT_TRUE(gfs.write(path("deep/er/file"), "p", {.parents = true}));
    EXPECT_EQ(slurp(path("deep/er/file")), "p");
    ASSERT_TRUE(gfs.write(path("m"), "t", {.mtime_ns = int64_t{1'500'000'000'123'456'789}}));
    ::stat(path("m").c_str(), &st);
    EXPECT_EQ(st.st_mtim.tv_sec, 1'500'000'000);
    EXPECT_EQ(st.st_mtim.tv_nsec, 123'456'789);
}

TEST_F(HostGuestFs, AnAbortedWriteLeavesTheOldFileAndNoTemporary) {
    GuestFs gfs(*agent_);
    std::string file = path("keep");
    spit(file, "old contents");
    {
        auto writer = gfs.write_stream(file);
        ASSERT_TRUE(writer);
        ASSERT_TRUE((*writer)->write(test::as_bytes(std::string(3 << 20, 'n'))));
        EXPECT_EQ(slurp(file), "old contents");  // nothing visible before commit
    }                                            // dropped without commit
    // The agent removes the temporary file when it sees the cancel; a round trip orders us after it.
    ASSERT_TRUE(agent_->ping());
    EXPECT_EQ(slurp(file), "old contents");
    for (auto& entry : fs::directory_iterator(dir_.path()))
        EXPECT_EQ(entry.path().filename(), "keep") << "left behind: " << entry.path();
    // So does a connection that dies mid-write.
    {
        auto other = agentd_.connect();
        GuestFs ofs(*other);
        auto writer = ofs.write_stream(file);
        ASSERT_TRUE(writer);
        ASSERT_TRUE((*writer)->write(test::as_bytes("partial")));
        other.reset();    // the connection ends with the write still open: only that tells the agent
        writer->reset();  // (its cancel has nowhere to go now)
    }
    ASSERT_TRUE(agent_->ping());
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ASSERT_TRUE(agent_->ping());
    EXPECT_EQ(slurp(file), "old contents");
    size_t entries = 0;
    for ([[maybe_unused]] auto& entry : fs::directory_iterator(dir_.path()))
        ++entries;
    EXPECT_EQ(entries, 1u);
}

TEST_F(HostGuestFs, MetadataOperations) {
    GuestFs gfs(*agent_);
    ASSERT_TRUE(gfs.mkdir(path("a/b/c"), 0750, true));
    struct stat st;
    ASSERT_EQ(::stat(path("a/b/c").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0750u);
    EXPECT_TRUE(gfs.mkdir(path("a/b/c"), 0750, true));  // -p accepts an existing directory
    EXPECT_EQ(gfs.mkdir(path("a/b/c")).error().code, EEXIST);

    ASSERT_TRUE(gfs.write(path("a/file"), "hello", {.mode = 0600}));
    auto info = gfs.stat(path("a/file"));
    ASSERT_TRUE(info) << info.error().to_string();
    EXPECT_EQ(info->type, FsType::Regular);
    EXPECT_EQ(info->size, 5u);
    EXPECT_EQ(info->mode, 0600u);
    EXPECT_EQ(info->path, path("a/file"));

    ASSERT_TRUE(gfs.symlink("file", path("a/link")));
    auto link = gfs.lstat(path("a/link"));
    ASSERT_TRUE(link);
    EXPECT_EQ(link->type, FsType::Symlink);
    EXPECT_EQ(link->link_target, "file");
    EXPECT_EQ(gfs.stat(path("a/link"))->type, FsType::Regular);
    EXPECT_EQ(*gfs.realpath(path("a/b/../link")), fs::canonical(path("a/file")).string());

    EXPECT_TRUE(*gfs.exists(path("a/link")));
    EXPECT_FALSE(*gfs.exists(path("a/nope")));
    EXPECT_FALSE(*gfs.exists(path("a/file/below")));

    ASSERT_TRUE(gfs.chmod(path("a/file"), 04711));
    EXPECT_EQ(gfs.stat(path("a/file"))->mode, 04711u);
    ASSERT_TRUE(gfs.chown(path("a/file"), 65534, proto::kFsUnchanged));
    EXPECT_EQ(gfs.stat(path("a/file"))->uid, 65534u);
    EXPECT_EQ(gfs.stat(path("a/file"))->gid, 0u);

    ASSERT_TRUE(gfs.rename(path("a/file"), path("a/b/moved")));
    EXPECT_EQ(slurp(path("a/b/moved")), "hello");
    ASSERT_TRUE(gfs.copy(path("a/b/moved"), path("a/copied")));
    EXPECT_EQ(slurp(path("a/copied")), "hello");
    ASSERT_TRUE(gfs.copy(path("a/b"), path("a/b2"), true));
    EXPECT_EQ(slurp(path("a/b2/moved")), "hello");
    EXPECT_TRUE(fs::is_directory(path("a/b2/c")));
    EXPECT_EQ(gfs.copy(path("a"), path("a/b/inside"), true).error().code, EINVAL);

    auto deep = gfs.list(path("a"), {.depth = 0});
    ASSERT_TRUE(deep);
    std::set<std::string> names;
    for (auto& e : *deep)
        names.insert(e.path);
    EXPECT_TRUE(names.contains("b/c") && names.contains("b2/moved") && names.contains("link"))
        << names.size();
    auto shallow = gfs.list(path("a"), {.depth = 1});
    for (auto& e : *shallow)
        EXPECT_EQ(e.path.find('/'), std::string::npos) << e.path;

    EXPECT_EQ(gfs.remove(path("a/b")).error().code, EISDIR);
    EXPECT_EQ(gfs.remove_dir(path("a/b")).error().code, ENOTEMPTY);
    ASSERT_TRUE(gfs.remove(path("a/link")));
    ASSERT_TRUE(gfs.remove_dir(path("a"), true));
    EXPECT_FALSE(fs::exists(path("a")));
}

TEST_F(HostGuestFs, PathErrorsCarryErrnoAndPath) {
    GuestFs gfs(*agent_);
    spit(path("plain"), "x");
    auto missing = gfs.write(path("no/such/dir/f"), "x");
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.error().code, ENOENT);
    EXPECT_NE(missing.error().message.find(path("no/such/dir/f")), std::string::npos)
        << missing.error().message;
    auto not_dir = gfs.read(path("plain/below"));
    ASSERT_FALSE(not_dir);
    EXPECT_EQ(not_dir.error().code, ENOTDIR);
    EXPECT_EQ(gfs.stat(path("nope")).error().code, ENOENT);
    EXPECT_EQ(gfs.stat(path("nope")).error().to_string(),
              "stat " + path("nope") + ": No such file or directory");
    EXPECT_EQ(gfs.list(path("plain")).error().code, ENOTDIR);
    EXPECT_EQ(gfs.read(dir_.path()).error().code, EISDIR);
    EXPECT_EQ(gfs.write(dir_.path(), "x").error().code, EISDIR);

    // As another user, permissions are that user's.
    GuestFs nobody = gfs.as("nobody");
    ::mkdir(path("locked").c_str(), 0755);
    auto denied = nobody.write(path("locked/f"), "x");
    ASSERT_FALSE(denied);
    EXPECT_EQ(denied.error().code, EACCES);
    spit(path("secret"), "s", 0600);
    EXPECT_EQ(nobody.read(path("secret")).error().code, EACCES);
    EXPECT_EQ(nobody.chown(path("plain"), 0, 0).error().code, EPERM);
    ::mkdir(path("open").c_str(), 0777);
    ::chmod(path("open").c_str(), 0777);
    auto mine = nobody.write(path("open/mine"), "m");
    ASSERT_TRUE(mine) << mine.error().to_string();
    struct stat st;
    ASSERT_EQ(::stat(path("open/mine").c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, 65534u);
    EXPECT_EQ(gfs.as("no-such-user").stat("/").error().code, EINVAL);
}

TEST_F(HostGuestFs, ENOSPCKeepsTheOldFile) {
    TempDir mnt("sandlot-guestfs-tmpfs");
    if (::mount("tmpfs", mnt.path().c_str(), "tmpfs", 0, "size=1m") != 0)
        GTEST_SKIP() << "SKIPPED: cannot mount a tmpfs here (" << std::strerror(errno)
                     << "); the VM suite covers ENOSPC";
    GuestFs gfs(*agent_);
    std::string file = mnt / "f";
    spit(file, "the old file");
    auto full = gfs.write(file, std::string(2 << 20, 'z'));
    ASSERT_FALSE(full);
    EXPECT_EQ(full.error().code, ENOSPC) << full.error().to_string();
    EXPECT_EQ(slurp(file), "the old file");
    // Appending keeps it too: the file is cut back to its old size.
    auto appended = gfs.append(file, std::string(2 << 20, 'z'));
    ASSERT_FALSE(appended);
    EXPECT_EQ(appended.error().code, ENOSPC);
    EXPECT_EQ(slurp(file), "the old file");
    size_t entries = 0;
    for ([[maybe_unused]] auto& entry : fs::directory_iterator(mnt.path()))
        ++entries;
    EXPECT_EQ(entries, 1u);
    ::umount2(mnt.path().c_str(), MNT_DETACH);
}

// A tree with everything copy_from_host / copy_to_host must keep.
void make_tree(const std::string& root) {
    fs::create_directories(root + "/sub/deeper");
    spit(root + "/top.txt", "top");
    spit(root + "/exec.sh", "#!/bin/sh\n", 0755);
    spit(root + "/sub/private", "p", 0600);
    spit(root + "/sub/deeper/bin", std::string("\0\x01\x02", 3), 0640);
    fs::create_symlink("../top.txt", root + "/sub/rel-link");
    fs::create_symlink("/nonexistent/abs", root + "/dangling");
    ::link((root + "/top.txt").c_str(), (root + "/hard.txt").c_str());
    ::mkfifo((root + "/fifo").c_str(), 0620);
    ::chmod((root + "/sub").c_str(), 0710);
    timespec times[2] = {{1'000'000'000, 5}, {1'234'567'890, 987'654'321}};
    utimensat(AT_FDCWD, (root + "/sub/private").c_str(), times, 0);
    utimensat(AT_FDCWD, (root + "/sub").c_str(), times, 0);
    utimensat(AT_FDCWD, (root + "/sub/rel-link").c_str(), times, AT_SYMLINK_NOFOLLOW);
}

void expect_same_tree(const std::string& a, const std::string& b) {
    std::map<std::string, std::string> seen;
    for (auto it = fs::recursive_directory_iterator(a); it != fs::recursive_directory_iterator(); ++it) {
        std::string rel = it->path().lexically_relative(a).string();
        SCOPED_TRACE(rel);
        struct stat sa, sb;
        ASSERT_EQ(::lstat(it->path().c_str(), &sa), 0);
        ASSERT_EQ(::lstat((b + "/" + rel).c_str(), &sb), 0) << "missing in copy";
        EXPECT_EQ(sa.st_mode, sb.st_mode);
        if (S_ISREG(sa.st_mode)) {
            EXPECT_EQ(slurp(it->path()), slurp(b + "/" + rel));
            EXPECT_EQ(sa.st_mtim.tv_sec, sb.st_mtim.tv_sec);
            EXPECT_EQ(sa.st_mtim.tv_nsec, sb.st_mtim.tv_nsec);
            EXPECT_EQ(sa.st_nlink, sb.st_nlink);
        }
        if (S_ISDIR(sa.st_mode)) {
            EXPECT_EQ(sa.st_mtim.tv_sec, sb.st_mtim.tv_sec);
        }
        if (S_ISLNK(sa.st_mode)) {
            EXPECT_EQ(fs::read_symlink(it->path()), fs::read_symlink(b + "/" + rel));
            EXPECT_EQ(sa.st_mtim.tv_sec, sb.st_mtim.tv_sec);
        }
    }
    size_t count_a = 0, count_b = 0;
    for (auto it = fs::recursive_directory_iterator(a); it != fs::recursive_directory_iterator(); ++it)
        ++count_a;
    for (auto it = fs::recursive_directory_iterator(b); it != fs::recursive_directory_iterator(); ++it)
        ++count_b;
    EXPECT_EQ(count_a, count_b);
}

TEST_F(HostGuestFs, TreesKeepModesSymlinksHardLinksAndTimes) {
    GuestFs gfs(*agent_);
    TempDir host("sandlot-guestfs-host");
    make_tree(host / "src");
    auto in = gfs.copy_from_host(host / "src", path("guest"));
    ASSERT_TRUE(in) << in.error().to_string();
    EXPECT_EQ(in->entries, 11u);
    expect_same_tree(host / "src", path("guest"));
    auto out = gfs.copy_to_host(path("guest"), host / "back");
    ASSERT_TRUE(out) << out.error().to_string();
    expect_same_tree(host / "src", host / "back");
    // A single file, and a symlink copied as a link.
    ASSERT_TRUE(gfs.copy_from_host(host / "src/exec.sh", path("one.sh")));
    EXPECT_EQ(fs::status(path("one.sh")).permissions(), fs::perms(0755));
    ASSERT_TRUE(gfs.copy_to_host(path("guest/sub/rel-link"), host / "link-copy"));
    EXPECT_EQ(fs::read_symlink(host / "link-copy"), "../top.txt");
    // Copying over an existing tree replaces files in it.
    spit(host / "src/top.txt", "changed");
    auto again = gfs.copy_from_host(host / "src", path("guest"));
    ASSERT_TRUE(again) << again.error().to_string();
    EXPECT_EQ(slurp(path("guest/top.txt")), "changed");
}

TEST_F(HostGuestFs, TenThousandSmallFiles) {
    GuestFs gfs(*agent_);
    TempDir host("sandlot-guestfs-many");
    for (int d = 0; d < 100; ++d) {
        std::string dir = host / ("src/d" + std::to_string(d));
        fs::create_directories(dir);
        for (int f = 0; f < 100; ++f)
            spit(dir + "/f" + std::to_string(f), "file " + std::to_string(d * 100 + f) + "\n");
    }
    auto in = gfs.copy_from_host(host / "src", path("many"));
    ASSERT_TRUE(in) << in.error().to_string();
    EXPECT_EQ(in->entries, 10'101u);
    auto listed = gfs.list(path("many"), {.depth = 0});
    ASSERT_TRUE(listed);
    EXPECT_EQ(listed->size(), 10'100u);
    auto out = gfs.copy_to_host(path("many"), host / "back");
    ASSERT_TRUE(out) << out.error().to_string();
    EXPECT_EQ(out->entries, 10'101u);
    EXPECT_EQ(slurp(host / "back/d42/f7"), "file 4207\n");
    expect_same_tree(host / "src", host / "back");
}

TEST_F(HostGuestFs, ConcurrentTransfersAlongsideExecs) {
    GuestFs gfs(*agent_);
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 6; ++t) {
        threads.emplace_back([&, t] {
            std::string data = test::random_bytes((size_t{1} << 20) * (t + 1) + static_cast<size_t>(t), t);
            std::string file = path("c" + std::to_string(t));
            for (int round = 0; round < 3; ++round) {
                if (!gfs.write(file, data) || *gfs.read(file) != data) ++failures;
            }
        });
    }
    for (int t = 0; t < 3; ++t) {
        threads.emplace_back([&] {
            for (int round = 0; round < 5; ++round) {
                auto out = agent_->exec({.argv = {"/bin/sh", "-c", "head -c 300000 /dev/zero | wc -c"}});
                if (!out || out->stdout_data != "300000\n") ++failures;
            }
        });
    }
    for (auto& thread : threads)
        thread.join();
    EXPECT_EQ(failures.load(), 0);
    EXPECT_EQ(agent_->open_streams(), 0u);
}

// ---------------------------------------------------------------------------------------------------------
// A hostile agent answering get_tree: copy_to_host must keep everything under the destination.

class HostileTreeAgent {
  public:
    explicit HostileTreeAgent(std::vector<proto::FsEntry> entries, std::vector<std::string> data = {})
        : entries_(std::move(entries)), data_(std::move(data)) {
        int fds[2];
        EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
        peer_ = UniqueFd(fds[1]);
        UniqueFd host_end(fds[0]);
        test::set_socket_timeout(peer_.get(), 10);
        test::set_socket_timeout(host_end.get(), 10);
        proto::Hello hello;
        hello.protocol_major = proto::kProtocolMajor;
        hello.protocol_minor = proto::kProtocolMinor;
        hello.features = proto::kFeatureFs;
        hello.max_streams = 16;
        EXPECT_TRUE(proto::write_frame(peer_.get(), proto::make_frame(hello)));
        thread_ = std::thread([this] { serve(); });
        auto opened = AgentConnection::open(std::move(host_end));
        EXPECT_TRUE(opened);
        if (opened) conn = std::move(*opened);
    }
    ~HostileTreeAgent() {
        conn.reset();
        ::shutdown(peer_.get(), SHUT_RDWR);
        thread_.join();
    }

    std::unique_ptr<AgentConnection> conn;

  private:
    void serve() {
        auto request = proto::read_frame(peer_.get());
        if (!request) return;
        uint32_t id = request->stream_id;
        size_t next_data = 0;
        for (auto& entry : entries_) {
            (void)proto::write_frame(peer_.get(), proto::make_frame(proto::MessageType::FsEntry, id,
                                                                    *proto::encode_fs_entry(entry)));
            if (entry.type == proto::FsType::Regular && entry.size > 0) {
                std::string& d = data_.at(next_data++);
                (void)proto::write_frame(peer_.get(),
                                         proto::make_frame(proto::MessageType::FsData, id,
                                                           std::vector<uint8_t>(d.begin(), d.end())));
            }
        }
        (void)proto::write_frame(
            peer_.get(),
            proto::make_frame(proto::MessageType::FsDone, id, *proto::encode_fs_done({entries_.size(), {}})));
        while (proto::read_frame(peer_.get())) {
        }
    }

    std::vector<proto::FsEntry> entries_;
    std::vector<std::string> data_;
    UniqueFd peer_;
    std::thread thread_;
};

proto::FsEntry entry(std::string path, proto::FsType type, uint32_t mode, uint64_t size = 0,
                     std::string target = {}) {
    proto::FsEntry e;
    e.path = std::move(path);
    e.type = type;
    e.mode = mode;
    e.size = size;
    e.link_target = std::move(target);
    return e;
}

TEST(HostGuestFsHostile, ASymlinkCannotCarryWritesOutOfTheDestination) {
    TempDir host("sandlot-guestfs-hostile");
    fs::create_directories(host / "outside");
    HostileTreeAgent agent({entry("", proto::FsType::Directory, 0755),
                            entry("escape", proto::FsType::Symlink, 0777, 0, host / "outside"),
                            entry("escape/pwned", proto::FsType::Regular, 0644, 4)},
                           {"evil"});
    auto copied = GuestFs(*agent.conn).copy_to_host("/x", host / "dest");
    ASSERT_FALSE(copied);
    EXPECT_FALSE(fs::exists(host / "outside/pwned"));
}

TEST(HostGuestFsHostile, DotDotAndAbsolutePathsAreRefused) {
    for (std::string bad : {"../up", "a/../../up", "/abs", "a//b", "."}) {
        SCOPED_TRACE(bad);
        TempDir host("sandlot-guestfs-hostile");
        HostileTreeAgent agent(
            {entry("", proto::FsType::Directory, 0755), entry(bad, proto::FsType::Regular, 0644, 4)},
            {"evil"});
        auto copied = GuestFs(*agent.conn).copy_to_host("/x", host / "dest");
        ASSERT_FALSE(copied);
        EXPECT_EQ(copied.error().code, EPROTO);
        EXPECT_FALSE(fs::exists(host / "up"));
    }
}

TEST(HostGuestFsHostile, NoDeviceNodesAndNoSetIdBits) {
    TempDir host("sandlot-guestfs-hostile");
    auto dev = entry("mem", proto::FsType::CharDevice, 0666);
    dev.rdev = makedev(1, 1);
    HostileTreeAgent agent(
        {entry("", proto::FsType::Directory, 0755), dev, entry("suid", proto::FsType::Regular, 06755, 2)},
        {"#!"});
    auto copied = GuestFs(*agent.conn).copy_to_host("/x", host / "dest");
    ASSERT_TRUE(copied) << copied.error().to_string();
    EXPECT_FALSE(fs::exists(host / "dest/mem"));
    struct stat st;
    ASSERT_EQ(::stat((host / "dest/suid").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0755u);
}

TEST(HostGuestFsHostile, DataBeyondTheEntrySizeIsRefused) {
    TempDir host("sandlot-guestfs-hostile");
    HostileTreeAgent agent(
        {entry("", proto::FsType::Directory, 0755), entry("f", proto::FsType::Regular, 0644, 2)},
        {"much more than two bytes"});
    auto copied = GuestFs(*agent.conn).copy_to_host("/x", host / "dest");
    ASSERT_FALSE(copied);
    EXPECT_EQ(copied.error().code, EPROTO);
    EXPECT_FALSE(fs::exists(host / "dest/f"));
}

}  // namespace
}  // namespace sandlot::host
