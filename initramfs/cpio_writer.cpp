#include "initramfs/cpio_writer.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <memory>

#include "proto/base/unique_fd.h"

namespace sandlot::initramfs {

namespace {

constexpr size_t kNewcHeaderSize = 110;
constexpr size_t kMaxPath = 4095;  // the kernel refuses names longer than PATH_MAX

Result<std::vector<uint8_t>> read_whole_file(const std::string& source) {
    UniqueFd fd(open(source.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return errno_error("open " + source);
    struct stat st;
    if (fstat(fd.get(), &st) != 0) return errno_error("stat " + source);
    if (!S_ISREG(st.st_mode)) return make_error(source + " is not a regular file");
    if (static_cast<uint64_t>(st.st_size) > UINT32_MAX) return make_error(source + " is too large for cpio");
    std::vector<uint8_t> data(static_cast<size_t>(st.st_size));
    size_t got = 0;
    while (got < data.size()) {
        ssize_t n = read(fd.get(), data.data() + got, data.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("read " + source);
        if (n == 0) return make_error(source + " shrank while being read");
        got += static_cast<size_t>(n);
    }
    return data;
}

Result<std::string> read_link(const std::string& source) {
    std::string target(4096, '\0');
    ssize_t n = readlink(source.c_str(), target.data(), target.size());
    if (n < 0) return errno_error("readlink " + source);
    if (static_cast<size_t>(n) >= target.size()) return make_error("symlink target too long: " + source);
    target.resize(static_cast<size_t>(n));
    return target;
}

void append_padding(std::vector<uint8_t>& out) {
    while (out.size() % 4 != 0)
        out.push_back(0);
}

void append_entry(std::vector<uint8_t>& out, const std::string& name, uint32_t ino, uint32_t mode,
                  uint32_t uid, uint32_t gid, uint32_t nlink, uint32_t mtime, std::span<const uint8_t> data,
                  uint32_t rdev_major, uint32_t rdev_minor) {
    char header[kNewcHeaderSize + 1];
    std::snprintf(header, sizeof header, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x", ino,
                  mode, uid, gid, nlink, mtime, static_cast<uint32_t>(data.size()), 0u /* devmajor */,
                  0u /* devminor */, rdev_major, rdev_minor, static_cast<uint32_t>(name.size() + 1),
                  0u /* check */);
    // The archive is a byte stream, so every entry starts 4-aligned only because the previous one was padded.
    out.insert(out.end(), header, header + kNewcHeaderSize);
    out.insert(out.end(), name.begin(), name.end());
    out.push_back(0);
    append_padding(out);
    out.insert(out.end(), data.begin(), data.end());
    append_padding(out);
}

}  // namespace

Result<std::string> normalize_archive_path(std::string_view path) {
    std::string out;
    size_t pos = 0;
    while (pos <= path.size()) {
        size_t slash = path.find('/', pos);
        if (slash == std::string_view::npos) slash = path.size();
        std::string_view part = path.substr(pos, slash - pos);
        pos = slash + 1;
        if (part.empty()) continue;  // leading, trailing or doubled '/'
        if (part == "." || part == "..")
            return make_error("path may not contain . or ..: " + std::string(path));
        if (!out.empty()) out.push_back('/');
        out.append(part);
    }
    if (out.empty()) return make_error("empty path: '" + std::string(path) + "'");
    if (out.size() > kMaxPath) return make_error("path too long: " + std::string(path.substr(0, 64)) + "...");
    return out;
}

Result<uint32_t> parse_mode(std::string_view text) {
    if (text.empty() || text.size() > 4)
        return make_error("bad mode '" + std::string(text) + "': want octal like 0755");
    uint32_t mode = 0;
    for (char c : text) {
        if (c < '0' || c > '7')
            return make_error("bad mode '" + std::string(text) + "': want octal like 0755");
        mode = mode * 8 + static_cast<uint32_t>(c - '0');
    }
    return mode;
}

Result<void> CpioWriter::add(std::string_view path, Entry entry) {
    std::string name = TRY(normalize_archive_path(path));

    // Check every ancestor before changing anything, so a failed add leaves the archive as it was.
    for (size_t slash = name.find('/'); slash != std::string::npos; slash = name.find('/', slash + 1)) {
        auto it = entries_.find(name.substr(0, slash));
        if (it != entries_.end() && !S_ISDIR(it->second.mode)) {
            return make_error("cannot add " + name + ": " + it->first + " is not a directory");
        }
    }
    auto existing = entries_.find(name);
    if (existing != entries_.end()) {
        if (S_ISDIR(existing->second.mode) && S_ISDIR(entry.mode)) {
            existing->second.mode = entry.mode;
            existing->second.implicit = false;
            return {};
        }
        return make_error("duplicate entry: " + name);
    }

    for (size_t slash = name.find('/'); slash != std::string::npos; slash = name.find('/', slash + 1)) {
        Entry parent;
        parent.mode = S_IFDIR | 0755;
        parent.implicit = true;
        entries_.try_emplace(name.substr(0, slash), std::move(parent));
    }
    entries_.emplace(std::move(name), std::move(entry));
    return {};
}

Result<void> CpioWriter::add_directory(std::string_view path, uint32_t mode) {
    if (mode > 07777) return make_error("bad mode for " + std::string(path));
    Entry entry;
    entry.mode = S_IFDIR | mode;
    return add(path, std::move(entry));
}

Result<void> CpioWriter::add_file(std::string_view path, std::span<const uint8_t> data, uint32_t mode) {
    if (mode > 07777) return make_error("bad mode for " + std::string(path));
    if (data.size() > UINT32_MAX) return make_error("file too large for cpio: " + std::string(path));
    Entry entry;
    entry.mode = S_IFREG | mode;
    entry.data.assign(data.begin(), data.end());
    return add(path, std::move(entry));
}

Result<void> CpioWriter::add_file_from_path(std::string_view path, const std::string& source, int mode) {
    struct stat st;
    if (stat(source.c_str(), &st) != 0) return errno_error("stat " + source);
    Entry entry;
    entry.data = TRY(read_whole_file(source));
    uint32_t perms = mode >= 0 ? static_cast<uint32_t>(mode) : (st.st_mode & 07777);
    if (perms > 07777) return make_error("bad mode for " + std::string(path));
    entry.mode = S_IFREG | perms;
    return add(path, std::move(entry));
}

Result<void> CpioWriter::add_symlink(std::string_view path, std::string_view target) {
    if (target.empty() || target.size() > kMaxPath)
        return make_error("bad symlink target for " + std::string(path));
    Entry entry;
    entry.mode = S_IFLNK | 0777;
    entry.data.assign(target.begin(), target.end());
    return add(path, std::move(entry));
}

Result<void> CpioWriter::add_char_device(std::string_view path, uint32_t mode, uint32_t major,
                                         uint32_t minor) {
    if (mode > 07777) return make_error("bad mode for " + std::string(path));
    Entry entry;
    entry.mode = S_IFCHR | mode;
    entry.rdev_major = major;
    entry.rdev_minor = minor;
    return add(path, std::move(entry));
}

Result<void> CpioWriter::add_tree(std::string_view path, const std::string& source_dir) {
    struct stat st;
    if (lstat(source_dir.c_str(), &st) != 0) return errno_error("stat " + source_dir);
    if (!S_ISDIR(st.st_mode)) return make_error(source_dir + " is not a directory");
    // "/" means the archive root itself, which has no entry of its own.
    bool at_root = path.find_first_not_of('/') == std::string_view::npos;
    std::string base;
    if (!at_root) {
        base = TRY(normalize_archive_path(path));
        TRY(add_directory(base, st.st_mode & 07777));
    }

    std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir(source_dir.c_str()), closedir);
    if (!dir) return errno_error("opendir " + source_dir);
    std::vector<std::string> names;
    errno = 0;
    while (dirent* d = readdir(dir.get())) {
        std::string_view name = d->d_name;
        if (name != "." && name != "..") names.emplace_back(name);
    }
    if (errno != 0) return errno_error("readdir " + source_dir);
    dir.reset();
    std::sort(names.begin(), names.end());  // the error reported first does not depend on readdir order

    for (const std::string& name : names) {
        std::string source = source_dir + "/" + name;
        std::string dest = at_root ? name : base + "/" + name;
        if (lstat(source.c_str(), &st) != 0) return errno_error("stat " + source);
        if (S_ISDIR(st.st_mode)) {
            TRY(add_tree(dest, source));
        } else if (S_ISREG(st.st_mode)) {
            TRY(add_file_from_path(dest, source, static_cast<int>(st.st_mode & 07777)));
        } else if (S_ISLNK(st.st_mode)) {
            TRY(add_symlink(dest, TRY(read_link(source))));
        } else if (S_ISCHR(st.st_mode)) {
            TRY(add_char_device(dest, st.st_mode & 07777, major(st.st_rdev), minor(st.st_rdev)));
        } else {
            return make_error("unsupported file type (not a file, directory, symlink or char device): " +
                              source);
        }
    }
    return {};
}

Result<void> CpioWriter::set_owner(std::string_view path, uint32_t uid, uint32_t gid) {
    std::string name = TRY(normalize_archive_path(path));
    auto it = entries_.find(name);
    if (it == entries_.end()) return make_error("set owner of " + std::string(path) + ": not in the archive");
    it->second.uid = uid;
    it->second.gid = gid;
    return {};
}

std::vector<uint8_t> CpioWriter::finish() const {
    std::vector<uint8_t> out;
    uint32_t ino = 1;
    for (const auto& [name, entry] : entries_) {
        uint32_t nlink = S_ISDIR(entry.mode) ? 2 : 1;
        append_entry(out, name, ino++, entry.mode, entry.uid, entry.gid, nlink, mtime_, entry.data,
                     entry.rdev_major, entry.rdev_minor);
    }
    append_entry(out, "TRAILER!!!", 0, 0, 0, 0, 1, 0, {}, 0, 0);
    return out;
}

}  // namespace sandlot::initramfs
