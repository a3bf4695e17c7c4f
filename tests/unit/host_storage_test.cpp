// The host half of storage: image resolution and probing, volumes, upper images, and the boot archive that
// carries agentd's configuration. No VM: the archive is unpacked with the system's cpio.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "host/lib/images.h"
#include "host/lib/storage.h"
#include "host/lib/volumes.h"
#include "proto/boot_config.h"
#include "tests/support/run_command.h"
#include "tests/support/temp_dir.h"

namespace sandlot::host {
namespace {

using testing::run_command;

class ScopedEnv {
  public:
    ScopedEnv(const char* name, const std::string& value) : name_(name) {
        if (const char* old = std::getenv(name)) old_ = old;
        setenv(name, value.c_str(), 1);
    }
    ~ScopedEnv() {
        if (old_) {
            setenv(name_, old_->c_str(), 1);
        } else {
            unsetenv(name_);
        }
    }

  private:
    const char* name_;
    std::optional<std::string> old_;
};

void write_text(const std::string& path, const std::string& text) {
    std::ofstream(path, std::ios::binary) << text;
}

std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

// A small real ext4 image made by mkfs.ext4.
std::string make_ext4(const test::TempDir& dir, const std::string& name, uint64_t size = 32ull << 20) {
    std::string path = dir / name;
    EXPECT_TRUE(create_ext4_image(path, size));
    return path;
}

// One file out of the boot archive.
std::string extract(const std::string& archive, const std::string& name) {
    auto result = run_command({"sh", "-c", "cpio -i --to-stdout --quiet '" + name + "' < '" + archive + "'"});
    EXPECT_EQ(result.status, 0) << result.output;
    return result.output;
}

proto::BootConfig boot_config_of(const PreparedStorage& prepared) {
    auto config = proto::parse_boot_config(extract(prepared.boot_initrd, "sandlot/boot.json"));
    EXPECT_TRUE(config) << (config ? "" : config.error().to_string());
    return config ? *config : proto::BootConfig{};
}

class HostStorage : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_FALSE(dir_.path().empty());
        mkdir((dir_ / "run").c_str(), 0700);
        mkdir((dir_ / "images").c_str(), 0755);
    }
    std::string runtime() const { return dir_ / "run"; }

    test::TempDir dir_{"sandlot-storage"};
    ScopedEnv state_{"SANDLOT_HOME", dir_ / "state"};
    ScopedEnv images_{"SANDLOT_IMAGE_DIR", dir_ / "images"};
};

TEST(HostStorageSize, ParsesSuffixes) {
    EXPECT_EQ(*parse_size("512"), 512u);
    EXPECT_EQ(*parse_size("4k"), 4096u);
    EXPECT_EQ(*parse_size("64M"), 64ull << 20);
    EXPECT_EQ(*parse_size("4g"), 4ull << 30);
    EXPECT_EQ(*parse_size("2GiB"), 2ull << 30);
    EXPECT_EQ(*parse_size("1t"), 1ull << 40);
    for (const char* bad : {"", "g", "-1", "4x", "1.5g", "99999999999999999999", "20000000000t"})
        EXPECT_FALSE(parse_size(bad)) << bad;
}

TEST_F(HostStorage, InitramfsRootNeedsNoDevices) {
    auto prepared = prepare_storage({}, runtime());
    ASSERT_TRUE(prepared) << prepared.error().to_string();
    EXPECT_TRUE(prepared->vmm_args.empty());
    EXPECT_EQ(boot_config_of(*prepared).root.kind, proto::BootRoot::Kind::Initramfs);
}

TEST_F(HostStorage, DiskImageRootGetsAFreshSparseUpper) {
    StorageOptions options;
    options.root.image = make_ext4(dir_, "root.ext4");
    auto prepared = prepare_storage(options, runtime());
    ASSERT_TRUE(prepared) << prepared.error().to_string();
    std::vector<std::string> expected = {"--disk", options.root.image + ",ro,serial=sandlot-root", "--disk",
                                         runtime() + "/upper.ext4,serial=sandlot-upper"};
    EXPECT_EQ(prepared->vmm_args, expected);
    struct stat st;
    ASSERT_EQ(stat((runtime() + "/upper.ext4").c_str(), &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), kDefaultUpperSize);
    EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, 64ull << 20) << "the upper image must stay sparse";
    auto config = boot_config_of(*prepared);
    EXPECT_EQ(config.root.kind, proto::BootRoot::Kind::Disk);
    EXPECT_EQ(config.root.fstype, "ext4");
    EXPECT_EQ(config.root.upper, proto::BootRoot::Upper::Disk);
    EXPECT_EQ(config.root.upper_source, "sandlot-upper");
}

TEST_F(HostStorage, PersistentUpperIsCreatedOnceThenReused) {
    StorageOptions options;
    options.root.image = make_ext4(dir_, "root.ext4");
    options.root.upper_path = dir_ / "keep.ext4";
    options.root.upper_size = 64ull << 20;
    ASSERT_TRUE(prepare_storage(options, runtime()));
    struct stat first;
    ASSERT_EQ(stat(options.root.upper_path.c_str(), &first), 0);
    EXPECT_EQ(first.st_size, 64 << 20);
    // A marker at the end: a second prepare must not reformat it.
    {
        int fd = open(options.root.upper_path.c_str(), O_WRONLY);
        ASSERT_GE(fd, 0);
        ASSERT_EQ(pwrite(fd, "KEEP", 4, (64 << 20) - 4), 4);
        close(fd);
    }
    ASSERT_TRUE(prepare_storage(options, runtime()));
    std::string content = read_text(options.root.upper_path);
    EXPECT_EQ(content.substr(content.size() - 4), "KEEP");
}

TEST_F(HostStorage, DirectoryRootIsAReadOnlyShare) {
    mkdir((dir_ / "tree").c_str(), 0755);
    StorageOptions options;
    options.root.image = dir_ / "tree";
    options.root.writable = RootOptions::Writable::Tmpfs;
    options.root.tmpfs_upper_size = 1 << 20;
    auto prepared = prepare_storage(options, runtime());
    ASSERT_TRUE(prepared) << prepared.error().to_string();
    std::vector<std::string> expected = {"--fs", "sandlot-root=" + (dir_ / "tree") + ",ro"};
    EXPECT_EQ(prepared->vmm_args, expected);
    auto config = boot_config_of(*prepared);
    EXPECT_EQ(config.root.kind, proto::BootRoot::Kind::VirtioFs);
    EXPECT_EQ(config.root.upper, proto::BootRoot::Upper::Tmpfs);
    EXPECT_EQ(config.root.upper_size_bytes, 1u << 20);
}

TEST_F(HostStorage, BuiltinImagesResolveThroughTheImageDir) {
    std::string built = make_ext4(dir_, "built.ext4");
    ASSERT_EQ(symlink(built.c_str(), (dir_ / "images/base.ext4").c_str()), 0);
    auto image = resolve_image("base");
    ASSERT_TRUE(image) << image.error().to_string();
    EXPECT_EQ(image->path, built);
    EXPECT_EQ(image->fstype, "ext4");

    auto missing = resolve_image("python");
    ASSERT_FALSE(missing);
    EXPECT_NE(missing.error().to_string().find("image python is not built"), std::string::npos);
    auto unknown = resolve_image("windows");
    ASSERT_FALSE(unknown);
    EXPECT_NE(unknown.error().to_string().find("unknown image \"windows\""), std::string::npos);
}

TEST_F(HostStorage, CorruptAndForeignDiskImagesAreRefusedOnTheHost) {
    write_text(dir_ / "garbage.img", std::string(1 << 20, 'x'));
    auto garbage = resolve_image(dir_ / "garbage.img");
    ASSERT_FALSE(garbage);
    EXPECT_NE(garbage.error().to_string().find("no filesystem found"), std::string::npos);

    std::string qcow = "QFI\xfb" + std::string(4096, '\0');
    write_text(dir_ / "disk.qcow2", qcow);
    auto qcow2 = resolve_image(dir_ / "disk.qcow2");
    ASSERT_FALSE(qcow2);
    EXPECT_NE(qcow2.error().to_string().find("qcow2"), std::string::npos);

    // A real ext4 image cut short: the superblock promises more blocks than the file has.
    std::string cut = make_ext4(dir_, "cut.ext4");
    ASSERT_EQ(truncate(cut.c_str(), 8 << 20), 0);
    auto truncated = resolve_image(cut);
    ASSERT_FALSE(truncated);
    EXPECT_NE(truncated.error().to_string().find("truncated ext4"), std::string::npos);

    write_text(dir_ / "tiny.img", "hi");
    EXPECT_FALSE(resolve_image(dir_ / "tiny.img"));
    EXPECT_FALSE(resolve_image(dir_ / "does-not-exist"));
}

TEST_F(HostStorage, VolumesBecomeSharesDisksAndTmpfs) {
    mkdir((dir_ / "shared").c_str(), 0755);
    std::string disk = make_ext4(dir_, "data.ext4");
    StorageOptions options;
    options.volumes.push_back({Volume::Kind::Bind, dir_ / "shared", "/data", true, 0});
    options.volumes.push_back({Volume::Kind::Named, "cache", "/cache", false, 0});
    options.volumes.push_back({Volume::Kind::Tmpfs, "", "/scratch", false, 8 << 20});
    options.volumes.push_back({Volume::Kind::Disk, disk, "/mnt/disk", false, 0});
    auto prepared = prepare_storage(options, runtime());
    ASSERT_TRUE(prepared) << prepared.error().to_string();
    std::vector<std::string> expected = {"--fs",   "sandlot-vol0=" + (dir_ / "shared") + ",ro",
                                         "--fs",   "sandlot-vol1=" + (dir_ / "state/volumes/cache"),
                                         "--disk", disk + ",serial=sandlot-vol2"};
    EXPECT_EQ(prepared->vmm_args, expected);
    auto config = boot_config_of(*prepared);
    ASSERT_EQ(config.mounts.size(), 4u);
    EXPECT_EQ(config.mounts[0].kind, proto::BootMount::Kind::VirtioFs);
    EXPECT_TRUE(config.mounts[0].read_only);
    EXPECT_EQ(config.mounts[2].kind, proto::BootMount::Kind::Tmpfs);
    EXPECT_EQ(config.mounts[2].size_bytes, 8u << 20);
    EXPECT_EQ(config.mounts[3].fstype, "ext4");
    EXPECT_TRUE(inspect_volume("cache")) << "a named volume is created on first use";
}

TEST_F(HostStorage, BadVolumesAreClearErrors) {
    auto check = [&](Volume volume, const std::string& needle) {
        StorageOptions options;
        options.volumes.push_back(std::move(volume));
        auto prepared = prepare_storage(options, runtime());
        ASSERT_FALSE(prepared) << needle;
        EXPECT_NE(prepared.error().to_string().find(needle), std::string::npos)
            << prepared.error().to_string();
    };
    check({Volume::Kind::Bind, dir_ / "missing", "/data", false, 0}, "No such file or directory");
    check({Volume::Kind::Bind, dir_.path(), "relative", false, 0}, "must be an absolute guest path");
    check({Volume::Kind::Bind, dir_.path(), "/a/../etc", false, 0}, "must not contain ..");
    check({Volume::Kind::Bind, dir_.path(), "/", false, 0}, "cannot be mounted on /");
    check({Volume::Kind::Named, "../escape", "/x", false, 0}, "bad volume name");
    check({Volume::Kind::Disk, dir_ / "nope.img", "/x", false, 0}, "disk volume");
}

TEST_F(HostStorage, PatchesAndScriptsTravelInTheBootArchive) {
    write_text(dir_ / "host-file", "from the host\n");
    mkdir((dir_ / "host-dir").c_str(), 0755);
    write_text(dir_ / "host-dir/inner", "inner\n");
    StorageOptions options;
    Patch write;
    write.op = Patch::Op::Write;
    write.path = "/etc/motd";
    write.content = "hello\n";
    write.mode = 0600;
    Patch copy_file;
    copy_file.op = Patch::Op::CopyIn;
    copy_file.path = "/opt/file";
    copy_file.host_path = dir_ / "host-file";
    Patch copy_dir = copy_file;
    copy_dir.path = "/opt/dir";
    copy_dir.host_path = dir_ / "host-dir";
    options.patches = {write, copy_file, copy_dir};
    options.scripts.push_back({"greet", "#!/bin/sh\necho hi\n"});
    options.env = {"A=1"};
    options.workdir = "/tmp";
    options.user = "sandlot";
    options.hostname = "box";

    auto prepared = prepare_storage(options, runtime());
    ASSERT_TRUE(prepared) << prepared.error().to_string();
    auto config = boot_config_of(*prepared);
    ASSERT_EQ(config.patches.size(), 3u);
    EXPECT_EQ(config.patches[0].op, proto::BootPatch::Op::Write);
    EXPECT_EQ(config.patches[0].mode, 0600u);
    EXPECT_EQ(extract(prepared->boot_initrd, config.patches[0].source.substr(1)), "hello\n");
    EXPECT_EQ(extract(prepared->boot_initrd, config.patches[1].source.substr(1)), "from the host\n");
    EXPECT_EQ(extract(prepared->boot_initrd, config.patches[2].source.substr(1) + "/inner"), "inner\n");
    ASSERT_EQ(config.scripts.size(), 1u);
    EXPECT_EQ(extract(prepared->boot_initrd, config.scripts[0].source.substr(1)), "#!/bin/sh\necho hi\n");
    EXPECT_EQ(config.env, std::vector<std::string>{"A=1"});
    EXPECT_EQ(config.workdir, "/tmp");
    EXPECT_EQ(config.user, "sandlot");
    EXPECT_EQ(config.hostname, "box");
}

TEST_F(HostStorage, PatchesAreRefusedForAReadOnlyRoot) {
    StorageOptions options;
    options.root.image = make_ext4(dir_, "root.ext4");
    options.root.writable = RootOptions::Writable::ReadOnly;
    Patch mkdir_patch;
    mkdir_patch.op = Patch::Op::Mkdir;
    mkdir_patch.path = "/x";
    options.patches.push_back(mkdir_patch);
    auto prepared = prepare_storage(options, runtime());
    ASSERT_FALSE(prepared);
    EXPECT_NE(prepared.error().to_string().find("patches need a writable root"), std::string::npos);
}

TEST_F(HostStorage, NamedVolumeLifecycle) {
    auto created = create_volume("data-1");
    ASSERT_TRUE(created) << created.error().to_string();
    EXPECT_FALSE(create_volume("data-1")) << "create refuses an existing volume";
    write_text(created->path + "/f", "12345");
    auto info = inspect_volume("data-1");
    ASSERT_TRUE(info);
    EXPECT_EQ(info->bytes, 5u);
    ASSERT_TRUE(create_volume("a", {{"team", "x"}}));
    EXPECT_EQ(inspect_volume("a")->labels.at("team"), "x") << "labels are kept in the state database";
    auto list = list_volumes();
    ASSERT_TRUE(list);
    ASSERT_EQ(list->size(), 2u);
    EXPECT_EQ((*list)[0].name, "a");
    ASSERT_TRUE(remove_volume("data-1"));
    EXPECT_FALSE(inspect_volume("data-1"));
    EXPECT_FALSE(remove_volume("data-1"));
    for (const std::string& bad : std::vector<std::string>{"", ".hidden", "a/b", "..", std::string(65, 'a')})
        EXPECT_FALSE(check_volume_name(bad)) << bad;
}

// The CLI refuses bad storage options before anything boots: status 125 and one line naming the problem.
TEST_F(HostStorage, CliStorageErrorsAreOneLineAndStatus125) {
    write_text(dir_ / "garbage.img", std::string(1 << 20, 'x'));
    std::string sandlot = std::string(SANDLOT_BIN_DIR) + "/sandlot";
    struct Case {
        std::vector<std::string> args;
        std::string needle;
    };
    std::vector<Case> cases = {
        {{"--image", "windows", "--pull", "never"},
         "image docker.io/library/windows:latest is not in the store, and the pull policy is never"},
        {{"--image", "windows:11", "--pull", "sometimes"}, "unknown pull policy \"sometimes\""},
        {{"--image", "Bad/Name"}, "invalid image reference"},
        {{"--image", dir_ / "missing"}, "No such file or directory"},
        {{"--image", dir_ / "garbage.img"}, "no filesystem found"},
        {{"-v", (dir_ / "missing") + ":/data"}, "No such file or directory"},
        {{"-v", "nocolon"}, "expected SOURCE:GUEST_PATH"},
        {{"--volume", "bad/name:/x"}, "bad volume name"},
        {{"--tmpfs", "/t:12q"}, "bad size"},
        {{"--write", "/etc/x:999=hi"}, "bad mode"},
        {{"--read-only", "--write", "/x=1"}, "need an --image"},
        {{"--image", dir_ / "garbage.img", "--read-only", "--upper", "u"}, "cannot be combined"},
        {{"--script", "x=" + (dir_ / "missing")}, "--script"},
    };
    for (const auto& c : cases) {
        std::vector<std::string> argv = {sandlot, "run"};
        argv.insert(argv.end(), c.args.begin(), c.args.end());
        argv.insert(argv.end(), {"--", "true"});
        auto result = run_command(argv);
        EXPECT_EQ(result.status, 125) << c.needle << ": " << result.output;
        EXPECT_NE(result.output.find(c.needle), std::string::npos) << result.output;
        EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 1) << result.output;
    }
}

TEST_F(HostStorage, VolumeCommand) {
    std::string sandlot = std::string(SANDLOT_BIN_DIR) + "/sandlot";
    EXPECT_EQ(run_command({sandlot, "volume", "create", "v1"}).output, "v1\n");
    auto again = run_command({sandlot, "volume", "create", "v1"});
    EXPECT_EQ(again.status, 125);
    EXPECT_NE(again.output.find("already exists"), std::string::npos);
    write_text(dir_ / "state/volumes/v1/data", "abc");
    EXPECT_EQ(run_command({sandlot, "volume", "ls", "-q"}).output, "v1\n");
    auto inspect = run_command({sandlot, "volume", "inspect", "v1"});
    EXPECT_EQ(inspect.status, 0);
    EXPECT_NE(inspect.output.find("\"bytes\": 3"), std::string::npos) << inspect.output;
    EXPECT_EQ(run_command({sandlot, "volume", "rm", "v1"}).status, 0);
    EXPECT_EQ(run_command({sandlot, "volume", "ls", "-q"}).output, "");
    EXPECT_EQ(run_command({sandlot, "volume", "rm", "v1"}).status, 125);
}

}  // namespace
}  // namespace sandlot::host
