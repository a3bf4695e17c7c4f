#include "tests/support/local_registry.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/support/run_command.h"

namespace sandlot::test {

namespace {

bool executable_on_path(const std::string& name) {
    const char* path = getenv("PATH");
    std::string dirs = path ? path : "/usr/bin:/bin";
    size_t start = 0;
    while (start <= dirs.size()) {
        size_t colon = dirs.find(':', start);
        std::string dir = dirs.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
        if (!dir.empty() && access((dir + "/" + name).c_str(), X_OK) == 0) return true;
        if (colon == std::string::npos) break;
        start = colon + 1;
    }
    return false;
}

Result<void> run(const std::vector<std::string>& argv, const std::string& input = "") {
    auto result = testing::run_command(argv, input);
    if (result.status != 0) {
        std::string cmd;
        for (const auto& a : argv)
            cmd += (cmd.empty() ? "" : " ") + a;
        std::string out = result.output;
        if (out.size() > 2000) out = out.substr(out.size() - 2000);
        return make_error(cmd + " failed (status " + std::to_string(result.status) + "): " + out);
    }
    return {};
}

Result<std::string> run_output(const std::vector<std::string>& argv) {
    auto result = testing::run_command(argv);
    if (result.status != 0) return make_error(argv[0] + " failed: " + result.output);
    return result.output;
}

Result<void> write_file(const std::string& path, const std::string& data) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << data;
    out.close();
    if (!out) return make_error("write " + path);
    return {};
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

Result<int> pick_free_port() {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return errno_error("socket");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof addr;
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) < 0) {
        int saved = errno;
        close(fd);
        return std::unexpected(Error{saved, "bind 127.0.0.1:0"});
    }
    close(fd);
    return ntohs(addr.sin_port);
}

bool port_answers(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    close(fd);
    return ok;
}

}  // namespace

LocalRegistry::LocalRegistry(LocalRegistryOptions options) : options_(std::move(options)) {}

LocalRegistry::~LocalRegistry() {
    kill();
}

std::string LocalRegistry::host() const {
    return "127.0.0.1:" + std::to_string(port_);
}
std::string LocalRegistry::ca_file() const {
    return options_.tls ? dir_ / "certs/ca.crt" : "";
}
std::string LocalRegistry::storage_dir() const {
    return dir_ / "storage";
}
std::string LocalRegistry::log_path() const {
    return dir_ / "registry.log";
}

std::string LocalRegistry::blob_path(const std::string& digest) const {
    std::string hex = digest.substr(digest.find(':') + 1);
    return storage_dir() + "/docker/registry/v2/blobs/sha256/" + hex.substr(0, 2) + "/" + hex + "/data";
}

void LocalRegistry::kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
}

Result<std::unique_ptr<LocalRegistry>> LocalRegistry::start(LocalRegistryOptions options) {
    // (push_layout and build_oci_layout need skopeo and umoci, and say so.)
    if (!executable_on_path("docker-registry")) return make_error("docker-registry is not installed");
    if (!options.username.empty() && !executable_on_path("htpasswd"))
        return make_error("htpasswd is not installed");
    if (options.tls && !executable_on_path("openssl")) return make_error("openssl is not installed");

    std::unique_ptr<LocalRegistry> reg(new LocalRegistry(std::move(options)));
    const TempDir& dir = reg->dir_;
    if (dir.path().empty()) return make_error("cannot create a temporary directory");
    if (mkdir((dir / "storage").c_str(), 0700) < 0) return errno_error("mkdir storage");
    if (!reg->options_.seed_storage.empty()) {
        auto copied = testing::run_command({"cp", "-a", reg->options_.seed_storage + "/.", dir / "storage"});
        if (copied.status != 0)
            return make_error("copy " + reg->options_.seed_storage + ": " + copied.output);
    }
    reg->port_ = TRY(pick_free_port());

    std::string config =
        "version: 0.1\n"
        "log:\n"
        "  level: error\n"
        "  accesslog:\n"
        "    disabled: true\n"
        "storage:\n"
        "  filesystem:\n"
        "    rootdirectory: " +
        reg->storage_dir() +
        "\n"
        "  delete:\n"
        "    enabled: true\n"
        "http:\n"
        "  addr: " +
        reg->host() + "\n";
    const LocalRegistryOptions& opts = reg->options_;
    if (opts.tls) {
        std::string certs = dir / "certs";
        if (mkdir(certs.c_str(), 0700) < 0) return errno_error("mkdir certs");
        TRY(run({"openssl",
                 "req",
                 "-x509",
                 "-newkey",
                 "ec",
                 "-pkeyopt",
                 "ec_paramgen_curve:prime256v1",
                 "-nodes",
                 "-keyout",
                 certs + "/ca.key",
                 "-out",
                 certs + "/ca.crt",
                 "-days",
                 "2",
                 "-subj",
                 "/CN=sandlot test CA",
                 "-addext",
                 "basicConstraints=critical,CA:TRUE",
                 "-addext",
                 "keyUsage=critical,keyCertSign,cRLSign"}));
        TRY(run({"openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", certs + "/server.key", "-out", certs + "/server.csr", "-subj", "/CN=127.0.0.1"}));
        TRY(write_file(certs + "/server.ext",
                       "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                       "basicConstraints=CA:FALSE\n"
                       "keyUsage=critical,digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=serverAuth\n"));
        TRY(run({"openssl", "x509", "-req", "-in", certs + "/server.csr", "-CA", certs + "/ca.crt", "-CAkey",
                 certs + "/ca.key", "-CAcreateserial", "-out", certs + "/server.crt", "-days", "2",
                 "-extfile", certs + "/server.ext"}));
        config +=
            "  tls:\n"
            "    certificate: " +
            certs + "/server.crt\n    key: " + certs + "/server.key\n";
    }
    if (!opts.username.empty()) {
        std::string line = TRY(run_output({"htpasswd", "-Bbn", opts.username, opts.password}));
        while (!line.empty() && (line.back() == '\n' || line.back() == '\r'))
            line.pop_back();
        TRY(write_file(dir / "htpasswd", line + "\n"));
        config +=
            "auth:\n"
            "  htpasswd:\n"
            "    realm: sandlot-test\n"
            "    path: " +
            (dir / "htpasswd") + "\n";
    }
    TRY(write_file(dir / "config.yml", config));
    TRY(reg->spawn());
    return reg;
}

Result<void> LocalRegistry::spawn() {
    std::string binary = "docker-registry";
    std::string config = dir_ / "config.yml";
    std::string log = log_path();
    int log_fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) return errno_error("open " + log);
    std::vector<std::string> args = {binary, "serve", config};
    std::vector<char*> argv;
    for (auto& a : args)
        argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t parent = getpid();
    // PR_SET_PDEATHSIG fires when the forking *thread* exits, so only use it from the main thread (a
    // restart() from a helper thread would otherwise kill the new server as soon as that thread ends).
    bool die_with_parent = gettid() == parent;
    pid_t pid = fork();
    if (pid < 0) {
        close(log_fd);
        return errno_error("fork");
    }
    if (pid == 0) {
        if (die_with_parent) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent) _exit(1);
        }
        int null_fd = open("/dev/null", O_RDONLY);
        if (null_fd >= 0) dup2(null_fd, 0);
        dup2(log_fd, 1);
        dup2(log_fd, 2);
        execvp(argv[0], argv.data());
        _exit(127);
    }
    close(log_fd);
    pid_ = pid;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
        int status = 0;
        if (waitpid(pid_, &status, WNOHANG) == pid_) {
            pid_ = -1;
            return make_error("docker-registry exited during startup: " + read_file(log));
        }
        if (port_answers(port_)) return {};
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    kill();
    return make_error("docker-registry did not answer on " + host() + " within 20 s: " + read_file(log));
}

Result<void> LocalRegistry::restart() {
    kill();
    return spawn();
}

Result<void> LocalRegistry::push_layout(const std::string& layout_dir, const std::string& layout_tag,
                                        const std::string& repo_tag) {
    std::vector<std::string> argv = {"skopeo", "--insecure-policy", "copy", "--quiet",
                                     "--dest-tls-verify=false"};
    if (!options_.username.empty())
        argv.push_back("--dest-creds=" + options_.username + ":" + options_.password);
    argv.push_back("oci:" + layout_dir + ":" + layout_tag);
    argv.push_back("docker://" + host() + "/" + repo_tag);
    return run(argv);
}

Result<void> build_oci_layout(const std::string& layout_dir, const std::string& tag,
                              const std::vector<std::function<void(const std::string& rootfs)>>& steps,
                              const std::vector<std::string>& config_args) {
    TempDir work("sandlot-umoci");
    if (work.path().empty()) return make_error("cannot create a temporary directory");
    std::string image = layout_dir + ":" + tag;
    TRY(run({"umoci", "init", "--layout", layout_dir}));
    TRY(run({"umoci", "new", "--image", image}));
    bool rootless = geteuid() != 0;
    for (size_t i = 0; i < steps.size(); ++i) {
        std::string bundle = work / ("bundle" + std::to_string(i));
        std::vector<std::string> unpack = {"umoci", "unpack"};
        if (rootless) unpack.push_back("--rootless");
        unpack.insert(unpack.end(), {"--image", image, bundle});
        TRY(run(unpack));
        if (steps[i]) steps[i](bundle + "/rootfs");
        TRY(run({"umoci", "repack", "--image", image, bundle}));
    }
    if (!config_args.empty()) {
        std::vector<std::string> argv = {"umoci", "config", "--image", image};
        argv.insert(argv.end(), config_args.begin(), config_args.end());
        TRY(run(argv));
    }
    return {};
}

}  // namespace sandlot::test
