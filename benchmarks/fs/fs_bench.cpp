// sandlot-fs-bench: what moving files into and out of a sandbox through the guest filesystem API
// (host/lib/guest_fs.h) delivers, against copying the same files on the host with cp, and against piping a
// file through exec. See benchmarks/README.md.
//
//   sandlot-fs-bench [--agentd PATH | --vm] [--runs N] [--warmup N] [--big-bytes SIZE] [--dir DIR] ...
//
// One big file (1 GiB by default) and one tree (100 directories of 100 files of 4 KiB) are made in a work
// directory on the host; then each round, alternating which side goes first:
//   - GuestFs::copy_from_host of the big file to the agent's side and copy_to_host of it back, against
//     posix_spawn of `/bin/cp BIG DIR` between two host directories;
//   - the same big file written through exec: `sh -c 'cat > DEST'` with stdin_open, write_stdin in 1 MiB
//     chunks, timed until EXIT;
//   - copy_from_host / copy_to_host of the tree, against `/bin/cp -r TREE DIR` on the host.
// Outputs are removed between runs (untimed); nothing is dropped from any cache. With --agentd (the
// default) agentd runs as a host process on a Unix socket and its "guest" is a directory next to the
// sources; with --vm a sandbox boots (the built-in initramfs root) with a sparse ext4 image as a disk volume
// at /data, and the files go there. The report ends with the result lines (MB/s = 10^6 bytes per second of
// file data; --vm: each prefixed vm_):
//   fs_put_big_mb_s sandlot=<copy_from_host> host=<cp> ratio=<sandlot/host>
//   fs_get_big_mb_s sandlot=<copy_to_host> host=<cp> ratio=<sandlot/host>
//   fs_put_big_vs_exec_mb_s sandlot=<copy_from_host> host=<exec cat> ratio=<sandlot/host>
//   fs_put_tree_mb_s sandlot=<copy_from_host> host=<cp -r> ratio=<sandlot/host>
//   fs_get_tree_mb_s sandlot=<copy_to_host> host=<cp -r> ratio=<sandlot/host>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "benchmarks/support/bench_agent.h"
#include "host/lib/agent_connection.h"
#include "host/lib/exec.h"
#include "host/lib/guest_fs.h"
#include "host/lib/paths.h"
#include "host/lib/process.h"
#include "host/lib/sandbox.h"
#include "host/lib/storage.h"
#include "proto/base/error.h"
#include "proto/base/unique_fd.h"
#include "proto/base/unix_address.h"

extern char** environ;

namespace sandlot::bench {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kTreeFileBytes = 4096;
constexpr size_t kChunk = 1 << 20;  // exec stdin writes and host file reads; copy_from_host's buffer size

struct Options {
    std::string agentd;  // host mode: this agentd binary (default bin_dir()/agentd)
    bool vm = false;     // boot a sandbox instead
    int runs = 5;
    int warmup = 1;
    std::string big_size = "1GiB";
    uint64_t big_bytes = 0;
    int tree_dirs = 100;
    int tree_files = 100;
    std::string dir;        // where the work directory goes ("" = /dev/shm if writable, else TMPDIR)
    std::string disk_size;  // --vm: the /data image ("" = 1.25 x the big file + 256 MiB)
    uint64_t disk_bytes = 0;
    bool no_sync = false;  // CopyOptions::sync = false
    uint64_t memory_mib = 256;
    uint32_t cpus = 1;
    int boot_timeout_s = 300;
    int stall_timeout_s = 900;
};

void summarize(const char* what, const std::vector<double>& v) {
    auto [lo, hi] = std::minmax_element(v.begin(), v.end());
    std::printf("%-34s median %10.2f MB/s, min %.2f, max %.2f over %zu runs\n", what, median(v), *lo, *hi,
                v.size());
}

double mb_s(uint64_t bytes, double seconds) {
    return static_cast<double>(bytes) / 1e6 / seconds;
}

// Ends the benchmark when one step takes longer than --stall-timeout (a transfer that hangs would otherwise
// hang it for good): says which step, kills the agent's process (agentd or the VMM), removes the work
// directory and exits 1.
class Watchdog {
  public:
    explicit Watchdog(int timeout_s) : timeout_(timeout_s) {
        thread_ = std::thread([this] { loop(); });
    }
    ~Watchdog() {
        stop_ = true;
        thread_.join();
    }
    void set_victim(pid_t pid) { victim_ = pid; }
    void set_work_dir(std::string path) {
        std::lock_guard lock(mu_);
        work_dir_ = std::move(path);
    }
    void step(std::string what) {
        std::lock_guard lock(mu_);
        step_ = std::move(what);
        since_ = Clock::now();
    }

  private:
    void loop() {
        while (!stop_) {
            std::this_thread::sleep_for(std::chrono::milliseconds(200));
            std::lock_guard lock(mu_);
            if (step_.empty() || Clock::now() - since_ < std::chrono::seconds(timeout_)) continue;
            std::fprintf(stderr,
                         "sandlot-fs-bench: error: %s: no end after %d s (--stall-timeout); giving up\n",
                         step_.c_str(), timeout_);
            if (victim_ > 0) ::kill(victim_, SIGKILL);
            std::error_code ec;
            if (!work_dir_.empty()) fs::remove_all(work_dir_, ec);
            std::_Exit(1);
        }
    }

    int timeout_;
    std::atomic<bool> stop_{false};
    std::atomic<pid_t> victim_{-1};
    std::mutex mu_;
    std::string step_, work_dir_;
    Clock::time_point since_{};
    std::thread thread_;
};

Watchdog* g_watchdog = nullptr;

void step(const std::string& what) {
    if (g_watchdog) g_watchdog->step(what);
}

Result<void> remove_host(const std::string& path) {
    std::error_code ec;
    fs::remove_all(path, ec);
    if (ec) return make_error("remove " + path + ": " + ec.message());
    return {};
}

Result<void> write_all(int fd, const uint8_t* data, size_t size, const std::string& path) {
    while (size > 0) {
        ssize_t n = ::write(fd, data, size);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("write " + path);
        data += n;
        size -= static_cast<size_t>(n);
    }
    return {};
}

// ---------------------------------------------------------------------------------------------------------
// The sources: incompressible data (xorshift), written once, untimed.

class Random {
  public:
    explicit Random(uint64_t seed) : state_(seed | 1) {}
    void fill(std::vector<uint8_t>& buffer) {
        for (size_t i = 0; i + 8 <= buffer.size(); i += 8) {
            state_ ^= state_ << 13;
            state_ ^= state_ >> 7;
            state_ ^= state_ << 17;
            std::memcpy(buffer.data() + i, &state_, 8);
        }
    }

  private:
    uint64_t state_;
};

Result<void> make_file(const std::string& path, uint64_t size, Random& random, std::vector<uint8_t>& buffer) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd) return errno_error("create " + path);
    while (size > 0) {
        random.fill(buffer);
        size_t n = static_cast<size_t>(std::min<uint64_t>(size, buffer.size()));
        TRY(write_all(fd.get(), buffer.data(), n, path));
        size -= n;
    }
    return {};
}

Result<void> make_sources(const std::string& src, const Options& o) {
    Random random(0x5eed5a1d);
    std::vector<uint8_t> buffer(kChunk);
    TRY(make_file(src + "/big", o.big_bytes, random, buffer));
    std::vector<uint8_t> small(kTreeFileBytes);
    fs::create_directory(src + "/tree");
    for (int d = 0; d < o.tree_dirs; ++d) {
        char dir[64];
        std::snprintf(dir, sizeof dir, "/tree/d%03d", d);
        if (mkdir((src + dir).c_str(), 0755) != 0) return errno_error("mkdir " + src + dir);
        for (int f = 0; f < o.tree_files; ++f) {
            char file[32];
            std::snprintf(file, sizeof file, "/f%03d", f);
            TRY(make_file(src + dir + file, kTreeFileBytes, random, small));
        }
    }
    return {};
}

// Byte-for-byte comparison of two host files (the first round's copy back against its source).
Result<void> same_file(const std::string& a, const std::string& b) {
    UniqueFd fa(::open(a.c_str(), O_RDONLY | O_CLOEXEC)), fb(::open(b.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fa) return errno_error("open " + a);
    if (!fb) return errno_error("open " + b);
    std::vector<uint8_t> ba(kChunk), bb(kChunk);
    for (;;) {
        ssize_t na = ::read(fa.get(), ba.data(), ba.size());
        if (na < 0) return errno_error("read " + a);
        size_t got = 0;
        while (got < static_cast<size_t>(na)) {
            ssize_t nb = ::read(fb.get(), bb.data() + got, static_cast<size_t>(na) - got);
            if (nb < 0) return errno_error("read " + b);
            if (nb == 0) return make_error(b + " is shorter than " + a);
            got += static_cast<size_t>(nb);
        }
        if (std::memcmp(ba.data(), bb.data(), got) != 0) return make_error(b + " differs from " + a);
        if (na == 0) {
            if (::read(fb.get(), bb.data(), 1) != 0) return make_error(b + " is longer than " + a);
            return {};
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Baselines on the host: cp, cp -r (posix_spawn + waitpid, timed).

std::string find_cp() {
    for (const char* p : {"/bin/cp", "/usr/bin/cp"})
        if (access(p, X_OK) == 0) return p;
    return "/bin/cp";
}

Result<double> spawn_seconds(const std::vector<std::string>& args) {
    std::vector<char*> argv;
    for (const auto& a : args)
        argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    auto start = Clock::now();
    pid_t pid = -1;
    int err = posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ);
    if (err != 0) return make_error("posix_spawn " + args[0], err);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return errno_error("waitpid");
    }
    double s = seconds_since(start);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        std::string line;
        for (const auto& a : args)
            line += (line.empty() ? "" : " ") + a;
        return make_error(line + " failed (status " + std::to_string(status) + ")");
    }
    return s;
}

// ---------------------------------------------------------------------------------------------------------
// Through the agent

// `sh -c 'cat > DEST'` fed the host file `src` through stdin in 1 MiB chunks; seconds until EXIT.
Result<double> exec_cat_seconds(host::AgentConnection& agent, const std::string& src,
                                const std::string& dest) {
    std::vector<uint8_t> buffer(kChunk);
    UniqueFd in(::open(src.c_str(), O_RDONLY | O_CLOEXEC));
    if (!in) return errno_error("open " + src);
    host::ExecRequest request;
    request.argv = {"sh", "-c", "cat > '" + dest + "'"};
    request.stdin_open = true;
    auto start = Clock::now();
    std::unique_ptr<host::ExecStream> proc = TRY(agent.exec_stream(request));
    for (;;) {
        ssize_t n = ::read(in.get(), buffer.data(), buffer.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("read " + src);
        if (n == 0) break;
        TRY(proc->write_stdin(std::span<const uint8_t>(buffer.data(), static_cast<size_t>(n))));
    }
    TRY(proc->close_stdin());
    std::string errors;
    std::optional<host::ExitStatus> status;
    while (auto event = TRY(proc->recv())) {
        if (event->kind == host::ExecEvent::Kind::Stdout || event->kind == host::ExecEvent::Kind::Stderr)
            errors.append(event->data.begin(), event->data.end());
        if (event->kind == host::ExecEvent::Kind::Exit) status = event->status;
    }
    double s = seconds_since(start);
    if (!status) return make_error("exec_stream ended without an exit status");
    TRY(expect_success(*status, "sh -c 'cat > " + dest + "' (output: " + errors + ")"));
    return s;
}

Result<void> expect_guest_size(host::GuestFs& gfs, const std::string& path, uint64_t size) {
    host::FileInfo info = TRY(gfs.stat(path));
    if (info.size != size)
        return make_error(path + " has " + std::to_string(info.size) + " bytes, expected " +
                          std::to_string(size));
    return {};
}

Result<void> expect_stats(const host::TransferStats& stats, uint64_t bytes, const std::string& what) {
    if (stats.bytes != bytes)
        return make_error(what + " moved " + std::to_string(stats.bytes) + " bytes, expected " +
                          std::to_string(bytes));
    return {};
}

// ---------------------------------------------------------------------------------------------------------
// Where the agent runs

// The work directory: sources, cp's and copy_to_host's destinations and, in VM mode, the /data image.
class WorkDir {
  public:
    static Result<WorkDir> make(const std::string& parent) {
        std::string tmpl = parent + "/sandlot-fs-bench.XXXXXX";
        if (!mkdtemp(tmpl.data())) return errno_error("mkdtemp in " + parent);
        WorkDir w;
        w.path_ = tmpl;
        return w;
    }
    WorkDir() = default;
    WorkDir(WorkDir&& other) noexcept : path_(std::exchange(other.path_, {})) {}
    ~WorkDir() {
        if (!path_.empty()) (void)remove_host(path_);
    }
    const std::string& path() const { return path_; }

  private:
    std::string path_;
};

std::string default_parent() {
    if (access("/dev/shm", W_OK) == 0) return "/dev/shm";
    return fs::temp_directory_path().string();
}

std::string fs_type_of(const std::string& path) {
    struct statfs st;
    if (statfs(path.c_str(), &st) != 0) return "?";
    switch (static_cast<unsigned long>(st.f_type)) {
        case 0x01021994:
            return "tmpfs";
        case 0xEF53:
            return "ext4";
        case 0x9123683E:
            return "btrfs";
        case 0x58465342:
            return "xfs";
        case 0x858458f6:
            return "ramfs";
        case 0x65735546:
            return "fuse";
        case 0x6a656a63:
            return "virtiofs";
        default: {
            char hex[32];
            std::snprintf(hex, sizeof hex, "0x%lx", static_cast<unsigned long>(st.f_type));
            return hex;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------

struct Samples {
    std::vector<double> put_big, get_big, cp_big, exec_big, put_tree, get_tree, cp_tree;
};

// `guest` is the directory on the agent's side that receives the copies (host mode: a host directory).
Result<void> measure(host::AgentConnection& agent, const Options& o, const std::string& work,
                     const std::string& guest, const char* label) {
    const proto::Hello& hello = agent.hello();
    std::printf("agent %s (protocol %u.%u), kernel %s, %u cpus\n", hello.agent_version.c_str(),
                hello.protocol_major, hello.protocol_minor, hello.kernel_release.c_str(), hello.cpus_online);
    host::GuestFs gfs(agent);
    host::CopyOptions copy;
    copy.sync = !o.no_sync;

    const std::string src = work + "/src", out = work + "/out", cpd = work + "/cp";
    for (const auto& d : {src, out, cpd})
        if (mkdir(d.c_str(), 0755) != 0) return errno_error("mkdir " + d);
    const uint64_t tree_bytes =
        static_cast<uint64_t>(o.tree_dirs) * static_cast<uint64_t>(o.tree_files) * kTreeFileBytes;
    std::printf("making the sources in %s (%s): big %llu bytes, tree %d x %d x %llu bytes\n", src.c_str(),
                fs_type_of(src).c_str(), static_cast<unsigned long long>(o.big_bytes), o.tree_dirs,
                o.tree_files, static_cast<unsigned long long>(kTreeFileBytes));
    auto made = Clock::now();
    TRY(make_sources(src, o));
    std::printf("sources made in %.1f s\n", seconds_since(made));

    const std::string cp = find_cp();
    const std::string g_big = guest + "/big", g_exec = guest + "/exec-big", g_tree = guest + "/tree";
    std::printf("%d runs after %d warm-up, alternating sides; copies %s; guest side %s; host cp %s\n", o.runs,
                o.warmup, copy.sync ? "synced (the API's default)" : "not synced (--no-sync)", guest.c_str(),
                cp.c_str());

    Samples all;
    for (int i = 0; i < o.warmup + o.runs; ++i) {
        const bool sandlot_first = i % 2 == 0;
        double put_big = 0, get_big = 0, cp_big = 0, exec_big = 0, put_tree = 0, get_tree = 0, cp_tree = 0;

        const std::string round = " (round " + std::to_string(i) + ")";
        auto sandlot_big = [&]() -> Result<void> {
            step("copy_from_host of the big file" + round);
            auto start = Clock::now();
            auto stats = TRY(gfs.copy_from_host(src + "/big", g_big, copy));
            put_big = mb_s(o.big_bytes, seconds_since(start));
            TRY(expect_stats(stats, o.big_bytes, "copy_from_host big"));
            TRY(expect_guest_size(gfs, g_big, o.big_bytes));
            step("copy_to_host of the big file" + round);
            start = Clock::now();
            stats = TRY(gfs.copy_to_host(g_big, out + "/big", copy));
            get_big = mb_s(o.big_bytes, seconds_since(start));
            TRY(expect_stats(stats, o.big_bytes, "copy_to_host big"));
            if (i == 0) TRY(same_file(src + "/big", out + "/big"));
            TRY(remove_host(out + "/big"));
            TRY(gfs.remove(g_big));
            return {};
        };
        auto baseline_big = [&]() -> Result<void> {
            step("cp of the big file" + round);
            cp_big = mb_s(o.big_bytes, TRY(spawn_seconds({cp, src + "/big", cpd + "/big"})));
            TRY(remove_host(cpd + "/big"));
            step("exec cat of the big file" + round);
            exec_big = mb_s(o.big_bytes, TRY(exec_cat_seconds(agent, src + "/big", g_exec)));
            TRY(expect_guest_size(gfs, g_exec, o.big_bytes));
            TRY(gfs.remove(g_exec));
            return {};
        };
        auto sandlot_tree = [&]() -> Result<void> {
            step("copy_from_host of the tree" + round);
            auto start = Clock::now();
            auto stats = TRY(gfs.copy_from_host(src + "/tree", g_tree, copy));
            put_tree = mb_s(tree_bytes, seconds_since(start));
            TRY(expect_stats(stats, tree_bytes, "copy_from_host tree"));
            step("copy_to_host of the tree" + round);
            start = Clock::now();
            stats = TRY(gfs.copy_to_host(g_tree, out + "/tree", copy));
            get_tree = mb_s(tree_bytes, seconds_since(start));
            TRY(expect_stats(stats, tree_bytes, "copy_to_host tree"));
            TRY(remove_host(out + "/tree"));
            TRY(gfs.remove_dir(g_tree, true));
            return {};
        };
        auto baseline_tree = [&]() -> Result<void> {
            step("cp -r of the tree" + round);
            cp_tree = mb_s(tree_bytes, TRY(spawn_seconds({cp, "-r", src + "/tree", cpd + "/tree"})));
            TRY(remove_host(cpd + "/tree"));
            return {};
        };

        if (sandlot_first) {
            TRY(sandlot_big());
            TRY(baseline_big());
            TRY(sandlot_tree());
            TRY(baseline_tree());
        } else {
            TRY(baseline_big());
            TRY(sandlot_big());
            TRY(baseline_tree());
            TRY(sandlot_tree());
        }
        const bool warm = i < o.warmup;
        std::printf(
            "  %s %d: big put %.2f get %.2f cp %.2f exec-cat %.2f | tree put %.2f get %.2f cp -r %.2f MB/s\n",
            warm ? "warm-up" : "run    ", i, put_big, get_big, cp_big, exec_big, put_tree, get_tree, cp_tree);
        if (warm) continue;
        all.put_big.push_back(put_big);
        all.get_big.push_back(get_big);
        all.cp_big.push_back(cp_big);
        all.exec_big.push_back(exec_big);
        all.put_tree.push_back(put_tree);
        all.get_tree.push_back(get_tree);
        all.cp_tree.push_back(cp_tree);
    }
    step("");
    summarize("copy_from_host big:", all.put_big);
    summarize("copy_to_host big:", all.get_big);
    summarize("host cp big:", all.cp_big);
    summarize("exec sh -c 'cat > F' big:", all.exec_big);
    summarize("copy_from_host tree:", all.put_tree);
    summarize("copy_to_host tree:", all.get_tree);
    summarize("host cp -r tree:", all.cp_tree);

    auto line = [&](const char* name, const std::vector<double>& a, const std::vector<double>& b) {
        double x = median(a), y = median(b);
        std::printf("%s%s sandlot=%.2f host=%.2f ratio=%.3f\n", label, name, x, y, y > 0 ? x / y : 0.0);
    };
    line("fs_put_big_mb_s", all.put_big, all.cp_big);
    line("fs_get_big_mb_s", all.get_big, all.cp_big);
    line("fs_put_big_vs_exec_mb_s", all.put_big, all.exec_big);
    line("fs_put_tree_mb_s", all.put_tree, all.cp_tree);
    line("fs_get_tree_mb_s", all.get_tree, all.cp_tree);
    return {};
}

Result<void> run(const Options& o) {
    std::string parent = o.dir.empty() ? default_parent() : o.dir;
    WorkDir work = TRY(WorkDir::make(parent));
    Watchdog watchdog(o.stall_timeout_s);
    watchdog.set_work_dir(work.path());
    g_watchdog = &watchdog;
    struct Unset {
        ~Unset() { g_watchdog = nullptr; }
    } unset;
    std::printf("work directory %s (%s)\n", work.path().c_str(), fs_type_of(work.path()).c_str());
    if (o.vm) {
        uint64_t disk = o.disk_bytes ? o.disk_bytes : o.big_bytes + o.big_bytes / 4 + 256 * kMiB;
        disk = (disk + kMiB - 1) / kMiB * kMiB;
        std::string image = work.path() + "/data.ext4";
        TRY(host::create_ext4_image(image, disk));
        host::SandboxOptions options;
        options.memory_mib = o.memory_mib;
        options.cpus = o.cpus;
        options.ready_timeout = std::chrono::seconds(o.boot_timeout_s);
        host::Volume data;
        data.kind = host::Volume::Kind::Disk;
        data.source = image;
        data.target = "/data";
        options.storage.volumes.push_back(data);
        std::printf("booting a sandbox (%llu MiB, %u cpus) with a sparse %llu MiB ext4 image at /data\n",
                    static_cast<unsigned long long>(o.memory_mib), o.cpus,
                    static_cast<unsigned long long>(disk / kMiB));
        auto start = Clock::now();
        std::unique_ptr<host::Sandbox> sandbox = TRY(host::Sandbox::boot(options));
        std::printf("sandbox ready in %.0f ms\n", seconds_since(start) * 1e3);
        watchdog.set_victim(sandbox->vmm_pid());
        auto measured = measure(sandbox->agent(), o, work.path(), "/data", "vm_");
        auto stopped = sandbox->shutdown();
        TRY(std::move(measured));
        if (!stopped) return std::unexpected(with_context(stopped.error(), "sandbox shutdown"));
        return {};
    }
    std::string agentd = o.agentd.empty() ? host::bin_dir() + "/agentd" : o.agentd;
    std::printf("agentd as a host process: %s --listen-unix\n", agentd.c_str());
    std::string guest = work.path() + "/guest";
    if (mkdir(guest.c_str(), 0755) != 0) return errno_error("mkdir " + guest);
    std::unique_ptr<HostAgent> agent = TRY(HostAgent::start(agentd));
    watchdog.set_victim(agent->pid());
    return measure(agent->agent(), o, work.path(), guest, "");
}

}  // namespace
}  // namespace sandlot::bench

int main(int argc, char** argv) {
    sandlot::bench::Options o;
    CLI::App app{
        "Times copies into and out of a sandbox through the guest filesystem API against host cp and "
        "exec.",
        "sandlot-fs-bench"};
    auto* agentd = app.add_option("--agentd", o.agentd,
                                  "agentd binary to run on a Unix socket (default: next to this binary)");
    app.add_flag("--vm", o.vm, "boot a sandbox and measure its agent over vsock instead")->excludes(agentd);
    app.add_option("--runs", o.runs, "measured rounds (each figure is the median)")
        ->capture_default_str()
        ->check(CLI::Range(1, 10000));
    app.add_option("--warmup", o.warmup, "unmeasured rounds first")
        ->capture_default_str()
        ->check(CLI::Range(0, 1000));
    app.add_option("--big-bytes", o.big_size, "size of the big file (bytes, or with k/m/g, e.g. 256MiB)")
        ->capture_default_str();
    app.add_option("--tree-dirs", o.tree_dirs, "directories in the tree")
        ->capture_default_str()
        ->check(CLI::Range(1, 1000));
    app.add_option("--tree-files", o.tree_files, "4 KiB files in each directory of the tree")
        ->capture_default_str()
        ->check(CLI::Range(1, 1000));
    app.add_option("--dir", o.dir,
                   "where the work directory goes (default: /dev/shm if writable, else TMPDIR)");
    app.add_flag("--no-sync", o.no_sync, "copies without the final sync (CopyOptions::sync = false)");
    app.add_option("--disk-bytes", o.disk_size,
                   "--vm: size of the sparse ext4 image at /data (default: 1.25 x "
                   "--big-bytes + 256 MiB)");
    app.add_option("--memory", o.memory_mib, "--vm: guest memory, MiB")
        ->capture_default_str()
        ->check(CLI::Range(64, 65536));
    app.add_option("--cpus", o.cpus, "--vm: guest vCPUs")->capture_default_str()->check(CLI::Range(1, 64));
    app.add_option("--boot-timeout", o.boot_timeout_s,
                   "--vm: seconds allowed for the sandbox to become ready")
        ->capture_default_str()
        ->check(CLI::Range(1, 3600));
    app.add_option("--stall-timeout", o.stall_timeout_s,
                   "seconds one step (one copy, cp or exec) may take before the benchmark gives up")
        ->capture_default_str()
        ->check(CLI::Range(1, 86400));
    CLI11_PARSE(app, argc, argv);
    // Line-buffered even into a pipe (the rig's console, tee): progress shows as it happens.
    std::setvbuf(stdout, nullptr, _IOLBF, 0);

    auto size = sandlot::host::parse_size(o.big_size);
    if (!size || *size == 0) {
        std::fprintf(stderr, "sandlot-fs-bench: error: --big-bytes: %s\n",
                     size ? "must not be 0" : size.error().to_string().c_str());
        return 2;
    }
    o.big_bytes = *size;
    if (!o.disk_size.empty()) {
        auto disk = sandlot::host::parse_size(o.disk_size);
        if (!disk) {
            std::fprintf(stderr, "sandlot-fs-bench: error: --disk-bytes: %s\n",
                         disk.error().to_string().c_str());
            return 2;
        }
        o.disk_bytes = *disk;
    }

    if (auto ok = sandlot::bench::run(o); !ok) {
        std::fprintf(stderr, "sandlot-fs-bench: error: %s\n", ok.error().to_string().c_str());
        return 1;
    }
    return 0;
}
