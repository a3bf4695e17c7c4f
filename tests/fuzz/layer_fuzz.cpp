// libFuzzer target for OCI layer extraction (host/lib/oci_layer.h): the input is a layer blob (plain tar,
// gzip or zstd, detected from its magic bytes), applied onto a fresh root for every input. tools/fuzz builds
// it with clang, ASan and UBSan, and runs it.
//
// The root lives in a sentinel directory next to a "victim" file. What must hold, whatever the bytes:
//   - apply_layer_buffer returns (a value or an error, never a crash, a hang or unbounded memory);
//   - afterwards the sentinel holds exactly "root" and "victim", and the victim is unchanged: nothing was
//     created, removed or written outside the root, whatever symlinks, hard links, ".." names or whiteouts
//     the layer holds;
//   - on success diff_id is a well-formed sha256 digest and, for an uncompressed layer, the digest of the
//     input itself (the whole stream is hashed, trailing bytes included);
//   - an error message is one line starting with "layer: ".
// A violation aborts, which libFuzzer reports as a crash with the input saved; so does any ASan/UBSan
// finding.
//
// Built with -DLAYER_FUZZ_SEEDS instead, this file is the seed generator: `layer_fuzz_seeds DIR` writes small
// layers (whiteouts, opaque directories, hard links, symlinks pointing out, "../" and absolute names, gzip
// and zstd forms, a truncated one) made with libarchive's writer.
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "host/lib/digest.h"
#include "host/lib/oci_layer.h"

#ifndef LAYER_FUZZ_SEEDS

namespace sandlot::host {
namespace {

[[noreturn]] void violated(const char* what, const char* file, int line) {
    std::fprintf(stderr, "layer_fuzz: invariant violated at %s:%d: %s\n", file, line, what);
    std::abort();
}
#define CHECK(cond) ((cond) ? (void)0 : violated(#cond, __FILE__, __LINE__))

constexpr std::string_view kVictimText = "victim: must never change";

struct Sandbox {
    std::string sentinel, root, victim;
};

const Sandbox& sandbox() {
    // Leaked on purpose: the atexit cleanup runs after static destructors.
    static const Sandbox& box = *[] {
        // Files written by a layer are capped (a zstd stream can expand ~40000-fold): a write past the cap
        // fails with EFBIG instead of filling the disk.
        signal(SIGXFSZ, SIG_IGN);
        rlimit limit{8 << 20, 8 << 20};
        setrlimit(RLIMIT_FSIZE, &limit);
        std::string tmpl = (std::filesystem::temp_directory_path() / "layer-fuzz-XXXXXX").string();
        CHECK(mkdtemp(tmpl.data()) != nullptr);
        auto* b = new Sandbox{tmpl, tmpl + "/root", tmpl + "/victim"};
        FILE* f = std::fopen(b->victim.c_str(), "w");
        CHECK(f != nullptr);
        std::fwrite(kVictimText.data(), 1, kVictimText.size(), f);
        std::fclose(f);
        std::atexit([] { std::filesystem::remove_all(sandbox().sentinel); });
        return b;
    }();
    return box;
}

std::set<std::string> names_in(const std::string& dir) {
    std::set<std::string> names;
    DIR* d = opendir(dir.c_str());
    CHECK(d != nullptr);
    while (dirent* e = readdir(d)) {
        std::string n = e->d_name;
        if (n != "." && n != "..") names.insert(n);
    }
    closedir(d);
    return names;
}

std::string read_victim(const std::string& path) {
    struct stat st {};
    CHECK(lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode));
    std::string text(kVictimText.size() + 1, '\0');
    FILE* f = std::fopen(path.c_str(), "r");
    CHECK(f != nullptr);
    text.resize(std::fread(text.data(), 1, text.size(), f));
    std::fclose(f);
    return text;
}

}  // namespace
}  // namespace sandlot::host

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace sandlot::host;
    const Sandbox& box = sandbox();
    std::error_code ec;
    std::filesystem::remove_all(box.root, ec);
    CHECK(mkdir(box.root.c_str(), 0755) == 0);

    std::span<const std::byte> layer(reinterpret_cast<const std::byte*>(data), size);
    auto result = apply_layer_buffer(layer, box.root);
    if (result) {
        CHECK(is_sha256_digest(result->diff_id));
        bool gzip = size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
        bool zstd = size >= 4 && data[0] == 0x28 && data[1] == 0xb5 && data[2] == 0x2f && data[3] == 0xfd;
        if (!gzip && !zstd) {
            Sha256 h;
            h.update(layer);
            CHECK(result->diff_id == h.finish());
        }
    } else {
        const std::string& msg = result.error().message;
        CHECK(msg.starts_with("layer: "));
        CHECK(msg.find('\n') == std::string::npos);
    }
    CHECK((names_in(box.sentinel) == std::set<std::string>{"root", "victim"}));
    CHECK(read_victim(box.victim) == kVictimText);
    std::filesystem::remove_all(box.root, ec);
    CHECK(!ec);
    return 0;
}

#else  // LAYER_FUZZ_SEEDS

namespace {

using Bytes = std::vector<uint8_t>;

struct Entry {
    std::string name;
    unsigned type = AE_IFREG;
    unsigned perm = 0644;
    std::string data;
    std::string symlink;
    std::string hardlink;
    std::string xattr;  // a user.seed xattr when not empty
};

Entry file(std::string name, std::string data = "x", unsigned perm = 0644) {
    return {std::move(name), AE_IFREG, perm, std::move(data), "", "", ""};
}
Entry directory(std::string name) {
    return {std::move(name), AE_IFDIR, 0755, "", "", "", ""};
}
Entry soft_link(std::string name, std::string target) {
    return {std::move(name), AE_IFLNK, 0777, "", std::move(target), "", ""};
}
Entry hardlink(std::string name, std::string target) {
    return {std::move(name), AE_IFREG, 0644, "", "", std::move(target), ""};
}
Entry fifo(std::string name) {
    return {std::move(name), AE_IFIFO, 0600, "", "", "", ""};
}

la_ssize_t append(struct archive*, void* client, const void* buf, size_t n) {
    auto* out = static_cast<Bytes*>(client);
    auto* p = static_cast<const uint8_t*>(buf);
    out->insert(out->end(), p, p + n);
    return static_cast<la_ssize_t>(n);
}

// A pax tar (unpadded: the end-of-archive blocks only), optionally through libarchive's gzip or zstd filter.
Bytes make_tar(const std::vector<Entry>& entries, const char* filter = nullptr) {
    Bytes out;
    archive* a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    if (filter && std::strcmp(filter, "gzip") == 0) archive_write_add_filter_gzip(a);
    if (filter && std::strcmp(filter, "zstd") == 0) archive_write_add_filter_zstd(a);
    archive_write_set_bytes_in_last_block(a, 1);
    archive_write_open(a, &out, nullptr, append, nullptr);
    for (const Entry& e : entries) {
        archive_entry* ae = archive_entry_new();
        archive_entry_copy_pathname(ae, e.name.c_str());
        archive_entry_set_filetype(ae, e.type);
        archive_entry_set_perm(ae, e.perm);
        archive_entry_set_uid(ae, 1000);
        archive_entry_set_gid(ae, 1000);
        archive_entry_set_mtime(ae, 1700000000, 0);
        if (!e.symlink.empty()) archive_entry_copy_symlink(ae, e.symlink.c_str());
        if (!e.hardlink.empty()) archive_entry_copy_hardlink(ae, e.hardlink.c_str());
        if (!e.xattr.empty()) archive_entry_xattr_add_entry(ae, "user.seed", e.xattr.data(), e.xattr.size());
        bool has_data = e.type == AE_IFREG && e.hardlink.empty();
        archive_entry_set_size(ae, has_data ? static_cast<la_int64_t>(e.data.size()) : 0);
        archive_write_header(a, ae);
        if (has_data) archive_write_data(a, e.data.data(), e.data.size());
        archive_entry_free(ae);
    }
    archive_write_close(a);
    archive_write_free(a);
    return out;
}

bool write_file(const std::string& path, const Bytes& bytes) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) return false;
    bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    return std::fclose(f) == 0 && ok;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: layer_fuzz_seeds DIR\n");
        return 2;
    }
    std::string out_dir = argv[1];
    Entry tagged = file("etc/tagged", "t");
    tagged.xattr = "v";
    std::vector<Entry> base = {directory("etc"),
                               file("etc/hosts", "127.0.0.1 localhost\n"),
                               file("/usr/bin/su", "su", 04755),
                               soft_link("bin", "usr/bin"),
                               soft_link("etc/abs", "/etc/hosts"),
                               hardlink("etc/hosts.link", "etc/hosts"),
                               fifo("run/fifo"),
                               tagged};
    std::vector<Entry> whiteouts = {file("a/keep"),      file("a/gone"),         file("a/.wh.gone"),
                                    directory("o"),      file("o/mine"),         file("o/.wh..wh..opq"),
                                    file(".wh.missing"), file("d/.wh..wh..opq"), file("o/.wh.mine")};
    std::vector<Entry> escapes = {soft_link("link", "/"),          file("link/evil"),
                                  soft_link("up", "../../.."),     file("up/evil2"),
                                  soft_link("out", "/etc/passwd"), hardlink("h", "out"),
                                  soft_link("top", "/.."),         file("top/.wh..wh..opq"),
                                  file("top/.wh.victim")};
    std::vector<std::pair<std::string, Bytes> > seeds = {
        {"base.tar", make_tar(base)},
        {"base.tar.gz", make_tar(base, "gzip")},
        {"base.tar.zst", make_tar(base, "zstd")},
        {"whiteouts.tar", make_tar(whiteouts)},
        {"escapes-contained.tar", make_tar(escapes)},
        {"dotdot.tar", make_tar({file("ok"), file("../evil")})},
        {"abs-dotdot.tar", make_tar({file("/abs/../../evil")})},
        {"hardlink-out.tar", make_tar({hardlink("h", "../../etc/passwd")})},
        {"hardlink-dir.tar", make_tar({directory("d"), hardlink("h", "d")})},
        {"whiteout-dotdot.tar", make_tar({file(".wh..."), file("a/.wh..")})},
        {"replace.tar",
         make_tar({file("x"), directory("x"), file("x/y"), file("x"), soft_link("s", "x"), directory("s")})},
        {"long-name.tar", make_tar({file(std::string(300, 'n')), file(std::string(120, 'd') + "/" + "f")})},
    };
    Bytes truncated = make_tar(base);
    truncated.resize(truncated.size() / 2);
    seeds.push_back({"truncated.tar", truncated});
    Bytes gz = make_tar(base, "gzip");
    gz.resize(gz.size() * 2 / 3);
    seeds.push_back({"truncated.tar.gz", gz});
    Bytes twice = make_tar(whiteouts, "gzip");
    Bytes more = make_tar(base, "gzip");
    twice.insert(twice.end(), more.begin(), more.end());  // two gzip members: one stream
    seeds.push_back({"two-members.tar.gz", twice});

    for (const auto& [name, bytes] : seeds) {
        if (!write_file(out_dir + "/" + name, bytes)) {
            std::perror(("layer_fuzz_seeds: " + out_dir + "/" + name).c_str());
            return 1;
        }
    }
    std::printf("layer_fuzz_seeds: wrote %zu seeds to %s\n", seeds.size(), out_dir.c_str());
    return 0;
}

#endif  // LAYER_FUZZ_SEEDS
