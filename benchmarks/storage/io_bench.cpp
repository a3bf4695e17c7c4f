// sandlot-io-bench: file I/O throughput in one directory, the same way wherever it runs (this host, the rig's
// L1, a sandbox's virtio-blk disk or virtio-fs share, a QEMU guest). See benchmarks/README.md.
//
//   sandlot-io-bench DIR [--file-mib N] [--rand-seconds S] [--rand-ops N] [--runs N] [--seed N]
//                        [--no-direct] [--drop-caches]
//   sandlot-io-bench --init DEVICE [options]     (as a VM's /init: mount DEVICE on /mnt, measure, reboot)
// As PID 1 the options come from /sandlot-io-bench.args in the initramfs when that file exists (words
// separated by white space), not from the kernel's command line: QEMU microvm appends its virtio-mmio devices
// to the command line, so nothing can follow a "--" there.
//
// Four measurements on one file DIR/sandlot-io-bench.dat, in this order:
//   seq_write   N MiB in 1 MiB write()s, then fsync(); the time covers both.
//   seq_read    the same file in 1 MiB reads from a cold cache: with O_DIRECT where the file system takes it,
//               else after fsync + posix_fadvise(DONTNEED) (+ /proc/sys/vm/drop_caches with --drop-caches).
//   rand_read   4 KiB preads at uniformly random 4 KiB-aligned offsets (fixed seed), O_DIRECT where possible,
//               for S seconds or N operations, whichever ends first.
//   rand_write  4 KiB pwrites the same way, then fdatasync(); the time covers both.
// "Cold" is this kernel's cache: in a guest, the host's page cache under the disk image is not touched.
// With --runs N the four are repeated N times (a fresh file each time) and the medians reported.
//
// Output: informational lines (one per run), then one machine-readable line with the figures:
//   sandlot-io-bench: result seq_write_mb_s=<MB/s> seq_read_mb_s=<MB/s> rand_read_iops=<n>
//   rand_write_iops=<n>
// (MB = 10^6 bytes). Exit status 0 on success, 1 on any failure (with one "sandlot-io-bench: error:" line).
//
// Static, single-threaded, no sanitizer: it runs in any guest, including as PID 1 with nothing mounted.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "proto/base/error.h"
#include "proto/base/unique_fd.h"

namespace sandlot::bench {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kSeqBlock = 1 << 20;  // sequential I/O size
constexpr size_t kRandBlock = 4096;    // random I/O size and O_DIRECT alignment
constexpr const char* kFileName = "sandlot-io-bench.dat";
constexpr const char* kPrefix = "sandlot-io-bench: ";
constexpr const char* kInitArgsFile = "/sandlot-io-bench.args";

struct Options {
    std::string dir;
    std::string init_device;  // --init: run as a VM's PID 1
    std::string init_fstype = "ext4";
    uint64_t file_mib = 32;
    double rand_seconds = 2;
    uint64_t rand_ops = 1'000'000;
    uint64_t seed = 1;
    int runs = 1;
    bool no_direct = false;
    bool drop_caches = false;
};

struct Figures {
    double seq_write_mb_s = 0;
    double seq_read_mb_s = 0;
    double rand_read_iops = 0;
    double rand_write_iops = 0;
};

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

// xorshift64*: a fixed, portable sequence for a given seed (never 0).
class Random {
  public:
    explicit Random(uint64_t seed) : state_(seed ? seed : 0x9e3779b97f4a7c15ull) {}
    uint64_t next() {
        state_ ^= state_ >> 12;
        state_ ^= state_ << 25;
        state_ ^= state_ >> 27;
        return state_ * 0x2545f4914f6cdd1dull;
    }

  private:
    uint64_t state_;
};

struct FreeDeleter {
    void operator()(void* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<uint8_t, FreeDeleter>;

Result<AlignedBuffer> aligned_buffer(size_t size, uint64_t seed) {
    void* p = std::aligned_alloc(kRandBlock, size);
    if (!p) return make_error("out of memory");
    AlignedBuffer buffer(static_cast<uint8_t*>(p));
    Random random(seed);
    for (size_t i = 0; i + 8 <= size; i += 8) {
        uint64_t v = random.next();
        std::memcpy(buffer.get() + i, &v, 8);
    }
    return buffer;
}

Result<void> write_all(int fd, const uint8_t* data, size_t size, const std::string& path) {
    while (size > 0) {
        ssize_t n = write(fd, data, size);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("write " + path);
        if (n == 0) return make_error("write " + path + ": wrote nothing");
        data += n;
        size -= static_cast<size_t>(n);
    }
    return {};
}

// Opens `path` with O_DIRECT if allowed and the file system takes it; `direct` says which it got.
Result<UniqueFd> open_maybe_direct(const std::string& path, int flags, bool allow_direct, bool& direct) {
    if (allow_direct) {
        UniqueFd fd(open(path.c_str(), flags | O_DIRECT | O_CLOEXEC));
        if (fd) {
            direct = true;
            return fd;
        }
        // tmpfs (before Linux 6.6) and some FUSE servers refuse O_DIRECT: EINVAL; anything else is real.
        if (errno != EINVAL && errno != EOPNOTSUPP) return errno_error("open " + path + " (O_DIRECT)");
    }
    direct = false;
    UniqueFd fd(open(path.c_str(), flags | O_CLOEXEC));
    if (!fd) return errno_error("open " + path);
    return fd;
}

// Forgets `fd`'s cached pages (best effort): fadvise always, the global drop_caches when asked to.
void drop_cache(int fd, bool drop_caches) {
    (void)fdatasync(fd);
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    if (drop_caches) {
        sync();
        UniqueFd knob(open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC));
        if (knob) (void)!write(knob.get(), "1\n", 2);
    }
}

Result<double> seq_write(const std::string& path, const Options& o, const uint8_t* data) {
    UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd) return errno_error("create " + path);
    uint64_t bytes = o.file_mib * kSeqBlock;
    auto start = Clock::now();
    for (uint64_t done = 0; done < bytes; done += kSeqBlock)
        TRY(write_all(fd.get(), data, kSeqBlock, path));
    if (fsync(fd.get()) != 0) return errno_error("fsync " + path);
    return static_cast<double>(bytes) / 1e6 / seconds_since(start);
}

Result<double> seq_read(const std::string& path, const Options& o, uint8_t* buffer, bool& direct) {
    {
        UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd) return errno_error("open " + path);
        drop_cache(fd.get(), o.drop_caches);
    }
    UniqueFd fd = TRY(open_maybe_direct(path, O_RDONLY, !o.no_direct, direct));
    uint64_t expected = o.file_mib * kSeqBlock, total = 0;
    auto start = Clock::now();
    for (;;) {
        ssize_t n = read(fd.get(), buffer, kSeqBlock);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EINVAL && direct && total == 0) {
            // Accepted O_DIRECT at open, refused it on read: start over without it.
            fd = TRY(open_maybe_direct(path, O_RDONLY, false, direct));
            drop_cache(fd.get(), o.drop_caches);
            start = Clock::now();
            continue;
        }
        if (n < 0) return errno_error("read " + path);
        if (n == 0) break;
        total += static_cast<uint64_t>(n);
    }
    double s = seconds_since(start);
    if (total != expected)
        return make_error("read " + path + ": got " + std::to_string(total) + " bytes, expected " +
                          std::to_string(expected));
    return static_cast<double>(total) / 1e6 / s;
}

// 4 KiB random preads or pwrites for at most o.rand_seconds / o.rand_ops; operations per second.
Result<double> random_io(const std::string& path, const Options& o, uint8_t* buffer, bool write,
                         bool& direct) {
    UniqueFd fd = TRY(open_maybe_direct(path, write ? O_WRONLY : O_RDONLY, !o.no_direct, direct));
    if (!direct) {
        drop_cache(fd.get(), o.drop_caches);
        (void)posix_fadvise(fd.get(), 0, 0, POSIX_FADV_RANDOM);  // no readahead: one block per read
    }
    uint64_t blocks = o.file_mib * kSeqBlock / kRandBlock;
    Random random(o.seed + (write ? 2 : 1));
    auto start = Clock::now();
    auto limit = std::chrono::duration<double>(o.rand_seconds);
    uint64_t ops = 0;
    while (ops < o.rand_ops && (ops % 16 != 0 || Clock::now() - start < limit)) {
        off_t offset = static_cast<off_t>((random.next() % blocks) * kRandBlock);
        ssize_t n = write ? pwrite(fd.get(), buffer, kRandBlock, offset)
                          : pread(fd.get(), buffer, kRandBlock, offset);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EINVAL && direct && ops == 0) {
            fd = TRY(open_maybe_direct(path, write ? O_WRONLY : O_RDONLY, false, direct));
            drop_cache(fd.get(), o.drop_caches);
            (void)posix_fadvise(fd.get(), 0, 0, POSIX_FADV_RANDOM);
            start = Clock::now();
            continue;
        }
        if (n < 0) return errno_error(std::string(write ? "pwrite " : "pread ") + path);
        if (n != static_cast<ssize_t>(kRandBlock))
            return make_error(std::string(write ? "pwrite " : "pread ") + path + ": short transfer");
        ++ops;
    }
    if (write && fdatasync(fd.get()) != 0) return errno_error("fdatasync " + path);
    return static_cast<double>(ops) / seconds_since(start);
}

Result<Figures> run(const Options& o) {
    if (o.file_mib == 0) return make_error("--file-mib must be at least 1");
    struct stat st;
    if (stat(o.dir.c_str(), &st) != 0) return errno_error("directory " + o.dir);
    if (!S_ISDIR(st.st_mode)) return make_error(o.dir + ": not a directory");
    std::string path = o.dir + "/" + kFileName;
    AlignedBuffer data = TRY(aligned_buffer(kSeqBlock, o.seed));
    AlignedBuffer scratch = TRY(aligned_buffer(kSeqBlock, o.seed + 7));

    bool read_direct = false, rand_read_direct = false, rand_write_direct = false;
    std::vector<Figures> runs;
    std::printf("%sdir %s, file %llu MiB, random phases %.1f s or %llu ops, %d run(s)%s\n", kPrefix,
                o.dir.c_str(), static_cast<unsigned long long>(o.file_mib), o.rand_seconds,
                static_cast<unsigned long long>(o.rand_ops), o.runs, o.drop_caches ? ", drop_caches" : "");
    for (int i = 0; i < o.runs; ++i) {
        Figures f;
        auto result = [&]() -> Result<void> {
            f.seq_write_mb_s = TRY(seq_write(path, o, data.get()));
            f.seq_read_mb_s = TRY(seq_read(path, o, scratch.get(), read_direct));
            f.rand_read_iops = TRY(random_io(path, o, scratch.get(), false, rand_read_direct));
            f.rand_write_iops = TRY(random_io(path, o, data.get(), true, rand_write_direct));
            return {};
        }();
        unlink(path.c_str());
        if (!result) return std::unexpected(result.error());
        std::printf(
            "%srun %d: seq_write %.2f MB/s, seq_read %.2f MB/s, rand_read %.1f IOPS, rand_write %.1f IOPS\n",
            kPrefix, i + 1, f.seq_write_mb_s, f.seq_read_mb_s, f.rand_read_iops, f.rand_write_iops);
        std::fflush(stdout);
        runs.push_back(f);
    }
    auto median_of = [&](double Figures::*field) {
        std::vector<double> v;
        for (const auto& r : runs)
            v.push_back(r.*field);
        std::sort(v.begin(), v.end());
        size_t n = v.size();
        return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    };
    Figures f{median_of(&Figures::seq_write_mb_s), median_of(&Figures::seq_read_mb_s),
              median_of(&Figures::rand_read_iops), median_of(&Figures::rand_write_iops)};
    std::printf("%sO_DIRECT: seq_read %s, rand_read %s, rand_write %s\n", kPrefix, read_direct ? "yes" : "no",
                rand_read_direct ? "yes" : "no", rand_write_direct ? "yes" : "no");
    std::printf("%sresult seq_write_mb_s=%.2f seq_read_mb_s=%.2f rand_read_iops=%.1f rand_write_iops=%.1f\n",
                kPrefix, f.seq_write_mb_s, f.seq_read_mb_s, f.rand_read_iops, f.rand_write_iops);
    std::fflush(stdout);
    return f;
}

// --init: PID 1 of a bare VM. Mounts what it needs, measures on `device` mounted at /mnt, and restarts the VM
// (reboot=t: a triple fault, which ends both sandlot-vmm and QEMU with -no-reboot). Never returns.
[[noreturn]] void run_as_init(Options o) {
    mkdir("/proc", 0555);
    mkdir("/sys", 0555);
    mkdir("/dev", 0755);
    mkdir("/mnt", 0755);
    (void)mount("proc", "/proc", "proc", 0, nullptr);
    (void)mount("sysfs", "/sys", "sysfs", 0, nullptr);
    (void)mount("devtmpfs", "/dev", "devtmpfs", 0, nullptr);
    int console = open("/dev/console", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (console >= 0) {
        dup2(console, STDOUT_FILENO);
        dup2(console, STDERR_FILENO);
    }
    // The disk is probed during the kernel's boot; allow a little time for a slow one anyway.
    for (int i = 0; i < 100 && access(o.init_device.c_str(), F_OK) != 0; ++i) {
        timespec delay{0, 50'000'000};
        nanosleep(&delay, nullptr);
    }
    int status = 1;
    if (mount(o.init_device.c_str(), "/mnt", o.init_fstype.c_str(), 0, nullptr) != 0) {
        std::printf("%serror: mount %s on /mnt: %s\n", kPrefix, o.init_device.c_str(), std::strerror(errno));
    } else {
        o.dir = "/mnt";
        auto figures = run(o);
        if (!figures) {
            std::printf("%serror: %s\n", kPrefix, figures.error().to_string().c_str());
        } else {
            status = 0;
        }
        (void)umount("/mnt");
    }
    std::printf("%sinit done, status %d\n", kPrefix, status);
    std::fflush(stdout);
    sync();
    reboot(RB_AUTOBOOT);
    for (;;)
        pause();
}

}  // namespace
}  // namespace sandlot::bench

namespace {

// PID 1's arguments from kInitArgsFile, if present: {"sandlot-io-bench", words...}.
std::vector<std::string> init_args_from_file() {
    std::ifstream in(sandlot::bench::kInitArgsFile);
    if (!in) return {};
    std::vector<std::string> args = {"sandlot-io-bench"};
    for (std::string word; in >> word;)
        args.push_back(word);
    return args;
}

}  // namespace

int main(int argc, char** argv) {
    using sandlot::bench::Options;
    std::vector<std::string> file_args = getpid() == 1 ? init_args_from_file() : std::vector<std::string>{};
    std::vector<char*> file_argv;
    if (!file_args.empty()) {
        for (auto& a : file_args)
            file_argv.push_back(a.data());
        file_argv.push_back(nullptr);
        argc = static_cast<int>(file_args.size());
        argv = file_argv.data();
    }
    Options o;
    CLI::App app{"File I/O throughput in a directory: sequential and random 4 KiB reads and writes.",
                 "sandlot-io-bench"};
    app.add_option("dir", o.dir, "directory to measure in (a scratch file is created and removed there)");
    app.add_option("--init", o.init_device,
                   "run as a VM's /init: mount DEVICE on /mnt, measure there, then restart the VM");
    app.add_option("--init-fstype", o.init_fstype, "file system type of the --init device")
        ->capture_default_str();
    app.add_option("--file-mib", o.file_mib, "size of the file (MiB)")->capture_default_str();
    app.add_option("--rand-seconds", o.rand_seconds, "time limit of each random phase (s)")
        ->capture_default_str();
    app.add_option("--rand-ops", o.rand_ops, "operation limit of each random phase")->capture_default_str();
    app.add_option("--runs", o.runs, "repeat the four measurements; medians are reported")
        ->capture_default_str()
        ->check(CLI::Range(1, 1000));
    app.add_option("--seed", o.seed, "seed of the random offsets and data")->capture_default_str();
    app.add_flag("--no-direct", o.no_direct, "never use O_DIRECT");
    app.add_flag("--drop-caches", o.drop_caches,
                 "also write /proc/sys/vm/drop_caches before buffered reads (root; drops the whole machine's "
                 "page cache)");
    // As PID 1 the kernel hands init the command line's unknown words too; ignore them.
    if (getpid() == 1) app.allow_extras();
    CLI11_PARSE(app, argc, argv);
    if (o.rand_seconds <= 0 || o.rand_ops == 0) {
        std::fprintf(stderr,
                     "sandlot-io-bench: error: the random phases need --rand-seconds > 0, --rand-ops > 0\n");
        return 1;
    }
    if (!o.init_device.empty()) sandlot::bench::run_as_init(o);
    if (o.dir.empty()) {
        std::fprintf(stderr, "sandlot-io-bench: error: no directory given (see --help)\n");
        return 1;
    }
    auto figures = sandlot::bench::run(o);
    if (!figures) {
        std::fprintf(stderr, "sandlot-io-bench: error: %s\n", figures.error().to_string().c_str());
        return 1;
    }
    return 0;
}
