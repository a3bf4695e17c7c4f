#include "host/lib/oci_layer.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <array>
#include <cerrno>
#include <compare>
#include <cstring>
#include <memory>
#include <optional>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

#include "host/lib/digest.h"
#include "proto/base/unique_fd.h"

namespace sandlot::host {
namespace {

constexpr size_t kChunk = 128 * 1024;
// One tracking record per tar header: a layer with more headers than this is refused rather than letting the
// bookkeeping grow without bound.
constexpr size_t kMaxTracked = size_t{1} << 22;
constexpr size_t kMaxTrackedBytes = size_t{256} << 20;
constexpr uint64_t kSpaceCheckBytes = uint64_t{64} << 20;
constexpr uint64_t kDefaultFreeReserve = uint64_t{256} << 20;
constexpr std::string_view kWhiteoutPrefix = ".wh.";
constexpr std::string_view kOpaqueMarker = ".wh..wh..opq";

// A name for messages: non-printable bytes escaped, long names cut.
std::string printable(std::string_view name) {
    constexpr size_t kMax = 200;
    std::string out;
    for (size_t i = 0; i < name.size() && i < kMax; ++i) {
        auto c = static_cast<unsigned char>(name[i]);
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
            out += static_cast<char>(c);
        } else {
            static constexpr char kHex[] = "0123456789abcdef";
            out += "\\x";
            out += kHex[c >> 4];
            out += kHex[c & 15];
        }
    }
    if (name.size() > kMax) out += "...";
    return out;
}

std::string quoted(std::string_view name) {
    return "\"" + printable(name) + "\"";
}

std::unexpected<Error> layer_error(const std::string& what, int code = 0) {
    return make_error("layer: " + what, code);
}

std::unexpected<Error> layer_errno(const std::string& what) {
    return layer_error(what, errno);
}

// ---------------------------------------------------------------------------------------------------------
// The compressed bytes: a file or a memory buffer.

class RawSource {
  public:
    explicit RawSource(int fd) : fd_(fd) {}
    explicit RawSource(std::span<const std::byte> mem) : mem_(mem) {}

    // 0 at the end.
    Result<size_t> read(std::byte* buf, size_t n) {
        if (fd_ < 0) {
            size_t take = std::min(n, mem_.size() - pos_);
            if (take > 0) std::memcpy(buf, mem_.data() + pos_, take);
            pos_ += take;
            return take;
        }
        for (;;) {
            ssize_t got = ::read(fd_, buf, n);
            if (got >= 0) return static_cast<size_t>(got);
            if (errno != EINTR) return layer_errno("read layer");
        }
    }

  private:
    int fd_ = -1;
    std::span<const std::byte> mem_;
    size_t pos_ = 0;
};

// ---------------------------------------------------------------------------------------------------------
// The uncompressed tar stream, hashed as it passes.

struct ZstdFree {
    void operator()(ZSTD_DCtx* ctx) const { ZSTD_freeDCtx(ctx); }
};

class TarStream {
  public:
    explicit TarStream(RawSource source) : source_(std::move(source)), in_(kChunk), out_(kChunk) {}
    ~TarStream() {
        if (zlib_ready_) inflateEnd(&zs_);
    }
    TarStream(const TarStream&) = delete;
    TarStream& operator=(const TarStream&) = delete;

    // Detects the compression from the magic bytes.
    Result<void> init() {
        while (in_len_ < 4 && !in_eof_)
            TRY(fill());
        auto at = [&](size_t i) { return std::to_integer<unsigned>(in_[i]); };
        if (in_len_ >= 2 && at(0) == 0x1f && at(1) == 0x8b) {
            zs_ = {};
            if (inflateInit2(&zs_, 16 + MAX_WBITS) != Z_OK) return layer_error("cannot start gzip inflate");
            zlib_ready_ = true;
            kind_ = Kind::kGzip;
        } else if (in_len_ >= 4 && at(0) == 0x28 && at(1) == 0xb5 && at(2) == 0x2f && at(3) == 0xfd) {
            zstd_.reset(ZSTD_createDCtx());
            if (!zstd_) return layer_error("cannot start zstd decompression");
            // 128 MiB windows at most (zstd's own default limit), whatever the frame header asks for.
            ZSTD_DCtx_setParameter(zstd_.get(), ZSTD_d_windowLogMax, 27);
            kind_ = Kind::kZstd;
        }
        return {};
    }

    // The next piece of the uncompressed stream; empty at its end. Every byte returned has been hashed.
    Result<std::span<const std::byte>> next() {
        if (failed_) return std::unexpected(*failed_);
        if (done_) return std::span<const std::byte>();
        auto r = produce();
        if (!r) {
            failed_ = r.error();
            return r;
        }
        if (r->empty()) {
            source_done_ = true;
            // Some writers (umoci insert) end a layer right after its last entry's data, with neither the
            // padding nor the end-of-archive blocks that tar readers expect. Zeros up to the next block and
            // two zero blocks follow the real bytes, outside the diff_id; apply() refuses an entry whose data
            // would reach into them.
            if (!tail_served_ && produced_ > 0) {
                tail_served_ = true;
                static constexpr std::array<std::byte, 1536> kZeros{};
                size_t pad = (512 - produced_ % 512) % 512 + 1024;
                return std::span<const std::byte>(kZeros.data(), pad);
            }
            done_ = true;
            return r;
        }
        hasher_.update(*r);
        produced_ += r->size();
        return r;
    }

    // Reads (and hashes) everything that is left.
    Result<void> drain() {
        for (;;) {
            auto piece = TRY(next());
            if (piece.empty()) return {};
        }
    }

    std::string digest() { return hasher_.finish(); }
    const std::optional<Error>& failure() const { return failed_; }
    // Whether the real bytes have all been produced, and how many there were so far.
    bool source_done() const { return source_done_; }
    uint64_t produced() const { return produced_; }

  private:
    enum class Kind { kPlain, kGzip, kZstd };
    uint64_t produced_ = 0;
    bool source_done_ = false;
    bool tail_served_ = false;

    // Appends raw bytes to the input buffer (compacting it first).
    Result<void> fill() {
        if (in_pos_ > 0) {
            std::memmove(in_.data(), in_.data() + in_pos_, in_len_ - in_pos_);
            in_len_ -= in_pos_;
            in_pos_ = 0;
        }
        if (in_len_ == in_.size()) return {};
        size_t got = TRY(source_.read(in_.data() + in_len_, in_.size() - in_len_));
        if (got == 0) in_eof_ = true;
        in_len_ += got;
        return {};
    }

    size_t in_avail() const { return in_len_ - in_pos_; }

    Result<std::span<const std::byte>> produce() {
        switch (kind_) {
            case Kind::kPlain:
                return produce_plain();
            case Kind::kGzip:
                return produce_gzip();
            case Kind::kZstd:
                return produce_zstd();
        }
        return layer_error("unknown compression");
    }

    Result<std::span<const std::byte>> produce_plain() {
        if (in_avail() == 0 && !in_eof_) TRY(fill());
        std::span<const std::byte> piece(in_.data() + in_pos_, in_avail());
        std::memcpy(out_.data(), piece.data(), piece.size());
        in_pos_ = in_len_;
        return std::span<const std::byte>(out_.data(), piece.size());
    }

    Result<std::span<const std::byte>> produce_gzip() {
        for (;;) {
            if (in_avail() == 0 && !in_eof_) TRY(fill());
            if (member_done_) {
                // Another gzip member may follow (concatenated members are one stream); zero padding after
                // the last member is tolerated, anything else is not.
                while (in_avail() < 2 && !in_eof_)
                    TRY(fill());
                if (in_avail() == 0) return std::span<const std::byte>();
                auto b0 = std::to_integer<unsigned>(in_[in_pos_]);
                if (in_avail() >= 2 && b0 == 0x1f && std::to_integer<unsigned>(in_[in_pos_ + 1]) == 0x8b) {
                    if (inflateReset(&zs_) != Z_OK) return layer_error("corrupt gzip stream");
                    member_done_ = false;
                } else {
                    for (;;) {
                        for (; in_pos_ < in_len_; ++in_pos_)
                            if (in_[in_pos_] != std::byte{0})
                                return layer_error(
                                    "corrupt gzip stream (trailing data after the last member)");
                        if (in_eof_) return std::span<const std::byte>();
                        TRY(fill());
                    }
                }
            }
            zs_.next_in = reinterpret_cast<Bytef*>(in_.data() + in_pos_);
            zs_.avail_in = static_cast<uInt>(in_avail());
            zs_.next_out = reinterpret_cast<Bytef*>(out_.data());
            zs_.avail_out = static_cast<uInt>(out_.size());
            int ret = inflate(&zs_, Z_NO_FLUSH);
            in_pos_ = in_len_ - zs_.avail_in;
            size_t produced = out_.size() - zs_.avail_out;
            if (ret == Z_STREAM_END) {
                member_done_ = true;
            } else if (ret == Z_BUF_ERROR) {
                if (in_avail() == 0 && in_eof_ && produced == 0) return layer_error("truncated gzip stream");
            } else if (ret != Z_OK) {
                return layer_error("corrupt gzip stream");
            }
            if (produced > 0) return std::span<const std::byte>(out_.data(), produced);
            if (!member_done_ && in_avail() == 0 && in_eof_) return layer_error("truncated gzip stream");
        }
    }

    Result<std::span<const std::byte>> produce_zstd() {
        for (;;) {
            if (frame_done_ && in_avail() > 0 && in_[in_pos_] == std::byte{0}) {
                // Zero padding after the last frame (libarchive pads its compressed output to a block).
                for (;;) {
                    for (; in_pos_ < in_len_; ++in_pos_)
                        if (in_[in_pos_] != std::byte{0})
                            return layer_error("corrupt zstd stream (trailing data after the last frame)");
                    if (in_eof_) return std::span<const std::byte>();
                    TRY(fill());
                }
            }
            ZSTD_inBuffer in{in_.data() + in_pos_, in_avail(), 0};
            ZSTD_outBuffer out{out_.data(), out_.size(), 0};
            size_t ret = ZSTD_decompressStream(zstd_.get(), &out, &in);
            if (ZSTD_isError(ret))
                return layer_error(std::string("corrupt zstd stream (") + ZSTD_getErrorName(ret) + ")");
            in_pos_ += in.pos;
            // A call that moved nothing (at the end of the input) says nothing about the frame.
            if (in.pos > 0 || out.pos > 0) frame_done_ = ret == 0;
            if (out.pos > 0) return std::span<const std::byte>(out_.data(), out.pos);
            if (in_avail() == 0) {
                if (in_eof_) {
                    if (!frame_done_) return layer_error("truncated zstd stream");
                    return std::span<const std::byte>();
                }
                TRY(fill());
            }
        }
    }

    RawSource source_;
    Kind kind_ = Kind::kPlain;
    std::vector<std::byte> in_;
    size_t in_pos_ = 0, in_len_ = 0;
    bool in_eof_ = false;
    std::vector<std::byte> out_;
    z_stream zs_{};
    bool zlib_ready_ = false;
    bool member_done_ = false;
    std::unique_ptr<ZSTD_DCtx, ZstdFree> zstd_;
    bool frame_done_ = false;
    Sha256 hasher_;
    bool done_ = false;
    std::optional<Error> failed_;
};

la_ssize_t read_callback(struct archive* a, void* client, const void** buffer) {
    auto* stream = static_cast<TarStream*>(client);
    auto piece = stream->next();
    if (!piece) {
        archive_set_error(a, EIO, "%s", piece.error().message.c_str());
        return -1;
    }
    *buffer = piece->data();
    return static_cast<la_ssize_t>(piece->size());
}

// ---------------------------------------------------------------------------------------------------------
// Names.

// Splits an entry name into components: leading "/" and "./" go, as do empty and "." components. A ".."
// component anywhere fails.
Result<std::vector<std::string>> split_name(std::string_view name) {
    if (name.empty()) return layer_error("entry with an empty name");
    if (name.size() >= PATH_MAX) return layer_error("entry " + quoted(name) + " has a name that is too long");
    std::vector<std::string> parts;
    size_t pos = 0;
    while (pos <= name.size()) {
        size_t slash = name.find('/', pos);
        if (slash == std::string_view::npos) slash = name.size();
        std::string_view part = name.substr(pos, slash - pos);
        if (part == "..") return layer_error("entry " + quoted(name) + " escapes the root");
        if (!part.empty() && part != ".") parts.emplace_back(part);
        pos = slash + 1;
    }
    return parts;
}

std::string join(const std::vector<std::string>& parts, size_t count) {
    std::string out;
    for (size_t i = 0; i < count; ++i) {
        if (i > 0) out += '/';
        out += parts[i];
    }
    return out;
}

int openat2_fd(int dirfd, const std::string& path, uint64_t flags) {
    open_how how{};
    how.flags = flags;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    const char* p = path.empty() ? "." : path.c_str();
    for (int attempt = 0;; ++attempt) {
        long fd = ::syscall(SYS_openat2, dirfd, p, &how, sizeof how);
        if (fd >= 0 || errno != EAGAIN || attempt == 16) return static_cast<int>(fd);
    }
}

// A name inside one directory: what the layer created, so that its own whiteouts leave it alone.
struct NameKey {
    dev_t dev;
    ino_t ino;
    std::string name;
    auto operator<=>(const NameKey&) const = default;
};

struct DirTime {
    std::vector<std::string> parts;
    std::array<timespec, 2> times;
};

std::array<timespec, 2> entry_times(archive_entry* e) {
    std::array<timespec, 2> ts{};
    if (!archive_entry_mtime_is_set(e)) {
        ts[0].tv_nsec = ts[1].tv_nsec = UTIME_OMIT;
        return ts;
    }
    ts[1] = {archive_entry_mtime(e), archive_entry_mtime_nsec(e)};
    ts[0] =
        archive_entry_atime_is_set(e) ? timespec{archive_entry_atime(e), archive_entry_atime_nsec(e)} : ts[1];
    return ts;
}

// Returns the names in a directory (not "." and "..").
Result<std::vector<std::string>> list_dir(int dir_fd) {
    int fd = ::openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return layer_errno("open directory");
    DIR* dir = ::fdopendir(fd);
    if (!dir) {
        ::close(fd);
        return layer_errno("open directory");
    }
    std::unique_ptr<DIR, int (*)(DIR*)> closer(dir, ::closedir);
    std::vector<std::string> names;
    for (;;) {
        errno = 0;
        dirent* d = ::readdir(dir);
        if (!d) {
            if (errno != 0) return layer_errno("read directory");
            return names;
        }
        std::string_view n = d->d_name;
        if (n != "." && n != "..") names.emplace_back(n);
    }
}

// Removes `name` from the directory, recursively; a name that is not there is fine.
Result<void> remove_entry(int parent, const std::string& name) {
    struct stat st {};
    if (::fstatat(parent, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) return {};
        return layer_errno("stat " + quoted(name));
    }
    if (S_ISDIR(st.st_mode)) {
        UniqueFd dir(::openat(parent, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!dir) return layer_errno("open directory " + quoted(name));
        for (const std::string& child : TRY(list_dir(dir.get())))
            TRY(remove_entry(dir.get(), child));
        if (::unlinkat(parent, name.c_str(), AT_REMOVEDIR) != 0)
            return layer_errno("remove directory " + quoted(name));
        return {};
    }
    if (::unlinkat(parent, name.c_str(), 0) != 0 && errno != ENOENT)
        return layer_errno("remove " + quoted(name));
    return {};
}

// ---------------------------------------------------------------------------------------------------------
// Applying entries.

class Applier {
  public:
    Applier(int root_fd, archive* a, std::optional<uint64_t> min_free_bytes)
        : root_(root_fd), a_(a), min_free_bytes_(min_free_bytes) {}

    // A layer may expand to far more than its compressed size (a gzip bomb within a verified digest): the
    // file system holding the root is checked every kSpaceCheckBytes written, and the layer refused before it
    // fills up.
    Result<void> check_space() {
        if (min_free_bytes_ == 0 || stats.bytes < next_space_check_) return {};
        next_space_check_ = stats.bytes + kSpaceCheckBytes;
        struct statvfs st;
        if (::fstatvfs(root_, &st) != 0) return layer_errno("statvfs of the root");
        uint64_t free_bytes = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
        // By default a small file system (a tmpfs) keeps a sixteenth of itself free rather than the reserve.
        uint64_t keep = min_free_bytes_
                            ? *min_free_bytes_
                            : std::min<uint64_t>(kDefaultFreeReserve,
                                                 static_cast<uint64_t>(st.f_blocks) * st.f_frsize / 16);
        if (free_bytes < keep)
            return layer_error("the file system of the root is nearly full (" +
                               std::to_string(free_bytes >> 20) + " MiB free, " + std::to_string(keep >> 20) +
                               " MiB kept free) after " + std::to_string(stats.bytes >> 20) +
                               " MiB of this layer");
        return {};
    }

    Result<void> apply(archive_entry* e) {
        const char* raw = archive_entry_pathname(e);
        if (!raw) raw = archive_entry_pathname_utf8(e);
        if (!raw) return layer_error("entry without a name");
        name_ = raw;
        std::vector<std::string> parts = TRY(split_name(name_));
        if (parts.empty()) {
            // The root itself ("./"): the root keeps its own mode, owner and times.
            if (archive_entry_filetype(e) != AE_IFDIR || archive_entry_hardlink(e))
                return layer_error("entry " + quoted(name_) + " replaces the root with a non-directory");
            ++stats.entries;
            return {};
        }
        if (tracked_ >= kMaxTracked || tracked_bytes_ >= kMaxTrackedBytes)
            return layer_error("too many entries");
        const std::string& base = parts.back();
        if (base.starts_with(kWhiteoutPrefix)) return whiteout(parts);

        UniqueFd parent = TRY(open_parent(parts, true));
        NameKey key = TRY(key_of(parent.get(), base));
        bool created = true;
        if (archive_entry_hardlink(e) || archive_entry_hardlink_utf8(e)) {
            TRY(hardlink(e, parent.get(), base));
        } else {
            switch (archive_entry_filetype(e)) {
                case AE_IFDIR:
                    TRY(directory(e, parent.get(), parts));
                    break;
                case AE_IFREG:
                    TRY(regular(e, parent.get(), base));
                    break;
                case AE_IFLNK:
                    TRY(symlink(e, parent.get(), base));
                    break;
                case AE_IFCHR:
                case AE_IFBLK:
                case AE_IFIFO:
                    created = TRY(node(e, parent.get(), base));
                    break;
                default:
                    return {};  // sockets and unknown types are not carried
            }
        }
        ++stats.entries;
        if (created) track(std::move(key));
        return {};
    }

    // Directory mtimes, once nothing more is created inside them.
    void finish_dirs() {
        for (const DirTime& d : dir_times_) {
            auto parent = open_parent(d.parts, false);
            if (!parent || !*parent) continue;
            ::utimensat(parent->get(), d.parts.back().c_str(), d.times.data(), AT_SYMLINK_NOFOLLOW);
        }
    }

    LayerApplyStats stats;

  private:
    void track(NameKey key) {
        tracked_bytes_ += key.name.size() + sizeof(NameKey) + 32;
        ++tracked_;
        created_.insert(std::move(key));
    }

    Result<NameKey> key_of(int dir_fd, const std::string& name) {
        struct stat st {};
        if (::fstat(dir_fd, &st) != 0) return layer_errno("stat parent of " + quoted(name_));
        return NameKey{st.st_dev, st.st_ino, name};
    }

    // Opens the directory that holds parts.back(), resolving every component inside the root. With `create`,
    // missing directories are made (0755); without, a missing parent gives an invalid fd.
    Result<UniqueFd> open_parent(const std::vector<std::string>& parts, bool create) {
        constexpr uint64_t kFlags = O_PATH | O_DIRECTORY | O_CLOEXEC;
        UniqueFd fd(openat2_fd(root_, join(parts, parts.size() - 1), kFlags));
        if (fd) return fd;
        if (errno == ENOENT || errno == ENOTDIR) {
            if (!create) return UniqueFd();
        }
        if (errno != ENOENT) return layer_errno("open parent directory of " + quoted(name_));
        // The deepest prefix that exists (a lookup fails at the first missing component, so this costs about
        // the number of missing components times the depth that exists), then the rest made one by one below
        // it: each new directory is ours, opened without following anything.
        size_t have = parts.size() - 1;
        UniqueFd cur;
        while (have > 0) {
            --have;
            cur.reset(openat2_fd(root_, join(parts, have), kFlags));
            if (cur) break;
            if (errno != ENOENT) return layer_errno("open parent directory of " + quoted(name_));
        }
        if (!cur) return layer_errno("open root");
        for (size_t i = have; i + 1 < parts.size(); ++i) {
            const std::string& comp = parts[i];
            if (::mkdirat(cur.get(), comp.c_str(), 0755) != 0)
                return layer_errno("create directory " + quoted(join(parts, i + 1)));
            UniqueFd made(::openat(cur.get(), comp.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
            if (!made) return layer_errno("open directory " + quoted(join(parts, i + 1)));
            if (::fchmod(made.get(), 0755) != 0) return layer_errno("chmod " + quoted(join(parts, i + 1)));
            track(TRY(key_of(cur.get(), comp)));
            cur = std::move(made);
        }
        return cur;
    }

    Result<void> whiteout(const std::vector<std::string>& parts) {
        const std::string& base = parts.back();
        ++stats.entries;
        if (base == kOpaqueMarker) {
            UniqueFd parent = TRY(open_parent(parts, true));
            return make_opaque(parent.get());
        }
        std::string target = base.substr(kWhiteoutPrefix.size());
        if (target.empty() || target == "." || target == "..")
            return layer_error("whiteout " + quoted(name_) + " names no entry");
        UniqueFd parent = TRY(open_parent(parts, false));
        if (!parent) return {};                                               // nothing below to hide
        if (created_.contains(TRY(key_of(parent.get(), target)))) return {};  // same-layer entries stay
        return remove_entry(parent.get(), target);
    }

    // Removes from a directory everything that this layer did not create; in directories it did create (or
    // merged into), what came from below goes too.
    Result<void> make_opaque(int dir_fd) {
        struct stat st {};
        if (::fstat(dir_fd, &st) != 0) return layer_errno("stat " + quoted(name_));
        // A directory emptied once holds nothing from below any more: doing it again would only cost time
        // (a layer of many opaque markers would otherwise be quadratic).
        if (!opaque_done_.insert({st.st_dev, st.st_ino}).second) return {};
        tracked_bytes_ += 64;
        for (const std::string& child : TRY(list_dir(dir_fd))) {
            if (!created_.contains(NameKey{st.st_dev, st.st_ino, child})) {
                TRY(remove_entry(dir_fd, child));
                continue;
            }
            struct stat cst {};
            if (::fstatat(dir_fd, child.c_str(), &cst, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(cst.st_mode))
                continue;
            UniqueFd sub(::openat(dir_fd, child.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
            if (!sub) return layer_errno("open directory " + quoted(child));
            TRY(make_opaque(sub.get()));
        }
        return {};
    }

    // Clears the slot for a new entry: a non-directory goes; a directory goes (recursively) unless a
    // directory is wanted there. Returns whether a directory is left in place.
    Result<bool> prepare_slot(int parent, const std::string& name, bool want_dir) {
        struct stat st {};
        if (::fstatat(parent, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno == ENOENT) return false;
            return layer_errno("stat " + quoted(name_));
        }
        if (S_ISDIR(st.st_mode)) {
            if (want_dir) return true;
            TRY(remove_entry(parent, name));
            return false;
        }
        if (::unlinkat(parent, name.c_str(), 0) != 0) return layer_errno("remove " + quoted(name_));
        return false;
    }

    Result<void> owner_and_mode(int fd, archive_entry* e) {
        if (::fchown(fd, static_cast<uid_t>(archive_entry_uid(e)),
                     static_cast<gid_t>(archive_entry_gid(e))) != 0 &&
            errno != EPERM && errno != EINVAL)
            return layer_errno("chown " + quoted(name_));
        if (::fchmod(fd, archive_entry_perm(e) & 07777) != 0) return layer_errno("chmod " + quoted(name_));
        return {};
    }

    Result<void> xattrs(int fd, archive_entry* e) {
        archive_entry_xattr_reset(e);
        const char* xname = nullptr;
        const void* value = nullptr;
        size_t size = 0;
        while (archive_entry_xattr_next(e, &xname, &value, &size) == ARCHIVE_OK) {
            if (!xname) continue;
            if (::fsetxattr(fd, xname, value, size, 0) != 0 && errno != ENOTSUP && errno != EPERM)
                return layer_errno("set xattr " + quoted(xname) + " on " + quoted(name_));
        }
        return {};
    }

    Result<void> link_metadata(int parent, const std::string& name, archive_entry* e) {
        if (::fchownat(parent, name.c_str(), static_cast<uid_t>(archive_entry_uid(e)),
                       static_cast<gid_t>(archive_entry_gid(e)), AT_SYMLINK_NOFOLLOW) != 0 &&
            errno != EPERM && errno != EINVAL)
            return layer_errno("chown " + quoted(name_));
        auto ts = entry_times(e);
        if (::utimensat(parent, name.c_str(), ts.data(), AT_SYMLINK_NOFOLLOW) != 0)
            return layer_errno("set times of " + quoted(name_));
        return {};
    }

    Result<void> directory(archive_entry* e, int parent, const std::vector<std::string>& parts) {
        const std::string& name = parts.back();
        bool exists = TRY(prepare_slot(parent, name, true));
        if (!exists && ::mkdirat(parent, name.c_str(), 0700) != 0)
            return layer_errno("create directory " + quoted(name_));
        UniqueFd fd(::openat(parent, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!fd) return layer_errno("open directory " + quoted(name_));
        TRY(owner_and_mode(fd.get(), e));
        TRY(xattrs(fd.get(), e));
        auto ts = entry_times(e);
        if (ts[1].tv_nsec != UTIME_OMIT) {
            for (const std::string& p : parts)
                tracked_bytes_ += p.size() + sizeof(std::string);
            dir_times_.push_back(DirTime{parts, ts});
        }
        return {};
    }

    Result<void> regular(archive_entry* e, int parent, const std::string& name) {
        TRY(prepare_slot(parent, name, false));
        UniqueFd fd(
            ::openat(parent, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
        if (!fd) return layer_errno("create " + quoted(name_));
        if (buffer_.empty()) buffer_.resize(kChunk);
        for (;;) {
            la_ssize_t n = archive_read_data(a_, buffer_.data(), buffer_.size());
            if (n < 0) {
                const char* why = archive_error_string(a_);
                return layer_error("corrupt tar archive (" + std::string(why ? why : "read failed") + ")");
            }
            if (n == 0) break;
            for (la_ssize_t off = 0; off < n;) {
                ssize_t w = ::write(fd.get(), buffer_.data() + off, static_cast<size_t>(n - off));
                if (w < 0) {
                    if (errno == EINTR) continue;
                    return layer_errno("write " + quoted(name_));
                }
                off += w;
            }
            stats.bytes += static_cast<uint64_t>(n);
            TRY(check_space());
        }
        TRY(owner_and_mode(fd.get(), e));
        TRY(xattrs(fd.get(), e));
        auto ts = entry_times(e);
        if (::futimens(fd.get(), ts.data()) != 0) return layer_errno("set times of " + quoted(name_));
        return {};
    }

    Result<void> symlink(archive_entry* e, int parent, const std::string& name) {
        const char* target = archive_entry_symlink(e);
        if (!target) target = archive_entry_symlink_utf8(e);
        if (!target || !*target) return layer_error("symlink " + quoted(name_) + " without a target");
        TRY(prepare_slot(parent, name, false));
        if (::symlinkat(target, parent, name.c_str()) != 0)
            return layer_errno("create symlink " + quoted(name_));
        return link_metadata(parent, name, e);
    }

    // False when mknod was refused and the entry skipped.
    Result<bool> node(archive_entry* e, int parent, const std::string& name) {
        TRY(prepare_slot(parent, name, false));
        mode_t type = archive_entry_filetype(e) == AE_IFCHR   ? S_IFCHR
                      : archive_entry_filetype(e) == AE_IFBLK ? S_IFBLK
                                                              : S_IFIFO;
        if (::mknodat(parent, name.c_str(), type | 0600, type == S_IFIFO ? 0 : archive_entry_rdev(e)) != 0) {
            if (errno == EPERM) {
                ++stats.skipped_devices;
                return false;
            }
            return layer_errno("create node " + quoted(name_));
        }
        TRY(link_metadata(parent, name, e));
        // The node was just made by us in a directory we hold: no symlink can stand at this name.
        if (::fchmodat(parent, name.c_str(), archive_entry_perm(e) & 07777, 0) != 0)
            return layer_errno("chmod " + quoted(name_));
        auto ts = entry_times(e);
        ::utimensat(parent, name.c_str(), ts.data(), AT_SYMLINK_NOFOLLOW);
        return true;
    }

    Result<void> hardlink(archive_entry* e, int parent, const std::string& name) {
        const char* raw = archive_entry_hardlink(e);
        if (!raw) raw = archive_entry_hardlink_utf8(e);
        std::string target = raw ? raw : "";
        std::vector<std::string> tparts = TRY(split_name(target));
        if (tparts.empty()) return layer_error("hard link " + quoted(name_) + " to the root directory");
        UniqueFd tparent = TRY(open_parent(tparts, false));
        struct stat tst {};
        if (!tparent || ::fstatat(tparent.get(), tparts.back().c_str(), &tst, AT_SYMLINK_NOFOLLOW) != 0)
            return layer_error("hard link " + quoted(name_) + ": target " + quoted(target) + " not found");
        if (S_ISDIR(tst.st_mode))
            return layer_error("hard link " + quoted(name_) + " to directory " + quoted(target));
        struct stat st {};
        if (::fstatat(parent, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_dev == tst.st_dev &&
            st.st_ino == tst.st_ino)
            return {};  // already that file
        TRY(prepare_slot(parent, name, false));
        if (::linkat(tparent.get(), tparts.back().c_str(), parent, name.c_str(), 0) != 0)
            return layer_errno("hard link " + quoted(name_) + " to " + quoted(target));
        return {};
    }

    int root_;
    archive* a_;
    std::string name_;  // the raw name of the entry being applied, for messages
    std::set<NameKey> created_;
    std::set<std::pair<dev_t, ino_t>> opaque_done_;
    std::optional<uint64_t> min_free_bytes_;
    uint64_t next_space_check_ = 0;  // the first check comes with the first bytes
    size_t tracked_ = 0;
    size_t tracked_bytes_ = 0;
    std::vector<DirTime> dir_times_;
    std::vector<char> buffer_;
};

struct ArchiveFree {
    void operator()(archive* a) const { archive_read_free(a); }
};

Result<LayerApplyStats> apply(RawSource source, const std::string& root, const LayerApplyOptions& options) {
    UniqueFd root_fd(::open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!root_fd) return layer_errno("open root " + quoted(root));

    auto stream = std::make_unique<TarStream>(std::move(source));
    TRY(stream->init());

    std::unique_ptr<archive, ArchiveFree> a(archive_read_new());
    if (!a) return layer_error("cannot start the tar reader");
    archive_read_support_filter_none(a.get());
    archive_read_support_format_tar(a.get());  // ustar, pax, GNU, v7
    auto archive_failure = [&](const char* what) -> Error {
        if (stream->failure()) return *stream->failure();
        const char* why = archive_error_string(a.get());
        return Error{0, std::string("layer: ") + what + " (" + (why ? why : "unknown error") + ")"};
    };
    if (archive_read_open(a.get(), stream.get(), nullptr, read_callback, nullptr) != ARCHIVE_OK)
        return std::unexpected(archive_failure("not a tar archive"));

    Applier applier(root_fd.get(), a.get(), options.min_free_bytes);
    bool first = true;
    for (;;) {
        archive_entry* entry = nullptr;
        int r = archive_read_next_header(a.get(), &entry);
        if (r == ARCHIVE_EOF) break;
        // A damaged header (ARCHIVE_RETRY: libarchive would skip ahead to the next good one) is corruption.
        if (r < ARCHIVE_WARN || r == ARCHIVE_RETRY)
            return std::unexpected(archive_failure(first ? "not a tar archive" : "corrupt tar archive"));
        first = false;
        // Where this entry's data starts in the stream: it must end within the real bytes, not in the zeros
        // TarStream adds after them.
        la_int64_t data_start = archive_filter_bytes(a.get(), 0);
        la_int64_t data_size = archive_entry_size_is_set(entry) ? archive_entry_size(entry) : 0;
        auto applied = applier.apply(entry);
        if (stream->failure()) return std::unexpected(*stream->failure());
        if (!applied) return std::unexpected(std::move(applied).error());
        if (stream->source_done() && static_cast<uint64_t>(data_start + data_size) > stream->produced())
            return layer_error("corrupt tar archive (truncated in the data of " +
                               quoted(archive_entry_pathname(entry) ? archive_entry_pathname(entry) : "") +
                               ")");
    }
    TRY(stream->drain());
    applier.finish_dirs();
    applier.stats.diff_id = stream->digest();
    return std::move(applier.stats);
}

}  // namespace

Result<LayerApplyStats> apply_layer(const std::string& layer_path, const std::string& root,
                                    const LayerApplyOptions& options) {
    UniqueFd fd(::open(layer_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return layer_errno("open " + quoted(layer_path));
    return apply(RawSource(fd.get()), root, options);
}

Result<LayerApplyStats> apply_layer_buffer(std::span<const std::byte> layer, const std::string& root,
                                           const LayerApplyOptions& options) {
    return apply(RawSource(layer), root, options);
}

}  // namespace sandlot::host
