// `sandlot cp [-a] [-L] [-q] SRC DST`: files between the host and a running sandbox, like `docker cp`
// (host/lib/guest_fs.h, host/lib/tar_stream.h). Exactly one side is NAME:PATH, PATH absolute in the guest;
// the other is a host path, or "-" for a tar stream on stdin (SRC) or stdout (DST).
//
//   DST a directory          SRC is copied into it (DST/basename(SRC)); SRC ending in "/." or "." copies
//                            the directory's contents instead
//   DST an existing file     a file SRC replaces it; a directory SRC is an error
//   DST absent               SRC becomes DST; its parent must exist (and a file SRC needs DST without "/")
//
// Every failure is one line "sandlot: error: ..." and exit status 125.
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <system_error>

#include "host/cli/commands.h"
#include "host/cli/sandbox_args.h"
#include "host/lib/guest_fs.h"
#include "host/lib/lifecycle.h"
#include "host/lib/tar_stream.h"

namespace sandlot::cli {

namespace {

namespace stdfs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct CpArgs {
    std::string src;
    std::string dst;
    bool archive = false;
    bool follow = false;
    bool quiet = false;
};

// One side of the copy, as written on the command line.
struct Location {
    enum class Kind { Host, Guest, Stdio };
    Kind kind = Kind::Host;
    std::string sandbox;  // Guest
    std::string path;
    std::string arg;  // as given, for messages
};

// "NAME:PATH" names a sandbox when NAME has no '/' and does not start with '.' (so "./a:b" and "/x:y" are
// host paths); "-" is a tar stream.
Result<Location> parse_location(const std::string& arg) {
    if (arg.empty()) return make_error("empty path");
    if (arg == "-") return Location{Location::Kind::Stdio, "", "-", arg};
    size_t colon = arg.find(':');
    if (colon == std::string::npos || arg.front() == '/' || arg.front() == '.')
        return Location{Location::Kind::Host, "", arg, arg};
    std::string name = arg.substr(0, colon);
    if (name.find('/') != std::string::npos) return Location{Location::Kind::Host, "", arg, arg};
    if (name.empty()) return make_error(fmt::format("\"{}\": a sandbox name must come before the ':'", arg));
    Location where{Location::Kind::Guest, name, arg.substr(colon + 1), arg};
    if (where.path.empty() || where.path.front() != '/')
        return make_error(fmt::format("\"{}\": the path in the sandbox must be absolute", arg));
    return where;
}

// Paths as bytes ("/" separated), so names need not be UTF-8.
std::string strip_slashes(std::string path) {
    while (path.size() > 1 && path.back() == '/')
        path.pop_back();
    return path;
}

bool trailing_slash(const std::string& path) {
    return path.size() > 1 && path.back() == '/';
}

std::string base_name(const std::string& path) {
    std::string p = strip_slashes(path);
    if (p == "/") return "";
    size_t slash = p.rfind('/');
    return slash == std::string::npos ? p : p.substr(slash + 1);
}

std::string dir_name(const std::string& path) {
    std::string p = strip_slashes(path);
    size_t slash = p.rfind('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return strip_slashes(p.substr(0, slash));
}

std::string join(const std::string& dir, const std::string& name) {
    return dir.back() == '/' ? dir + name : dir + "/" + name;
}

// "dir/.", "." and "/": the directory's contents, not the directory under its name.
bool contents_only(const std::string& path) {
    std::string base = base_name(path);
    return base.empty() || base == ".";
}

// The name a source is copied under: its last component, with ".." resolved lexically.
std::string copy_name(const std::string& path, bool host_side) {
    std::string base = base_name(path);
    if (base != "..") return base;
    std::error_code ec;
    stdfs::path p = host_side ? stdfs::absolute(path, ec) : stdfs::path(path);
    if (ec) p = path;
    return base_name(p.lexically_normal().string());
}

// What a copy's source comes to, once its spelling is taken apart.
struct Source {
    std::string root;        // the path to copy ("dir" for "dir/.")
    bool contents = false;   // copy what is in root, not root itself
    bool follow = false;     // a symlink at root is followed (-L, or a trailing "/" or "/.")
    bool needs_dir = false;  // "x/" or "x/.": it must be a directory
    std::string name;        // the name it is copied under
};

Source source_of(const std::string& path, bool follow_link, bool host_side) {
    Source s;
    s.contents = contents_only(path);
    s.needs_dir = s.contents || trailing_slash(path);
    s.follow = follow_link || s.needs_dir;
    std::string stripped = strip_slashes(path);
    s.root = s.contents && stripped != "/" ? dir_name(stripped) : stripped;
    s.name = s.contents ? "" : copy_name(stripped, host_side);
    if (s.name.empty() && !s.contents) {
        // "/..": a root has no name of its own to be copied under.
        s.contents = true;
        s.needs_dir = true;
        s.follow = true;
    }
    return s;
}

// Sizes for people: "123.4 MiB" in progress lines; docker's "12.3MB" in the closing line.
std::string binary_size(uint64_t bytes) {
    static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
    if (bytes < 1024) return fmt::format("{} B", bytes);
    double value = static_cast<double>(bytes) / 1024;
    size_t unit = 0;
    while (value >= 1024 && unit + 1 < std::size(kUnits)) {
        value /= 1024;
        ++unit;
    }
    return fmt::format("{:.1f} {}", value, kUnits[unit]);
}

std::string decimal_size(uint64_t bytes) {
    static constexpr const char* kUnits[] = {"B", "kB", "MB", "GB", "TB", "PB"};
    double value = static_cast<double>(bytes);
    size_t unit = 0;
    while (value >= 999.5 && unit + 1 < std::size(kUnits)) {
        value /= 1000;
        ++unit;
    }
    return fmt::format("{:.3g}{}", value, kUnits[unit]);
}

// One line on stderr, redrawn with '\r' at most ten times a second, once more than 4 MiB have moved.
class Progress {
  public:
    Progress(bool enabled, std::optional<uint64_t> total) : enabled_(enabled), total_(total) {}

    void update(const host::TransferStats& stats) {
        last_ = stats;
        if (!enabled_ || (!shown_ && stats.bytes <= kShowAfter)) return;
        auto now = Clock::now();
        if (shown_ && now - drawn_ < std::chrono::milliseconds(100)) return;
        draw(now);
    }

    // Clears the line (before an error or the closing message).
    void finish() {
        if (!shown_) return;
        fmt::print(stderr, "\r\x1b[K");
        std::fflush(stderr);
        shown_ = false;
    }

    const host::TransferStats& stats() const { return last_; }

  private:
    static constexpr uint64_t kShowAfter = 4 * 1024 * 1024;

    void draw(Clock::time_point now) {
        shown_ = true;
        drawn_ = now;
        double seconds = std::chrono::duration<double>(now - start_).count();
        uint64_t rate = seconds > 0 ? static_cast<uint64_t>(static_cast<double>(last_.bytes) / seconds) : 0;
        std::string line = fmt::format("copied {} ({} {}) {}/s", binary_size(last_.bytes), last_.entries,
                                       last_.entries == 1 ? "file" : "files", binary_size(rate));
        if (total_ && *total_ > 0) {
            uint64_t percent = std::min<uint64_t>(100, last_.bytes * 100 / *total_);
            constexpr size_t kWidth = 24;
            size_t filled = static_cast<size_t>(percent * kWidth / 100);
            line += fmt::format(" {:3}% [{}{}]", percent, std::string(filled, '#'),
                                std::string(kWidth - filled, ' '));
        }
        fmt::print(stderr, "\r{}\x1b[K", line);
        std::fflush(stderr);
    }

    bool enabled_;
    std::optional<uint64_t> total_;
    bool shown_ = false;
    Clock::time_point start_ = Clock::now();
    Clock::time_point drawn_{};
    host::TransferStats last_{};
};

// Guest errors carry the errno and name the operation: print both ("stat /x: Permission denied").
int fail_fs(const Error& error) {
    return fail(error.code != 0 ? error.to_string() : error.message);
}

int fail_errno(const std::string& what, int code) {
    return fail(fmt::format("{}: {}", what, std::strerror(code)));
}

bool show_progress(const CpArgs& args) {
    return !args.quiet && isatty(STDERR_FILENO);
}

void report_success(const CpArgs& args, uint64_t bytes, const std::string& destination) {
    if (show_progress(args))
        fmt::print(stderr, "Successfully copied {} to {}\n", decimal_size(bytes), destination);
}

// The file data under a host path, for the progress bar's percentage; symlinks are not followed below it.
uint64_t host_tree_size(const std::string& root, const struct stat& st) {
    if (S_ISREG(st.st_mode)) return static_cast<uint64_t>(st.st_size);
    if (!S_ISDIR(st.st_mode)) return 0;
    uint64_t total = 0;
    std::error_code ec;
    stdfs::recursive_directory_iterator it(root, stdfs::directory_options::skip_permission_denied, ec);
    for (; !ec && it != stdfs::recursive_directory_iterator(); it.increment(ec)) {
        std::error_code entry_ec;
        if (it->is_regular_file(entry_ec) && !it->is_symlink(entry_ec)) {
            auto size = it->file_size(entry_ec);
            if (!entry_ec) total += size;
        }
    }
    return total;
}

struct Session {
    host::SandboxHome::AgentSession agent;
    std::unique_ptr<host::GuestFs> fs;
};

// The running sandbox's files; on failure the error line is printed and `code` set.
std::optional<Session> open_sandbox(const std::string& name, int& code) {
    auto home = host::SandboxHome::open();
    if (!home) {
        code = fail(home.error());
        return std::nullopt;
    }
    auto agent = home->connect(name);
    if (!agent) {
        code = fail(agent.error());
        return std::nullopt;
    }
    Session session{std::move(*agent), nullptr};
    session.fs = std::make_unique<host::GuestFs>(*session.agent.agent);
    return session;
}

host::CopyOptions copy_options(const CpArgs& args, bool follow, Progress& progress) {
    host::CopyOptions options;
    options.preserve_owner = args.archive;
    options.follow_root = follow;
    options.progress = [&progress](const host::TransferStats& stats) { progress.update(stats); };
    return options;
}

// host -> guest
int copy_in(const CpArgs& args, const Location& src, const Location& dst) {
    Source source = source_of(src.path, args.follow, true);
    struct stat st {};
    if ((source.follow ? stat(source.root.c_str(), &st) : lstat(source.root.c_str(), &st)) != 0)
        return fail_errno(src.path, errno);
    if (source.needs_dir && !S_ISDIR(st.st_mode)) return fail_errno(src.path, ENOTDIR);
    bool src_dir = S_ISDIR(st.st_mode);

    int code = 0;
    auto session = open_sandbox(dst.sandbox, code);
    if (!session) return code;
    host::GuestFs& fs = *session->fs;

    std::string dst_path = strip_slashes(dst.path);
    std::string target;
    auto info = fs.stat(dst_path);
    if (info) {
        if (info->type == host::FsType::Directory) {
            target = source.contents ? dst_path : join(dst_path, source.name);
        } else if (src_dir) {
            return fail(fmt::format("cannot copy directory {} onto file {}", src.arg, dst.arg));
        } else {
            target = dst_path;
        }
    } else if (info.error().code == ENOENT) {
        if (!src_dir && trailing_slash(dst.path))
            return fail(
                fmt::format("{}: No such directory (a file is copied into an existing one)", dst.arg));
        std::string parent = dir_name(dst_path);
        auto up = fs.stat(parent);
        if (!up && up.error().code == ENOENT)
            return fail_errno(fmt::format("{}:{}", dst.sandbox, parent), ENOENT);
        if (!up) return fail_fs(up.error());
        if (up->type != host::FsType::Directory)
            return fail_errno(fmt::format("{}:{}", dst.sandbox, parent), ENOTDIR);
        target = dst_path;
    } else {
        return fail_fs(info.error());
    }

    std::optional<uint64_t> total;
    if (show_progress(args)) total = host_tree_size(source.root, st);
    Progress progress(show_progress(args), total);
    auto stats = fs.copy_from_host(source.root, target, copy_options(args, source.follow, progress));
    progress.finish();
    if (!stats) return fail_fs(stats.error());
    report_success(args, stats->bytes, dst.arg);
    return 0;
}

// guest -> host
int copy_out(const CpArgs& args, const Location& src, const Location& dst) {
    int code = 0;
    auto session = open_sandbox(src.sandbox, code);
    if (!session) return code;
    host::GuestFs& fs = *session->fs;

    Source source = source_of(src.path, args.follow, false);
    auto info = source.follow ? fs.stat(source.root) : fs.lstat(source.root);
    if (!info && info.error().code == ENOENT) return fail_errno(src.arg, ENOENT);
    if (!info) return fail_fs(info.error());
    bool src_dir = info->type == host::FsType::Directory;
    if (source.needs_dir && !src_dir) return fail_errno(src.arg, ENOTDIR);

    std::string dst_path = strip_slashes(dst.path);
    std::string target;
    struct stat st {};
    if (stat(dst_path.c_str(), &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            target = source.contents ? dst_path : join(dst_path, source.name);
        } else if (src_dir) {
            return fail(fmt::format("cannot copy directory {} onto file {}", src.arg, dst.arg));
        } else {
            target = dst_path;
        }
    } else if (errno == ENOENT) {
        if (!src_dir && trailing_slash(dst.path))
            return fail(
                fmt::format("{}: No such directory (a file is copied into an existing one)", dst.arg));
        std::string parent = dir_name(dst_path);
        struct stat up {};
        if (stat(parent.c_str(), &up) != 0) return fail_errno(parent, errno);
        if (!S_ISDIR(up.st_mode)) return fail_errno(parent, ENOTDIR);
        target = dst_path;
    } else {
        return fail_errno(dst.path, errno);
    }

    std::optional<uint64_t> total;
    if (info->type == host::FsType::Regular) total = info->size;
    Progress progress(show_progress(args), total);
    auto stats = fs.copy_to_host(source.root, target, copy_options(args, source.follow, progress));
    progress.finish();
    if (!stats) return fail_fs(stats.error());
    report_success(args, stats->bytes, dst.arg);
    return 0;
}

// A tar on stdin, extracted into an existing guest directory.
int extract_stdin(const CpArgs& args, const Location& dst) {
    if (isatty(STDIN_FILENO))
        return fail("sandlot cp - NAME:DIR reads a tar archive from stdin, which is a terminal");
    int code = 0;
    auto session = open_sandbox(dst.sandbox, code);
    if (!session) return code;
    host::GuestFs& fs = *session->fs;

    std::string dst_path = strip_slashes(dst.path);
    auto info = fs.stat(dst_path);
    if (!info && info.error().code == ENOENT) return fail_errno(dst.arg, ENOENT);
    if (!info) return fail_fs(info.error());
    if (info->type != host::FsType::Directory) return fail_errno(dst.arg, ENOTDIR);

    host::CopyOptions options;
    options.preserve_owner = args.archive;
    auto writer = fs.put_tree(dst_path, options);
    if (!writer) return fail_fs(writer.error());
    Progress progress(show_progress(args), std::nullopt);
    auto stats = host::tar_to_tree(STDIN_FILENO, **writer,
                                   [&progress](const host::TransferStats& s) { progress.update(s); });
    if (!stats) {
        (*writer)->abort();
        progress.finish();
        return fail_fs(stats.error());
    }
    auto committed = (*writer)->commit();
    progress.finish();
    if (!committed) return fail_fs(committed.error());
    report_success(args, stats->bytes, dst.arg);
    return 0;
}

// A guest file or tree as a tar on stdout.
int archive_stdout(const CpArgs& args, const Location& src) {
    if (isatty(STDOUT_FILENO))
        return fail("sandlot cp NAME:PATH - writes a tar archive to stdout, which is a terminal");
    int code = 0;
    auto session = open_sandbox(src.sandbox, code);
    if (!session) return code;
    host::GuestFs& fs = *session->fs;

    Source source = source_of(src.path, args.follow, false);
    std::string root = source.root;
    if (source.follow) {
        auto resolved = fs.realpath(root);
        if (!resolved && resolved.error().code == ENOENT) return fail_errno(src.arg, ENOENT);
        if (!resolved) return fail_fs(resolved.error());
        root = *resolved;
    }
    auto info = fs.lstat(root);
    if (!info && info.error().code == ENOENT) return fail_errno(src.arg, ENOENT);
    if (!info) return fail_fs(info.error());
    if (source.needs_dir && info->type != host::FsType::Directory) return fail_errno(src.arg, ENOTDIR);

    auto reader = fs.get_tree(root);
    if (!reader) return fail_fs(reader.error());
    std::optional<uint64_t> total;
    if (info->type == host::FsType::Regular) total = info->size;
    Progress progress(show_progress(args), total);
    auto stats = host::tree_to_tar(**reader, STDOUT_FILENO, source.contents ? "." : source.name,
                                   [&progress](const host::TransferStats& s) { progress.update(s); });
    progress.finish();
    if (!stats) return fail_fs(stats.error());
    return 0;
}

int copy(const CpArgs& args) {
    auto src = parse_location(args.src);
    if (!src) return fail(src.error());
    auto dst = parse_location(args.dst);
    if (!dst) return fail(dst.error());
    using Kind = Location::Kind;
    if (src->kind == Kind::Guest && dst->kind == Kind::Guest)
        return fail("copying between sandboxes is not supported; copy through the host");
    if (src->kind != Kind::Guest && dst->kind != Kind::Guest)
        return fail("one of SRC and DST must be NAME:PATH, a path in a sandbox");
    if (src->kind == Kind::Stdio) return extract_stdin(args, *dst);
    if (dst->kind == Kind::Stdio) return archive_stdout(args, *src);
    if (src->kind == Kind::Host) return copy_in(args, *src, *dst);
    return copy_out(args, *src, *dst);
}

}  // namespace

CommandRunner add_cp_command(CLI::App& app) {
    auto args = std::make_shared<CpArgs>();
    auto* cp = app.add_subcommand(
        "cp",
        "Copy files between the host and a running sandbox (like docker cp).\n"
        "One of SRC and DST is NAME:PATH, an absolute path in sandbox NAME (write a host path with a ':' "
        "as ./a:b).\nA directory DST receives SRC under its name; SRC ending in /. copies a directory's "
        "contents.\n\"-\" as SRC extracts a tar archive from stdin into the directory DST; as DST, writes "
        "SRC "
        "as a tar archive to stdout.");
    cp->add_flag("-a,--archive", args->archive,
                 "Keep owners (uid/gid) as well; needs root at the destination");
    cp->add_flag("-L,--follow-link", args->follow, "Copy what a symlink at SRC points to, not the link");
    cp->add_flag("-q,--quiet", args->quiet, "No progress line or summary on a terminal");
    cp->add_option("src", args->src, "Source: host path, NAME:PATH or -")->required();
    cp->add_option("dst", args->dst, "Destination: host path, NAME:PATH or -")->required();
    return [args] { return copy(*args); };
}

}  // namespace sandlot::cli
