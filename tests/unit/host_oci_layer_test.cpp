// Tests for host/lib/oci_layer.h: layers built here with libarchive's writer (and zlib / libzstd for the
// compressed forms), applied onto a root inside a sentinel directory that must hold nothing else afterwards.
#include "host/lib/oci_layer.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "host/lib/digest.h"
#include "tests/support/temp_dir.h"

namespace sandlot::host {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<std::byte>;

struct Entry {
    std::string name;
    mode_t type = AE_IFREG;
    mode_t perm = 0644;
    std::string data;
    std::string symlink;
    std::string hardlink;
    int64_t uid = 0, gid = 0;
    time_t mtime = 1700000000;
    long mtime_nsec = 0;
    std::vector<std::pair<std::string, std::string>> xattrs;
    dev_t rdev = 0;
};

Entry file(std::string name, std::string data = "", mode_t perm = 0644) {
    Entry e;
    e.name = std::move(name);
    e.data = std::move(data);
    e.perm = perm;
    return e;
}
Entry dir(std::string name, mode_t perm = 0755) {
    Entry e;
    e.name = std::move(name);
    e.type = AE_IFDIR;
    e.perm = perm;
    return e;
}
Entry symlink(std::string name, std::string target) {
    Entry e;
    e.name = std::move(name);
    e.type = AE_IFLNK;
    e.perm = 0777;
    e.symlink = std::move(target);
    return e;
}
Entry hardlink(std::string name, std::string target) {
    Entry e;
    e.name = std::move(name);
    e.hardlink = std::move(target);
    return e;
}
Entry whiteout(std::string name) {
    return file(std::move(name));
}

la_ssize_t append_cb(struct archive*, void* client, const void* buf, size_t n) {
    auto* out = static_cast<Bytes*>(client);
    auto* p = static_cast<const std::byte*>(buf);
    out->insert(out->end(), p, p + n);
    return static_cast<la_ssize_t>(n);
}

enum class Filter { kNone, kGzip, kZstd };

// A pax tar of the entries, through one of libarchive's filters.
Bytes make_tar(const std::vector<Entry>& entries, Filter filter = Filter::kNone) {
    Bytes out;
    archive* a = archive_write_new();
    EXPECT_EQ(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
    if (filter == Filter::kGzip) {
        EXPECT_EQ(archive_write_add_filter_gzip(a), ARCHIVE_OK);
    }
    if (filter == Filter::kZstd) {
        EXPECT_EQ(archive_write_add_filter_zstd(a), ARCHIVE_OK);
    }
    EXPECT_EQ(archive_write_open(a, &out, nullptr, append_cb, nullptr), ARCHIVE_OK);
    for (const Entry& e : entries) {
        archive_entry* ae = archive_entry_new();
        archive_entry_copy_pathname(ae, e.name.c_str());
        archive_entry_set_filetype(ae, e.hardlink.empty() ? e.type : AE_IFREG);
        archive_entry_set_perm(ae, e.perm);
        archive_entry_set_uid(ae, e.uid);
        archive_entry_set_gid(ae, e.gid);
        archive_entry_set_mtime(ae, e.mtime, e.mtime_nsec);
        if (!e.symlink.empty()) archive_entry_copy_symlink(ae, e.symlink.c_str());
        if (!e.hardlink.empty()) archive_entry_copy_hardlink(ae, e.hardlink.c_str());
        if (e.rdev) archive_entry_set_rdev(ae, e.rdev);
        for (const auto& [k, v] : e.xattrs)
            archive_entry_xattr_add_entry(ae, k.c_str(), v.data(), v.size());
        bool has_data = e.type == AE_IFREG && e.hardlink.empty();
        archive_entry_set_size(ae, has_data ? static_cast<la_int64_t>(e.data.size()) : 0);
        EXPECT_EQ(archive_write_header(a, ae), ARCHIVE_OK) << e.name << ": " << archive_error_string(a);
        if (has_data && !e.data.empty()) {
            EXPECT_EQ(archive_write_data(a, e.data.data(), e.data.size()),
                      static_cast<la_ssize_t>(e.data.size()));
        }
        archive_entry_free(ae);
    }
    EXPECT_EQ(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
    return out;
}

Bytes gzip(const Bytes& in) {
    z_stream zs{};
    EXPECT_EQ(deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
    Bytes out(deflateBound(&zs, in.size()) + 64);
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
    zs.avail_in = static_cast<uInt>(in.size());
    zs.next_out = reinterpret_cast<Bytef*>(out.data());
    zs.avail_out = static_cast<uInt>(out.size());
    EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
    out.resize(zs.total_out);
    deflateEnd(&zs);
    return out;
}

Bytes zstd(const Bytes& in) {
    Bytes out(ZSTD_compressBound(in.size()));
    size_t n = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), 3);
    EXPECT_FALSE(ZSTD_isError(n));
    out.resize(n);
    return out;
}

std::string digest_of(const Bytes& b) {
    Sha256 h;
    h.update(b);
    return h.finish();
}

std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_text(const std::string& path, const std::string& text) {
    fs::create_directories(fs::path(path).parent_path());
    std::ofstream(path, std::ios::binary) << text;
}

bool exists_nofollow(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
}

class LayerTest : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_FALSE(sentinel_.path().empty());
        root_ = sentinel_ / "root";
        ASSERT_EQ(::mkdir(root_.c_str(), 0755), 0);
    }

    // The sentinel holds the root and what the test put there, nothing the layer made.
    void TearDown() override {
        std::set<std::string> names;
        for (const auto& e : fs::directory_iterator(sentinel_.path()))
            names.insert(e.path().filename());
        std::set<std::string> expected{"root"};
        expected.insert(allowed_.begin(), allowed_.end());
        EXPECT_EQ(names, expected);
    }

    Result<LayerApplyStats> apply(const Bytes& layer) { return apply_layer_buffer(layer, root_); }
    Result<LayerApplyStats> apply(const std::vector<Entry>& entries) { return apply(make_tar(entries)); }

    std::string at(const std::string& rel) const { return root_ + "/" + rel; }

    void expect_error(const Result<LayerApplyStats>& r, const std::string& fragment) {
        ASSERT_FALSE(r.has_value());
        EXPECT_NE(r.error().message.find(fragment), std::string::npos) << r.error().to_string();
        EXPECT_EQ(r.error().message.find('\n'), std::string::npos);
    }

    test::TempDir sentinel_{"oci-layer"};
    std::string root_;
    std::vector<std::string> allowed_;
};

TEST_F(LayerTest, RegularFilesDirsAndMetadata) {
    Entry etc = dir("etc", 0750);
    etc.mtime = 1600000000;
    etc.uid = 7;
    Entry hosts = file("./etc/hosts", "127.0.0.1 localhost\n", 0640);
    hosts.uid = 1000;
    hosts.gid = 1001;
    hosts.mtime = 1234567890;
    Entry su = file("/usr/bin/su", "#!/bin/true\n", 04755);
    Entry sg = file("usr/bin/sg", "", 02711);
    Entry tmp = dir("tmp/", 01777);
    Bytes tar = make_tar({etc, hosts, su, sg, tmp});
    auto r = apply(tar);
    ASSERT_TRUE(r.has_value()) << r.error().to_string();
    EXPECT_EQ(r->diff_id, digest_of(tar));
    EXPECT_EQ(r->diff_id,
              sha256_digest(std::string_view(reinterpret_cast<const char*>(tar.data()), tar.size())));
    EXPECT_EQ(r->entries, 5u);
    EXPECT_EQ(r->bytes, hosts.data.size() + su.data.size());
    EXPECT_EQ(r->skipped_devices, 0u);

    EXPECT_EQ(read_text(at("etc/hosts")), hosts.data);
    struct stat st {};
    ASSERT_EQ(::lstat(at("etc/hosts").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0640u);
    EXPECT_EQ(st.st_mtim.tv_sec, 1234567890);
    if (::geteuid() == 0) {
        EXPECT_EQ(st.st_uid, 1000u);
        EXPECT_EQ(st.st_gid, 1001u);
    }
    ASSERT_EQ(::lstat(at("etc").c_str(), &st), 0);
    EXPECT_TRUE(S_ISDIR(st.st_mode));
    EXPECT_EQ(st.st_mode & 07777, 0750u);
    EXPECT_EQ(st.st_mtim.tv_sec, 1600000000);  // set after its children were created
    if (::geteuid() == 0) {
        EXPECT_EQ(st.st_uid, 7u);
    }
    ASSERT_EQ(::lstat(at("usr/bin/su").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 04755u);
    ASSERT_EQ(::lstat(at("usr/bin/sg").c_str(), &st), 0);
    if (::geteuid() == 0) {
        EXPECT_EQ(st.st_mode & 07777, 02711u);
    }
    ASSERT_EQ(::lstat(at("usr").c_str(), &st), 0);  // a missing parent, made 0755
    EXPECT_EQ(st.st_mode & 07777, 0755u);
    ASSERT_EQ(::lstat(at("tmp").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 01777u);
}

std::vector<Entry> sample_entries() {
    std::string big(300000, 'x');
    for (size_t i = 0; i < big.size(); i += 7)
        big[i] = static_cast<char>('a' + i % 26);
    return {dir("d"), file("d/small", "hello"), file("d/big", big), symlink("d/link", "small")};
}

TEST_F(LayerTest, DetectsCompressionFromMagic) {
    Bytes tar = make_tar(sample_entries());
    std::string want = digest_of(tar);
    for (const Bytes& layer : {gzip(tar), zstd(tar)}) {
        fs::remove_all(root_);
        fs::create_directory(root_);
        auto r = apply(layer);
        ASSERT_TRUE(r.has_value()) << r.error().to_string();
        EXPECT_EQ(r->diff_id, want);
        EXPECT_EQ(read_text(at("d/small")), "hello");
        EXPECT_EQ(r->bytes, 300005u);
    }
    // libarchive's own filters (their tar padding may differ from the plain tar's).
    for (Filter f : {Filter::kGzip, Filter::kZstd}) {
        fs::remove_all(root_);
        fs::create_directory(root_);
        auto r = apply(make_tar(sample_entries(), f));
        ASSERT_TRUE(r.has_value()) << r.error().to_string();
        EXPECT_TRUE(is_sha256_digest(r->diff_id));
        EXPECT_EQ(read_text(at("d/small")), "hello");
    }
}

TEST_F(LayerTest, FromFileAndDiffIdCoversTrailingBytes) {
    Bytes tar = make_tar(sample_entries());
    // Extra zero blocks after the end-of-archive marker are part of the stream and of the diff_id.
    tar.resize(tar.size() + 8192, std::byte{0});
    std::string path = sentinel_ / "layer.tar.gz";
    allowed_.push_back("layer.tar.gz");
    Bytes gz = gzip(tar);
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(gz.data()), gz.size());
    auto r = apply_layer(path, root_);
    ASSERT_TRUE(r.has_value()) << r.error().to_string();
    EXPECT_EQ(r->diff_id, digest_of(tar));
    EXPECT_EQ(read_text(at("d/small")), "hello");
    expect_error(apply_layer(sentinel_ / "missing", root_), "layer: open");
}

TEST_F(LayerTest, ConcatenatedGzipMembers) {
    Bytes tar = make_tar(sample_entries());
    size_t half = tar.size() / 3;
    Bytes a(tar.begin(), tar.begin() + half), b(tar.begin() + half, tar.end());
    Bytes layer = gzip(a);
    Bytes second = gzip(b);
    layer.insert(layer.end(), second.begin(), second.end());
    auto r = apply(layer);
    ASSERT_TRUE(r.has_value()) << r.error().to_string();
    EXPECT_EQ(r->diff_id, digest_of(tar));
    EXPECT_EQ(read_text(at("d/big")).size(), 300000u);
    // Two zstd frames likewise.
    fs::remove_all(root_);
    fs::create_directory(root_);
    Bytes zs = zstd(a), zs2 = zstd(b);
    zs.insert(zs.end(), zs2.begin(), zs2.end());
    r = apply(zs);
    ASSERT_TRUE(r.has_value()) << r.error().to_string();
    EXPECT_EQ(r->diff_id, digest_of(tar));
}

TEST_F(LayerTest, SymlinksAndHardLinks) {
    auto r = apply({file("bin/busybox", "bb", 0755), symlink("bin/sh", "/bin/busybox"),
                    symlink("bin/up", "../../../../etc"), hardlink("bin/ls", "bin/busybox"),
                    hardlink("./bin/cat", "/bin/busybox")});
    ASSERT_TRUE(r.has_value()) << r.error().to_string();
    EXPECT_EQ(fs::read_symlink(at("bin/sh")), "/bin/busybox");
    EXPECT_EQ(fs::read_symlink(at("bin/up")), "../../../../etc");
    struct stat a {
    }, b{}, c{};
    ASSERT_EQ(::lstat(at("bin/busybox").c_str(), &a), 0);
    ASSERT_EQ(::lstat(at("bin/ls").c_str(), &b), 0);
    ASSERT_EQ(::lstat(at("bin/cat").c_str(), &c), 0);
    EXPECT_EQ(a.st_ino, b.st_ino);
    EXPECT_EQ(a.st_ino, c.st_ino);
    EXPECT_EQ(a.st_nlink, 3u);
    EXPECT_EQ(r->entries, 5u);
}

TEST_F(LayerTest, WhiteoutsRemoveLowerEntries) {
    write_text(at("a/f"), "lower");
    write_text(at("a/g"), "lower");
    write_text(at("d/sub/x"), "lower");
    write_text(at("d/keep"), "lower");
    auto r = apply({whiteout("a/.wh.f"), whiteout("d/.wh.sub"), whiteout("nothere/.wh.x"),
                    whiteout(".wh.nope"), file("a/new", "n"), whiteout("a/.wh.new")});
    ASSERT_TRUE(r.has_value()) << r.error().to_string();
    EXPECT_FALSE(exists_nofollow(at("a/f")));
    EXPECT_TRUE(exists_nofollow(at("a/g")));
    EXPECT_FALSE(exists_nofollow(at("d/sub")));
    EXPECT_TRUE(exists_nofollow(at("d/keep")));
    EXPECT_FALSE(exists_nofollow(at("nothere")));  // a whiteout makes no parents
    EXPECT_FALSE(exists_nofollow(at("a/.wh.f")));
    EXPECT_TRUE(exists_nofollow(at("a/new")));  // same-layer entries survive their layer's whiteouts
    EXPECT_EQ(r->entries, 6u);
}

TEST_F(LayerTest, OpaqueDirectoryKeepsSameLayerChildren) {
    write_text(at("o/old1"), "lower");
    write_text(at("o/olddir/x"), "lower");
    write_text(at("o/keep/lowerfile"), "lower");
    write_text(at("other/stay"), "lower");
    auto r = apply({file("o/new", "n"), dir("o/keep"), file("o/keep/mine", "m"), file("o/deep/a/b", "b"),
                    whiteout("o/.wh..wh..opq"), file("o/after", "a"), dir("fresh"),
                    whiteout("fresh/.wh..wh..opq")});
    ASSERT_TRUE(r.has_value()) << r.error().to_string();
    EXPECT_FALSE(exists_nofollow(at("o/old1")));
    EXPECT_FALSE(exists_nofollow(at("o/olddir")));
    EXPECT_FALSE(exists_nofollow(at("o/keep/lowerfile")));
    EXPECT_EQ(read_text(at("o/new")), "n");
    EXPECT_EQ(read_text(at("o/keep/mine")), "m");
    EXPECT_EQ(read_text(at("o/deep/a/b")), "b");
    EXPECT_EQ(read_text(at("o/after")), "a");
    EXPECT_TRUE(exists_nofollow(at("other/stay")));
    EXPECT_FALSE(exists_nofollow(at("o/.wh..wh..opq")));
    EXPECT_TRUE(fs::is_directory(at("fresh")));
}

TEST_F(LayerTest, ReplacesEntriesOfAnotherType) {
    write_text(at("x"), "file");
    write_text(at("y/child"), "lower");
    write_text(at("z/c"), "lower");
    fs::create_symlink("/", at("s"));
    fs::create_directory(at("w"));
    auto r = apply({dir("x"), file("x/in", "i"), file("y", "now a file"), dir("z", 0700), dir("s"),
                    file("s/t", "t"), symlink("w", "x")});
    ASSERT_TRUE(r.has_value()) << r.error().to_string();
    EXPECT_EQ(read_text(at("x/in")), "i");
    EXPECT_EQ(read_text(at("y")), "now a file");
    EXPECT_EQ(read_text(at("z/c")), "lower");
    EXPECT_EQ(fs::status(at("z")).permissions(), fs::perms::owner_all);
    EXPECT_FALSE(fs::is_symlink(at("s")));
    EXPECT_EQ(read_text(at("s/t")), "t");
    EXPECT_TRUE(fs::is_symlink(at("w")));
}

TEST_F(LayerTest, Xattrs) {
    // A v2 capability set: cap_net_bind_service (bit 10), permitted + effective.
    std::string cap(20, '\0');
    cap[0] = 0x01;  // VFS_CAP_FLAGS_EFFECTIVE
    cap[3] = 0x02;  // VFS_CAP_REVISION_2 (little endian 0x02000000)
    cap[4] = 0x00;
    cap[5] = 0x04;  // permitted bit 10
    Entry f = file("bin/ping", "ping", 0755);
    f.xattrs = {{"user.sandlot", "value"}, {"security.capability", cap}};
    Entry d = dir("data");
    d.xattrs = {{"user.dir", "dv"}};
    auto r = apply({f, d});
    ASSERT_TRUE(r.has_value()) << r.error().to_string();
    char buf[64];
    ssize_t n = ::lgetxattr(at("bin/ping").c_str(), "user.sandlot", buf, sizeof buf);
    if (n < 0 && errno == ENOTSUP) GTEST_SKIP() << "no user xattrs here";
    ASSERT_EQ(n, 5);
    EXPECT_EQ(std::string(buf, 5), "value");
    n = ::lgetxattr(at("data").c_str(), "user.dir", buf, sizeof buf);
    EXPECT_EQ(n, 2);
    if (::geteuid() == 0) {
        n = ::lgetxattr(at("bin/ping").c_str(), "security.capability", buf, sizeof buf);
        ASSERT_EQ(n, 20) << std::strerror(errno);
        EXPECT_EQ(std::string(buf, 20), cap);
    }
}

TEST_F(LayerTest, FifoAndDevices) {
    Entry fifo;
    fifo.name = "run/fifo";
    fifo.type = AE_IFIFO;
    fifo.perm = 0620;
    Entry null_dev;
    null_dev.name = "dev/null";
    null_dev.type = AE_IFCHR;
    null_dev.perm = 0666;
    null_dev.rdev = makedev(1, 3);
    auto r = apply({fifo, null_dev});
    ASSERT_TRUE(r.has_value()) << r.error().to_string();
    struct stat st {};
    ASSERT_EQ(::lstat(at("run/fifo").c_str(), &st), 0);
    EXPECT_TRUE(S_ISFIFO(st.st_mode));
    EXPECT_EQ(st.st_mode & 07777, 0620u);
    if (r->skipped_devices == 0) {
        ASSERT_EQ(::lstat(at("dev/null").c_str(), &st), 0);
        EXPECT_TRUE(S_ISCHR(st.st_mode));
        EXPECT_EQ(st.st_rdev, makedev(1, 3));
    } else {
        EXPECT_EQ(r->skipped_devices, 1u);
        EXPECT_FALSE(exists_nofollow(at("dev/null")));
    }
}

// ---- hostile layers ----

TEST_F(LayerTest, RejectsDotDotNames) {
    expect_error(apply({file("../evil", "x")}), "layer: entry \"../evil\" escapes the root");
    expect_error(apply({file("/abs/../../evil", "x")}), "escapes the root");
    expect_error(apply({file("a/b/../../../evil", "x")}), "escapes the root");
    expect_error(apply({hardlink("h", "../../etc/passwd")}), "escapes the root");
    expect_error(apply({symlink("ok", "x"), whiteout("a/../.wh.x")}), "escapes the root");
    EXPECT_FALSE(exists_nofollow(sentinel_ / "evil"));
}

TEST_F(LayerTest, AbsoluteNamesLandInsideTheRoot) {
    auto r = apply({file("/abs/file", "a"), file("//double//slash", "d"), file("././dot/./x", "x")});
    ASSERT_TRUE(r.has_value()) << r.error().to_string();
    EXPECT_EQ(read_text(at("abs/file")), "a");
    EXPECT_EQ(read_text(at("double/slash")), "d");
    EXPECT_EQ(read_text(at("dot/x")), "x");
}

TEST_F(LayerTest, SymlinkParentsResolveInsideTheRoot) {
    write_text(sentinel_ / "victim", "outside");
    allowed_.push_back("victim");
    auto r =
        apply({symlink("link", "/"), file("link/evil", "1"), symlink("up", "../../.."), file("up/evil2", "2"),
               symlink("rel", "../victim"), symlink("abs", "/../victim"), whiteout("up/.wh.victim"),
               symlink("top", "/.."), whiteout("top/.wh..wh..opq"), file("rel2", "x")});
    ASSERT_TRUE(r.has_value()) << r.error().to_string();
    EXPECT_EQ(read_text(at("evil")), "1");
    EXPECT_EQ(read_text(at("evil2")), "2");
    EXPECT_EQ(read_text(sentinel_ / "victim"), "outside");
    // The opaque whiteout through "top" emptied the root of lower entries only: this layer's stay.
    EXPECT_TRUE(exists_nofollow(at("evil")));
    EXPECT_TRUE(fs::is_symlink(at("link")));
    EXPECT_EQ(read_text(at("rel2")), "x");
}

TEST_F(LayerTest, WritesThroughSymlinkToOutsideFileStayInside) {
    write_text(sentinel_ / "victim", "outside");
    allowed_.push_back("victim");
    // A lower layer left a symlink pointing out; this layer writes a file of that name.
    fs::create_symlink(sentinel_ / "victim", at("f"));
    fs::create_symlink(sentinel_.path(), at("dir"));
    auto r = apply({file("f", "replaced"), dir("dir2"), symlink("dir2/x", "/"), file("dir2/x/y", "y")});
    ASSERT_TRUE(r.has_value()) << r.error().to_string();
    EXPECT_EQ(read_text(sentinel_ / "victim"), "outside");
    EXPECT_FALSE(fs::is_symlink(at("f")));
    EXPECT_EQ(read_text(at("f")), "replaced");
    EXPECT_EQ(read_text(at("y")), "y");
    // "dir" -> <sentinel> resolves, inside the root, to <root>/<sentinel path>, which does not exist: the
    // entry is refused rather than anything made outside.
    expect_error(apply({file("dir/victim", "inside")}), "layer:");
    EXPECT_EQ(read_text(sentinel_ / "victim"), "outside");
}

TEST_F(LayerTest, HostileHardLinks) {
    struct stat before {};
    ASSERT_EQ(::stat("/etc/passwd", &before), 0);
    // Through a symlink: the target resolves inside the root, where there is no etc/passwd.
    expect_error(apply({symlink("etc", "/etc"), hardlink("h", "etc/passwd")}), "layer:");  // a loop in root
    expect_error(apply({symlink("up", "../../../../../../lib"), hardlink("h", "up/os-release")}),
                 "not found");
    // To a symlink that points out: the link is to the symlink itself.
    auto r = apply({symlink("out", "/etc/passwd"), hardlink("h2", "out")});
    ASSERT_TRUE(r.has_value()) << r.error().to_string();
    EXPECT_TRUE(fs::is_symlink(at("h2")));
    EXPECT_EQ(fs::read_symlink(at("h2")), "/etc/passwd");
    // To a directory, to the root, to nothing.
    expect_error(apply({dir("d"), hardlink("h3", "d")}), "to directory");
    expect_error(apply({hardlink("h4", "./")}), "to the root");
    expect_error(apply({hardlink("h5", "missing")}), "not found");
    struct stat after {};
    ASSERT_EQ(::stat("/etc/passwd", &after), 0);
    EXPECT_EQ(before.st_nlink, after.st_nlink);
}

TEST_F(LayerTest, BadWhiteouts) {
    write_text(sentinel_ / "victim", "outside");
    allowed_.push_back("victim");
    expect_error(apply({whiteout(".wh...")}), "names no entry");
    expect_error(apply({whiteout("a/.wh..")}), "names no entry");
    expect_error(apply({whiteout(".wh.")}), "names no entry");
    expect_error(apply({whiteout("../.wh.victim")}), "escapes the root");
    EXPECT_EQ(read_text(sentinel_ / "victim"), "outside");
}

TEST_F(LayerTest, LongNames) {
    expect_error(apply({file(std::string(300, 'n'), "x")}), "layer:");
    std::string deep;
    for (int i = 0; i < 1000; ++i)
        deep += "abcd/";
    expect_error(apply({file(deep + "f", "x")}), "too long");
    std::string ok;
    for (int i = 0; i < 100; ++i)
        ok += "d" + std::to_string(i) + "/";
    auto r = apply({file(ok + "f", "deep")});
    ASSERT_TRUE(r.has_value()) << r.error().to_string();
    EXPECT_EQ(read_text(at(ok + "f")), "deep");
}

TEST_F(LayerTest, ALayerEndingRightAfterItsLastEntrysDataIsWhole) {
    // umoci insert writes layers like this: no padding after the last file, no end-of-archive blocks.
    Bytes tar = make_tar({file("a", "abcd"), file("b", "efgh")});
    Bytes cut(tar.begin(), tar.begin() + 512 + 512 + 512 + 4);
    auto r = apply(cut);
    ASSERT_TRUE(r.has_value()) << r.error().to_string();
    EXPECT_EQ(read_text(at("b")), "efgh");
    EXPECT_EQ(r->diff_id,
              sha256_digest(std::string_view(reinterpret_cast<const char*>(cut.data()), cut.size())));
    // Cut inside the data, it is still refused.
    expect_error(apply(Bytes(tar.begin(), tar.begin() + 512 + 512 + 512 + 2)), "layer:");
}

TEST_F(LayerTest, RefusesToFillTheFileSystem) {
    // As if the disk were nearly full: more free space demanded than any disk has.
    Bytes tar = make_tar({file("a", std::string(100000, 'a'))});
    auto r = apply_layer_buffer(tar, root_, {.min_free_bytes = uint64_t{1} << 62});
    expect_error(r, "nearly full");
    auto unchecked = apply_layer_buffer(tar, root_, {.min_free_bytes = 0});
    ASSERT_TRUE(unchecked.has_value()) << unchecked.error().to_string();
}

TEST_F(LayerTest, CorruptStreams) {
    Bytes tar = make_tar(sample_entries());
    Bytes truncated(tar.begin(), tar.begin() + 1700);
    expect_error(apply(truncated), "layer:");
    Bytes garbage(5000);
    for (size_t i = 0; i < garbage.size(); ++i)
        garbage[i] = static_cast<std::byte>(i * 7 + 3);
    expect_error(apply(garbage), "layer: not a tar archive");
    expect_error(apply(Bytes{}), "layer: not a tar archive");

    Bytes gz = gzip(tar);
    expect_error(apply(Bytes(gz.begin(), gz.begin() + gz.size() / 2)), "layer:");
    Bytes gz_garbage = gz;
    gz_garbage[gz.size() / 2] ^= std::byte{0x55};
    gz_garbage[gz.size() / 2 + 1] ^= std::byte{0x55};
    expect_error(apply(gz_garbage), "layer:");
    Bytes gz_trailing = gz;
    gz_trailing.push_back(std::byte{'X'});
    expect_error(apply(gz_trailing), "trailing data");
    Bytes gz_zeros = gz;
    gz_zeros.resize(gz.size() + 100, std::byte{0});
    EXPECT_TRUE(apply(gz_zeros).has_value());
    Bytes zs = zstd(tar);
    expect_error(apply(Bytes(zs.begin(), zs.begin() + zs.size() / 2)), "layer:");
    expect_error(apply(Bytes(zs.begin(), zs.begin() + 6)), "layer:");
}

TEST_F(LayerTest, TruncatedGzipBomb) {
    // 16 MiB of zeros in one file compresses to ~16 KiB; cut the stream halfway through.
    Entry big = file("bomb", std::string(16 << 20, '\0'));
    Bytes gz = gzip(make_tar({big}));
    ASSERT_LT(gz.size(), 50000u);
    auto r = apply(Bytes(gz.begin(), gz.begin() + gz.size() / 2));
    expect_error(r, "truncated gzip stream");
    Bytes zs = zstd(make_tar({big}));
    expect_error(apply(Bytes(zs.begin(), zs.begin() + zs.size() / 2)), "truncated zstd stream");
}

TEST_F(LayerTest, RootEntryAndNonDirectoryRoot) {
    auto r = apply({dir("./"), dir("/"), file("x", "1")});
    ASSERT_TRUE(r.has_value()) << r.error().to_string();
    EXPECT_EQ(read_text(at("x")), "1");
    expect_error(apply({symlink(".", "x")}), "non-directory");
    expect_error(apply_layer_buffer(make_tar({file("x")}), sentinel_ / "nope"), "layer: open root");
}

}  // namespace
}  // namespace sandlot::host
