// The passthrough FUSE server (vmm/devices/fs/passthrough_fs.h), two ways:
//   FusePassthroughRaw*: requests built by hand and fed straight to handle() — protocol, malformed and
//     hostile requests, forged ids, confinement. No mount, no root needed.
//   FusePassthroughMount*: the server mounted on the host through /dev/fuse (fuse_dev_mount.h) and driven by
//     real programs (syscalls, shell, git, cc, make). Needs root and /dev/fuse; skipped otherwise.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fuse.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/run_command.h"
#include "tests/support/temp_dir.h"
#include "vmm/devices/fs/fuse_dev_mount.h"
#include "vmm/devices/fs/passthrough_fs.h"

namespace sandlot::vmm::fs {
namespace {

using sandlot::test::TempDir;
using sandlot::testing::run_command;
using Bytes = std::vector<uint8_t>;

// ---------------------------------------------------------------------------------------------------------
// Helpers

template <class T>
Bytes bytes_of(const T& value) {
    const auto* p = reinterpret_cast<const uint8_t*>(&value);
    return Bytes(p, p + sizeof(T));
}

Bytes cstr(std::string_view s) {
    Bytes b(s.begin(), s.end());
    b.push_back(0);
    return b;
}

Bytes cat(std::initializer_list<Bytes> parts) {
    Bytes out;
    for (const Bytes& p : parts)
        out.insert(out.end(), p.begin(), p.end());
    return out;
}

void write_file(const std::string& path, const std::string& content) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << content;
}

std::string read_file(const std::string& path) {
    std::string out;
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return out;
    char buf[1 << 16];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        out.append(buf, static_cast<size_t>(n));
    close(fd);
    return out;
}

struct RawReply {
    bool present = false;  // false: the handler sent no reply
    int error = 0;         // positive errno
    uint64_t unique = 0;
    uint32_t len = 0;
    Bytes payload;

    // The payload as a T; `whole`: it must be all there (else the missing tail reads as zeroes).
    template <class T>
    T as(bool whole = true) const {
        T value{};
        if (whole) {
            EXPECT_GE(payload.size(), sizeof(T));
        }
        std::memcpy(&value, payload.data(), std::min(sizeof(T), payload.size()));
        return value;
    }
    std::string text() const { return std::string(payload.begin(), payload.end()); }
};

// Builds FUSE requests as the kernel would and parses the replies.
class RawClient {
  public:
    explicit RawClient(PassthroughFs& fs) : fs_(fs) {}

    RawReply raw(std::span<const uint8_t> request) {
        std::vector<uint8_t> out;
        fs_.handle(request, out);
        RawReply r;
        if (out.empty()) return r;
        r.present = true;
        EXPECT_GE(out.size(), sizeof(fuse_out_header));
        if (out.size() < sizeof(fuse_out_header)) return r;
        fuse_out_header h;
        std::memcpy(&h, out.data(), sizeof h);
        EXPECT_EQ(h.len, out.size());
        r.error = -h.error;
        r.unique = h.unique;
        r.len = h.len;
        r.payload.assign(out.begin() + sizeof h, out.end());
        if (r.error != 0) {
            EXPECT_TRUE(r.payload.empty());
        }
        return r;
    }

    Bytes request(uint32_t opcode, uint64_t nodeid, const Bytes& args, uint32_t uid = 0, uint32_t gid = 0) {
        fuse_in_header h{};
        h.len = static_cast<uint32_t>(sizeof h + args.size());
        h.opcode = opcode;
        h.unique = ++unique_;
        h.nodeid = nodeid;
        h.uid = uid;
        h.gid = gid;
        h.pid = 1;
        return cat({bytes_of(h), args});
    }

    RawReply call(uint32_t opcode, uint64_t nodeid, const Bytes& args = {}, uint32_t uid = 0,
                  uint32_t gid = 0) {
        Bytes req = request(opcode, nodeid, args, uid, gid);
        RawReply r = raw(req);
        if (r.present) {
            EXPECT_EQ(r.unique, unique_);
        }
        return r;
    }

    RawReply init(uint32_t major = 7, uint32_t minor = 38, uint32_t flags = 0xffffffffu) {
        fuse_init_in in{};
        in.major = major;
        in.minor = minor;
        in.max_readahead = 128 * 1024;
        in.flags = flags;
        return call(FUSE_INIT, 0, bytes_of(in));
    }

    // The successful entry for `name` in `parent`, or a failed test.
    fuse_entry_out lookup(uint64_t parent, std::string_view name) {
        RawReply r = call(FUSE_LOOKUP, parent, cstr(name));
        EXPECT_EQ(r.error, 0) << "lookup " << name << ": " << strerror(r.error);
        return r.as<fuse_entry_out>();
    }
    int lookup_error(uint64_t parent, std::string_view name) {
        return call(FUSE_LOOKUP, parent, cstr(name)).error;
    }

    RawReply open(uint64_t node, uint32_t flags, bool dir = false) {
        fuse_open_in in{};
        in.flags = flags;
        return call(dir ? FUSE_OPENDIR : FUSE_OPEN, node, bytes_of(in));
    }
    uint64_t open_fh(uint64_t node, uint32_t flags, bool dir = false) {
        RawReply r = open(node, flags, dir);
        EXPECT_EQ(r.error, 0) << strerror(r.error);
        return r.as<fuse_open_out>().fh;
    }
    RawReply read(uint64_t node, uint64_t fh, uint64_t offset, uint32_t size, uint32_t opcode = FUSE_READ) {
        fuse_read_in in{};
        in.fh = fh;
        in.offset = offset;
        in.size = size;
        return call(opcode, node, bytes_of(in));
    }
    RawReply write(uint64_t node, uint64_t fh, uint64_t offset, std::string_view data) {
        fuse_write_in in{};
        in.fh = fh;
        in.offset = offset;
        in.size = static_cast<uint32_t>(data.size());
        return call(FUSE_WRITE, node, cat({bytes_of(in), Bytes(data.begin(), data.end())}));
    }
    void forget(uint64_t node, uint64_t n) {
        fuse_forget_in in{};
        in.nlookup = n;
        EXPECT_FALSE(call(FUSE_FORGET, node, bytes_of(in)).present);
    }
    RawReply getattr(uint64_t node) { return call(FUSE_GETATTR, node, bytes_of(fuse_getattr_in{})); }
    RawReply release(uint64_t node, uint64_t fh, bool dir = false) {
        fuse_release_in in{};
        in.fh = fh;
        return call(dir ? FUSE_RELEASEDIR : FUSE_RELEASE, node, bytes_of(in));
    }

  private:
    PassthroughFs& fs_;
    uint64_t unique_ = 100;
};

// The share, a secret next to it (outside), and a client for the server on the share.
class FusePassthroughRawTest : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_FALSE(dir_.path().empty());
        share_ = dir_ / "share";
        outside_ = dir_ / "outside";
        ASSERT_EQ(mkdir(share_.c_str(), 0755), 0);
        ASSERT_EQ(mkdir(outside_.c_str(), 0755), 0);
        write_file(outside_ + "/secret", "SECRET");
        write_file(share_ + "/hello.txt", "hello, world\n");
        ASSERT_EQ(mkdir((share_ + "/sub").c_str(), 0755), 0);
        write_file(share_ + "/sub/inner", "inner");
        ASSERT_EQ(symlink((outside_ + "/secret").c_str(), (share_ + "/abs-link").c_str()), 0);
        ASSERT_EQ(symlink("../outside", (share_ + "/rel-dir-link").c_str()), 0);
        ASSERT_EQ(mkfifo((share_ + "/fifo").c_str(), 0644), 0);
        make_fs(false);
    }
    void make_fs(bool read_only) {
        client_.reset();
        auto fs = PassthroughFs::create({.root = share_, .read_only = read_only});
        ASSERT_TRUE(fs.has_value()) << fs.error().to_string();
        fs_ = std::move(*fs);
        client_ = std::make_unique<RawClient>(*fs_);
        RawReply init = client_->init();
        ASSERT_EQ(init.error, 0);
    }

    TempDir dir_{"fuse-raw"};
    std::string share_, outside_;
    std::unique_ptr<PassthroughFs> fs_;
    std::unique_ptr<RawClient> client_;
};

// ---------------------------------------------------------------------------------------------------------
// Raw protocol

TEST_F(FusePassthroughRawTest, InitNegotiatesVersionAndSizes) {
    RawReply r = client_->init(7, 45);
    ASSERT_EQ(r.error, 0);
    ASSERT_EQ(r.payload.size(), sizeof(fuse_init_out));
    auto out = r.as<fuse_init_out>();
    EXPECT_EQ(out.major, 7u);
    EXPECT_EQ(out.minor, 38u);  // ours is older: the kernel follows us
    EXPECT_EQ(out.max_write, kMaxIo);
    EXPECT_EQ(out.max_pages, kMaxIo / 4096);
    EXPECT_EQ(fs_->max_io(), kMaxIo);
    EXPECT_TRUE(out.flags & FUSE_MAX_PAGES);
    EXPECT_TRUE(out.flags & FUSE_POSIX_LOCKS);
    EXPECT_TRUE(out.flags & FUSE_FLOCK_LOCKS);
    EXPECT_FALSE(out.flags & FUSE_WRITEBACK_CACHE);
    EXPECT_FALSE(out.flags & FUSE_EXPORT_SUPPORT);

    // An older kernel: its minor, and the 7.22-sized reply.
    r = client_->init(7, 19, FUSE_ASYNC_READ | FUSE_POSIX_LOCKS);
    ASSERT_EQ(r.error, 0);
    EXPECT_EQ(r.payload.size(), size_t{FUSE_COMPAT_22_INIT_OUT_SIZE});
    out = r.as<fuse_init_out>(false);
    EXPECT_EQ(out.minor, 19u);
    EXPECT_EQ(out.flags, uint32_t{FUSE_ASYNC_READ | FUSE_POSIX_LOCKS});  // only what was offered

    // A newer major: we answer with ours and wait for the kernel to come down.
    r = client_->init(8, 0);
    ASSERT_EQ(r.error, 0);
    EXPECT_EQ(r.payload.size(), size_t{FUSE_COMPAT_INIT_OUT_SIZE});
    EXPECT_EQ(r.as<fuse_init_out>(false).major, 7u);

    EXPECT_EQ(client_->init(7, 11).error, EPROTO);
    EXPECT_EQ(client_->init(6, 99).error, EPROTO);
    EXPECT_EQ(client_->call(FUSE_INIT, 0, Bytes(8, 0)).error, EINVAL);  // truncated fuse_init_in
}

TEST_F(FusePassthroughRawTest, RequestsBeforeInitFailWithEio) {
    auto fs = PassthroughFs::create({.root = share_});
    ASSERT_TRUE(fs.has_value());
    RawClient fresh(**fs);
    EXPECT_EQ(fresh.call(FUSE_GETATTR, 1, bytes_of(fuse_getattr_in{})).error, EIO);
    EXPECT_EQ(fresh.call(FUSE_LOOKUP, 1, cstr("hello.txt")).error, EIO);
    fuse_forget_in forget{};
    forget.nlookup = 1;
    EXPECT_FALSE(fresh.call(FUSE_FORGET, 1, bytes_of(forget)).present);
    ASSERT_EQ(fresh.init().error, 0);
    EXPECT_EQ(fresh.call(FUSE_GETATTR, 1, bytes_of(fuse_getattr_in{})).error, 0);
    // DESTROY ends the session.
    EXPECT_EQ(fresh.call(FUSE_DESTROY, 0).error, 0);
    EXPECT_EQ(fresh.call(FUSE_GETATTR, 1, bytes_of(fuse_getattr_in{})).error, EIO);
}

TEST_F(FusePassthroughRawTest, MalformedRequestsGetErrorsNotCrashes) {
    RawClient& c = *client_;
    // Shorter than a header: EINVAL, and no unique to answer to.
    Bytes tiny(10, 0xff);
    RawReply r = c.raw(tiny);
    ASSERT_TRUE(r.present);
    EXPECT_EQ(r.error, EINVAL);
    EXPECT_EQ(r.unique, 0u);
    EXPECT_EQ(c.raw({}).error, EINVAL);

    // A header whose len lies (more than was sent, less than a header).
    Bytes req = c.request(FUSE_GETATTR, 1, bytes_of(fuse_getattr_in{}));
    fuse_in_header h;
    std::memcpy(&h, req.data(), sizeof h);
    h.len = static_cast<uint32_t>(req.size() + 1);
    std::memcpy(req.data(), &h, sizeof h);
    EXPECT_EQ(c.raw(req).error, EINVAL);
    h.len = 39;
    std::memcpy(req.data(), &h, sizeof h);
    EXPECT_EQ(c.raw(req).error, EINVAL);
    h.len = UINT32_MAX;
    std::memcpy(req.data(), &h, sizeof h);
    EXPECT_EQ(c.raw(req).error, EINVAL);
    // Extensions longer than the arguments.
    h.len = static_cast<uint32_t>(req.size());
    h.total_extlen = 100;
    std::memcpy(req.data(), &h, sizeof h);
    EXPECT_EQ(c.raw(req).error, EINVAL);

    // Unknown and unsupported opcodes.
    EXPECT_EQ(c.call(9999, 1).error, ENOSYS);
    EXPECT_EQ(c.call(FUSE_IOCTL, 1, Bytes(64, 0)).error, ENOSYS);
    EXPECT_EQ(c.call(FUSE_SETUPMAPPING, 1, Bytes(64, 0)).error, ENOSYS);
    EXPECT_EQ(c.call(FUSE_BMAP, 1, Bytes(16, 0)).error, ENOSYS);

    // Every opcode with missing or truncated arguments (shorter than any argument struct). Those that
    // take no arguments (GETATTR's are optional) are left out.
    for (uint32_t op = 1; op <= 52; ++op) {
        if (op == FUSE_INIT || op == FUSE_DESTROY || op == FUSE_GETATTR || op == FUSE_READLINK ||
            op == FUSE_STATFS || op == FUSE_SYNCFS) {
            continue;
        }
        for (size_t n : {0, 1, 7}) {
            RawReply reply = c.call(op, 1, Bytes(n, 0x41));
            if (reply.present) {
                EXPECT_NE(reply.error, 0) << "opcode " << op << " with " << n << " bytes";
            }
        }
    }

    // Names: missing NUL, empty, ".", "..", with '/', embedded NUL, too long.
    EXPECT_EQ(c.call(FUSE_LOOKUP, 1, Bytes{'h', 'e', 'l', 'l', 'o'}).error, EINVAL);
    EXPECT_EQ(c.lookup_error(1, ""), EINVAL);
    EXPECT_EQ(c.lookup_error(1, "."), EINVAL);
    EXPECT_EQ(c.lookup_error(1, ".."), EINVAL);
    EXPECT_EQ(c.lookup_error(1, "sub/inner"), EINVAL);
    EXPECT_EQ(c.lookup_error(1, "../outside"), EINVAL);
    EXPECT_EQ(c.lookup_error(1, "/etc"), EINVAL);
    EXPECT_EQ(c.lookup_error(1, std::string(256, 'a')), ENAMETOOLONG);
    // An embedded NUL ends the name: "hello.txt\0/../x" names hello.txt (the rest is trailing bytes).
    EXPECT_EQ(c.call(FUSE_LOOKUP, 1, cat({cstr("hello.txt"), cstr("/../outside")})).error, 0);
    // LOOKUP in a file.
    uint64_t file = c.lookup(1, "hello.txt").nodeid;
    EXPECT_EQ(c.lookup_error(file, "x"), ENOTDIR);

    // READ: huge size, size field larger than max_io, huge offsets.
    uint64_t fh = c.open_fh(file, O_RDONLY);
    EXPECT_EQ(c.read(file, fh, 0, kMaxIo + 1).error, EINVAL);
    EXPECT_EQ(c.read(file, fh, UINT64_MAX, 10).error, EINVAL);
    r = c.read(file, fh, 1ull << 40, 10);
    EXPECT_EQ(r.error, 0);
    EXPECT_TRUE(r.payload.empty());
    // Reply sizes respect the request: 5 bytes asked, 5 bytes given.
    r = c.read(file, fh, 0, 5);
    EXPECT_EQ(r.text(), "hello");

    // WRITE whose size field claims more data than the request carries.
    uint64_t wfh = c.open_fh(file, O_RDWR);
    fuse_write_in w{};
    w.fh = wfh;
    w.size = 1000;
    EXPECT_EQ(c.call(FUSE_WRITE, file, cat({bytes_of(w), Bytes(10, 'x')})).error, EINVAL);
    w.size = kMaxIo + 1;
    EXPECT_EQ(c.call(FUSE_WRITE, file, cat({bytes_of(w), Bytes(10, 'x')})).error, EINVAL);
    EXPECT_EQ(read_file(share_ + "/hello.txt"), "hello, world\n");

    // BATCH_FORGET with a count far beyond its entries: handled, no reply.
    fuse_batch_forget_in bf{};
    bf.count = 1000000000;
    fuse_forget_one one{};
    one.nodeid = 12345;
    one.nlookup = 1;
    EXPECT_FALSE(c.call(FUSE_BATCH_FORGET, 0, cat({bytes_of(bf), bytes_of(one)})).present);

    // SETXATTR with a value size beyond the request, or beyond XATTR_SIZE_MAX.
    struct {
        uint32_t size, flags;
    } sx{100, 0};
    EXPECT_EQ(c.call(FUSE_SETXATTR, file, cat({bytes_of(sx), cstr("user.x"), Bytes(3, 'v')})).error, EINVAL);
    sx.size = 1u << 20;
    EXPECT_EQ(c.call(FUSE_SETXATTR, file, cat({bytes_of(sx), cstr("user.x"), Bytes(3, 'v')})).error, E2BIG);

    // Locks with nonsense ranges and types.
    fuse_lk_in lk{};
    lk.fh = fh;
    lk.lk.type = 77;
    EXPECT_EQ(c.call(FUSE_SETLK, file, bytes_of(lk)).error, EINVAL);
    lk.lk.type = F_RDLCK;
    lk.lk.start = 100;
    lk.lk.end = 10;
    EXPECT_EQ(c.call(FUSE_SETLK, file, bytes_of(lk)).error, EINVAL);

    // SETATTR with nanoseconds out of range.
    fuse_setattr_in sa{};
    sa.valid = FATTR_MTIME;
    sa.mtimensec = 2000000000u;
    EXPECT_EQ(c.call(FUSE_SETATTR, file, bytes_of(sa)).error, EINVAL);

    // The server still works.
    EXPECT_EQ(c.getattr(1).error, 0);
}

TEST_F(FusePassthroughRawTest, ForgedAndStaleIdsAreRejected) {
    RawClient& c = *client_;
    for (uint64_t id :
         std::initializer_list<uint64_t>{0ull, 2ull, 3ull, 12345ull, 0xffffffffull, 0x100000001ull,
                                         0x100000002ull, 0xffffffff00000002ull, UINT64_MAX}) {
        EXPECT_EQ(c.getattr(id).error, ENOENT) << std::hex << id;
        EXPECT_EQ(c.lookup_error(id, "hello.txt"), ENOENT);
        EXPECT_EQ(c.open(id, O_RDONLY).error, ENOENT);
    }
    fuse_entry_out e = c.lookup(1, "hello.txt");
    uint64_t file = e.nodeid;
    EXPECT_NE(file, 1u);
    // Handles: never opened, forged, and stale after RELEASE.
    for (uint64_t fh : std::initializer_list<uint64_t>{0ull, 1ull, 0x100000000ull, 0x100000001ull,
                                                       0x7777777700000001ull, UINT64_MAX}) {
        EXPECT_EQ(c.read(file, fh, 0, 10).error, EBADF) << std::hex << fh;
        EXPECT_EQ(c.write(file, fh, 0, "x").error, EBADF);
        EXPECT_EQ(c.release(file, fh).error, EBADF);
    }
    uint64_t fh = c.open_fh(file, O_RDONLY);
    EXPECT_EQ(c.read(file, fh, 0, 5).text(), "hello");
    EXPECT_EQ(c.release(file, fh).error, 0);
    EXPECT_EQ(c.read(file, fh, 0, 5).error, EBADF);
    EXPECT_EQ(c.release(file, fh).error, EBADF);
    // A directory handle is not a file handle and vice versa.
    uint64_t dfh = c.open_fh(1, O_RDONLY, true);
    EXPECT_EQ(c.read(1, dfh, 0, 100).error, EBADF);
    EXPECT_EQ(c.release(1, dfh, false).error, EBADF);
    fh = c.open_fh(file, O_RDONLY);
    EXPECT_EQ(c.read(file, fh, 0, 4096, FUSE_READDIR).error, EBADF);
    EXPECT_EQ(c.release(1, dfh, true).error, 0);

    // Lookup counts: three lookups, three forgets, then the id is gone for good.
    EXPECT_EQ(c.lookup(1, "hello.txt").nodeid, file);
    EXPECT_EQ(c.lookup(1, "hello.txt").nodeid, file);
    EXPECT_EQ(fs_->node_count(), 1u);
    c.forget(file, 2);
    EXPECT_EQ(c.getattr(file).error, 0);
    c.forget(file, 1);
    EXPECT_EQ(c.getattr(file).error, ENOENT);
    EXPECT_EQ(fs_->node_count(), 0u);
    // Forgetting what is not there, or too much, or the root, changes nothing.
    c.forget(file, 5);
    c.forget(1, 100);
    c.forget(0xdeadbeef, 1);
    EXPECT_EQ(c.getattr(1).error, 0);
    // A new lookup gets a new id (the slot's generation moved on).
    uint64_t again = c.lookup(1, "hello.txt").nodeid;
    EXPECT_NE(again, file);
    EXPECT_EQ(c.getattr(file).error, ENOENT);
    // The still-open handle keeps working: it holds its own fd.
    EXPECT_EQ(c.read(again, fh, 0, 5).text(), "hello");

    // BATCH_FORGET drops several at once.
    uint64_t sub = c.lookup(1, "sub").nodeid;
    fuse_batch_forget_in bf{};
    bf.count = 2;
    fuse_forget_one f1{}, f2{};
    f1.nodeid = sub;
    f1.nlookup = 1;
    f2.nodeid = again;
    f2.nlookup = 1;
    EXPECT_FALSE(c.call(FUSE_BATCH_FORGET, 0, cat({bytes_of(bf), bytes_of(f1), bytes_of(f2)})).present);
    EXPECT_EQ(fs_->node_count(), 0u);
    EXPECT_EQ(c.getattr(sub).error, ENOENT);
}

TEST_F(FusePassthroughRawTest, SymlinksAreNeverFollowedOnTheHost) {
    RawClient& c = *client_;
    // The symlink is a node of its own, with its target as data.
    fuse_entry_out abs = c.lookup(1, "abs-link");
    EXPECT_TRUE(S_ISLNK(abs.attr.mode));
    RawReply r = c.call(FUSE_READLINK, abs.nodeid);
    EXPECT_EQ(r.error, 0);
    EXPECT_EQ(r.text(), outside_ + "/secret");
    // Nothing reaches through it: no open, no lookup below, no attribute change of the target.
    EXPECT_EQ(c.open(abs.nodeid, O_RDONLY).error, ENXIO);
    EXPECT_EQ(c.open(abs.nodeid, O_RDWR | O_TRUNC).error, ENXIO);
    EXPECT_EQ(c.open(abs.nodeid, O_RDONLY, true).error, ENOTDIR);
    fuse_setattr_in sa{};
    sa.valid = FATTR_SIZE;
    sa.size = 0;
    EXPECT_EQ(c.call(FUSE_SETATTR, abs.nodeid, bytes_of(sa)).error, EINVAL);
    sa.valid = FATTR_MODE;
    sa.mode = 0777;
    EXPECT_NE(c.call(FUSE_SETATTR, abs.nodeid, bytes_of(sa)).error, 0);
    sa.valid = FATTR_UID | FATTR_GID;
    sa.uid = 4242;
    sa.gid = 4242;
    int chown_err = c.call(FUSE_SETATTR, abs.nodeid, bytes_of(sa)).error;
    fuse_getxattr_in gx{};
    gx.size = 100;
    EXPECT_EQ(c.call(FUSE_GETXATTR, abs.nodeid, cat({bytes_of(gx), cstr("user.x")})).error, ENODATA);
    struct {
        uint32_t size, flags;
    } sx{1, 0};
    EXPECT_EQ(c.call(FUSE_SETXATTR, abs.nodeid, cat({bytes_of(sx), cstr("user.x"), Bytes{'v'}})).error,
              EPERM);

    fuse_entry_out rel = c.lookup(1, "rel-dir-link");
    EXPECT_TRUE(S_ISLNK(rel.attr.mode));
    EXPECT_EQ(c.lookup_error(rel.nodeid, "secret"), ENOTDIR);
    fuse_mkdir_in mk{};
    mk.mode = 0755;
    EXPECT_EQ(c.call(FUSE_MKDIR, rel.nodeid, cat({bytes_of(mk), cstr("planted")})).error, ENOTDIR);
    fuse_create_in cr{};
    cr.flags = O_WRONLY;
    cr.mode = S_IFREG | 0644;
    EXPECT_EQ(c.call(FUSE_CREATE, rel.nodeid, cat({bytes_of(cr), cstr("planted")})).error, ENOTDIR);

    // A CREATE naming an existing symlink does not follow it (O_NOFOLLOW|O_EXCL).
    cr.flags = O_WRONLY | O_TRUNC;
    EXPECT_NE(c.call(FUSE_CREATE, 1, cat({bytes_of(cr), cstr("abs-link")})).error, 0);

    // The secret is untouched and nothing was planted outside.
    EXPECT_EQ(read_file(outside_ + "/secret"), "SECRET");
    struct stat st;
    ASSERT_EQ(stat((outside_ + "/secret").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0644u);
    if (chown_err == 0) {
        EXPECT_NE(st.st_uid, 4242u);
    }
    EXPECT_NE(access((outside_ + "/planted").c_str(), F_OK), 0);
}

TEST_F(FusePassthroughRawTest, EscapesThroughNamesAndIdsFail) {
    RawClient& c = *client_;
    fuse_entry_out file = c.lookup(1, "hello.txt");
    fuse_entry_out sub = c.lookup(1, "sub");
    // Names with '/' or ".." in every operation that takes one.
    fuse_mkdir_in mk{};
    mk.mode = 0755;
    for (std::string_view bad : {"..", ".", "../outside/x", "a/b", "/tmp/x", ""}) {
        EXPECT_EQ(c.call(FUSE_MKDIR, 1, cat({bytes_of(mk), cstr(bad)})).error, EINVAL) << bad;
        EXPECT_EQ(c.call(FUSE_UNLINK, sub.nodeid, cstr(bad)).error, EINVAL) << bad;
        EXPECT_EQ(c.call(FUSE_RMDIR, sub.nodeid, cstr(bad)).error, EINVAL) << bad;
        EXPECT_EQ(c.call(FUSE_SYMLINK, 1, cat({cstr(bad), cstr("target")})).error, EINVAL) << bad;
        fuse_rename_in rn{};
        rn.newdir = 1;
        EXPECT_EQ(c.call(FUSE_RENAME, 1, cat({bytes_of(rn), cstr("hello.txt"), cstr(bad)})).error, EINVAL);
        EXPECT_EQ(c.call(FUSE_RENAME, sub.nodeid, cat({bytes_of(rn), cstr(bad), cstr("x")})).error, EINVAL);
        fuse_link_in ln{};
        ln.oldnodeid = file.nodeid;
        EXPECT_EQ(c.call(FUSE_LINK, 1, cat({bytes_of(ln), cstr(bad)})).error, EINVAL);
    }
    // Rename into a forged directory, link from a forged node.
    fuse_rename2_in rn2{};
    rn2.newdir = 0xabcdef;
    EXPECT_EQ(c.call(FUSE_RENAME2, 1, cat({bytes_of(rn2), cstr("hello.txt"), cstr("x")})).error, ENOENT);
    rn2.newdir = 1;
    rn2.flags = 0x80;  // an unknown rename flag
    EXPECT_EQ(c.call(FUSE_RENAME2, 1, cat({bytes_of(rn2), cstr("hello.txt"), cstr("x")})).error, EINVAL);
    fuse_link_in ln{};
    ln.oldnodeid = 0x500000001ull;
    EXPECT_EQ(c.call(FUSE_LINK, 1, cat({bytes_of(ln), cstr("x")})).error, ENOENT);
    // Device nodes are refused (an overlayfs whiteout, char 0:0, is harmless and allowed).
    fuse_mknod_in mn{};
    mn.mode = S_IFCHR | 0666;
    mn.rdev = makedev(1, 3);
    EXPECT_EQ(c.call(FUSE_MKNOD, 1, cat({bytes_of(mn), cstr("null")})).error, EPERM);
    mn.mode = S_IFBLK | 0666;
    mn.rdev = makedev(8, 0);
    EXPECT_EQ(c.call(FUSE_MKNOD, 1, cat({bytes_of(mn), cstr("sda")})).error, EPERM);
    EXPECT_NE(access((share_ + "/null").c_str(), F_OK), 0);
    // A FIFO on the share is never opened (that would block a serving thread).
    fuse_entry_out fifo = c.lookup(1, "fifo");
    EXPECT_TRUE(S_ISFIFO(fifo.attr.mode));
    EXPECT_EQ(c.open(fifo.nodeid, O_RDONLY).error, ENXIO);
    EXPECT_EQ(c.open(fifo.nodeid, O_WRONLY).error, ENXIO);
    fuse_create_in cr{};
    cr.flags = O_RDONLY;
    cr.mode = S_IFREG | 0644;
    EXPECT_EQ(c.call(FUSE_CREATE, 1, cat({bytes_of(cr), cstr("fifo")})).error, EEXIST);
    // Nothing outside changed.
    DIR* d = opendir(outside_.c_str());
    ASSERT_NE(d, nullptr);
    std::set<std::string> names;
    while (dirent* e = readdir(d))
        names.insert(e->d_name);
    closedir(d);
    EXPECT_EQ(names, (std::set<std::string>{".", "..", "secret"}));
    EXPECT_NE(access((dir_ / "x").c_str(), F_OK), 0);
}

TEST_F(FusePassthroughRawTest, HostSideSymlinkSwapRaceNeverLeaksOutside) {
    // The host (not the guest) flips share/walk between a real directory and a symlink to the outside
    // while the guest walks share/walk/secret over and over.
    ASSERT_EQ(mkdir((share_ + "/walk").c_str(), 0755), 0);
    write_file(share_ + "/walk/secret", "inside");
    ASSERT_EQ(symlink(outside_.c_str(), (share_ + "/walk-swap").c_str()), 0);
    std::atomic<bool> stop{false};
    std::thread flipper([&] {
        while (!stop.load()) {
            renameat2(AT_FDCWD, (share_ + "/walk").c_str(), AT_FDCWD, (share_ + "/walk-swap").c_str(),
                      RENAME_EXCHANGE);
        }
    });
    RawClient& c = *client_;
    int inside = 0, refused = 0;
    for (int i = 0; i < 3000; ++i) {
        RawReply dir = c.call(FUSE_LOOKUP, 1, cstr("walk"));
        if (dir.error != 0) continue;
        uint64_t dir_id = dir.as<fuse_entry_out>().nodeid;
        RawReply file = c.call(FUSE_LOOKUP, dir_id, cstr("secret"));
        if (file.error == 0) {
            uint64_t file_id = file.as<fuse_entry_out>().nodeid;
            RawReply open = c.open(file_id, O_RDONLY);
            if (open.error == 0) {
                uint64_t fh = open.as<fuse_open_out>().fh;
                RawReply data = c.read(file_id, fh, 0, 100);
                ASSERT_EQ(data.error, 0);
                ASSERT_EQ(data.text(), "inside");
                ++inside;
                c.release(file_id, fh);
            }
            c.forget(file_id, 1);
        } else {
            EXPECT_EQ(file.error, ENOTDIR);
            ++refused;
        }
        c.forget(dir_id, 1);
    }
    stop = true;
    flipper.join();
    EXPECT_GT(inside, 0);
    EXPECT_EQ(fs_->node_count(), 0u);
    EXPECT_EQ(fs_->handle_count(), 0u);
    RecordProperty("inside", inside);
    RecordProperty("refused", refused);
}

TEST_F(FusePassthroughRawTest, OperationsThroughHandles) {
    RawClient& c = *client_;
    // CREATE gives the new file the caller's uid/gid and the exact mode (our umask is undone).
    fuse_create_in cr{};
    cr.flags = O_RDWR;
    cr.mode = S_IFREG | 0666;
    RawReply r = c.call(FUSE_CREATE, 1, cat({bytes_of(cr), cstr("new.txt")}), 1234, 5678);
    ASSERT_EQ(r.error, 0);
    ASSERT_EQ(r.payload.size(), sizeof(fuse_entry_out) + sizeof(fuse_open_out));
    fuse_entry_out e = r.as<fuse_entry_out>();
    fuse_open_out o;
    std::memcpy(&o, r.payload.data() + sizeof e, sizeof o);
    EXPECT_EQ(e.attr.mode, S_IFREG | 0666u);
    struct stat st;
    ASSERT_EQ(stat((share_ + "/new.txt").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0666u);
    if (geteuid() == 0) {
        EXPECT_EQ(st.st_uid, 1234u);
        EXPECT_EQ(st.st_gid, 5678u);
        EXPECT_EQ(e.attr.uid, 1234u);
    }
    EXPECT_EQ(c.write(e.nodeid, o.fh, 0, "abcdef").as<fuse_write_out>().size, 6u);
    EXPECT_EQ(c.write(e.nodeid, o.fh, 10, "Z").error, 0);
    EXPECT_EQ(read_file(share_ + "/new.txt"), std::string("abcdef\0\0\0\0Z", 11));
    EXPECT_EQ(c.read(e.nodeid, o.fh, 2, 3).text(), "cde");
    // A CREATE of an existing name without O_EXCL opens it (a stale guest cache); with O_EXCL, EEXIST.
    RawReply again = c.call(FUSE_CREATE, 1, cat({bytes_of(cr), cstr("new.txt")}));
    EXPECT_EQ(again.error, 0);
    EXPECT_EQ(again.as<fuse_entry_out>().nodeid, e.nodeid);
    cr.flags = O_RDWR | O_EXCL;
    EXPECT_EQ(c.call(FUSE_CREATE, 1, cat({bytes_of(cr), cstr("new.txt")})).error, EEXIST);

    // SETATTR through the handle: size; and time NOW.
    fuse_setattr_in sa{};
    sa.valid = FATTR_SIZE | FATTR_FH;
    sa.fh = o.fh;
    sa.size = 3;
    r = c.call(FUSE_SETATTR, e.nodeid, bytes_of(sa));
    ASSERT_EQ(r.error, 0);
    EXPECT_EQ(r.as<fuse_attr_out>().attr.size, 3u);
    sa.fh = 0x123400000001ull;  // a forged fh
    EXPECT_EQ(c.call(FUSE_SETATTR, e.nodeid, bytes_of(sa)).error, EBADF);
    sa = {};
    sa.valid = FATTR_ATIME | FATTR_MTIME;
    sa.atime = 1000000000;
    sa.mtime = 1200000000;
    sa.mtimensec = 5;
    ASSERT_EQ(c.call(FUSE_SETATTR, e.nodeid, bytes_of(sa)).error, 0);
    ASSERT_EQ(stat((share_ + "/new.txt").c_str(), &st), 0);
    EXPECT_EQ(st.st_atim.tv_sec, 1000000000);
    EXPECT_EQ(st.st_mtim.tv_sec, 1200000000);
    EXPECT_EQ(st.st_mtim.tv_nsec, 5);
    sa.valid = FATTR_MTIME | FATTR_MTIME_NOW;
    ASSERT_EQ(c.call(FUSE_SETATTR, e.nodeid, bytes_of(sa)).error, 0);
    ASSERT_EQ(stat((share_ + "/new.txt").c_str(), &st), 0);
    EXPECT_GT(st.st_mtim.tv_sec, 1600000000);

    // Writing through a read-only handle fails.
    uint64_t ro = c.open_fh(e.nodeid, O_RDONLY);
    EXPECT_EQ(c.write(e.nodeid, ro, 0, "x").error, EBADF);

    // xattrs, and reply sizes bounded by the request.
    struct {
        uint32_t size, flags;
    } sx{5, 0};
    ASSERT_EQ(
        c.call(FUSE_SETXATTR, e.nodeid, cat({bytes_of(sx), cstr("user.k"), Bytes{'v', 'a', 'l', 'u', 'e'}}))
            .error,
        0);
    fuse_getxattr_in gx{};
    gx.size = 0;
    r = c.call(FUSE_GETXATTR, e.nodeid, cat({bytes_of(gx), cstr("user.k")}));
    EXPECT_EQ(r.as<fuse_getxattr_out>().size, 5u);
    gx.size = 3;
    EXPECT_EQ(c.call(FUSE_GETXATTR, e.nodeid, cat({bytes_of(gx), cstr("user.k")})).error, ERANGE);
    gx.size = 100;
    EXPECT_EQ(c.call(FUSE_GETXATTR, e.nodeid, cat({bytes_of(gx), cstr("user.k")})).text(), "value");
    r = c.call(FUSE_LISTXATTR, e.nodeid, bytes_of(gx));
    EXPECT_NE(r.text().find(std::string("user.k\0", 7)), std::string::npos);

    // READDIR replies fit the size asked for, and offsets resume where the last reply stopped.
    for (int i = 0; i < 50; ++i)
        write_file(share_ + "/sub/f" + std::to_string(i), "x");
    uint64_t sub = c.lookup(1, "sub").nodeid;
    uint64_t dfh = c.open_fh(sub, O_RDONLY, true);
    std::set<std::string> seen;
    uint64_t offset = 0;
    for (int round = 0; round < 100; ++round) {
        RawReply d = c.read(sub, dfh, offset, 200, round % 2 ? FUSE_READDIRPLUS : FUSE_READDIR);
        ASSERT_EQ(d.error, 0);
        EXPECT_LE(d.payload.size(), 200u);
        if (d.payload.empty()) break;
        size_t pos = 0;
        while (pos < d.payload.size()) {
            if (round % 2) pos += sizeof(fuse_entry_out);
            fuse_dirent de;
            std::memcpy(&de, d.payload.data() + pos, sizeof de);
            std::string name(reinterpret_cast<const char*>(d.payload.data() + pos + sizeof de), de.namelen);
            EXPECT_TRUE(seen.insert(name).second) << "duplicate " << name;
            offset = de.off;
            pos += FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + de.namelen);
        }
    }
    EXPECT_EQ(seen.size(), 53u);                                    // 50 + inner + . + ..
    EXPECT_EQ(c.read(sub, dfh, 0, 8, FUSE_READDIR).error, EINVAL);  // not even one entry fits
    EXPECT_EQ(c.release(sub, dfh, true).error, 0);

    // STATFS, ACCESS, FSYNC, FLUSH.
    EXPECT_EQ(c.call(FUSE_STATFS, 1).error, 0);
    fuse_access_in ac{};
    ac.mask = R_OK | W_OK;
    EXPECT_EQ(c.call(FUSE_ACCESS, e.nodeid, bytes_of(ac)).error, 0);
    fuse_fsync_in fs{};
    fs.fh = o.fh;
    EXPECT_EQ(c.call(FUSE_FSYNC, e.nodeid, bytes_of(fs)).error, 0);
    fuse_flush_in fl{};
    fl.fh = o.fh;
    EXPECT_EQ(c.call(FUSE_FLUSH, e.nodeid, bytes_of(fl)).error, 0);
    EXPECT_EQ(c.release(e.nodeid, o.fh).error, 0);
    EXPECT_EQ(c.release(e.nodeid, ro).error, 0);
}

TEST_F(FusePassthroughRawTest, LocksConflictWaitAndInterrupt) {
    RawClient& c = *client_;
    uint64_t file = c.lookup(1, "hello.txt").nodeid;
    uint64_t fh = c.open_fh(file, O_RDWR);
    // A host process holds a write lock on bytes 0..9.
    int host = open((share_ + "/hello.txt").c_str(), O_RDWR);
    ASSERT_GE(host, 0);
    struct flock hl {};
    hl.l_type = F_WRLCK;
    hl.l_whence = SEEK_SET;
    hl.l_len = 10;
    ASSERT_EQ(fcntl(host, F_OFD_SETLK, &hl), 0);
    auto lk_in = [&](uint32_t type, uint64_t owner) {
        fuse_lk_in in{};
        in.fh = fh;
        in.owner = owner;
        in.lk.type = type;
        in.lk.start = 5;
        in.lk.end = INT64_MAX;
        return bytes_of(in);
    };
    RawReply g = c.call(FUSE_GETLK, file, lk_in(F_WRLCK, 7));
    ASSERT_EQ(g.error, 0);
    EXPECT_EQ(g.as<fuse_lk_out>().lk.type, uint32_t{F_WRLCK});
    EXPECT_EQ(g.as<fuse_lk_out>().lk.start, 0u);
    EXPECT_EQ(g.as<fuse_lk_out>().lk.end, 9u);
    EXPECT_EQ(c.call(FUSE_SETLK, file, lk_in(F_WRLCK, 7)).error, EAGAIN);

    // SETLKW waits, polling, and gets the lock once the host lets go.
    RawClient waiter(*fs_);
    Bytes req = waiter.request(FUSE_SETLKW, file, lk_in(F_WRLCK, 7));
    std::atomic<int> result{-1};
    std::thread t([&] { result = waiter.raw(req).error; });
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // (it may or may not be waiting yet)
    hl.l_type = F_UNLCK;
    ASSERT_EQ(fcntl(host, F_OFD_SETLK, &hl), 0);
    t.join();
    EXPECT_EQ(result.load(), 0);
    EXPECT_EQ(fs_->lock_file_count(), 1u);
    // Now the guest owner 7 holds it: the host conflicts, another guest owner too, owner 7 itself not.
    hl.l_type = F_WRLCK;
    EXPECT_EQ(fcntl(host, F_OFD_SETLK, &hl), -1);
    EXPECT_EQ(c.call(FUSE_SETLK, file, lk_in(F_RDLCK, 8)).error, EAGAIN);
    EXPECT_EQ(c.call(FUSE_SETLK, file, lk_in(F_RDLCK, 7)).error, 0);
    EXPECT_EQ(c.call(FUSE_GETLK, file, lk_in(F_WRLCK, 7)).as<fuse_lk_out>().lk.type, uint32_t{F_UNLCK});

    // A SETLKW the kernel interrupts ends with EINTR, well before the wait limit.
    Bytes req8 = waiter.request(FUSE_SETLKW, file, lk_in(F_WRLCK, 8));
    fuse_in_header h8;
    std::memcpy(&h8, req8.data(), sizeof h8);
    std::atomic<bool> done{false};
    auto start = std::chrono::steady_clock::now();
    std::thread t8([&] {
        result = waiter.raw(req8).error;
        done = true;
    });
    fuse_interrupt_in intr{};
    intr.unique = h8.unique;
    while (!done) {
        EXPECT_FALSE(c.call(FUSE_INTERRUPT, 0, bytes_of(intr)).present);
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    t8.join();
    EXPECT_EQ(result.load(), EINTR);
    EXPECT_LT(std::chrono::steady_clock::now() - start, kLockWaitLimit);

    // FLUSH by owner 7 (a close in its process) drops its locks; owner 8's (empty) lock file stays until
    // it closes too.
    EXPECT_EQ(fs_->lock_file_count(), 2u);
    fuse_flush_in fl{};
    fl.fh = fh;
    fl.lock_owner = 7;
    EXPECT_EQ(c.call(FUSE_FLUSH, file, bytes_of(fl)).error, 0);
    EXPECT_EQ(fs_->lock_file_count(), 1u);
    fl.lock_owner = 8;
    EXPECT_EQ(c.call(FUSE_FLUSH, file, bytes_of(fl)).error, 0);
    EXPECT_EQ(fs_->lock_file_count(), 0u);
    EXPECT_EQ(fcntl(host, F_OFD_SETLK, &hl), 0);
    close(host);

    // flock: per handle.
    uint64_t fh2 = c.open_fh(file, O_RDONLY);
    fuse_lk_in fk{};
    fk.fh = fh;
    fk.lk.type = F_WRLCK;
    fk.lk_flags = FUSE_LK_FLOCK;
    EXPECT_EQ(c.call(FUSE_SETLK, file, bytes_of(fk)).error, 0);
    fk.fh = fh2;
    fk.lk.type = F_RDLCK;
    EXPECT_EQ(c.call(FUSE_SETLK, file, bytes_of(fk)).error, EAGAIN);
    fuse_release_in rel{};
    rel.fh = fh;
    rel.release_flags = FUSE_RELEASE_FLOCK_UNLOCK;
    EXPECT_EQ(c.call(FUSE_RELEASE, file, bytes_of(rel)).error, 0);
    EXPECT_EQ(c.call(FUSE_SETLK, file, bytes_of(fk)).error, 0);
    EXPECT_EQ(c.release(file, fh2).error, 0);
}

TEST_F(FusePassthroughRawTest, ReadOnlyRefusesEveryMutation) {
    make_fs(true);
    RawClient& c = *client_;
    fuse_entry_out file = c.lookup(1, "hello.txt");
    EXPECT_EQ(c.open(file.nodeid, O_WRONLY).error, EROFS);
    EXPECT_EQ(c.open(file.nodeid, O_RDWR).error, EROFS);
    EXPECT_EQ(c.open(file.nodeid, O_RDONLY | O_TRUNC).error, EROFS);
    uint64_t fh = c.open_fh(file.nodeid, O_RDONLY);
    EXPECT_EQ(c.read(file.nodeid, fh, 0, 5).text(), "hello");
    EXPECT_EQ(c.write(file.nodeid, fh, 0, "x").error, EROFS);
    fuse_create_in cr{};
    cr.flags = O_WRONLY;
    cr.mode = S_IFREG | 0644;
    EXPECT_EQ(c.call(FUSE_CREATE, 1, cat({bytes_of(cr), cstr("n")})).error, EROFS);
    fuse_mkdir_in mk{};
    mk.mode = 0755;
    EXPECT_EQ(c.call(FUSE_MKDIR, 1, cat({bytes_of(mk), cstr("d")})).error, EROFS);
    fuse_mknod_in mn{};
    mn.mode = S_IFIFO | 0644;
    EXPECT_EQ(c.call(FUSE_MKNOD, 1, cat({bytes_of(mn), cstr("p")})).error, EROFS);
    EXPECT_EQ(c.call(FUSE_SYMLINK, 1, cat({cstr("s"), cstr("t")})).error, EROFS);
    EXPECT_EQ(c.call(FUSE_UNLINK, 1, cstr("hello.txt")).error, EROFS);
    EXPECT_EQ(c.call(FUSE_RMDIR, 1, cstr("sub")).error, EROFS);
    fuse_rename_in rn{};
    rn.newdir = 1;
    EXPECT_EQ(c.call(FUSE_RENAME, 1, cat({bytes_of(rn), cstr("hello.txt"), cstr("x")})).error, EROFS);
    fuse_link_in ln{};
    ln.oldnodeid = file.nodeid;
    EXPECT_EQ(c.call(FUSE_LINK, 1, cat({bytes_of(ln), cstr("x")})).error, EROFS);
    fuse_setattr_in sa{};
    sa.valid = FATTR_MODE;
    sa.mode = 0777;
    EXPECT_EQ(c.call(FUSE_SETATTR, file.nodeid, bytes_of(sa)).error, EROFS);
    struct {
        uint32_t size, flags;
    } sx{1, 0};
    EXPECT_EQ(c.call(FUSE_SETXATTR, file.nodeid, cat({bytes_of(sx), cstr("user.x"), Bytes{'v'}})).error,
              EROFS);
    EXPECT_EQ(c.call(FUSE_REMOVEXATTR, file.nodeid, cstr("user.x")).error, EROFS);
    fuse_fallocate_in fa{};
    fa.fh = fh;
    fa.length = 100;
    EXPECT_EQ(c.call(FUSE_FALLOCATE, file.nodeid, bytes_of(fa)).error, EROFS);
    fuse_access_in ac{};
    ac.mask = W_OK;
    EXPECT_EQ(c.call(FUSE_ACCESS, file.nodeid, bytes_of(ac)).error, EROFS);
    EXPECT_EQ(read_file(share_ + "/hello.txt"), "hello, world\n");
    struct stat st;
    ASSERT_EQ(stat((share_ + "/hello.txt").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0644u);
}

TEST_F(FusePassthroughRawTest, ConcurrentRequestsFromManyThreads) {
    for (int i = 0; i < 20; ++i)
        write_file(share_ + "/c" + std::to_string(i), std::string(100, static_cast<char>('a' + i)));
    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&, t] {
            RawClient c(*fs_);
            for (int i = 0; i < 400; ++i) {
                std::string name = "c" + std::to_string((i + t) % 20);
                RawReply e = c.call(FUSE_LOOKUP, 1, cstr(name));
                if (e.error != 0) {
                    ++failures;
                    continue;
                }
                uint64_t id = e.as<fuse_entry_out>().nodeid;
                RawReply o = c.open(id, O_RDONLY);
                if (o.error == 0) {
                    uint64_t fh = o.as<fuse_open_out>().fh;
                    RawReply d = c.read(id, fh, 0, 100);
                    if (d.text() != std::string(100, static_cast<char>('a' + (i + t) % 20))) ++failures;
                    c.release(id, fh);
                } else {
                    ++failures;
                }
                c.forget(id, 1);
            }
        });
    }
    for (auto& t : threads)
        t.join();
    EXPECT_EQ(failures.load(), 0);
    EXPECT_EQ(fs_->node_count(), 0u);
    EXPECT_EQ(fs_->handle_count(), 0u);
}

TEST_F(FusePassthroughRawTest, RandomRequestsNeverCrashOrEscape) {
    // Random opcodes with argument bytes that are mostly garbage but often carry live node ids, handles and
    // plausible names, so deep paths are reached. FALLOCATE (could reserve real disk) and SETLKW (waits)
    // are left out.
    std::mt19937_64 rng(20240611);
    std::vector<uint64_t> ids{1}, fhs{0};
    const std::vector<std::string> names{
        "a", "b",   "hello.txt", "sub",   "abs-link", "rel-dir-link",       "fifo", "..",
        ".", "x/y", "",          "inner", "c",        std::string(300, 'n')};
    RawClient& c = *client_;
    auto pick = [&](const auto& v) { return v[rng() % v.size()]; };
    for (int i = 0; i < 30000; ++i) {
        uint32_t op = 1 + static_cast<uint32_t>(rng() % 52);
        if (op == FUSE_FALLOCATE || op == FUSE_SETLKW) continue;
        if (op == FUSE_INIT) continue;
        if ((op == FUSE_FORGET || op == FUSE_BATCH_FORGET) && rng() % 10 != 0) continue;
        if (op == FUSE_DESTROY) {
            if (rng() % 100 != 0) continue;
            // A new session: every id and handle of the old one is stale.
            EXPECT_EQ(c.call(FUSE_DESTROY, 0).error, 0);
            ASSERT_EQ(c.init().error, 0);
            if (rng() % 2) {
                ids = {1};
                fhs = {0};
            }
            continue;
        }
        Bytes args(rng() % 72);
        for (auto& b : args)
            b = static_cast<uint8_t>(rng() % 4 == 0 ? rng() : 0);
        auto put64 = [&](size_t at, uint64_t v) {
            if (args.size() >= at + 8) std::memcpy(args.data() + at, &v, 8);
        };
        auto put32 = [&](size_t at, uint32_t v) {
            if (args.size() >= at + 4) std::memcpy(args.data() + at, &v, 4);
        };
        if (rng() % 2) put64(0, pick(fhs));
        if (rng() % 2) put32(16, static_cast<uint32_t>(rng() % 5000));  // read/write sizes
        if (rng() % 3 == 0) put64(16, pick(ids));                       // copy_file_range nodeid_out
        if (rng() % 3 == 0) put64(24, pick(fhs));
        if (rng() % 2) {
            size_t keep = std::min<size_t>(args.size(), rng() % 2 ? 0 : 16);
            args.resize(keep);
            Bytes n1 = cstr(pick(names));
            args.insert(args.end(), n1.begin(), n1.end());
            if (rng() % 2) {
                Bytes n2 = cstr(pick(names));
                args.insert(args.end(), n2.begin(), n2.end());
            }
            if (rng() % 4 == 0) args.resize(args.size() - 1);  // lose the last NUL
        }
        uint64_t node = rng() % 20 == 0 ? rng() : pick(ids);
        RawReply r =
            c.call(op, node, args, static_cast<uint32_t>(rng() % 3000), static_cast<uint32_t>(rng() % 3000));
        if (!r.present || r.error != 0) continue;
        if ((op == FUSE_LOOKUP || op == FUSE_MKDIR || op == FUSE_MKNOD || op == FUSE_SYMLINK ||
             op == FUSE_LINK || op == FUSE_CREATE) &&
            r.payload.size() >= sizeof(fuse_entry_out)) {
            ids.push_back(r.as<fuse_entry_out>().nodeid);
        }
        if (op == FUSE_CREATE && r.payload.size() >= sizeof(fuse_entry_out) + sizeof(fuse_open_out)) {
            fuse_open_out o;
            std::memcpy(&o, r.payload.data() + sizeof(fuse_entry_out), sizeof o);
            fhs.push_back(o.fh);
        }
        if ((op == FUSE_OPEN || op == FUSE_OPENDIR) && r.payload.size() >= sizeof(fuse_open_out)) {
            fhs.push_back(r.as<fuse_open_out>().fh);
        }
        if (ids.size() > 200) ids.erase(ids.begin() + 1, ids.begin() + 100);
        if (fhs.size() > 200) fhs.erase(fhs.begin() + 1, fhs.begin() + 100);
    }
    // Still serving, and nothing outside the share changed.
    ASSERT_EQ(client_->init().error, 0);
    EXPECT_EQ(c.getattr(1).error, 0);
    EXPECT_EQ(read_file(outside_ + "/secret"), "SECRET");
    std::set<std::string> top, out;
    for (const auto& e : std::filesystem::directory_iterator(dir_.path()))
        top.insert(e.path().filename());
    for (const auto& e : std::filesystem::directory_iterator(outside_))
        out.insert(e.path().filename());
    EXPECT_EQ(top, (std::set<std::string>{"share", "outside"}));
    EXPECT_EQ(out, (std::set<std::string>{"secret"}));
}

// ---------------------------------------------------------------------------------------------------------
// Through a real mount

// Forwards to the server and counts requests by opcode, so tests can check which operations the kernel used.
class CountingHandler : public FuseHandler {
  public:
    explicit CountingHandler(FuseHandler& inner) : inner_(inner) {}
    void handle(std::span<const uint8_t> request, std::vector<uint8_t>& reply) override {
        if (request.size() >= sizeof(fuse_in_header)) {
            fuse_in_header h;
            std::memcpy(&h, request.data(), sizeof h);
            if (h.opcode < counts_.size()) counts_[h.opcode]++;
        }
        inner_.handle(request, reply);
    }
    uint32_t max_io() const override { return inner_.max_io(); }
    int count(uint32_t opcode) const { return counts_.at(opcode).load(); }

  private:
    FuseHandler& inner_;
    std::array<std::atomic<int>, 64> counts_{};
};

class FusePassthroughMountTest : public ::testing::Test {
  protected:
    void SetUp() override {
        if (geteuid() != 0) GTEST_SKIP() << "needs root (mounting FUSE)";
        if (access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "no /dev/fuse";
        ASSERT_FALSE(dir_.path().empty());
        // share/ and outside/ side by side; the mount two levels down, so a relative "../outside" resolves
        // to something else on the client side than it would on the server side.
        share_ = dir_ / "share";
        outside_ = dir_ / "outside";
        mnt_ = dir_ / "m/mnt";
        ASSERT_EQ(mkdir(share_.c_str(), 0755), 0);
        ASSERT_EQ(mkdir(outside_.c_str(), 0755), 0);
        ASSERT_EQ(mkdir((dir_ / "m").c_str(), 0755), 0);
        ASSERT_EQ(mkdir(mnt_.c_str(), 0755), 0);
        write_file(outside_ + "/secret", "SECRET");
    }
    void TearDown() override { unmount(); }

    void mount_share(PassthroughOptions options = {}) {
        options.root = share_;
        auto fs = PassthroughFs::create(options);
        ASSERT_TRUE(fs.has_value()) << fs.error().to_string();
        fs_ = std::move(*fs);
        counter_ = std::make_unique<CountingHandler>(*fs_);
        auto m = FuseDevMount::mount(mnt_, *counter_, 4);
        if (!m && (m.error().code == EPERM || m.error().code == ENODEV)) {
            GTEST_SKIP() << "cannot mount FUSE here: " << m.error().to_string();
        }
        ASSERT_TRUE(m.has_value()) << m.error().to_string();
        mount_ = std::move(*m);
    }
    void unmount() {
        mount_.reset();
        counter_.reset();
        fs_.reset();
    }
    int count(uint32_t opcode) const { return counter_->count(opcode); }
    std::string m(std::string_view rel) const { return mnt_ + "/" + std::string(rel); }
    std::string s(std::string_view rel) const { return share_ + "/" + std::string(rel); }

    // Runs a shell command with the mount as the working directory; fails the test on a non-zero status.
    std::string sh(const std::string& command) {
        auto r = run_command({"sh", "-c", "cd " + mnt_ + " && " + command});
        EXPECT_EQ(r.status, 0) << command << "\n" << r.output;
        return r.output;
    }

    TempDir dir_{"fuse-mnt"};
    std::string share_, outside_, mnt_;
    std::unique_ptr<PassthroughFs> fs_;
    std::unique_ptr<CountingHandler> counter_;
    std::unique_ptr<FuseDevMount> mount_;
};

bool have_program(const char* name) {
    return run_command({"sh", "-c", std::string("command -v ") + name}).status == 0;
}

TEST_F(FusePassthroughMountTest, CreateWriteReadAppend) {
    mount_share();
    int fd = open(m("a.txt").c_str(), O_CREAT | O_WRONLY | O_EXCL, 0640);
    ASSERT_GE(fd, 0) << strerror(errno);
    ASSERT_EQ(write(fd, "hello ", 6), 6);
    ASSERT_EQ(write(fd, "world", 5), 5);
    ASSERT_EQ(close(fd), 0);
    EXPECT_EQ(read_file(s("a.txt")), "hello world");
    EXPECT_EQ(read_file(m("a.txt")), "hello world");
    struct stat st;
    ASSERT_EQ(stat(m("a.txt").c_str(), &st), 0);
    EXPECT_EQ(st.st_size, 11);
    EXPECT_EQ(st.st_mode, S_IFREG | 0640u);
    fd = open(m("a.txt").c_str(), O_WRONLY | O_APPEND);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, "!", 1), 1);
    close(fd);
    EXPECT_EQ(read_file(s("a.txt")), "hello world!");
    fd = open(m("a.txt").c_str(), O_WRONLY | O_TRUNC);
    ASSERT_GE(fd, 0);
    close(fd);
    EXPECT_EQ(read_file(s("a.txt")), "");
    EXPECT_EQ(open(m("a.txt").c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644), -1);
    EXPECT_EQ(errno, EEXIST);
    // Changes made on the host show up (after the attribute timeout, here 1 s at most; reopen is enough
    // for the data since the size is re-read on open with AUTO_INVAL_DATA only when attributes expire).
    write_file(s("host.txt"), "from host");
    EXPECT_EQ(read_file(m("host.txt")), "from host");
    // mknod of a FIFO works; of a device it does not.
    EXPECT_EQ(mkfifo(m("pipe").c_str(), 0600), 0);
    ASSERT_EQ(lstat(s("pipe").c_str(), &st), 0);
    EXPECT_TRUE(S_ISFIFO(st.st_mode));
    EXPECT_EQ(mknod(m("null").c_str(), S_IFCHR | 0666, makedev(1, 3)), -1);
}

TEST_F(FusePassthroughMountTest, RenameLinkSymlinkTrees) {
    mount_share();
    sh("mkdir -p a/b/c && echo one > a/b/c/f1 && echo two > a/b/f2 && ln -s b/c a/link && ln a/b/f2 a/hard");
    EXPECT_EQ(read_file(m("a/link/f1")), "one\n");
    char buf[64];
    ssize_t n = readlink(m("a/link").c_str(), buf, sizeof buf);
    ASSERT_EQ(n, 3);
    EXPECT_EQ(std::string(buf, 3), "b/c");
    struct stat st1, st2;
    ASSERT_EQ(stat(m("a/hard").c_str(), &st1), 0);
    ASSERT_EQ(stat(m("a/b/f2").c_str(), &st2), 0);
    EXPECT_EQ(st1.st_ino, st2.st_ino);
    EXPECT_EQ(st1.st_nlink, 2u);
    ASSERT_EQ(stat(s("a/hard").c_str(), &st1), 0);
    EXPECT_EQ(st1.st_nlink, 2u);
    // Rename a whole tree, then check everything moved on the host.
    ASSERT_EQ(rename(m("a").c_str(), m("z").c_str()), 0);
    EXPECT_EQ(read_file(s("z/b/c/f1")), "one\n");
    EXPECT_EQ(read_file(m("z/link/f1")), "one\n");
    // RENAME_NOREPLACE and RENAME_EXCHANGE.
    write_file(m("x"), "X");
    write_file(m("y"), "Y");
    EXPECT_EQ(renameat2(AT_FDCWD, m("x").c_str(), AT_FDCWD, m("y").c_str(), RENAME_NOREPLACE), -1);
    EXPECT_EQ(errno, EEXIST);
    ASSERT_EQ(renameat2(AT_FDCWD, m("x").c_str(), AT_FDCWD, m("y").c_str(), RENAME_EXCHANGE), 0);
    EXPECT_EQ(read_file(s("x")), "Y");
    EXPECT_EQ(read_file(s("y")), "X");
    ASSERT_EQ(rename(m("x").c_str(), m("y").c_str()), 0);
    EXPECT_EQ(read_file(m("y")), "Y");
    EXPECT_NE(access(s("x").c_str(), F_OK), 0);
    // cp -a of a tree with links, then diff against the original.
    sh("cp -a z z2 && diff -r z z2 && test -L z2/link && find z2 | sort > list && wc -l < list");
    sh("rm -rf z z2 && test ! -e z");
    EXPECT_GT(count(FUSE_LINK), 0);
    EXPECT_GT(count(FUSE_SYMLINK), 0);
    EXPECT_GT(count(FUSE_RENAME2), 0);
    EXPECT_GT(count(FUSE_READLINK), 0);
}

TEST_F(FusePassthroughMountTest, MkdirRmdir) {
    mount_share();
    ASSERT_EQ(mkdir(m("d").c_str(), 0750), 0);
    struct stat st;
    ASSERT_EQ(stat(s("d").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode, S_IFDIR | 0750u);
    ASSERT_EQ(mkdir(m("d/e").c_str(), 0777), 0);
    EXPECT_EQ(rmdir(m("d").c_str()), -1);
    EXPECT_EQ(errno, ENOTEMPTY);
    EXPECT_EQ(mkdir(m("d").c_str(), 0777), -1);
    EXPECT_EQ(errno, EEXIST);
    ASSERT_EQ(rmdir(m("d/e").c_str()), 0);
    ASSERT_EQ(rmdir(m("d").c_str()), 0);
    EXPECT_NE(access(s("d").c_str(), F_OK), 0);
    // A setgid directory passes its group on, as on any local filesystem.
    ASSERT_EQ(mkdir(m("g").c_str(), 0775), 0);
    ASSERT_EQ(chown(m("g").c_str(), 0, 4321), 0);
    ASSERT_EQ(chmod(m("g").c_str(), 02775), 0);
    ASSERT_EQ(mkdir(m("g/sub").c_str(), 0755), 0);
    write_file(m("g/file"), "x");
    ASSERT_EQ(stat(s("g/sub").c_str(), &st), 0);
    EXPECT_EQ(st.st_gid, 4321u);
    EXPECT_TRUE(st.st_mode & S_ISGID);
    ASSERT_EQ(stat(s("g/file").c_str(), &st), 0);
    EXPECT_EQ(st.st_gid, 4321u);
}

TEST_F(FusePassthroughMountTest, ReaddirManyEntries) {
    constexpr int kCount = 5000;
    ASSERT_EQ(mkdir(s("many").c_str(), 0755), 0);
    std::set<std::string> expected;
    for (int i = 0; i < kCount; ++i) {
        std::string name = "entry-" + std::to_string(i) + "-" + std::string(i % 90, 'n');
        expected.insert(name);
        write_file(s("many/" + name), "");
    }
    mount_share();
    DIR* d = opendir(m("many").c_str());
    ASSERT_NE(d, nullptr);
    std::set<std::string> seen;
    long mark = -1;
    std::string name_at_mark;
    int listed = 0;
    while (dirent* e = readdir(d)) {
        std::string name = e->d_name;
        if (name == "." || name == "..") continue;
        EXPECT_TRUE(seen.insert(name).second) << "duplicate " << name;
        if (++listed == 1234) {
            mark = telldir(d);
        } else if (listed == 1235) {
            name_at_mark = name;
        }
    }
    EXPECT_EQ(seen, expected);
    // seekdir back to a cookie in the middle resumes there.
    ASSERT_GE(mark, 0);
    seekdir(d, mark);
    dirent* e = readdir(d);
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(name_at_mark, e->d_name);
    closedir(d);
    EXPECT_EQ(sh("ls -f many | grep -c ^entry-"), std::to_string(kCount) + "\n");
    EXPECT_EQ(sh("ls -l many | grep -c entry-"), std::to_string(kCount) + "\n");
    EXPECT_GT(count(FUSE_READDIRPLUS), 0);
    sh("rm -rf many");
    EXPECT_NE(access(s("many").c_str(), F_OK), 0);
}

TEST_F(FusePassthroughMountTest, TruncateChmodChownUtimes) {
    mount_share();
    write_file(m("t"), "0123456789");
    ASSERT_EQ(truncate(m("t").c_str(), 4), 0);
    EXPECT_EQ(read_file(s("t")), "0123");
    ASSERT_EQ(truncate(m("t").c_str(), 8), 0);
    EXPECT_EQ(read_file(s("t")), std::string("0123\0\0\0\0", 8));
    int fd = open(m("t").c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, 2), 0);
    close(fd);
    EXPECT_EQ(read_file(s("t")), "01");
    ASSERT_EQ(chmod(m("t").c_str(), 0604), 0);
    struct stat st;
    ASSERT_EQ(stat(s("t").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0604u);
    ASSERT_EQ(chown(m("t").c_str(), 1000, 1001), 0);
    ASSERT_EQ(stat(s("t").c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, 1000u);
    EXPECT_EQ(st.st_gid, 1001u);
    struct timespec ts[2] = {{1111111111, 111}, {1222222222, 222}};
    ASSERT_EQ(utimensat(AT_FDCWD, m("t").c_str(), ts, 0), 0);
    ASSERT_EQ(stat(s("t").c_str(), &st), 0);
    EXPECT_EQ(st.st_atim.tv_sec, 1111111111);
    EXPECT_EQ(st.st_mtim.tv_sec, 1222222222);
    EXPECT_EQ(st.st_mtim.tv_nsec, 222);
    ASSERT_EQ(utimensat(AT_FDCWD, m("t").c_str(), nullptr, 0), 0);  // both NOW
    ASSERT_EQ(stat(s("t").c_str(), &st), 0);
    EXPECT_GT(st.st_mtim.tv_sec, 1600000000);
    sh("touch -d '2001-02-03 04:05:06' t");
    ASSERT_EQ(stat(s("t").c_str(), &st), 0);
    EXPECT_LT(std::abs(st.st_mtim.tv_sec - 981173106), 86400);  // give or take the local time zone
    // Symlink times without following.
    ASSERT_EQ(symlink("t", m("l").c_str()), 0);
    ASSERT_EQ(utimensat(AT_FDCWD, m("l").c_str(), ts, AT_SYMLINK_NOFOLLOW), 0);
    ASSERT_EQ(lstat(s("l").c_str(), &st), 0);
    EXPECT_EQ(st.st_mtim.tv_sec, 1222222222);
}

TEST_F(FusePassthroughMountTest, Xattrs) {
    mount_share();
    write_file(m("x"), "x");
    if (setxattr(m("x").c_str(), "user.color", "blue", 4, 0) != 0) {
        GTEST_SKIP() << "host filesystem without user xattrs: " << strerror(errno);
    }
    char buf[256];
    ssize_t n = getxattr(m("x").c_str(), "user.color", buf, sizeof buf);
    ASSERT_EQ(n, 4);
    EXPECT_EQ(std::string(buf, 4), "blue");
    n = getxattr(s("x").c_str(), "user.color", buf, sizeof buf);
    ASSERT_EQ(n, 4);
    EXPECT_EQ(getxattr(m("x").c_str(), "user.color", buf, 2), -1);
    EXPECT_EQ(errno, ERANGE);
    EXPECT_EQ(setxattr(m("x").c_str(), "user.color", "red", 3, XATTR_CREATE), -1);
    EXPECT_EQ(errno, EEXIST);
    ASSERT_EQ(setxattr(m("x").c_str(), "user.size", "big", 3, 0), 0);
    n = listxattr(m("x").c_str(), buf, sizeof buf);
    ASSERT_GT(n, 0);
    std::string list(buf, static_cast<size_t>(n));
    EXPECT_NE(list.find(std::string("user.color\0", 11)), std::string::npos);
    EXPECT_NE(list.find(std::string("user.size\0", 10)), std::string::npos);
    ASSERT_EQ(removexattr(m("x").c_str(), "user.color"), 0);
    EXPECT_EQ(getxattr(m("x").c_str(), "user.color", buf, sizeof buf), -1);
    EXPECT_EQ(errno, ENODATA);
    // Directories too.
    ASSERT_EQ(mkdir(m("d").c_str(), 0755), 0);
    ASSERT_EQ(setxattr(m("d").c_str(), "user.k", "v", 1, 0), 0);
    EXPECT_EQ(getxattr(s("d").c_str(), "user.k", buf, sizeof buf), 1);
}

// A root guest must not plant anything the host would run with privileges: no setuid/setgid files and no
// file capabilities or other security.* / trusted.* xattrs reach the host.
TEST_F(FusePassthroughMountTest, NoSetuidFilesOrSecurityXattrsReachTheHost) {
    mount_share();
    write_file(m("tool"), "#!/bin/sh\n");
    ASSERT_EQ(chmod(m("tool").c_str(), 06755), 0);
    struct stat st;
    ASSERT_EQ(stat(s("tool").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0755u);
    int fd = open(m("made").c_str(), O_CREAT | O_WRONLY | O_EXCL, 04755);
    ASSERT_GE(fd, 0);
    close(fd);
    ASSERT_EQ(stat(s("made").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & (S_ISUID | S_ISGID), 0u);
    ASSERT_EQ(mknod(m("node").c_str(), S_IFREG | 06700, 0), 0);
    ASSERT_EQ(stat(s("node").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & (S_ISUID | S_ISGID), 0u);
    // A setgid directory is harmless and keeps its bit.
    ASSERT_EQ(mkdir(m("shared").c_str(), 0775), 0);
    ASSERT_EQ(chmod(m("shared").c_str(), 02775), 0);
    ASSERT_EQ(stat(s("shared").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 02775u);
    const char cap[] = "\x01\x00\x00\x02\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    EXPECT_EQ(setxattr(m("tool").c_str(), "security.capability", cap, sizeof cap - 1, 0), -1);
    EXPECT_EQ(errno, EPERM);
    EXPECT_EQ(setxattr(m("tool").c_str(), "trusted.overlay.opaque", "y", 1, 0), -1);
    EXPECT_EQ(errno, EPERM);
    char buf[64];
    EXPECT_EQ(getxattr(s("tool").c_str(), "security.capability", buf, sizeof buf), -1);
}

TEST_F(FusePassthroughMountTest, FlockAndFcntlLocks) {
    mount_share();
    write_file(m("lock"), "data");
    int fd1 = open(m("lock").c_str(), O_RDWR);
    int fd2 = open(m("lock").c_str(), O_RDWR);
    ASSERT_GE(fd1, 0);
    ASSERT_GE(fd2, 0);
    // flock: per open file.
    ASSERT_EQ(flock(fd1, LOCK_EX | LOCK_NB), 0);
    EXPECT_EQ(flock(fd2, LOCK_EX | LOCK_NB), -1);
    EXPECT_EQ(errno, EWOULDBLOCK);
    EXPECT_EQ(flock(fd2, LOCK_SH | LOCK_NB), -1);
    ASSERT_EQ(flock(fd1, LOCK_UN), 0);
    ASSERT_EQ(flock(fd2, LOCK_SH | LOCK_NB), 0);
    ASSERT_EQ(flock(fd1, LOCK_SH | LOCK_NB), 0);
    ASSERT_EQ(flock(fd1, LOCK_UN), 0);
    ASSERT_EQ(flock(fd2, LOCK_UN), 0);

    // POSIX locks: per process. Our second fd does not conflict with our first.
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 0;
    fl.l_len = 2;
    ASSERT_EQ(fcntl(fd1, F_SETLK, &fl), 0) << strerror(errno);
    ASSERT_EQ(fcntl(fd2, F_SETLK, &fl), 0) << strerror(errno);
    // Another process conflicts, and F_GETLK shows the lock.
    auto child_try = [&](int expect_result) {
        pid_t pid = fork();
        if (pid == 0) {
            int fd = open(m("lock").c_str(), O_RDWR);
            struct flock c {};
            c.l_type = F_WRLCK;
            c.l_whence = SEEK_SET;
            c.l_start = 1;
            c.l_len = 1;
            struct flock probe = c;
            if (fcntl(fd, F_GETLK, &probe) != 0) _exit(10);
            int rc = fcntl(fd, F_SETLK, &c);
            int conflict = (rc == -1 && (errno == EAGAIN || errno == EACCES)) ? 1 : 0;
            if (rc != 0 && !conflict) _exit(11);
            // A conflict must also be visible to F_GETLK (and the range must be the holder's).
            if (conflict && (probe.l_type != F_WRLCK || probe.l_start != 0 || probe.l_len != 2)) _exit(12);
            if (!conflict && probe.l_type != F_UNLCK) _exit(13);
            _exit(conflict);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        ASSERT_TRUE(WIFEXITED(status));
        EXPECT_EQ(WEXITSTATUS(status), expect_result);
    };
    child_try(1);
    // A lock on a disjoint range does not conflict.
    // Closing any of our fds drops all our locks on the file (POSIX), then the child gets the lock.
    close(fd2);
    child_try(0);

    // The host sees the guest's locks: a host OFD lock conflicts with a guest lock and vice versa.
    ASSERT_EQ(fcntl(fd1, F_SETLK, &fl), 0);
    int host = open(s("lock").c_str(), O_RDWR);
    ASSERT_GE(host, 0);
    struct flock hfl = fl;
    EXPECT_EQ(fcntl(host, F_OFD_SETLK, &hfl), -1);
    fl.l_type = F_UNLCK;
    ASSERT_EQ(fcntl(fd1, F_SETLK, &fl), 0);
    hfl.l_type = F_WRLCK;
    EXPECT_EQ(fcntl(host, F_OFD_SETLK, &hfl), 0);
    fl.l_type = F_WRLCK;
    EXPECT_EQ(fcntl(fd1, F_SETLK, &fl), -1);
    EXPECT_TRUE(errno == EAGAIN || errno == EACCES);
    close(host);

    // F_SETLKW waits for the holder: a child blocks on our lock until we drop it.
    ASSERT_EQ(fcntl(fd1, F_SETLK, &fl), 0);
    int ready[2];
    ASSERT_EQ(pipe(ready), 0);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(m("lock").c_str(), O_RDWR);
        struct flock c {};
        c.l_type = F_WRLCK;
        c.l_whence = SEEK_SET;
        c.l_len = 0;
        if (write(ready[1], "r", 1) != 1) _exit(20);
        _exit(fcntl(fd, F_SETLKW, &c) == 0 ? 0 : 21);
    }
    char b;
    ASSERT_EQ(read(ready[0], &b, 1), 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // let it wait (the result holds either way)
    fl.l_type = F_UNLCK;
    ASSERT_EQ(fcntl(fd1, F_SETLK, &fl), 0);
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    close(ready[0]);
    close(ready[1]);
    close(fd1);
    // Every close dropped its lock file.
    EXPECT_EQ(fs_->lock_file_count(), 0u);
    EXPECT_GT(count(FUSE_GETLK), 0);
    EXPECT_GT(count(FUSE_SETLK), 0);
    EXPECT_GT(count(FUSE_SETLKW), 0);
}

TEST_F(FusePassthroughMountTest, FallocateSeekHoleCopyFileRange) {
    mount_share();
    int fd = open(m("f").c_str(), O_CREAT | O_RDWR, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(fallocate(fd, 0, 0, 1 << 20), 0) << strerror(errno);
    struct stat st;
    ASSERT_EQ(stat(s("f").c_str(), &st), 0);
    EXPECT_EQ(st.st_size, 1 << 20);
    EXPECT_GE(st.st_blocks * 512, 1 << 20);
    ASSERT_EQ(pwrite(fd, "x", 1, 600000), 1);
    ASSERT_EQ(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 512 * 1024), 0) << strerror(errno);
    ASSERT_EQ(fstat(fd, &st), 0);
    EXPECT_EQ(st.st_size, 1 << 20);
    off_t data = lseek(fd, 0, SEEK_DATA);
    EXPECT_GE(data, 512 * 1024);
    off_t hole = lseek(fd, 0, SEEK_HOLE);
    EXPECT_EQ(hole, 0);
    // copy_file_range inside the mount.
    int out = open(m("g").c_str(), O_CREAT | O_RDWR, 0644);
    ASSERT_GE(out, 0);
    loff_t in_off = 599990, out_off = 0;
    ssize_t n = copy_file_range(fd, &in_off, out, &out_off, 20, 0);
    ASSERT_EQ(n, 20) << strerror(errno);
    close(out);
    close(fd);
    EXPECT_EQ(read_file(s("g")), std::string(10, '\0') + "x" + std::string(9, '\0'));
    EXPECT_GT(count(FUSE_FALLOCATE), 0);
    EXPECT_GT(count(FUSE_LSEEK), 0);
    EXPECT_GT(count(FUSE_COPY_FILE_RANGE), 0);
}

TEST_F(FusePassthroughMountTest, LargeFileChecksum) {
    mount_share();
    constexpr size_t kSize = 64u << 20;
    std::vector<uint8_t> data(kSize);
    uint64_t state = 42;
    for (size_t i = 0; i < kSize; i += 8) {  // splitmix64
        uint64_t z = (state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        std::memcpy(data.data() + i, &z, 8);
    }
    int fd = open(m("big").c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    for (size_t off = 0; off < kSize;) {
        ssize_t n = write(fd, data.data() + off, std::min<size_t>(kSize - off, 3u << 20));
        ASSERT_GT(n, 0) << strerror(errno);
        off += static_cast<size_t>(n);
    }
    ASSERT_EQ(fsync(fd), 0);
    ASSERT_EQ(close(fd), 0);
    EXPECT_LE(count(FUSE_WRITE), 70);               // max_write and max_pages negotiated: 1 MiB per request
    auto digest = [](const uint8_t* p, size_t n) {  // FNV-1a over 64-bit words (n is a multiple of 8)
        uint64_t h = 1469598103934665603ull;
        for (size_t i = 0; i < n; i += 8) {
            uint64_t w;
            std::memcpy(&w, p + i, 8);
            h = (h ^ w) * 1099511628211ull;
        }
        return h;
    };
    uint64_t want = digest(data.data(), kSize);
    std::string host = read_file(s("big"));
    ASSERT_EQ(host.size(), kSize);
    EXPECT_EQ(digest(reinterpret_cast<const uint8_t*>(host.data()), kSize), want);
    // Read back through the mount with the page cache dropped, so every byte comes from the server.
    fd = open(m("big").c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    std::vector<uint8_t> back(kSize);
    for (size_t off = 0; off < kSize;) {
        ssize_t n = read(fd, back.data() + off, kSize - off);
        ASSERT_GT(n, 0);
        off += static_cast<size_t>(n);
    }
    close(fd);
    EXPECT_EQ(digest(back.data(), kSize), want);
    sh("cmp big " + s("big"));
}

TEST_F(FusePassthroughMountTest, GitInitCommitAndClone) {
    if (!have_program("git")) GTEST_SKIP() << "no git";
    mount_share();
    const std::string git = "git -c user.name=t -c user.email=t@example.com -c init.defaultBranch=main ";
    sh(git +
       "init -q repo && cd repo && mkdir -p src && for i in $(seq 1 50); do echo line $i > src/f$i.txt; done"
       " && " +
       git + "add -A && " + git + "commit -q -m first && echo more >> src/f1.txt && " + git +
       "commit -q -am second && " + git + "gc -q && " + git + "fsck --strict");
    EXPECT_EQ(sh("cd repo && git log --oneline | wc -l"), "2\n");
    // A local clone within the mount hard-links objects (FUSE LINK); one from the host copies.
    sh(git +
       "clone -q repo clone1 && cd clone1 && git fsck && test \"$(cat src/f1.txt)\" = \"line 1\nmore\"");
    std::string origin = dir_ / "origin";
    auto r = run_command({"sh", "-c",
                          git + "init -q " + origin + " && cd " + origin + " && echo hi > a && " + git +
                              "add a && " + git + "commit -q -m init"});
    ASSERT_EQ(r.status, 0) << r.output;
    sh(git + "clone -q " + origin + " clone2 && cd clone2 && git fsck && test \"$(cat a)\" = hi && " + git +
       "status --porcelain | wc -l");
    sh("cd repo && git status --porcelain && git diff --stat HEAD~1 | tail -1");
    EXPECT_GT(count(FUSE_LINK), 0);  // the local clone's hard links
}

TEST_F(FusePassthroughMountTest, BuildAndRunAProgram) {
    if (!have_program("cc") || !have_program("make")) GTEST_SKIP() << "no cc/make";
    mount_share();
    write_file(m("hello.c"),
               "#include <stdio.h>\nint main(void) { printf(\"built %d\\n\", 6 * 7); return 0; }\n");
    write_file(m("Makefile"), "hello: hello.o\n\tcc -o $@ $^\nhello.o: hello.c\n\tcc -c -o $@ $<\n");
    sh("make -s");
    EXPECT_EQ(sh("./hello"), "built 42\n");
    struct stat st;
    ASSERT_EQ(stat(s("hello").c_str(), &st), 0);
    EXPECT_TRUE(st.st_mode & S_IXUSR);
    sh("touch hello.c && make -s && ./hello && make -q hello");
}

TEST_F(FusePassthroughMountTest, ForgetKeepsTheNodeTableBounded) {
    mount_share();
    ASSERT_EQ(mkdir(m("d").c_str(), 0755), 0);
    for (int i = 0; i < 2000; ++i) {
        int fd = open(m("d/f" + std::to_string(i)).c_str(), O_CREAT | O_WRONLY, 0644);
        ASSERT_GE(fd, 0);
        close(fd);
    }
    EXPECT_GE(fs_->node_count(), 2000u);
    // Make the kernel evict the inodes: it sends FORGET / BATCH_FORGET for them.
    sync();
    write_file("/proc/sys/vm/drop_caches", "2");
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (fs_->node_count() > 10 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_LE(fs_->node_count(), 10u);
    EXPECT_EQ(fs_->handle_count(), 0u);
    EXPECT_GT(count(FUSE_FORGET) + count(FUSE_BATCH_FORGET), 0);
}

TEST_F(FusePassthroughMountTest, EscapeAttemptsStayInside) {
    mount_share(
        PassthroughOptions{.root = "", .read_only = false, .cache_timeout = std::chrono::milliseconds(0)});
    // Relative symlinks to the outside resolve on the client side, never on the server: here "../outside"
    // from the mount root is <dir>/m/outside, which does not exist.
    ASSERT_EQ(symlink("../outside/secret", s("rel").c_str()), 0);
    ASSERT_EQ(symlink("../outside", s("reldir").c_str()), 0);
    ASSERT_EQ(symlink("../../outside/secret", s("rel2").c_str()), 0);
    EXPECT_EQ(open(m("rel").c_str(), O_RDONLY), -1);
    EXPECT_EQ(errno, ENOENT);
    EXPECT_EQ(open(m("reldir/secret").c_str(), O_RDONLY), -1);
    EXPECT_EQ(open(m("rel").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644), -1);
    EXPECT_EQ(open(m("rel").c_str(), O_RDONLY | O_NOFOLLOW), -1);
    EXPECT_EQ(errno, ELOOP);
    char buf[64];
    ASSERT_EQ(readlink(m("rel").c_str(), buf, sizeof buf), 17);
    // ".." at the mount root is the client's business: it leaves the mount, it does not reach the share's
    // parent through the server.
    EXPECT_NE(access(m("../outside/secret").c_str(), F_OK), 0);
    EXPECT_EQ(access(m("../../outside/secret").c_str(), F_OK), 0);  // the client's own path, not an escape
    // A hard link to a file outside the mount, and a rename out of it, cross filesystems.
    EXPECT_EQ(link((outside_ + "/secret").c_str(), m("hl").c_str()), -1);
    EXPECT_EQ(errno, EXDEV);
    write_file(m("mine"), "mine");
    EXPECT_EQ(rename(m("mine").c_str(), (outside_ + "/mine").c_str()), -1);
    EXPECT_EQ(errno, EXDEV);
    EXPECT_EQ(rename(m("mine").c_str(), m("../mine").c_str()), -1);
    EXPECT_EQ(errno, EXDEV);

    // The host swaps a directory with a symlink to the outside while the client walks into it.
    ASSERT_EQ(mkdir(s("walk").c_str(), 0755), 0);
    write_file(s("walk/secret"), "inside");
    ASSERT_EQ(symlink("../outside", s("walk-swap").c_str()), 0);
    std::atomic<bool> stop{false};
    std::thread flipper([&] {
        while (!stop.load())
            renameat2(AT_FDCWD, s("walk").c_str(), AT_FDCWD, s("walk-swap").c_str(), RENAME_EXCHANGE);
    });
    int inside = 0;
    for (int i = 0; i < 2000; ++i) {
        std::string got = read_file(m("walk/secret"));
        EXPECT_NE(got, "SECRET");
        if (got == "inside") ++inside;
    }
    stop = true;
    flipper.join();
    EXPECT_GT(inside, 0);
    EXPECT_EQ(read_file(outside_ + "/secret"), "SECRET");
}

TEST_F(FusePassthroughMountTest, ReadOnlyMountRefusesWrites) {
    write_file(s("f"), "content");
    ASSERT_EQ(mkdir(s("d").c_str(), 0755), 0);
    mount_share(PassthroughOptions{.root = "", .read_only = true});
    EXPECT_EQ(read_file(m("f")), "content");
    EXPECT_EQ(open(m("f").c_str(), O_WRONLY), -1);
    EXPECT_EQ(errno, EROFS);
    EXPECT_EQ(open(m("f").c_str(), O_RDONLY | O_TRUNC), -1);
    EXPECT_EQ(errno, EROFS);
    EXPECT_EQ(open(m("new").c_str(), O_CREAT | O_WRONLY, 0644), -1);
    EXPECT_EQ(errno, EROFS);
    EXPECT_EQ(mkdir(m("d2").c_str(), 0755), -1);
    EXPECT_EQ(errno, EROFS);
    EXPECT_EQ(unlink(m("f").c_str()), -1);
    EXPECT_EQ(errno, EROFS);
    EXPECT_EQ(rename(m("f").c_str(), m("g").c_str()), -1);
    EXPECT_EQ(errno, EROFS);
    EXPECT_EQ(chmod(m("f").c_str(), 0777), -1);
    EXPECT_EQ(errno, EROFS);
    EXPECT_EQ(symlink("f", m("l").c_str()), -1);
    EXPECT_EQ(errno, EROFS);
    EXPECT_EQ(truncate(m("f").c_str(), 0), -1);
    EXPECT_EQ(errno, EROFS);
    EXPECT_EQ(read_file(s("f")), "content");
    // Locks still work on a read-only share.
    int fd = open(m("f").c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    struct flock fl {};
    fl.l_type = F_RDLCK;
    fl.l_whence = SEEK_SET;
    EXPECT_EQ(fcntl(fd, F_SETLK, &fl), 0);
    EXPECT_EQ(flock(fd, LOCK_SH), 0);
    close(fd);
}

TEST_F(FusePassthroughMountTest, UnmountWithOpenFilesDoesNotHang) {
    mount_share();
    write_file(m("f"), "x");
    int fd = open(m("f").c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    auto start = std::chrono::steady_clock::now();
    unmount();
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
    char c;
    ASSERT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    EXPECT_EQ(pread(fd, &c, 1, 0), -1);  // the connection is gone
    close(fd);
}

}  // namespace
}  // namespace sandlot::vmm::fs
