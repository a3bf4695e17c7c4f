#include "host/lib/tar_stream.h"

#include <archive.h>
#include <archive_entry.h>
#include <locale.h>
#include <sys/sysmacros.h>
#include <time.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proto/fs.h"

namespace sandlot::host {

namespace {

constexpr size_t kBlock = 64 * 1024;
constexpr int64_t kNsPerSecond = 1'000'000'000;

// libarchive converts names between the current locale and the UTF-8 of pax headers. In a UTF-8 locale a
// UTF-8 name is written as is and a name that is not UTF-8 falls back to hdrcharset=BINARY (raw bytes),
// and reading returns both unchanged; in the "C" locale any non-ASCII name would take the fallback. So the
// calling thread runs in C.UTF-8 while an archive is in use (uselocale: this thread only).
class Utf8Locale {
  public:
    Utf8Locale() : locale_(newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(nullptr))) {
        if (locale_) previous_ = uselocale(locale_);
    }
    ~Utf8Locale() {
        if (!locale_) return;
        uselocale(previous_);
        freelocale(locale_);
    }
    Utf8Locale(const Utf8Locale&) = delete;
    Utf8Locale& operator=(const Utf8Locale&) = delete;

  private:
    locale_t locale_;
    locale_t previous_ = nullptr;
};

struct ReadCloser {
    void operator()(archive* a) const { archive_read_free(a); }
};
struct WriteCloser {
    void operator()(archive* a) const { archive_write_free(a); }
};
struct EntryFree {
    void operator()(archive_entry* e) const { archive_entry_free(e); }
};

// Names in messages: control bytes and bytes that are not printable ASCII as \xNN, so an error stays one
// readable line whatever the archive holds.
std::string printable(std::string_view name) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    for (unsigned char c : name) {
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            out += static_cast<char>(c);
        } else {
            out += "\\x";
            out += kHex[c >> 4];
            out += kHex[c & 15];
        }
    }
    return out;
}

// libarchive's errno for a failure: a real one is kept; its own codes (-1, or EILSEQ for "not an archive")
// would print as a misleading strerror text, so they become 0 and the message stands alone.
Error archive_failure(archive* a, const std::string& what) {
    int code = archive_errno(a);
    const char* text = archive_error_string(a);
    if (code <= 0 || code == EILSEQ) code = 0;
    std::string message = what;
    if (text && *text) {
        message += std::string(": ") + text;
        // "Error reading fd 0: Is a directory" already says what the errno would add.
        if (code != 0 && message.find(std::strerror(code)) != std::string::npos) code = 0;
    } else {
        message += ": the archive is damaged or cut short";
    }
    return Error{code, message};
}

// A name from an archive as a tree path: empty and "." components dropped (so leading "/" and "./" and a
// trailing "/" go), nullopt if what is left is unsafe (a ".." component). "" is the root itself.
std::optional<std::string> tree_path(std::string_view name) {
    std::string out;
    size_t start = 0;
    while (start <= name.size()) {
        size_t slash = name.find('/', start);
        if (slash == std::string_view::npos) slash = name.size();
        std::string_view part = name.substr(start, slash - start);
        if (!part.empty() && part != ".") {
            if (!out.empty()) out += '/';
            out += part;
        }
        start = slash + 1;
    }
    if (!proto::fs_relative_path_ok(out)) return std::nullopt;
    return out;
}

int64_t now_ns() {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<int64_t>(ts.tv_sec) * kNsPerSecond + ts.tv_nsec;
}

// Reads the current entry's data, exactly `size` bytes, into the tree.
Result<void> copy_entry_data(archive* a, TreeWriter& out, const std::string& name, uint64_t size,
                             TransferStats& stats,
                             const std::function<void(const TransferStats&)>& progress) {
    std::vector<uint8_t> buffer(kBlock);
    uint64_t left = size;
    while (left > 0) {
        size_t want = left < buffer.size() ? static_cast<size_t>(left) : buffer.size();
        la_ssize_t n = archive_read_data(a, buffer.data(), want);
        if (n < 0) return std::unexpected(archive_failure(a, "read tar entry " + printable(name)));
        if (n == 0)
            return make_error("read tar entry " + printable(name) + ": the archive ends inside its data");
        TRY(out.write(std::span<const uint8_t>(buffer.data(), static_cast<size_t>(n))));
        left -= static_cast<uint64_t>(n);
        stats.bytes += static_cast<uint64_t>(n);
        if (progress) progress(stats);
    }
    return {};
}

}  // namespace

Result<TransferStats> tar_to_tree(int in_fd, TreeWriter& out,
                                  const std::function<void(const TransferStats&)>& progress) {
    Utf8Locale utf8;
    std::unique_ptr<archive, ReadCloser> a(archive_read_new());
    if (!a) return make_error("read tar: out of memory", ENOMEM);
    archive_read_support_filter_all(a.get());
    // Not support_format_all: its mtree reader takes a line of plain text for an archive of one empty file.
    archive_read_support_format_tar(a.get());  // ustar, pax, GNU, v7
    archive_read_support_format_cpio(a.get());
    archive_read_support_format_zip(a.get());
    archive_read_support_format_7zip(a.get());
    archive_read_support_format_empty(a.get());
    if (archive_read_open_fd(a.get(), in_fd, kBlock) != ARCHIVE_OK)
        return std::unexpected(archive_failure(a.get(), "read tar"));

    TransferStats stats;
    for (;;) {
        archive_entry* entry = nullptr;
        int r = archive_read_next_header(a.get(), &entry);
        if (r == ARCHIVE_EOF) break;
        if (r != ARCHIVE_OK && r != ARCHIVE_WARN)
            return std::unexpected(archive_failure(a.get(), "read tar"));

        const char* raw_name = archive_entry_pathname(entry);
        if (!raw_name) raw_name = archive_entry_pathname_utf8(entry);
        if (!raw_name) return make_error("read tar: an entry without a name", EINVAL);
        std::string name = raw_name;
        auto path = tree_path(name);
        if (!path)
            return make_error("tar entry \"" + printable(name) + "\": unsafe path (outside the tree)",
                              EINVAL);

        FileInfo info;
        info.path = *path;
        info.mode = static_cast<uint32_t>(archive_entry_perm(entry)) & 07777;
        info.uid = static_cast<uint32_t>(archive_entry_uid(entry));
        info.gid = static_cast<uint32_t>(archive_entry_gid(entry));
        info.mtime_ns = archive_entry_mtime_is_set(entry)
                            ? static_cast<int64_t>(archive_entry_mtime(entry)) * kNsPerSecond +
                                  archive_entry_mtime_nsec(entry)
                            : now_ns();
        if (archive_entry_atime_is_set(entry))
            info.atime_ns = static_cast<int64_t>(archive_entry_atime(entry)) * kNsPerSecond +
                            archive_entry_atime_nsec(entry);

        std::optional<std::vector<uint8_t>> buffered;  // data of a file whose size the header left out
        if (const char* link = archive_entry_hardlink(entry)) {
            auto target = tree_path(link);
            if (!target || target->empty())
                return make_error("tar entry \"" + printable(name) + "\": unsafe hard link target \"" +
                                      printable(link) + "\"",
                                  EINVAL);
            info.type = FsType::Hardlink;
            info.link_target = *target;
        } else {
            switch (archive_entry_filetype(entry)) {
                case AE_IFREG:
                    info.type = FsType::Regular;
                    if (archive_entry_size_is_set(entry)) {
                        info.size = static_cast<uint64_t>(archive_entry_size(entry));
                    } else {
                        buffered.emplace();
                        std::vector<uint8_t> chunk(kBlock);
                        for (;;) {
                            la_ssize_t n = archive_read_data(a.get(), chunk.data(), chunk.size());
                            if (n < 0)
                                return std::unexpected(
                                    archive_failure(a.get(), "read tar entry " + printable(name)));
                            if (n == 0) break;
                            buffered->insert(buffered->end(), chunk.begin(), chunk.begin() + n);
                        }
                        info.size = buffered->size();
                    }
                    break;
                case AE_IFDIR:
                    info.type = FsType::Directory;
                    break;
                case AE_IFLNK: {
                    info.type = FsType::Symlink;
                    const char* target = archive_entry_symlink(entry);
                    info.link_target = target ? target : "";
                    if (info.link_target.empty())
                        return make_error("tar entry \"" + printable(name) + "\": symlink without a target",
                                          EINVAL);
                    break;
                }
                case AE_IFCHR:
                    info.type = FsType::CharDevice;
                    info.rdev = static_cast<uint64_t>(archive_entry_rdev(entry));
                    break;
                case AE_IFBLK:
                    info.type = FsType::BlockDevice;
                    info.rdev = static_cast<uint64_t>(archive_entry_rdev(entry));
                    break;
                case AE_IFIFO:
                    info.type = FsType::Fifo;
                    break;
                case AE_IFSOCK:
                    continue;  // a socket is only meaningful with its process; tar tools skip them too
                default:
                    return make_error("tar entry \"" + printable(name) + "\": unsupported file type", EINVAL);
            }
        }
        if (info.path.empty()) {
            // The archive's "." (or "/"): the destination itself, whose mode and times stay as they are.
            if (info.type == FsType::Directory) continue;
            return make_error(
                "tar entry \"" + printable(name) + "\": the root of the archive is not a directory", EINVAL);
        }

        TRY(out.add(info));
        ++stats.entries;
        if (info.type == FsType::Regular) {
            if (buffered) {
                if (!buffered->empty()) TRY(out.write(*buffered));
                stats.bytes += buffered->size();
            } else {
                TRY(copy_entry_data(a.get(), out, name, info.size, stats, progress));
            }
        }
        if (progress) progress(stats);
    }
    return stats;
}

Result<TransferStats> tree_to_tar(TreeReader& in, int out_fd, const std::string& prefix,
                                  const std::function<void(const TransferStats&)>& progress) {
    Utf8Locale utf8;
    std::unique_ptr<archive, WriteCloser> a(archive_write_new());
    if (!a) return make_error("write tar: out of memory", ENOMEM);
    if (archive_write_set_format_pax_restricted(a.get()) != ARCHIVE_OK ||
        archive_write_open_fd(a.get(), out_fd) != ARCHIVE_OK)
        return std::unexpected(archive_failure(a.get(), "write tar"));

    auto name_of = [&](const std::string& rel) -> std::string {
        if (prefix.empty()) return rel.empty() ? std::string(".") : rel;
        if (rel.empty()) return prefix;
        return prefix.back() == '/' ? prefix + rel : prefix + "/" + rel;
    };

    TransferStats stats;
    std::unique_ptr<archive_entry, EntryFree> entry(archive_entry_new());
    if (!entry) return make_error("write tar: out of memory", ENOMEM);
    for (;;) {
        auto next = TRY(in.next());
        if (!next) break;
        const FileInfo& info = *next;
        // A tree from the guest is not trusted to stay inside the archive's prefix.
        if (!proto::fs_relative_path_ok(info.path))
            return make_error("tree entry \"" + printable(info.path) + "\": unsafe path", EINVAL);

        archive_entry_clear(entry.get());
        std::string name = name_of(info.path);
        archive_entry_copy_pathname(entry.get(), name.c_str());
        archive_entry_set_perm(entry.get(), static_cast<mode_t>(info.mode & 07777));
        archive_entry_set_uid(entry.get(), info.uid);
        archive_entry_set_gid(entry.get(), info.gid);
        int64_t sec = info.mtime_ns / kNsPerSecond;
        int64_t nsec = info.mtime_ns % kNsPerSecond;
        if (nsec < 0) {
            sec -= 1;
            nsec += kNsPerSecond;
        }
        archive_entry_set_mtime(entry.get(), static_cast<time_t>(sec), static_cast<long>(nsec));
        if (info.atime_ns > 0)
            archive_entry_set_atime(entry.get(), static_cast<time_t>(info.atime_ns / kNsPerSecond),
                                    static_cast<long>(info.atime_ns % kNsPerSecond));
        archive_entry_set_size(entry.get(), 0);

        switch (info.type) {
            case FsType::Regular:
                archive_entry_set_filetype(entry.get(), AE_IFREG);
                archive_entry_set_size(entry.get(), static_cast<la_int64_t>(info.size));
                break;
            case FsType::Directory:
                archive_entry_set_filetype(entry.get(), AE_IFDIR);
                break;
            case FsType::Symlink:
                archive_entry_set_filetype(entry.get(), AE_IFLNK);
                archive_entry_copy_symlink(entry.get(), info.link_target.c_str());
                break;
            case FsType::Hardlink: {
                if (info.link_target.empty() || !proto::fs_relative_path_ok(info.link_target))
                    return make_error("tree entry \"" + printable(info.path) + "\": unsafe hard link target",
                                      EINVAL);
                archive_entry_set_filetype(entry.get(), AE_IFREG);
                std::string target = name_of(info.link_target);
                archive_entry_copy_hardlink(entry.get(), target.c_str());
                break;
            }
            case FsType::CharDevice:
                archive_entry_set_filetype(entry.get(), AE_IFCHR);
                archive_entry_set_rdev(entry.get(), static_cast<dev_t>(info.rdev));
                break;
            case FsType::BlockDevice:
                archive_entry_set_filetype(entry.get(), AE_IFBLK);
                archive_entry_set_rdev(entry.get(), static_cast<dev_t>(info.rdev));
                break;
            case FsType::Fifo:
                archive_entry_set_filetype(entry.get(), AE_IFIFO);
                break;
            case FsType::Socket:
            case FsType::Unknown:
                continue;  // tar has no way to hold them
        }

        // ARCHIVE_WARN: e.g. a name that is not UTF-8, written as raw bytes (hdrcharset=BINARY).
        int r = archive_write_header(a.get(), entry.get());
        if (r != ARCHIVE_OK && r != ARCHIVE_WARN)
            return std::unexpected(archive_failure(a.get(), "write tar entry " + printable(name)));
        ++stats.entries;

        if (info.type == FsType::Regular) {
            uint64_t written = 0;
            for (;;) {
                auto chunk = TRY(in.data());
                if (chunk.empty()) break;
                if (written + chunk.size() > info.size)
                    return make_error("tree entry \"" + printable(info.path) + "\": more data than its size",
                                      EPROTO);
                la_ssize_t n = archive_write_data(a.get(), chunk.data(), chunk.size());
                if (n < 0)
                    return std::unexpected(archive_failure(a.get(), "write tar entry " + printable(name)));
                written += chunk.size();
                stats.bytes += chunk.size();
                if (progress) progress(stats);
            }
            if (written != info.size)
                return make_error("tree entry \"" + printable(info.path) + "\": data ended after " +
                                      std::to_string(written) + " of " + std::to_string(info.size) + " bytes",
                                  EPROTO);
        }
        if (archive_write_finish_entry(a.get()) < ARCHIVE_WARN)
            return std::unexpected(archive_failure(a.get(), "write tar entry " + printable(name)));
        if (progress) progress(stats);
    }
    if (archive_write_close(a.get()) != ARCHIVE_OK)
        return std::unexpected(archive_failure(a.get(), "write tar"));
    return stats;
}

}  // namespace sandlot::host
