// The initramfs packer, checked byte for byte and against the system's gzip, zstd and GNU cpio.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "initramfs/compress.h"
#include "initramfs/cpio_writer.h"
#include "tests/support/temp_dir.h"

namespace sandlot::initramfs {
namespace {

using test::TempDir;

using Bytes = std::vector<uint8_t>;

const std::string kMkinitramfs = std::string(SANDLOT_BIN_DIR) + "/sandlot-mkinitramfs";

Bytes bytes_of(std::string_view s) {
    return Bytes(s.begin(), s.end());
}

void write_file(const std::string& path, std::span<const uint8_t> data) {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
    ASSERT_TRUE(out.good()) << path;
}

Bytes read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Runs a shell command; returns its stdout and sets *status to its exit code.
Bytes run(const std::string& command, int* status = nullptr) {
    FILE* pipe = popen(command.c_str(), "r");
    EXPECT_NE(pipe, nullptr) << command;
    if (!pipe) return {};
    Bytes out;
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, pipe)) > 0)
        out.insert(out.end(), buf, buf + n);
    int rc = pclose(pipe);
    int code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    if (status) {
        *status = code;
    } else {
        EXPECT_EQ(code, 0) << command;
    }
    return out;
}

std::string as_string(const Bytes& b) {
    return std::string(b.begin(), b.end());
}

// One line of `cpio -itv --numeric-uid-gid`.
struct Listed {
    std::string perms;  // e.g. "drwxr-xr-x", "crw-------"
    std::string uid, gid;
    std::string size;    // bytes, or "major,minor" for devices
    std::string target;  // for symlinks
};

// name -> entry, plus the names in archive order.
struct Listing {
    std::map<std::string, Listed> entries;
    std::vector<std::string> order;
};

Listing list_archive(const std::string& archive) {
    Listing listing;
    std::istringstream lines(as_string(run("cpio -itv --numeric-uid-gid --quiet < " + archive)));
    std::string line;
    while (std::getline(lines, line)) {
        std::istringstream words(line);
        std::vector<std::string> w;
        for (std::string word; words >> word;)
            w.push_back(word);
        EXPECT_GE(w.size(), 9u) << line;
        if (w.size() < 9) continue;
        Listed e;
        e.perms = w[0];
        e.uid = w[2];
        e.gid = w[3];
        size_t at = 4;
        e.size = w[at++];
        if (e.perms[0] == 'c' || e.perms[0] == 'b') e.size += w[at++];  // "5," "1" -> "5,1"
        at += 3;                                                        // date: month, day, year
        std::string name = w[at++];
        if (at + 1 < w.size() && w[at] == "->") e.target = w[at + 1];
        listing.entries[name] = e;
        listing.order.push_back(name);
    }
    return listing;
}

Bytes extract_file(const std::string& archive, const std::string& name) {
    return run("cpio -i --to-stdout --quiet '" + name + "' < " + archive);
}

TEST(CpioWriter, GoldenBytesForOneFile) {
    CpioWriter cpio;
    ASSERT_TRUE(cpio.add_file("/a", bytes_of("hi"), 0644));
    std::string expected = std::string(
        "070701"
        "00000001"  // ino
        "000081a4"  // mode: regular, 0644
        "00000000"  // uid
        "00000000"  // gid
        "00000001"  // nlink
        "00000000"  // mtime
        "00000002"  // filesize
        "00000000"  // devmajor
        "00000000"  // devminor
        "00000000"  // rdevmajor
        "00000000"  // rdevminor
        "00000002"  // namesize, NUL included
        "00000000"  // check
        "a\0"       // 110 + 2 bytes: already a multiple of 4
        "hi\0\0"    // data padded to 4
        "070701"
        "00000000"             // ino
        "00000000"             // mode
        "00000000"             // uid
        "00000000"             // gid
        "00000001"             // nlink
        "00000000"             // mtime
        "00000000"             // filesize
        "00000000"             // devmajor
        "00000000"             // devminor
        "00000000"             // rdevmajor
        "00000000"             // rdevminor
        "0000000b"             // namesize
        "00000000"             // check
        "TRAILER!!!\0\0\0\0",  // 110 + 11 = 121, padded to 124
        240);
    Bytes got = cpio.finish();
    EXPECT_EQ(got.size(), 240u);
    EXPECT_EQ(as_string(got), expected);
}

TEST(CpioWriter, DeviceAndSymlinkHeaderFields) {
    CpioWriter cpio(100'000'000);  // mtime 0x05f5e100
    ASSERT_TRUE(cpio.add_char_device("c", 0600, 5, 1));
    ASSERT_TRUE(cpio.add_symlink("l", "target"));
    std::string got = as_string(cpio.finish());
    EXPECT_EQ(got.substr(0, 110),
              "070701"
              "00000001"  // ino
              "00002180"  // mode: char device (020000), 0600
              "00000000"
              "00000000"
              "00000001"  // nlink
              "05f5e100"  // mtime
              "00000000"  // filesize
              "00000000"
              "00000000"
              "00000005"  // rdevmajor
              "00000001"  // rdevminor
              "00000002"  // namesize
              "00000000");
    // The symlink starts at 112 (110 + "c\0"); its data is the target, padded to 4.
    EXPECT_EQ(got.substr(112, 110),
              "070701"
              "00000002"  // ino
              "0000a1ff"  // mode: symlink (0120000), 0777
              "00000000"
              "00000000"
              "00000001"
              "05f5e100"
              "00000006"  // filesize: strlen("target")
              "00000000"
              "00000000"
              "00000000"
              "00000000"
              "00000002"
              "00000000");
    EXPECT_EQ(got.substr(222, 10), std::string("l\0target\0\0", 10));
}

TEST(CpioWriter, AllEntryKindsThroughGnuCpio) {
    TempDir tmp;
    Bytes binary(1000);
    for (size_t i = 0; i < binary.size(); ++i)
        binary[i] = static_cast<uint8_t>(i * 7);
    CpioWriter cpio;
    ASSERT_TRUE(cpio.add_directory("/etc", 0750));
    ASSERT_TRUE(cpio.add_file("/etc/hostname", bytes_of("sandlot\n"), 0644));
    ASSERT_TRUE(cpio.add_file("/usr/lib/deep/blob", binary, 0600));  // parents created implicitly
    ASSERT_TRUE(cpio.add_file("/empty", {}, 0400));
    for (int n = 1; n <= 5; ++n) {  // every padding remainder
        ASSERT_TRUE(cpio.add_file("/pad/" + std::string(static_cast<size_t>(n), 'p'),
                                  Bytes(static_cast<size_t>(n), 'x'), 04755));
    }
    ASSERT_TRUE(cpio.add_symlink("/bin/sh", "busybox"));
    ASSERT_TRUE(cpio.add_char_device("/dev/null", 0666, 1, 3));
    ASSERT_TRUE(cpio.add_directory("/tmp", 01777));
    std::string archive = tmp / "a.cpio";
    write_file(archive, cpio.finish());

    Listing listing = list_archive(archive);
    auto expect = [&](const std::string& name, const std::string& perms, const std::string& size) {
        ASSERT_TRUE(listing.entries.count(name)) << name;
        const Listed& e = listing.entries[name];
        EXPECT_EQ(e.perms, perms) << name;
        EXPECT_EQ(e.size, size) << name;
        EXPECT_EQ(e.uid, "0");
        EXPECT_EQ(e.gid, "0");
    };
    expect("etc", "drwxr-x---", "0");
    expect("etc/hostname", "-rw-r--r--", "8");
    expect("usr", "drwxr-xr-x", "0");
    expect("usr/lib", "drwxr-xr-x", "0");
    expect("usr/lib/deep", "drwxr-xr-x", "0");
    expect("usr/lib/deep/blob", "-rw-------", "1000");
    expect("empty", "-r--------", "0");
    expect("pad/ppp", "-rwsr-xr-x", "3");
    expect("bin", "drwxr-xr-x", "0");
    expect("bin/sh", "lrwxrwxrwx", "7");
    EXPECT_EQ(listing.entries["bin/sh"].target, "busybox");
    expect("dev/null", "crw-rw-rw-", "1,3");
    expect("tmp", "drwxrwxrwt", "0");
    EXPECT_EQ(listing.entries.size(), 18u);

    // Every parent comes before its children.
    for (size_t i = 0; i < listing.order.size(); ++i) {
        const std::string& name = listing.order[i];
        size_t slash = name.rfind('/');
        if (slash == std::string::npos) continue;
        auto parent = std::find(listing.order.begin(), listing.order.end(), name.substr(0, slash));
        ASSERT_NE(parent, listing.order.end()) << name;
        EXPECT_LT(parent - listing.order.begin(), static_cast<ptrdiff_t>(i)) << name;
    }

    EXPECT_EQ(extract_file(archive, "etc/hostname"), bytes_of("sandlot\n"));
    EXPECT_EQ(extract_file(archive, "usr/lib/deep/blob"), binary);
    EXPECT_EQ(extract_file(archive, "empty"), Bytes{});
    for (int n = 1; n <= 5; ++n) {
        EXPECT_EQ(extract_file(archive, "pad/" + std::string(static_cast<size_t>(n), 'p')),
                  Bytes(static_cast<size_t>(n), 'x'));
    }
}

TEST(CpioWriter, OwnersThroughGnuCpio) {
    TempDir tmp;
    CpioWriter cpio;
    ASSERT_TRUE(cpio.add_directory("/home/sandlot", 0755));
    ASSERT_TRUE(cpio.set_owner("/home/sandlot", 1000, 100));
    EXPECT_FALSE(cpio.set_owner("/not/there", 1, 1));
    std::string archive = tmp / "a.cpio";
    write_file(archive, cpio.finish());
    Listing listing = list_archive(archive);
    EXPECT_EQ(listing.entries["home/sandlot"].uid, "1000");
    EXPECT_EQ(listing.entries["home/sandlot"].gid, "100");
    EXPECT_EQ(listing.entries["home"].uid, "0");
}

TEST(CpioWriter, OutputIsDeterministicAndOrderIndependent) {
    CpioWriter a, b;
    ASSERT_TRUE(a.add_file("/x/1", bytes_of("one"), 0644));
    ASSERT_TRUE(a.add_symlink("/y", "x/1"));
    ASSERT_TRUE(a.add_directory("/x", 0700));
    ASSERT_TRUE(b.add_directory("/x", 0700));
    ASSERT_TRUE(b.add_symlink("/y", "x/1"));
    ASSERT_TRUE(b.add_file("x//1", bytes_of("one"), 0644));
    EXPECT_EQ(a.finish(), b.finish());
}

TEST(CpioWriter, RejectsBadEntries) {
    CpioWriter cpio;
    ASSERT_TRUE(cpio.add_file("/f", bytes_of("x"), 0644));
    EXPECT_FALSE(cpio.add_file("/f", bytes_of("y"), 0644));     // duplicate
    EXPECT_FALSE(cpio.add_directory("/f", 0755));               // file then directory
    EXPECT_FALSE(cpio.add_file("/f/g", bytes_of("y"), 0644));   // below a file
    EXPECT_FALSE(cpio.add_file("/a/../etc/passwd", {}, 0644));  // ..
    EXPECT_FALSE(cpio.add_file("./a", {}, 0644));               // .
    EXPECT_FALSE(cpio.add_directory("/", 0755));                // the root itself
    EXPECT_FALSE(cpio.add_directory("", 0755));
    EXPECT_FALSE(cpio.add_file("/m", {}, 010000));  // mode beyond permission bits
    EXPECT_FALSE(cpio.add_symlink("/s", ""));
    EXPECT_FALSE(cpio.add_file_from_path("/n", "/nonexistent/sandlot/file"));
    EXPECT_FALSE(cpio.add_file_from_path("/n", "/"));  // not a regular file
    // Directories may be given again: the last mode wins.
    ASSERT_TRUE(cpio.add_file("/d/x", {}, 0644));
    ASSERT_TRUE(cpio.add_directory("/d", 0711));
    ASSERT_TRUE(cpio.add_directory("/d", 0700));
    TempDir tmp;
    write_file(tmp / "a.cpio", cpio.finish());
    Listing listing = list_archive(tmp / "a.cpio");
    EXPECT_EQ(listing.entries["d"].perms, "drwx------");
    EXPECT_EQ(listing.entries.size(), 3u);  // f, d, d/x: failed adds left nothing behind
}

TEST(CpioWriter, PathsAndModesParse) {
    EXPECT_EQ(normalize_archive_path("/dev//console/").value(), "dev/console");
    EXPECT_EQ(normalize_archive_path("init").value(), "init");
    EXPECT_FALSE(normalize_archive_path("//"));
    EXPECT_FALSE(normalize_archive_path("a/./b"));
    EXPECT_EQ(parse_mode("0755").value(), 0755u);
    EXPECT_EQ(parse_mode("1777").value(), 01777u);
    EXPECT_EQ(parse_mode("644").value(), 0644u);
    EXPECT_FALSE(parse_mode("0788"));
    EXPECT_FALSE(parse_mode("07777"));
    EXPECT_FALSE(parse_mode(""));
}

TEST(CpioWriter, AddTreeCopiesFilesLinksAndModes) {
    TempDir src;
    ASSERT_EQ(mkdir((src / "sub").c_str(), 0710), 0);
    write_file(src / "sub/data", bytes_of("payload"));
    ASSERT_EQ(chmod((src / "sub/data").c_str(), 0640), 0);
    write_file(src / "run.sh", bytes_of("#!/bin/sh\n"));
    ASSERT_EQ(chmod((src / "run.sh").c_str(), 0755), 0);
    ASSERT_EQ(symlink("sub/data", (src / "link").c_str()), 0);
    ASSERT_EQ(chmod(src.path().c_str(), 0751), 0);

    CpioWriter cpio;
    ASSERT_TRUE(cpio.add_tree("/opt/app", src.path()));
    ASSERT_TRUE(cpio.add_tree("/", src.path() + "/sub"));  // into the root
    TempDir tmp;
    write_file(tmp / "a.cpio", cpio.finish());
    Listing listing = list_archive(tmp / "a.cpio");
    EXPECT_EQ(listing.entries["opt"].perms, "drwxr-xr-x");
    EXPECT_EQ(listing.entries["opt/app"].perms, "drwxr-x--x");
    EXPECT_EQ(listing.entries["opt/app/sub"].perms, "drwx--x---");
    EXPECT_EQ(listing.entries["opt/app/sub/data"].perms, "-rw-r-----");
    EXPECT_EQ(listing.entries["opt/app/run.sh"].perms, "-rwxr-xr-x");
    EXPECT_EQ(listing.entries["opt/app/link"].perms, "lrwxrwxrwx");
    EXPECT_EQ(listing.entries["opt/app/link"].target, "sub/data");
    EXPECT_EQ(listing.entries["data"].perms, "-rw-r-----");
    EXPECT_EQ(listing.entries.size(), 7u);
    EXPECT_EQ(extract_file(tmp / "a.cpio", "opt/app/sub/data"), bytes_of("payload"));
    EXPECT_EQ(extract_file(tmp / "a.cpio", "data"), bytes_of("payload"));
}

TEST(CpioCompress, EachFormatDecompressesWithTheSystemTool) {
    CpioWriter cpio;
    Bytes big(300'000);
    for (size_t i = 0; i < big.size(); ++i)
        big[i] = static_cast<uint8_t>((i * 2654435761u) >> 13);
    ASSERT_TRUE(cpio.add_file("/big", big, 0644));
    ASSERT_TRUE(cpio.add_file("/text", Bytes(100'000, 'a'), 0644));
    Bytes archive = cpio.finish();
    TempDir tmp;

    EXPECT_EQ(compress(archive, Compression::None).value(), archive);

    Bytes gz = compress(archive, Compression::Gzip).value();
    ASSERT_GE(gz.size(), 2u);
    EXPECT_EQ(gz[0], 0x1f);
    EXPECT_EQ(gz[1], 0x8b);
    EXPECT_LT(gz.size(), archive.size());
    write_file(tmp / "a.gz", gz);
    EXPECT_EQ(run("gzip -dc < " + (tmp / "a.gz")), archive);

    Bytes zst = compress(archive, Compression::Zstd).value();
    EXPECT_EQ(Bytes(zst.begin(), zst.begin() + 4), (Bytes{0x28, 0xb5, 0x2f, 0xfd}));
    EXPECT_LT(zst.size(), archive.size());
    write_file(tmp / "a.zst", zst);
    EXPECT_EQ(run("zstd -qdc < " + (tmp / "a.zst")), archive);

    EXPECT_EQ(compress(archive, Compression::Gzip).value(), gz);     // deterministic
    EXPECT_EQ(compress({}, Compression::Gzip).value().size(), 20u);  // empty deflate stream in a gzip wrapper
}

TEST(CpioCompress, ParseNames) {
    EXPECT_EQ(parse_compression("none").value(), Compression::None);
    EXPECT_EQ(parse_compression("gzip").value(), Compression::Gzip);
    EXPECT_EQ(parse_compression("zstd").value(), Compression::Zstd);
    EXPECT_FALSE(parse_compression("xz"));
}

// ---- the sandlot-mkinitramfs tool ----

TEST(Mkinitramfs, BuildsTheGuestLayout) {
    ASSERT_EQ(access(kMkinitramfs.c_str(), X_OK), 0) << "build the sandlot-mkinitramfs target first";
    TempDir tmp;
    Bytes init = bytes_of("#!/bin/sh\necho init\n");
    write_file(tmp / "init-src", init);
    ASSERT_EQ(chmod((tmp / "init-src").c_str(), 0600), 0);
    write_file(tmp / "cfg", bytes_of("k=v\n"));
    ASSERT_EQ(mkdir((tmp / "tree").c_str(), 0755), 0);
    write_file(tmp / "tree/t", bytes_of("tree file"));

    for (const char* compression : {"none", "gzip", "zstd"}) {
        SCOPED_TRACE(compression);
        std::string out = tmp / (std::string("initramfs.") + compression);
        run(kMkinitramfs + " --output " + out + " --compression " + compression +
            " --file /init=" + (tmp / "init-src") + ":0755 --file /etc/cfg=" + (tmp / "cfg") +
            " --dir /tmp:1777 --dir /var/empty:0700 --symlink /bin/sh=/init --tree /srv=" + (tmp / "tree"));
        std::string cpio_path = out;
        if (std::string(compression) != "none") {
            cpio_path = tmp / "plain.cpio";
            std::string tool = std::string(compression) == "gzip" ? "gzip -dc" : "zstd -qdc";
            write_file(cpio_path, run(tool + " < " + out));
        }
        Listing listing = list_archive(cpio_path);
        EXPECT_EQ(listing.entries["dev"].perms, "drwxr-xr-x");
        EXPECT_EQ(listing.entries["dev/console"].perms, "crw-------");
        EXPECT_EQ(listing.entries["dev/console"].size, "5,1");
        EXPECT_EQ(listing.entries["proc"].perms, "dr-xr-xr-x");
        EXPECT_EQ(listing.entries["sys"].perms, "dr-xr-xr-x");
        EXPECT_EQ(listing.entries["tmp"].perms, "drwxrwxrwt");
        EXPECT_EQ(listing.entries["run"].perms, "drwxr-xr-x");
        EXPECT_EQ(listing.entries["root"].perms, "drwx------");
        EXPECT_EQ(listing.entries["init"].perms, "-rwxr-xr-x");     // :0755 overrides the source's 0600
        EXPECT_EQ(listing.entries["etc/cfg"].perms, "-rw-r--r--");  // the source's mode
        EXPECT_EQ(listing.entries["var/empty"].perms, "drwx------");
        EXPECT_EQ(listing.entries["bin/sh"].target, "/init");
        EXPECT_EQ(listing.entries["srv/t"].perms, "-rw-r--r--");
        EXPECT_EQ(listing.entries.size(), 16u);
        EXPECT_EQ(extract_file(cpio_path, "init"), init);
        EXPECT_EQ(extract_file(cpio_path, "srv/t"), bytes_of("tree file"));
    }
    // Same inputs, same bytes.
    run(kMkinitramfs + " --output " + (tmp / "again") +
        " --compression zstd --file /init=" + (tmp / "init-src") + ":0755 --file /etc/cfg=" + (tmp / "cfg") +
        " --dir /tmp:1777 --dir /var/empty:0700 --symlink /bin/sh=/init --tree /srv=" + (tmp / "tree"));
    EXPECT_EQ(read_file(tmp / "again"), read_file(tmp / "initramfs.zstd"));
}

TEST(Mkinitramfs, UsesSourceDateEpoch) {
    ASSERT_EQ(access(kMkinitramfs.c_str(), X_OK), 0);
    TempDir tmp;
    run("SOURCE_DATE_EPOCH=1700000000 " + kMkinitramfs + " --output " + (tmp / "a") + " --compression none");
    std::string archive = as_string(read_file(tmp / "a"));
    ASSERT_GT(archive.size(), 110u);
    EXPECT_EQ(archive.substr(46, 8), "6553f100");  // mtime field of the first entry
    int status = 0;
    run("SOURCE_DATE_EPOCH=soon " + kMkinitramfs + " --output " + (tmp / "b") + " 2>/dev/null", &status);
    EXPECT_NE(status, 0);
}

TEST(Mkinitramfs, FailsCleanlyWithoutPartialOutput) {
    ASSERT_EQ(access(kMkinitramfs.c_str(), X_OK), 0);
    TempDir tmp;
    int status = 0;
    for (std::string args : {" --file /init=/nonexistent/agentd", " --file /init", " --compression xz",
                             " --symlink /a=b --symlink /a=c", " --tree /x=/nonexistent/dir"}) {
        Bytes err = run(kMkinitramfs + " --output " + (tmp / "out") + args + " 2>&1", &status);
        EXPECT_NE(status, 0) << args;
        EXPECT_FALSE(err.empty()) << args;
    }
    // Nothing left behind: neither the output nor a temporary file.
    EXPECT_TRUE(std::filesystem::is_empty(tmp.path()));

    // A failed run leaves an existing archive untouched.
    write_file(tmp / "out", bytes_of("previous"));
    run(kMkinitramfs + " --output " + (tmp / "out") + " --file /init=/nonexistent 2>/dev/null", &status);
    EXPECT_NE(status, 0);
    EXPECT_EQ(read_file(tmp / "out"), bytes_of("previous"));
}

}  // namespace
}  // namespace sandlot::initramfs
