#include "host/lib/guest_fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <map>
#include <optional>

namespace sandlot::host {

namespace {

// Credit a read stream grants the agent, returned in batches of a quarter.
constexpr uint32_t kReadWindow = 8u << 20;
// FS_DATA payloads the host sends; smaller ones are batched with the frames around them.
constexpr size_t kWriteChunk = 256 * 1024;
constexpr size_t kSmallData = 64 * 1024;
// Directories of a copy_to_host whose modes and times wait for the end; a guest sending more is refused.
constexpr size_t kMaxPendingDirs = 1u << 20;

ChannelOptions fs_channel(uint32_t credit) {
    return {.terminal = proto::MessageType::FsDone,
            .window = proto::MessageType::FsWindow,
            .cancel = proto::MessageType::FsCancel,
            .credit = credit};
}

uint16_t type_of(proto::MessageType type) {
    return static_cast<uint16_t>(type);
}

bool is(const proto::Frame& frame, proto::MessageType type) {
    return frame.type == type_of(type);
}

// An ERROR from the agent: its errno, and its message naming the operation and path.
Error agent_error(const proto::Frame& frame) {
    auto error = proto::decode_error(frame.payload);
    if (!error) return Error{EPROTO, "undecodable ERROR from the agent"};
    return Error{error->errno_value, error->message};
}

Error unexpected_frame(const proto::Frame& frame, const std::string& when) {
    return Error{EPROTO, "agent sent " + proto::message_type_name(frame.type) + " " + when};
}

Result<void> check_feature(AgentConnection& agent) {
    const proto::Hello& hello = agent.hello();
    if (hello.features & proto::kFeatureFs) return {};
    return make_error("agent " + hello.agent_version + " (protocol " + std::to_string(hello.protocol_major) +
                          "." + std::to_string(hello.protocol_minor) + ") does not support " +
                          proto::feature_name(proto::kFeatureFs),
                      ENOTSUP);
}

Result<std::unique_ptr<AgentChannel>> open_fs(AgentConnection& agent, const proto::FsRequest& request,
                                              uint32_t credit) {
    TRY(check_feature(agent));
    auto payload = TRY(proto::encode_fs_request(request));
    return agent.open_channel(proto::MessageType::FsRequest, payload, fs_channel(credit));
}

// The sending side of write and put_tree: FS_DATA/FS_ENTRY within the agent's credit, and its verdict.
class CreditedSender {
  public:
    explicit CreditedSender(std::unique_ptr<AgentChannel> channel) : channel_(std::move(channel)) {}

    // Waits for the agent's first window (it has prepared the file), or its error.
    Result<void> start() {
        TRY(wait_for_credit(1));
        return {};
    }

    Result<void> send(proto::MessageType type, std::span<const uint8_t> payload) {
        if (failed_) return std::unexpected(*failed_);
        TRY(note(absorb_windows(false)));
        TRY(note(wait_for_credit(payload.size())));
        credit_ -= payload.size();
        return note(channel_->queue(type, payload));
    }

    Result<void> send_data(std::span<const uint8_t> data) {
        while (!data.empty()) {
            if (failed_) return std::unexpected(*failed_);
            TRY(note(absorb_windows(false)));
            if (credit_ == 0) TRY(note(wait_for_credit(1)));
            size_t n = static_cast<size_t>(std::min<uint64_t>({data.size(), kWriteChunk, credit_}));
            credit_ -= n;
            // Small pieces ride with the entries around them; big ones go straight from the caller's buffer.
            if (n < kSmallData)
                TRY(note(channel_->queue(proto::MessageType::FsData, data.first(n))));
            else
                TRY(note(channel_->send(proto::MessageType::FsData, data.first(n))));
            data = data.subspan(n);
        }
        return {};
    }

    // FS_COMMIT, then the agent's FS_DONE.
    Result<proto::FsDone> commit() {
        if (failed_) return std::unexpected(*failed_);
        TRY(note(channel_->send(proto::MessageType::FsCommit, {})));  // after everything queued
        for (;;) {
            proto::Frame frame = TRY(note(channel_->recv()));
            if (is(frame, proto::MessageType::FsWindow)) continue;
            if (is(frame, proto::MessageType::FsDone)) {
                done_ = true;
                return note(proto::decode_fs_done(frame.payload));
            }
            if (is(frame, proto::MessageType::Error))
                return note(Result<proto::FsDone>(std::unexpected(agent_error(frame))));
            return note(Result<proto::FsDone>(std::unexpected(unexpected_frame(frame, "after FS_COMMIT"))));
        }
    }

    void abort() {
        channel_.reset();  // the channel sends FS_CANCEL
        if (!failed_) failed_ = Error{ECANCELED, "the transfer was aborted"};
    }

    bool finished() const { return done_ || !channel_; }

  private:
    template <class T>
    Result<T> note(Result<T> result) {
        if (!result && !failed_) failed_ = result.error();
        return result;
    }

    // Takes the windows (and an early ERROR) that arrived; with `block`, waits for one frame first.
    Result<void> absorb_windows(bool block) {
        for (;;) {
            std::optional<proto::Frame> frame;
            if (block) {
                frame = TRY(channel_->recv());
                block = false;
            } else {
                frame = TRY(channel_->try_recv());
            }
            if (!frame) return {};
            if (is(*frame, proto::MessageType::FsWindow)) {
                auto window = TRY(proto::decode_fs_window(frame->payload));
                credit_ += window.bytes;
                continue;
            }
            if (is(*frame, proto::MessageType::Error)) return std::unexpected(agent_error(*frame));
            return std::unexpected(unexpected_frame(*frame, "while the host was writing"));
        }
    }

    Result<void> wait_for_credit(uint64_t bytes) {
        if (credit_ >= bytes) return {};
        TRY(channel_->flush());  // the agent grants more only once it has what is queued
        while (credit_ < bytes)
            TRY(absorb_windows(true));
        return {};
    }

    std::unique_ptr<AgentChannel> channel_;
    uint64_t credit_ = 0;
    std::optional<Error> failed_;
    bool done_ = false;
};

// The receiving side of read, list and get_tree: frames in order, credit returned as they are consumed.
class CreditedReceiver {
  public:
    explicit CreditedReceiver(std::unique_ptr<AgentChannel> channel) : channel_(std::move(channel)) {}

    // The next frame: FS_ENTRY, FS_DATA or FS_DONE (ERROR becomes the Error).
    Result<proto::Frame> next() {
        if (done_) return make_error("the stream has ended", EPIPE);
        proto::Frame frame = TRY(channel_->recv());
        if (is(frame, proto::MessageType::Error)) {
            done_ = true;
            return std::unexpected(agent_error(frame));
        }
        if (is(frame, proto::MessageType::FsDone)) {
            done_ = true;
            return frame;
        }
        if (!is(frame, proto::MessageType::FsEntry) && !is(frame, proto::MessageType::FsData))
            return std::unexpected(unexpected_frame(frame, "in a read stream"));
        consumed_ += frame.payload.size();
        if (consumed_ >= kReadWindow / 4) {
            TRY(channel_->grant(static_cast<uint32_t>(consumed_)));
            consumed_ = 0;
        }
        return frame;
    }

    bool done() const { return done_; }

  private:
    std::unique_ptr<AgentChannel> channel_;
    uint64_t consumed_ = 0;
    bool done_ = false;
};

class AgentFileReader final : public FileReader {
  public:
    AgentFileReader(CreditedReceiver receiver, FileInfo info)
        : receiver_(std::move(receiver)), info_(std::move(info)) {}

    const FileInfo& info() const override { return info_; }

    Result<std::vector<uint8_t>> next() override {
        if (!pending_.empty()) {
            std::vector<uint8_t> out(pending_.begin() + static_cast<ptrdiff_t>(pending_offset_),
                                     pending_.end());
            pending_.clear();
            pending_offset_ = 0;
            return out;
        }
        if (receiver_.done()) return std::vector<uint8_t>{};
        proto::Frame frame = TRY(receiver_.next());
        if (is(frame, proto::MessageType::FsDone)) return std::vector<uint8_t>{};
        if (!is(frame, proto::MessageType::FsData))
            return std::unexpected(unexpected_frame(frame, "in a file read"));
        if (frame.payload.empty()) return next();
        return std::move(frame.payload);
    }

    Result<size_t> read(std::span<uint8_t> buffer) override {
        if (buffer.empty()) return 0;
        if (pending_offset_ >= pending_.size()) {
            pending_ = TRY(next());
            pending_offset_ = 0;
            if (pending_.empty()) return 0;
        }
        size_t n = std::min(buffer.size(), pending_.size() - pending_offset_);
        std::memcpy(buffer.data(), pending_.data() + pending_offset_, n);
        pending_offset_ += n;
        if (pending_offset_ == pending_.size()) {
            pending_.clear();
            pending_offset_ = 0;
        }
        return n;
    }

  private:
    CreditedReceiver receiver_;
    FileInfo info_;
    std::vector<uint8_t> pending_;
    size_t pending_offset_ = 0;
};

class AgentFileWriter final : public FileWriter {
  public:
    explicit AgentFileWriter(CreditedSender sender) : sender_(std::move(sender)) {}
    ~AgentFileWriter() override {
        if (!sender_.finished()) sender_.abort();
    }

    Result<void> write(std::span<const uint8_t> data) override { return sender_.send_data(data); }
    Result<uint64_t> commit() override {
        auto done = TRY(sender_.commit());
        return done.value;
    }
    void abort() override { sender_.abort(); }

  private:
    CreditedSender sender_;
};

class AgentTreeReader final : public TreeReader {
  public:
    explicit AgentTreeReader(CreditedReceiver receiver) : receiver_(std::move(receiver)) {}

    Result<std::optional<FileInfo>> next() override {
        while (data_left_ > 0) {
            auto skipped = TRY(data());
            if (skipped.empty()) break;
        }
        if (receiver_.done()) return std::nullopt;
        proto::Frame frame = TRY(receiver_.next());
        if (is(frame, proto::MessageType::FsDone)) return std::nullopt;
        if (!is(frame, proto::MessageType::FsEntry))
            return std::unexpected(unexpected_frame(frame, "where a tree entry was due"));
        FileInfo info = TRY(proto::decode_fs_entry(frame.payload));
        data_left_ = info.type == FsType::Regular ? info.size : 0;
        return info;
    }

    Result<std::vector<uint8_t>> data() override {
        if (data_left_ == 0) return std::vector<uint8_t>{};
        proto::Frame frame = TRY(receiver_.next());
        if (!is(frame, proto::MessageType::FsData) || frame.payload.empty() ||
            frame.payload.size() > data_left_)
            return std::unexpected(Error{EPROTO, "agent broke a file's data in a tree (" +
                                                     proto::message_type_name(frame.type) + ")"});
        data_left_ -= frame.payload.size();
        return std::move(frame.payload);
    }

  private:
    CreditedReceiver receiver_;
    uint64_t data_left_ = 0;
};

class AgentTreeWriter final : public TreeWriter {
  public:
    explicit AgentTreeWriter(CreditedSender sender) : sender_(std::move(sender)) {}
    ~AgentTreeWriter() override {
        if (!sender_.finished()) sender_.abort();
    }

    Result<void> add(const FileInfo& info) override {
        if (data_left_ > 0)
            return make_error("tree: " + info.path + " added before the previous file's data");
        auto payload = TRY(proto::encode_fs_entry(info));
        TRY(sender_.send(proto::MessageType::FsEntry, payload));
        data_left_ = info.type == FsType::Regular ? info.size : 0;
        return {};
    }
    Result<void> write(std::span<const uint8_t> data) override {
        if (data.size() > data_left_) return make_error("tree: more data than the file's size", EINVAL);
        TRY(sender_.send_data(data));
        data_left_ -= data.size();
        return {};
    }
    Result<uint64_t> commit() override {
        if (data_left_ > 0) return make_error("tree: the last file's data is incomplete", EINVAL);
        auto done = TRY(sender_.commit());
        return done.value;
    }
    void abort() override { sender_.abort(); }

  private:
    CreditedSender sender_;
    uint64_t data_left_ = 0;
};

std::string join(const std::string& root, const std::string& rel) {
    if (rel.empty()) return root;
    return root.ends_with('/') ? root + rel : root + "/" + rel;
}

std::unexpected<Error> host_errno(const std::string& op, const std::string& path) {
    return std::unexpected(Error{errno, op + " " + path});
}

// Sends one host file, symlink or directory tree into a TreeWriter.
class HostTreeSender {
  public:
    HostTreeSender(TreeWriter& out, const CopyOptions& options)
        : out_(out), options_(options), buffer_(1 << 20) {}

    Result<void> send(const std::string& host_path, const std::string& rel, bool follow) {
        struct stat st;
        if ((follow ? ::stat(host_path.c_str(), &st) : ::lstat(host_path.c_str(), &st)) != 0)
            return host_errno("stat", host_path);
        FileInfo info = proto::fs_entry_from_stat(st, rel);
        if (S_ISREG(st.st_mode) && st.st_nlink > 1) {
            auto [it, inserted] = links_.emplace(std::pair<uint64_t, uint64_t>(st.st_dev, st.st_ino), rel);
            if (!inserted) {
                info.type = FsType::Hardlink;
                info.size = 0;
                info.link_target = it->second;
                return add(info);
            }
        }
        if (S_ISLNK(st.st_mode)) {
            std::string target(PATH_MAX, '\0');
            ssize_t n = readlink(host_path.c_str(), target.data(), target.size());
            if (n < 0) return host_errno("readlink", host_path);
            target.resize(static_cast<size_t>(n));
            info.link_target = std::move(target);
            return add(info);
        }
        if (S_ISREG(st.st_mode)) return send_file(host_path, std::move(info));
        if (S_ISSOCK(st.st_mode)) return {};  // a socket cannot be copied
        TRY(add(info));
        if (!S_ISDIR(st.st_mode)) return {};
        std::vector<std::string> names;
        {
            DIR* dir = opendir(host_path.c_str());
            if (!dir) return host_errno("open", host_path);
            errno = 0;
            while (dirent* ent = readdir(dir)) {
                std::string_view name = ent->d_name;
                if (name != "." && name != "..") names.emplace_back(name);
            }
            int saved = errno;
            closedir(dir);
            if (saved != 0) return std::unexpected(Error{saved, "readdir " + host_path});
        }
        for (const std::string& name : names)
            TRY(send(join(host_path, name), rel.empty() ? name : rel + "/" + name, false));
        return {};
    }

    const TransferStats& stats() const { return stats_; }

  private:
    Result<void> add(const FileInfo& info) {
        TRY(out_.add(info));
        ++stats_.entries;
        if (options_.progress) options_.progress(stats_);
        return {};
    }

    Result<void> send_file(const std::string& host_path, FileInfo info) {
        UniqueFd fd(::open(host_path.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd) return host_errno("open", host_path);
        struct stat st;
        if (fstat(fd.get(), &st) != 0) return host_errno("stat", host_path);
        info.size = static_cast<uint64_t>(st.st_size);  // what the open file holds now
        TRY(add(info));
        uint64_t left = info.size;
        while (left > 0) {
            size_t want = static_cast<size_t>(std::min<uint64_t>(left, buffer_.size()));
            ssize_t n = ::read(fd.get(), buffer_.data(), want);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) return host_errno("read", host_path);
            if (n == 0)
                return make_error("read " + host_path + " (the file shrank while it was copied)", EIO);
            TRY(out_.write(std::span(buffer_.data(), static_cast<size_t>(n))));
            left -= static_cast<uint64_t>(n);
            stats_.bytes += static_cast<uint64_t>(n);
            if (options_.progress) options_.progress(stats_);
        }
        return {};
    }

    TreeWriter& out_;
    const CopyOptions& options_;
    std::vector<uint8_t> buffer_;
    std::map<std::pair<uint64_t, uint64_t>, std::string> links_;
    TransferStats stats_;
};

// Writes a tree from the guest under a host path. The guest is not trusted: every name is created relative
// to a directory fd opened without following symlinks, so no entry can land outside the destination, and
// device nodes are not created. Set-id bits are dropped unless owners are preserved.
class HostTreeReceiver {
  public:
    HostTreeReceiver(std::string root, const CopyOptions& options)
        : root_(std::move(root)), options_(options) {}

    Result<TransferStats> run(TreeReader& in) {
        while (auto info = TRY(in.next())) {
            if (!proto::fs_relative_path_ok(info->path))
                return make_error("the guest sent an unsafe path: " + info->path, EPROTO);
            TRY(place(in, *info));
            ++stats_.entries;
            if (options_.progress) options_.progress(stats_);
        }
        // Deepest first, so setting a directory's times is not undone by changes inside it.
        for (auto it = dirs_.rbegin(); it != dirs_.rend(); ++it) {
            UniqueFd fd(::open(it->first.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
            if (!fd) return host_errno("open", it->first);
            TRY(apply_metadata(fd.get(), it->first, it->second));
        }
        if (options_.sync) {
            // One syncfs for the whole tree; it reports write-back errors of the file system.
            UniqueFd fd(::open(root_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
            if (fd && syncfs(fd.get()) != 0) return host_errno("sync", root_);
        }
        return stats_;
    }

  private:
    uint32_t mode_of(const FileInfo& info) const {
        return info.mode & (options_.preserve_owner ? 07777u : 01777u);
    }

    Result<void> apply_metadata(int fd, const std::string& path, const FileInfo& info) {
        if (options_.preserve_owner && fchown(fd, info.uid, info.gid) != 0) return host_errno("chown", path);
        if (fchmod(fd, mode_of(info)) != 0) return host_errno("chmod", path);
        timespec times[2] = {proto::fs_timespec(info.atime_ns != 0 ? info.atime_ns : info.mtime_ns),
                             proto::fs_timespec(info.mtime_ns)};
        if (futimens(fd, times) != 0) return host_errno("set times of", path);
        return {};
    }

    // The directory that holds `rel` (opened component by component, never through a symlink) and the
    // entry's own name there. For the root, its parent as the user named it.
    Result<std::pair<int, std::string>> parent_of(const std::string& rel) {
        if (rel.empty()) {
            std::string dir = root_;
            while (dir.size() > 1 && dir.ends_with('/'))
                dir.pop_back();
            size_t slash = dir.rfind('/');
            std::string parent = slash == std::string::npos ? "." : slash == 0 ? "/" : dir.substr(0, slash);
            std::string name = slash == std::string::npos ? dir : dir.substr(slash + 1);
            parent_fd_ = UniqueFd(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
            if (!parent_fd_) return host_errno("open", parent);
            parent_rel_ = "\n";  // matches no relative path
            return std::pair<int, std::string>{parent_fd_.get(), name};
        }
        size_t slash = rel.rfind('/');
        std::string dir_rel = slash == std::string::npos ? "" : rel.substr(0, slash);
        std::string name = slash == std::string::npos ? rel : rel.substr(slash + 1);
        if (!parent_fd_ || parent_rel_ != dir_rel) {
            UniqueFd fd(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
            if (!fd) return host_errno("open", root_);
            size_t start = 0;
            while (start < dir_rel.size()) {
                size_t end = dir_rel.find('/', start);
                if (end == std::string::npos) end = dir_rel.size();
                std::string part = dir_rel.substr(start, end - start);
                UniqueFd next(
                    openat(fd.get(), part.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
                if (!next) return host_errno("open", join(root_, dir_rel.substr(0, end)));
                fd = std::move(next);
                start = end + 1;
            }
            parent_fd_ = std::move(fd);
            parent_rel_ = dir_rel;
        }
        return std::pair<int, std::string>{parent_fd_.get(), name};
    }

    Result<void> place(TreeReader& in, const FileInfo& info) {
        auto [dir_fd, name] = TRY(parent_of(info.path));
        std::string path = join(root_, info.path);
        struct stat st;
        switch (info.type) {
            case FsType::Directory: {
                if (mkdirat(dir_fd, name.c_str(), 0700) != 0) {
                    if (errno != EEXIST) return host_errno("mkdir", path);
                    bool root = info.path.empty();
                    if (fstatat(dir_fd, name.c_str(), &st, root ? 0 : AT_SYMLINK_NOFOLLOW) != 0 ||
                        !S_ISDIR(st.st_mode))
                        return std::unexpected(Error{ENOTDIR, "mkdir " + path});
                }
                if (dirs_.size() >= kMaxPendingDirs)
                    return make_error("too many directories in " + root_, E2BIG);
                dirs_.emplace_back(path, info);
                return {};
            }
            case FsType::Regular:
                return place_file(in, dir_fd, name, path, info);
            case FsType::Symlink: {
                std::string made = name;
                if (symlinkat(info.link_target.c_str(), dir_fd, name.c_str()) != 0) {
                    if (errno != EEXIST) return host_errno("symlink", path);
                    if (fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode))
                        return std::unexpected(Error{EISDIR, "symlink " + path});
                    made = temp_name();
                    if (symlinkat(info.link_target.c_str(), dir_fd, made.c_str()) != 0)
                        return host_errno("symlink", path);
                }
                if (options_.preserve_owner)
                    fchownat(dir_fd, made.c_str(), info.uid, info.gid, AT_SYMLINK_NOFOLLOW);
                timespec times[2] = {proto::fs_timespec(info.mtime_ns), proto::fs_timespec(info.mtime_ns)};
                utimensat(dir_fd, made.c_str(), times, AT_SYMLINK_NOFOLLOW);
                if (made != name && renameat(dir_fd, made.c_str(), dir_fd, name.c_str()) != 0) {
                    int saved = errno;
                    unlinkat(dir_fd, made.c_str(), 0);
                    return std::unexpected(Error{saved, "rename to " + path});
                }
                return {};
            }
            case FsType::Hardlink: {
                if (info.link_target.empty() || !proto::fs_relative_path_ok(info.link_target))
                    return make_error("the guest sent an unsafe hard link: " + info.path, EPROTO);
                // Resolve the target through the same symlink-free walk.
                std::string target_rel = info.link_target;
                auto [target_dir, target_name] = TRY(parent_of(target_rel));
                UniqueFd target_dir_fd(dup(target_dir));
                auto [dir_fd2, name2] = TRY(parent_of(info.path));
                if (linkat(target_dir_fd.get(), target_name.c_str(), dir_fd2, name2.c_str(), 0) != 0) {
                    if (errno != EEXIST) return host_errno("link", path);
                    std::string temp = temp_name();
                    if (linkat(target_dir_fd.get(), target_name.c_str(), dir_fd2, temp.c_str(), 0) != 0)
                        return host_errno("link", path);
                    if (renameat(dir_fd2, temp.c_str(), dir_fd2, name2.c_str()) != 0) {
                        int saved = errno;
                        unlinkat(dir_fd2, temp.c_str(), 0);
                        return std::unexpected(Error{saved, "rename to " + path});
                    }
                }
                return {};
            }
            case FsType::Fifo:
                if (mkfifoat(dir_fd, name.c_str(), mode_of(info) & 0777) != 0 && errno != EEXIST)
                    return host_errno("mkfifo", path);
                return {};
            case FsType::CharDevice:
            case FsType::BlockDevice:
            case FsType::Socket:
            case FsType::Unknown:
                return {};  // device nodes from a guest are never created on the host
        }
        return {};
    }

    Result<void> place_file(TreeReader& in, int dir_fd, const std::string& name, const std::string& path,
                            const FileInfo& info) {
        std::string temp = temp_name();
        UniqueFd fd(openat(dir_fd, temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
        if (!fd) return host_errno("create", path);
        auto write_it = [&]() -> Result<void> {
            for (;;) {
                auto chunk = TRY(in.data());
                if (chunk.empty()) break;
                std::span<const uint8_t> left(chunk);
                while (!left.empty()) {
                    ssize_t n = ::write(fd.get(), left.data(), left.size());
                    if (n < 0 && errno == EINTR) continue;
                    if (n < 0) return host_errno("write", path);
                    if (n == 0) return std::unexpected(Error{ENOSPC, "write " + path});
                    left = left.subspan(static_cast<size_t>(n));
                }
                stats_.bytes += chunk.size();
                if (options_.progress) options_.progress(stats_);
            }
            TRY(apply_metadata(fd.get(), path, info));
            if (::close(fd.release()) != 0) return host_errno("write", path);
            struct stat st;
            if (fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode))
                return std::unexpected(Error{EISDIR, "write " + path});
            if (renameat(dir_fd, temp.c_str(), dir_fd, name.c_str()) != 0)
                return host_errno("rename to", path);
            return {};
        };
        auto written = write_it();
        if (!written) unlinkat(dir_fd, temp.c_str(), 0);
        return written;
    }

    std::string temp_name() {
        return ".sandlot-" + std::to_string(getpid()) + "-" + std::to_string(++temp_counter_) + ".tmp";
    }

    std::string root_;
    const CopyOptions& options_;
    UniqueFd parent_fd_;
    std::string parent_rel_;
    std::vector<std::pair<std::string, FileInfo>> dirs_;
    TransferStats stats_;
    uint64_t temp_counter_ = 0;
};

}  // namespace

proto::FsRequest GuestFs::request(proto::FsOp op, const std::string& path) const {
    proto::FsRequest req;
    req.op = static_cast<uint32_t>(op);
    req.path = path;
    req.user = user_;
    return req;
}

Result<proto::FsDone> GuestFs::one_shot(proto::FsRequest req, FileInfo* entry) {
    auto channel = TRY(open_fs(*agent_, req, kReadWindow));
    for (;;) {
        proto::Frame frame = TRY(channel->recv());
        if (is(frame, proto::MessageType::FsDone)) return proto::decode_fs_done(frame.payload);
        if (is(frame, proto::MessageType::Error)) return std::unexpected(agent_error(frame));
        if (is(frame, proto::MessageType::FsEntry) && entry) {
            *entry = TRY(proto::decode_fs_entry(frame.payload));
            continue;
        }
        return std::unexpected(unexpected_frame(frame, "in answer to " + proto::fs_op_name(req.op)));
    }
}

Result<std::unique_ptr<FileReader>> GuestFs::read_stream(const std::string& path, uint64_t offset,
                                                         uint64_t length) {
    proto::FsRequest req = request(proto::FsOp::Read, path);
    req.offset = offset;
    req.length = length;
    req.window = kReadWindow;
    CreditedReceiver receiver(TRY(open_fs(*agent_, req, kReadWindow)));
    proto::Frame first = TRY(receiver.next());
    if (!is(first, proto::MessageType::FsEntry))
        return std::unexpected(unexpected_frame(first, "before the file"));
    FileInfo info = TRY(proto::decode_fs_entry(first.payload));
    return std::make_unique<AgentFileReader>(std::move(receiver), std::move(info));
}

Result<std::string> GuestFs::read(const std::string& path, uint64_t offset, uint64_t length) {
    auto reader = TRY(read_stream(path, offset, length));
    std::string out;
    uint64_t size = reader->info().size;
    if (reader->info().type == FsType::Regular && size > offset)
        out.reserve(
            static_cast<size_t>(std::min<uint64_t>(size - offset, std::min<uint64_t>(length, 1u << 30))));
    for (;;) {
        auto chunk = TRY(reader->next());
        if (chunk.empty()) break;
        out.append(reinterpret_cast<const char*>(chunk.data()), chunk.size());
    }
    return out;
}

Result<std::unique_ptr<FileWriter>> GuestFs::write_stream(const std::string& path,
                                                          const WriteOptions& options) {
    proto::FsRequest req = request(proto::FsOp::Write, path);
    req.mode = options.mode;
    req.flags = (options.append ? proto::kFsAppend : 0) | (options.exclusive ? proto::kFsExclusive : 0) |
                (options.parents ? proto::kFsParents : 0) | (options.sync ? 0 : proto::kFsNoSync) |
                (options.mtime_ns ? proto::kFsSetMtime : 0);
    req.mtime_ns = options.mtime_ns.value_or(0);
    req.size_hint = options.size_hint;
    CreditedSender sender(TRY(open_fs(*agent_, req, 0)));
    TRY(sender.start());
    return std::make_unique<AgentFileWriter>(std::move(sender));
}

Result<void> GuestFs::write(const std::string& path, std::span<const uint8_t> data,
                            const WriteOptions& options) {
    WriteOptions with_hint = options;
    with_hint.size_hint = data.size();
    auto writer = TRY(write_stream(path, with_hint));
    TRY(writer->write(data));
    TRY(writer->commit());
    return {};
}

Result<void> GuestFs::write(const std::string& path, std::string_view data, const WriteOptions& options) {
    return write(path, std::span(reinterpret_cast<const uint8_t*>(data.data()), data.size()), options);
}

Result<void> GuestFs::append(const std::string& path, std::string_view data) {
    return write(path, data, WriteOptions{.append = true});
}

Result<std::vector<FileInfo>> GuestFs::list(const std::string& path, const ListOptions& options) {
    proto::FsRequest req = request(proto::FsOp::List, path);
    req.depth = options.depth;
    req.window = kReadWindow;
    CreditedReceiver receiver(TRY(open_fs(*agent_, req, kReadWindow)));
    std::vector<FileInfo> entries;
    for (;;) {
        proto::Frame frame = TRY(receiver.next());
        if (is(frame, proto::MessageType::FsDone)) return entries;
        if (!is(frame, proto::MessageType::FsEntry))
            return std::unexpected(unexpected_frame(frame, "in a listing"));
        entries.push_back(TRY(proto::decode_fs_entry(frame.payload)));
    }
}

Result<FileInfo> GuestFs::stat(const std::string& path) {
    FileInfo info;
    TRY(one_shot(request(proto::FsOp::Stat, path), &info));
    return info;
}

Result<FileInfo> GuestFs::lstat(const std::string& path) {
    FileInfo info;
    TRY(one_shot(request(proto::FsOp::Lstat, path), &info));
    return info;
}

Result<bool> GuestFs::exists(const std::string& path) {
    auto done = TRY(one_shot(request(proto::FsOp::Exists, path)));
    return done.value != 0;
}

Result<std::string> GuestFs::realpath(const std::string& path) {
    auto done = TRY(one_shot(request(proto::FsOp::Realpath, path)));
    return done.text;
}

Result<void> GuestFs::mkdir(const std::string& path, uint32_t mode, bool parents) {
    proto::FsRequest req = request(proto::FsOp::Mkdir, path);
    req.mode = mode;
    req.flags = parents ? proto::kFsParents : 0;
    TRY(one_shot(std::move(req)));
    return {};
}

Result<void> GuestFs::remove(const std::string& path) {
    TRY(one_shot(request(proto::FsOp::Remove, path)));
    return {};
}

Result<void> GuestFs::remove_dir(const std::string& path, bool recursive) {
    proto::FsRequest req = request(proto::FsOp::RemoveDir, path);
    req.flags = recursive ? proto::kFsRecursive : 0;
    TRY(one_shot(std::move(req)));
    return {};
}

Result<void> GuestFs::rename(const std::string& from, const std::string& to) {
    proto::FsRequest req = request(proto::FsOp::Rename, from);
    req.path2 = to;
    TRY(one_shot(std::move(req)));
    return {};
}

Result<void> GuestFs::copy(const std::string& from, const std::string& to, bool recursive) {
    proto::FsRequest req = request(proto::FsOp::Copy, from);
    req.path2 = to;
    req.flags = recursive ? proto::kFsRecursive : 0;
    TRY(one_shot(std::move(req)));
    return {};
}

Result<void> GuestFs::chmod(const std::string& path, uint32_t mode) {
    proto::FsRequest req = request(proto::FsOp::Chmod, path);
    req.mode = mode;
    TRY(one_shot(std::move(req)));
    return {};
}

Result<void> GuestFs::chown(const std::string& path, uint32_t uid, uint32_t gid, bool no_follow) {
    proto::FsRequest req = request(proto::FsOp::Chown, path);
    req.uid = uid;
    req.gid = gid;
    req.flags = no_follow ? proto::kFsNoFollow : 0;
    TRY(one_shot(std::move(req)));
    return {};
}

Result<void> GuestFs::symlink(const std::string& target, const std::string& link_path) {
    proto::FsRequest req = request(proto::FsOp::Symlink, link_path);
    req.path2 = target;
    TRY(one_shot(std::move(req)));
    return {};
}

Result<std::unique_ptr<TreeReader>> GuestFs::get_tree(const std::string& path) {
    proto::FsRequest req = request(proto::FsOp::GetTree, path);
    req.window = kReadWindow;
    return std::make_unique<AgentTreeReader>(CreditedReceiver(TRY(open_fs(*agent_, req, kReadWindow))));
}

Result<std::unique_ptr<TreeWriter>> GuestFs::put_tree(const std::string& path, const CopyOptions& options) {
    proto::FsRequest req = request(proto::FsOp::PutTree, path);
    req.flags =
        (options.preserve_owner ? proto::kFsPreserveOwner : 0) | (options.sync ? 0 : proto::kFsNoSync);
    CreditedSender sender(TRY(open_fs(*agent_, req, 0)));
    TRY(sender.start());
    return std::make_unique<AgentTreeWriter>(std::move(sender));
}

Result<TransferStats> GuestFs::copy_from_host(const std::string& host_path, const std::string& guest_path,
                                              const CopyOptions& options) {
    struct stat st;
    if ((options.follow_root ? ::stat(host_path.c_str(), &st) : ::lstat(host_path.c_str(), &st)) != 0)
        return host_errno("stat", host_path);
    auto tree = TRY(put_tree(guest_path, options));
    HostTreeSender sender(*tree, options);
    TRY(sender.send(host_path, "", options.follow_root));
    TRY(tree->commit());
    return sender.stats();
}

Result<TransferStats> GuestFs::copy_to_host(const std::string& guest_path, const std::string& host_path,
                                            const CopyOptions& options) {
    std::string source = guest_path;
    if (options.follow_root) source = TRY(realpath(guest_path));
    auto tree = TRY(get_tree(source));
    HostTreeReceiver receiver(host_path, options);
    return receiver.run(*tree);
}

}  // namespace sandlot::host
