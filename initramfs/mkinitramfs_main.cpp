// sandlot-mkinitramfs: packs files into a (compressed) newc cpio archive for the guest kernel.
//
//   sandlot-mkinitramfs --output PATH [--compression none|gzip|zstd] [--file DEST=SRC[:MODE]]...
//                       [--dir DEST[:MODE]]... [--symlink DEST=TARGET]... [--tree DEST=SRCDIR]...
//                       [--owner DEST=UID:GID]...
//
// The archive always holds the skeleton the agent expects before it mounts anything: /dev, /dev/console
// (so the kernel can give init a console), /proc, /sys, /tmp, /run and /root. Timestamps are 0, or
// SOURCE_DATE_EPOCH when set. The output appears atomically (temp file + rename) or not at all.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "initramfs/compress.h"
#include "initramfs/cpio_writer.h"
#include "proto/base/unique_fd.h"

namespace sandlot::initramfs {
namespace {

struct Options {
    std::string output;
    std::string compression = "gzip";
    std::vector<std::string> files, dirs, symlinks, trees, owners;
};

// Splits "A=B" at the first '='; both sides must be non-empty.
Result<std::pair<std::string, std::string>> split_assignment(const std::string& text, const char* what) {
    size_t eq = text.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == text.size()) {
        return make_error(std::string("bad ") + what + " '" + text + "'");
    }
    return std::pair(text.substr(0, eq), text.substr(eq + 1));
}

// "PATH:0755" -> (PATH, 0755) when the part after the last ':' is an octal mode; otherwise (text, nullopt).
std::pair<std::string, std::optional<uint32_t>> split_mode(const std::string& text) {
    size_t colon = text.rfind(':');
    if (colon == std::string::npos) return {text, std::nullopt};
    auto mode = parse_mode(std::string_view(text).substr(colon + 1));
    if (!mode) return {text, std::nullopt};
    return {text.substr(0, colon), *mode};
}

Result<uint32_t> archive_mtime() {
    const char* epoch = std::getenv("SOURCE_DATE_EPOCH");
    if (!epoch || !*epoch) return 0;
    uint32_t value = 0;
    auto [end, ec] = std::from_chars(epoch, epoch + std::string_view(epoch).size(), value);
    if (ec != std::errc() || *end != '\0')
        return make_error(std::string("bad SOURCE_DATE_EPOCH '") + epoch + "'");
    return value;
}

Result<void> add_skeleton(CpioWriter& cpio) {
    TRY(cpio.add_directory("/dev", 0755));
    TRY(cpio.add_char_device("/dev/console", 0600, 5, 1));
    TRY(cpio.add_directory("/proc", 0555));
    TRY(cpio.add_directory("/sys", 0555));
    TRY(cpio.add_directory("/tmp", 01777));
    TRY(cpio.add_directory("/run", 0755));
    TRY(cpio.add_directory("/root", 0700));
    return {};
}

Result<std::vector<uint8_t>> build_archive(const Options& options) {
    CpioWriter cpio(TRY(archive_mtime()));
    TRY(add_skeleton(cpio));
    for (const auto& spec : options.dirs) {
        auto [dest, mode] = split_mode(spec);
        TRY(cpio.add_directory(dest, mode.value_or(0755)));
    }
    for (const auto& spec : options.trees) {
        auto [dest, source] = TRY(split_assignment(spec, "--tree"));
        TRY(cpio.add_tree(dest, source));
    }
    for (const auto& spec : options.files) {
        auto [dest, rest] = TRY(split_assignment(spec, "--file"));
        auto [source, mode] = split_mode(rest);
        TRY(cpio.add_file_from_path(dest, source, mode ? static_cast<int>(*mode) : -1));
    }
    for (const auto& spec : options.symlinks) {
        auto [dest, target] = TRY(split_assignment(spec, "--symlink"));
        TRY(cpio.add_symlink(dest, target));
    }
    for (const auto& spec : options.owners) {
        auto [dest, ids] = TRY(split_assignment(spec, "--owner"));
        uint32_t uid = 0, gid = 0;
        const char* end = ids.data() + ids.size();
        auto [colon, ec1] = std::from_chars(ids.data(), end, uid);
        auto [last, ec2] = ec1 == std::errc() && colon != end && *colon == ':'
                               ? std::from_chars(colon + 1, end, gid)
                               : std::from_chars_result{colon, std::errc::invalid_argument};
        if (ec2 != std::errc() || last != end)
            return make_error("bad --owner '" + spec + "' (want DEST=UID:GID)");
        TRY(cpio.set_owner(dest, uid, gid));
    }
    auto compression = TRY(parse_compression(options.compression));
    return compress(cpio.finish(), compression);
}

// Writes next to `path` and renames over it, so readers never see a partial archive.
Result<void> write_atomically(const std::string& path, std::span<const uint8_t> data) {
    std::string temp = path + ".tmp.XXXXXX";
    UniqueFd fd(mkstemp(temp.data()));
    if (!fd) return errno_error("create temporary file for " + path);
    auto written = [&]() -> Result<void> {
        size_t done = 0;
        while (done < data.size()) {
            ssize_t n = write(fd.get(), data.data() + done, data.size() - done);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) return errno_error("write " + temp);
            done += static_cast<size_t>(n);
        }
        if (fchmod(fd.get(), 0644) != 0) return errno_error("chmod " + temp);
        if (close(fd.release()) != 0) return errno_error("close " + temp);
        if (rename(temp.c_str(), path.c_str()) != 0) return errno_error("rename " + temp + " to " + path);
        return {};
    }();
    if (!written) unlink(temp.c_str());
    return written;
}

}  // namespace
}  // namespace sandlot::initramfs

int main(int argc, char** argv) {
    using namespace sandlot::initramfs;
    Options options;
    CLI::App app{"Packs files into a newc cpio initramfs for the sandlot guest."};
    app.add_option("-o,--output", options.output, "Archive to write")->required();
    app.add_option("--compression", options.compression, "none, gzip or zstd (default gzip)");
    app.add_option("--file", options.files,
                   "DEST=SRC[:MODE]  a regular file; MODE (octal) defaults to SRC's");
    app.add_option("--dir", options.dirs, "DEST[:MODE]  a directory, 0755 unless MODE is given");
    app.add_option("--symlink", options.symlinks, "DEST=TARGET  a symbolic link");
    app.add_option("--tree", options.trees, "DEST=SRCDIR  SRCDIR's contents, recursively");
    app.add_option("--owner", options.owners,
                   "DEST=UID:GID  numeric owner of an entry added above (default 0:0)");
    CLI11_PARSE(app, argc, argv);

    auto archive = build_archive(options);
    if (archive) {
        if (auto ok = write_atomically(options.output, *archive); !ok) archive = std::unexpected(ok.error());
    }
    if (!archive) {
        std::fprintf(stderr, "sandlot-mkinitramfs: %s\n", archive.error().to_string().c_str());
        return 1;
    }
    return 0;
}
