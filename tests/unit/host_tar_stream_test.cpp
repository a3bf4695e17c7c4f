// host/lib/tar_stream.h without a guest: in-memory trees stand in for GuestFs's TreeReader and TreeWriter.
// Round trips tree -> tar -> tree (types, modes, owners, times, links, names that are not UTF-8, data),
// GNU tar reading what we write, and archives made by GNU tar (gzip, zstd, hard links, "../" and absolute
// names) or by hand (what GNU tar will not write) read back, normalized or refused.
#include "host/lib/tar_stream.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "proto/base/unique_fd.h"
#include "tests/support/agentd_process.h"
#include "tests/support/run_command.h"
#include "tests/support/temp_dir.h"

namespace sandlot::host {
namespace {

using testing::run_command;

struct Node {
    FileInfo info;
    std::string data;
};

// Records what tar_to_tree adds, checking the TreeWriter contract as it goes.
class MemoryTreeWriter : public TreeWriter {
  public:
    Result<void> add(const FileInfo& info) override {
        if (left_ != 0) return make_error("add before the data of the previous file", EPROTO);
        nodes.push_back({info, {}});
        left_ = info.type == FsType::Regular ? info.size : 0;
        return {};
    }
    Result<void> write(std::span<const uint8_t> data) override {
        if (nodes.empty() || data.size() > left_)
            return make_error("more data than the entry's size", EPROTO);
        nodes.back().data.append(reinterpret_cast<const char*>(data.data()), data.size());
        left_ -= data.size();
        return {};
    }
    Result<uint64_t> commit() override {
        committed = true;
        return nodes.size();
    }
    void abort() override { aborted = true; }

    const Node* find(const std::string& path) const {
        for (const auto& node : nodes)
            if (node.info.path == path) return &node;
        return nullptr;
    }

    std::vector<Node> nodes;
    bool committed = false;
    bool aborted = false;

  private:
    uint64_t left_ = 0;
};

// Hands out a fixed tree, file data in small uneven chunks.
class MemoryTreeReader : public TreeReader {
  public:
    explicit MemoryTreeReader(std::vector<Node> nodes) : nodes_(std::move(nodes)) {}
    Result<std::optional<FileInfo>> next() override {
        if (next_ >= nodes_.size()) return std::nullopt;
        current_ = &nodes_[next_++];
        offset_ = 0;
        return current_->info;
    }
    Result<std::vector<uint8_t>> data() override {
        if (!current_) return make_error("data before an entry", EPROTO);
        size_t n = std::min<size_t>(current_->data.size() - offset_, 7000 + offset_ % 13);
        std::vector<uint8_t> chunk(current_->data.begin() + static_cast<ptrdiff_t>(offset_),
                                   current_->data.begin() + static_cast<ptrdiff_t>(offset_ + n));
        offset_ += n;
        return chunk;
    }

  private:
    std::vector<Node> nodes_;
    size_t next_ = 0;
    Node* current_ = nullptr;
    size_t offset_ = 0;
};

constexpr int64_t kSecond = 1'000'000'000;

FileInfo entry(std::string path, FsType type, uint32_t mode, int64_t mtime_s) {
    FileInfo info;
    info.path = std::move(path);
    info.type = type;
    info.mode = mode;
    info.uid = 1000;
    info.gid = 100;
    info.mtime_ns = mtime_s * kSecond;
    return info;
}

Node file(std::string path, std::string data, uint32_t mode = 0644) {
    FileInfo info = entry(std::move(path), FsType::Regular, mode, 1'700'000'000);
    info.size = data.size();
    return {info, std::move(data)};
}

Node linked_entry(std::string path, FsType type, std::string target) {
    FileInfo info = entry(std::move(path), type, type == FsType::Symlink ? 0777 : 0644, 1'700'000'100);
    info.link_target = std::move(target);
    return {info, {}};
}

std::string pattern(size_t size) {
    std::string data(size, '\0');
    uint32_t x = 12345;
    for (auto& c : data) {
        x = x * 1103515245 + 12345;
        c = static_cast<char>(x >> 16);
    }
    return data;
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

// tar_to_tree over a file.
Result<TransferStats> read_tar(const std::string& path, MemoryTreeWriter& out) {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return errno_error("open " + path);
    return tar_to_tree(fd.get(), out);
}

Result<TransferStats> write_tar(std::vector<Node> nodes, const std::string& path, const std::string& prefix) {
    UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd) return errno_error("open " + path);
    MemoryTreeReader reader(std::move(nodes));
    return tree_to_tar(reader, fd.get(), prefix);
}

// A ustar header block for what GNU tar refuses to write (a ".." hard link target).
std::string ustar_header(const std::string& name, char type, const std::string& linkname, size_t size) {
    std::string h(512, '\0');
    auto put = [&](size_t offset, size_t width, const std::string& value) {
        std::copy_n(value.begin(), std::min(width, value.size()), h.begin() + static_cast<ptrdiff_t>(offset));
    };
    auto octal = [&](size_t offset, size_t width, uint64_t value) {
        char text[32];
        std::snprintf(text, sizeof text, "%0*llo", static_cast<int>(width - 1),
                      static_cast<unsigned long long>(value));
        put(offset, width - 1, text);
    };
    put(0, 100, name);
    octal(100, 8, 0644);
    octal(108, 8, 0);
    octal(116, 8, 0);
    octal(124, 12, size);
    octal(136, 12, 1'700'000'000);
    put(148, 8, std::string(8, ' '));
    h[156] = type;
    put(157, 100, linkname);
    put(257, 6, std::string("ustar\0", 6));
    put(263, 2, "00");
    unsigned sum = 0;
    for (unsigned char c : h)
        sum += c;
    char text[8];
    std::snprintf(text, sizeof text, "%06o", sum);
    put(148, 7, std::string(text, 7));
    return h;
}

std::string ustar(const std::vector<std::string>& blocks) {
    std::string out;
    for (const auto& b : blocks)
        out += b;
    out += std::string(1024, '\0');
    return out;
}

void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
}

TEST(HostTarStream, RoundTripKeepsTypesModesTimesLinksAndNames) {
    test::TempDir dir("tar-roundtrip");
    ASSERT_FALSE(dir.path().empty());

    std::vector<Node> tree;
    tree.push_back({entry("", FsType::Directory, 0750, 1'600'000'000), {}});
    tree.push_back(file("a.txt", "hello\n", 04755));
    tree.push_back({entry("sub", FsType::Directory, 01777, 1'600'000'001), {}});
    tree.push_back(file("sub/big", pattern(3 * 1024 * 1024 + 17), 0600));
    tree.push_back(file("sub/empty", ""));
    tree.push_back(file("sgid", "x", 02711));
    tree.push_back(linked_entry("sub/hard", FsType::Hardlink, "a.txt"));
    tree.push_back(linked_entry("sym", FsType::Symlink, "../outside/\xff-target"));
    tree.push_back(linked_entry("abs", FsType::Symlink, "/etc/passwd"));
    tree.push_back({entry("fifo", FsType::Fifo, 0640, 1'600'000'002), {}});
    Node chr{entry("null", FsType::CharDevice, 0666, 1'600'000'003), {}};
    chr.info.rdev = makedev(1, 3);
    tree.push_back(chr);
    Node blk{entry("disk", FsType::BlockDevice, 0660, 1'600'000'004), {}};
    blk.info.rdev = makedev(259, 70000);
    tree.push_back(blk);
    tree.push_back(file("bad\xff\xfe name", "not utf-8\n"));
    tree.push_back(file("caf\xc3\xa9", "utf-8\n"));
    std::string long_name = "sub/" + std::string(150, 'l') + "/" + std::string(120, '\xe9');
    tree.push_back({entry("sub/" + std::string(150, 'l'), FsType::Directory, 0755, 1'600'000'005), {}});
    tree.push_back(file(long_name, "deep\n"));
    Node owned = file("owned", "big ids\n");
    owned.info.uid = 3'000'000;
    owned.info.gid = 4'000'000;
    owned.info.mtime_ns = 1'700'000'000 * kSecond + 123'456'789;  // kept: big ids need a pax header anyway
    tree.push_back(owned);
    Node old = file("old", "before 1970\n");
    old.info.mtime_ns = -86400 * kSecond;
    tree.push_back(old);

    const std::string tar = dir / "t.tar";
    auto written = write_tar(tree, tar, "root");
    ASSERT_TRUE(written) << written.error().to_string();
    EXPECT_EQ(written->entries, tree.size());
    EXPECT_EQ(written->bytes, 6u + 3 * 1024 * 1024 + 17 + 1 + 10 + 6 + 5 + 8 + 12);

    MemoryTreeWriter out;
    auto read = read_tar(tar, out);
    ASSERT_TRUE(read) << read.error().to_string();
    EXPECT_EQ(read->entries, tree.size());
    EXPECT_EQ(read->bytes, written->bytes);
    EXPECT_FALSE(out.committed);  // the caller commits
    ASSERT_EQ(out.nodes.size(), tree.size());

    for (size_t i = 0; i < tree.size(); ++i) {
        const FileInfo& want = tree[i].info;
        const Node& got = out.nodes[i];
        std::string want_path = want.path.empty() ? "root" : "root/" + want.path;
        SCOPED_TRACE(want_path);
        EXPECT_EQ(got.info.path, want_path);
        EXPECT_EQ(got.info.type, want.type);
        EXPECT_EQ(got.info.mode, want.mode);
        EXPECT_EQ(got.info.uid, want.uid);
        EXPECT_EQ(got.info.gid, want.gid);
        EXPECT_EQ(got.info.size, want.size);
        EXPECT_EQ(got.data, tree[i].data);
        if (want.type == FsType::Hardlink) {
            EXPECT_EQ(got.info.link_target, "root/" + want.link_target);
        } else {
            EXPECT_EQ(got.info.link_target, want.link_target);
        }
        if (want.type == FsType::CharDevice || want.type == FsType::BlockDevice) {
            EXPECT_EQ(major(got.info.rdev), major(want.rdev));
            EXPECT_EQ(minor(got.info.rdev), minor(want.rdev));
        }
        // Whole seconds always; nanoseconds where the entry needed a pax header anyway.
        auto floor_s = [](int64_t ns) { return ns >= 0 ? ns / kSecond : -((-ns + kSecond - 1) / kSecond); };
        EXPECT_EQ(floor_s(got.info.mtime_ns), floor_s(want.mtime_ns));
    }
    EXPECT_EQ(out.find("root/owned")->info.mtime_ns, owned.info.mtime_ns);
}

TEST(HostTarStream, EmptyPrefixNamesEntriesByTheirPaths) {
    test::TempDir dir("tar-prefix");
    const std::string tar = dir / "t.tar";
    std::vector<Node> tree = {{entry("", FsType::Directory, 0755, 1'600'000'000), {}}, file("f", "data")};
    ASSERT_TRUE(write_tar(tree, tar, ""));
    auto listing = run_command({"tar", "-tf", tar});
    EXPECT_EQ(listing.status, 0) << listing.output;
    EXPECT_EQ(listing.output, "./\nf\n");

    // A lone file: the prefix is its name.
    ASSERT_TRUE(write_tar({file("", "just me")}, tar, "single.txt"));
    MemoryTreeWriter out;
    ASSERT_TRUE(read_tar(tar, out));
    ASSERT_EQ(out.nodes.size(), 1u);
    EXPECT_EQ(out.nodes[0].info.path, "single.txt");
    EXPECT_EQ(out.nodes[0].data, "just me");
}

TEST(HostTarStream, GnuTarExtractsWhatWeWrite) {
    test::TempDir dir("tar-gnu");
    ASSERT_FALSE(dir.path().empty());
    std::vector<Node> tree;
    tree.push_back({entry("", FsType::Directory, 0755, 1'600'000'000), {}});
    tree.push_back(file("bad\xff", "raw name\n", 0751));
    tree.push_back(file("caf\xc3\xa9", "utf-8\n"));
    tree.push_back(linked_entry("again", FsType::Hardlink, "bad\xff"));
    tree.push_back(linked_entry("to", FsType::Symlink, "caf\xc3\xa9"));
    const std::string tar = dir / "t.tar";
    ASSERT_TRUE(write_tar(tree, tar, "top"));
    std::filesystem::create_directory(dir / "x");
    auto extracted = run_command({"tar", "-xf", tar, "-C", dir / "x"});
    // GNU tar does not know pax's hdrcharset keyword; it warns about it and uses the raw name.
    EXPECT_EQ(extracted.status, 0) << extracted.output;

    EXPECT_EQ(read_file(dir / "x/top/bad\xff"), "raw name\n");
    EXPECT_EQ(read_file(dir / "x/top/caf\xc3\xa9"), "utf-8\n");
    struct stat a {
    }, b{};
    ASSERT_EQ(stat((dir / "x/top/bad\xff").c_str(), &a), 0);
    ASSERT_EQ(stat((dir / "x/top/again").c_str(), &b), 0);
    EXPECT_EQ(a.st_ino, b.st_ino);
    EXPECT_EQ(a.st_mode & 07777, 0751u);
    EXPECT_EQ(a.st_mtime, 1'700'000'000);
    EXPECT_EQ(std::filesystem::read_symlink(dir / "x/top/to").string(), "caf\xc3\xa9");
}

TEST(HostTarStream, ReadsGnuTarArchivesGzipAndZstd) {
    test::TempDir dir("tar-read");
    ASSERT_FALSE(dir.path().empty());
    const std::string src = dir / "src";
    std::filesystem::create_directories(src + "/sub");
    write_bytes(src + "/f", "file f\n");
    write_bytes(src + "/sub/g", pattern(100'000));
    write_bytes(src + "/n\xfe", "odd name\n");
    ASSERT_EQ(chmod((src + "/f").c_str(), 04750), 0);
    ASSERT_EQ(chmod((src + "/sub").c_str(), 0710), 0);
    ASSERT_EQ(::link((src + "/f").c_str(), (src + "/h").c_str()), 0);
    ASSERT_EQ(symlink("sub/g", (src + "/s").c_str()), 0);
    ASSERT_EQ(mkfifo((src + "/p").c_str(), 0600), 0);
    timespec times[2] = {{1'650'000'000, 0}, {1'650'000'000, 0}};
    ASSERT_EQ(utimensat(AT_FDCWD, (src + "/sub/g").c_str(), times, 0), 0);

    std::vector<std::pair<std::string, std::vector<std::string>>> archives = {
        {"t.tgz", {"tar", "-czf", dir / "t.tgz", "-C", src, "."}},
        {"t.tar", {"tar", "--format=gnu", "-cf", dir / "t.tar", "-C", src, "."}},
    };
    if (run_command({"zstd", "--version"}).status == 0)
        archives.push_back({"t.tar.zst", {"tar", "--zstd", "-cf", dir / "t.tar.zst", "-C", src, "."}});
    for (const auto& [name, argv] : archives) {
        SCOPED_TRACE(name);
        auto made = run_command(argv);
        ASSERT_EQ(made.status, 0) << made.output;
        MemoryTreeWriter out;
        auto read = read_tar(dir / name, out);
        ASSERT_TRUE(read) << read.error().to_string();
        EXPECT_EQ(out.find(""), nullptr);  // "./" is the destination itself: skipped
        // f and h: whichever comes first (directory order) carries the data, the other links to it.
        const Node* f = out.find("f");
        const Node* h = out.find("h");
        ASSERT_NE(f, nullptr);
        ASSERT_NE(h, nullptr);
        const Node* linked = f->info.type == FsType::Hardlink ? f : h;
        const Node* data = linked == f ? h : f;
        EXPECT_EQ(data->info.type, FsType::Regular);
        EXPECT_EQ(data->data, "file f\n");
        EXPECT_EQ(data->info.mode, 04750u);
        EXPECT_EQ(linked->info.type, FsType::Hardlink);
        EXPECT_EQ(linked->info.link_target, data->info.path);
        ASSERT_NE(out.find("sub"), nullptr);
        EXPECT_EQ(out.find("sub")->info.type, FsType::Directory);
        EXPECT_EQ(out.find("sub")->info.mode, 0710u);
        ASSERT_NE(out.find("sub/g"), nullptr);
        EXPECT_EQ(out.find("sub/g")->data, pattern(100'000));
        EXPECT_EQ(out.find("sub/g")->info.mtime_ns, 1'650'000'000 * kSecond);
        ASSERT_NE(out.find("n\xfe"), nullptr);
        EXPECT_EQ(out.find("n\xfe")->data, "odd name\n");
        ASSERT_NE(out.find("s"), nullptr);
        EXPECT_EQ(out.find("s")->info.type, FsType::Symlink);
        EXPECT_EQ(out.find("s")->info.link_target, "sub/g");
        ASSERT_NE(out.find("p"), nullptr);
        EXPECT_EQ(out.find("p")->info.type, FsType::Fifo);
        EXPECT_EQ(read->entries, out.nodes.size());
        EXPECT_EQ(read->bytes, 7u + 100'000 + 9);
    }
}

TEST(HostTarStream, ParentDotDotIsRefusedAbsoluteNamesAreMadeRelative) {
    test::TempDir dir("tar-evil");
    ASSERT_FALSE(dir.path().empty());
    std::filesystem::create_directories(dir / "a");
    write_bytes(dir / "evil", "escaped\n");
    write_bytes(dir / "abs", "absolute\n");

    // GNU tar keeps "../" and "/" in member names with -P.
    auto made = run_command({"tar", "-P", "-C", dir / "a", "-cf", dir / "evil.tar", "../evil"});
    ASSERT_EQ(made.status, 0) << made.output;
    MemoryTreeWriter evil;
    auto refused = read_tar(dir / "evil.tar", evil);
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, EINVAL);
    EXPECT_NE(refused.error().message.find("../evil"), std::string::npos) << refused.error().message;
    EXPECT_TRUE(evil.nodes.empty());

    made = run_command({"tar", "-P", "-cf", dir / "abs.tar", dir / "abs"});
    ASSERT_EQ(made.status, 0) << made.output;
    MemoryTreeWriter abs;
    auto read = read_tar(dir / "abs.tar", abs);
    ASSERT_TRUE(read) << read.error().to_string();
    ASSERT_EQ(abs.nodes.size(), 1u);
    EXPECT_EQ(abs.nodes[0].info.path, (dir / "abs").substr(1));
    EXPECT_EQ(abs.nodes[0].data, "absolute\n");

    // What GNU tar will not write: ".." inside a name and in a hard link target; "./" and "//" runs.
    const std::string hand = dir / "hand.tar";
    write_bytes(hand, ustar({ustar_header("a/../../x", '0', "", 0)}));
    MemoryTreeWriter inner;
    EXPECT_EQ(read_tar(hand, inner).error().code, EINVAL);
    write_bytes(hand, ustar({ustar_header("f", '0', "", 0), ustar_header("h", '1', "../f", 0)}));
    MemoryTreeWriter hard;
    auto hard_result = read_tar(hand, hard);
    ASSERT_FALSE(hard_result);
    EXPECT_EQ(hard_result.error().code, EINVAL);
    EXPECT_EQ(hard.nodes.size(), 1u);  // f, nothing of h
    write_bytes(
        hand, ustar({ustar_header(".//./d//e/./", '5', "", 0), ustar_header("/x", '1', "//./d/e/../e", 0)}));
    MemoryTreeWriter odd;
    EXPECT_FALSE(read_tar(hand, odd));
    write_bytes(hand,
                ustar({ustar_header(".//./d//e/./", '5', "", 0), ustar_header("/x", '1', "//./d/e", 0)}));
    MemoryTreeWriter normal;
    ASSERT_TRUE(read_tar(hand, normal));
    ASSERT_EQ(normal.nodes.size(), 2u);
    EXPECT_EQ(normal.nodes[0].info.path, "d/e");
    EXPECT_EQ(normal.nodes[1].info.path, "x");
    EXPECT_EQ(normal.nodes[1].info.link_target, "d/e");
}

TEST(HostTarStream, TruncatedAndForeignInputFail) {
    test::TempDir dir("tar-bad");
    ASSERT_FALSE(dir.path().empty());
    const std::string path = dir / "t.tar";
    std::string data = pattern(5000);
    ASSERT_TRUE(write_tar({file("", data)}, path, "f"));
    std::string whole = read_file(path);
    write_bytes(path, whole.substr(0, 512 + 1000));
    MemoryTreeWriter cut;
    auto truncated = read_tar(path, cut);
    ASSERT_FALSE(truncated);
    EXPECT_EQ(truncated.error().to_string().find('\n'), std::string::npos);

    write_bytes(path, "this is not an archive at all, just some text that goes on for a while\n");
    MemoryTreeWriter text;
    auto foreign = read_tar(path, text);
    ASSERT_FALSE(foreign);
    EXPECT_NE(foreign.error().to_string().find("read tar"), std::string::npos) << foreign.error().to_string();

    // A line of text is not an archive of one empty file (as libarchive's mtree reader would have it).
    write_bytes(path, "garbage\n");
    MemoryTreeWriter line;
    EXPECT_FALSE(read_tar(path, line));
    EXPECT_TRUE(line.nodes.empty());
    // Empty input is an empty archive.
    write_bytes(path, "");
    MemoryTreeWriter empty;
    auto nothing = read_tar(path, empty);
    ASSERT_TRUE(nothing) << nothing.error().to_string();
    EXPECT_EQ(nothing->entries, 0u);

    // The tree's own paths are checked too: a guest cannot name entries outside the prefix.
    MemoryTreeReader evil({file("../x", "no")});
    UniqueFd fd(open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC));
    auto refused = tree_to_tar(evil, fd.get(), "p");
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, EINVAL);
}

TEST(HostTarStream, ProgressCountsData) {
    test::TempDir dir("tar-progress");
    ASSERT_FALSE(dir.path().empty());
    const std::string path = dir / "t.tar";
    std::vector<Node> tree = {
        {entry("", FsType::Directory, 0755, 1), {}}, file("a", pattern(200'000)), file("b", pattern(10))};
    UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    MemoryTreeReader reader(tree);
    std::vector<TransferStats> seen;
    auto written = tree_to_tar(reader, fd.get(), "p", [&](const TransferStats& s) { seen.push_back(s); });
    ASSERT_TRUE(written);
    ASSERT_FALSE(seen.empty());
    EXPECT_EQ(seen.back().bytes, 200'010u);
    EXPECT_EQ(seen.back().entries, 3u);
    EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end(), [](const TransferStats& x, const TransferStats& y) {
        return x.bytes < y.bytes;
    }));

    seen.clear();
    UniqueFd in(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    MemoryTreeWriter out;
    auto read = tar_to_tree(in.get(), out, [&](const TransferStats& s) { seen.push_back(s); });
    ASSERT_TRUE(read);
    ASSERT_FALSE(seen.empty());
    EXPECT_EQ(seen.back().bytes, 200'010u);
    EXPECT_EQ(seen.back().entries, 3u);
}

// `sandlot cp - NAME:DIR` and `sandlot cp NAME:PATH -` without a VM: agentd as a host process, so the
// "guest" file system is this machine's.
TEST(HostTarStream, ThroughARealAgent) {
    test::TempDir dir("tar-agent");
    ASSERT_FALSE(dir.path().empty());
    ::chmod(dir.path().c_str(), 0755);
    const std::string src = dir / "src";
    std::filesystem::create_directories(src + "/sub/deeper");
    write_bytes(src + "/f", "file f\n");
    write_bytes(src + "/sub/deeper/big", pattern(5 * 1024 * 1024 + 3));
    write_bytes(src + "/odd\xff", "not utf-8\n");
    ASSERT_EQ(chmod((src + "/f").c_str(), 0740), 0);
    ASSERT_EQ(::link((src + "/f").c_str(), (src + "/sub/h").c_str()), 0);
    ASSERT_EQ(symlink("deeper/big", (src + "/sub/s").c_str()), 0);
    auto made = run_command({"tar", "-czf", dir / "in.tgz", "-C", src, "."});
    ASSERT_EQ(made.status, 0) << made.output;

    test::Agentd agentd;
    auto agent = agentd.connect();
    ASSERT_TRUE(agent);
    GuestFs fs(*agent);
    const std::string dst = dir / "dst";
    std::filesystem::create_directory(dst);
    ASSERT_EQ(chmod(dst.c_str(), 0705), 0);

    auto writer = fs.put_tree(dst);
    ASSERT_TRUE(writer) << writer.error().to_string();
    UniqueFd in(open((dir / "in.tgz").c_str(), O_RDONLY | O_CLOEXEC));
    auto stats = tar_to_tree(in.get(), **writer);
    ASSERT_TRUE(stats) << stats.error().to_string();
    ASSERT_TRUE((*writer)->commit());
    EXPECT_EQ(stats->bytes, 7u + 5 * 1024 * 1024 + 3 + 10);
    EXPECT_EQ(read_file(dst + "/f"), "file f\n");
    EXPECT_EQ(read_file(dst + "/sub/deeper/big"), pattern(5 * 1024 * 1024 + 3));
    EXPECT_EQ(read_file(dst + "/odd\xff"), "not utf-8\n");
    EXPECT_EQ(std::filesystem::read_symlink(dst + "/sub/s").string(), "deeper/big");
    struct stat f {
    }, h{}, d{};
    ASSERT_EQ(stat((dst + "/f").c_str(), &f), 0);
    ASSERT_EQ(stat((dst + "/sub/h").c_str(), &h), 0);
    ASSERT_EQ(stat(dst.c_str(), &d), 0);
    EXPECT_EQ(f.st_ino, h.st_ino);
    EXPECT_EQ(f.st_mode & 07777, 0740u);
    EXPECT_EQ(d.st_mode & 07777, 0705u);  // the archive's "./" leaves the destination alone

    auto reader = fs.get_tree(dst + "/sub");
    ASSERT_TRUE(reader) << reader.error().to_string();
    UniqueFd out(open((dir / "out.tar").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    auto written = tree_to_tar(**reader, out.get(), "sub");
    ASSERT_TRUE(written) << written.error().to_string();
    EXPECT_EQ(written->bytes, 5u * 1024 * 1024 + 3 + 7);  // h is the first name of its file in this tree
    std::filesystem::create_directory(dir / "x");
    auto extracted = run_command({"tar", "-xf", dir / "out.tar", "-C", dir / "x"});
    ASSERT_EQ(extracted.status, 0) << extracted.output;
    EXPECT_EQ(read_file(dir / "x/sub/deeper/big"), pattern(5 * 1024 * 1024 + 3));
    EXPECT_EQ(read_file(dir / "x/sub/h"), "file f\n");
    EXPECT_EQ(std::filesystem::read_symlink(dir / "x/sub/s").string(), "deeper/big");
}

// `sandlot cp` refuses what it cannot do before it needs a sandbox: one line, exit status 125.
TEST(HostCpCommand, BadArgumentsAreOneLineAndStatus125) {
    test::TempDir home("cp-home");
    ASSERT_FALSE(home.path().empty());
    auto cp = [&](std::vector<std::string> args, const std::string& input = "") {
        std::vector<std::string> argv = {"env", "SANDLOT_HOME=" + home.path(),
                                         std::string(SANDLOT_BIN_DIR) + "/sandlot", "cp"};
        argv.insert(argv.end(), args.begin(), args.end());
        return run_command(argv, input);
    };
    struct Case {
        std::vector<std::string> args;
        std::string message;
    };
    std::vector<Case> cases = {
        {{"a", "b"}, "one of SRC and DST must be NAME:PATH"},
        {{"-", "-"}, "one of SRC and DST must be NAME:PATH"},
        {{"./x:y", "/tmp"}, "one of SRC and DST must be NAME:PATH"},
        {{"box:a", "/tmp"}, "\"box:a\": the path in the sandbox must be absolute"},
        {{"/tmp", "box:"}, "\"box:\": the path in the sandbox must be absolute"},
        {{":/x", "/tmp"}, "a sandbox name must come before the ':'"},
        {{"one:/x", "two:/y"}, "copying between sandboxes is not supported"},
        {{home / "missing", "box:/x"}, home / "missing: No such file or directory"},
        {{home.path() + "/.", "box:/x"}, "no sandbox named \"box\""},
        {{"box:/x", "-"}, "no sandbox named \"box\""},
        {{"-", "box:/x"}, "no sandbox named \"box\""},
    };
    write_bytes(home / "file", "x");
    cases.push_back({{home / "file/", "box:/x"}, home / "file/: Not a directory"});
    for (const auto& c : cases) {
        SCOPED_TRACE(c.args[0] + " " + c.args[1]);
        auto result = cp(c.args);
        EXPECT_EQ(result.status, 125);
        EXPECT_TRUE(result.output.starts_with("sandlot: error: ")) << result.output;
        EXPECT_NE(result.output.find(c.message), std::string::npos) << result.output;
        EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 1) << result.output;
        EXPECT_TRUE(result.output.ends_with("\n")) << result.output;
    }
}

}  // namespace
}  // namespace sandlot::host
