#include "host/lib/state_db.h"

#include "proto/base/unique_fd.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <random>

namespace sandlot::host {

namespace {

constexpr int kSchemaVersion = 1;

constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    created_ns INTEGER NOT NULL DEFAULT 0,
    updated_ns INTEGER NOT NULL DEFAULT 0,
    started_ns INTEGER NOT NULL DEFAULT 0,
    stopped_ns INTEGER NOT NULL DEFAULT 0,
    vmm_pid INTEGER NOT NULL DEFAULT 0,
    vmm_start INTEGER NOT NULL DEFAULT 0,
    supervisor_pid INTEGER NOT NULL DEFAULT 0,
    supervisor_start INTEGER NOT NULL DEFAULT 0,
    exit_reason TEXT NOT NULL DEFAULT '',
    exit_code INTEGER,
    request TEXT NOT NULL DEFAULT '',
    request_timeout_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE labels (
    kind TEXT NOT NULL,
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, owner, key)
);
CREATE TABLE volumes (
    name TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    size_bytes INTEGER NOT NULL DEFAULT 0,
    created_ns INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE images (
    name TEXT PRIMARY KEY,
    reference TEXT NOT NULL DEFAULT '',
    path TEXT NOT NULL DEFAULT '',
    digest TEXT NOT NULL DEFAULT '',
    size_bytes INTEGER NOT NULL DEFAULT 0,
    created_ns INTEGER NOT NULL DEFAULT 0
);
)sql";

constexpr const char* kSandboxColumns =
    "id, name, config, status, created_ns, updated_ns, started_ns, stopped_ns, vmm_pid, vmm_start, "
    "supervisor_pid, supervisor_start, exit_reason, exit_code, request, request_timeout_ms";

std::string random_id() {
    std::random_device random;
    return fmt::format("{:08x}{:08x}", random(), random());
}

constexpr std::pair<SandboxStatus, std::string_view> kStatusNames[] = {
    {SandboxStatus::Created, "created"},   {SandboxStatus::Running, "running"},
    {SandboxStatus::Draining, "draining"}, {SandboxStatus::Stopped, "stopped"},
    {SandboxStatus::Crashed, "crashed"},
};

}  // namespace

std::string_view status_name(SandboxStatus status) {
    for (auto [s, name] : kStatusNames)
        if (s == status) return name;
    return "unknown";
}

std::optional<SandboxStatus> parse_status(std::string_view text) {
    for (auto [s, name] : kStatusNames)
        if (name == text) return s;
    return std::nullopt;
}

Result<ProcessIdentity> identify_process(int pid) {
    if (pid <= 0) return make_error("no process " + std::to_string(pid), ESRCH);
    std::string path = "/proc/" + std::to_string(pid) + "/stat";
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return errno_error("open " + path);
    char buffer[1024];
    ssize_t n = read(fd.get(), buffer, sizeof buffer - 1);
    if (n <= 0) return make_error("read " + path, ESRCH);
    std::string_view text(buffer, static_cast<size_t>(n));
    // The command name (field 2) may hold spaces and parentheses: fields are counted after the last ')'.
    auto close = text.rfind(')');
    if (close == std::string_view::npos) return make_error("parse " + path);
    size_t field = 2, at = close + 1;
    while (at < text.size()) {
        while (at < text.size() && text[at] == ' ')
            ++at;
        size_t end = text.find(' ', at);
        if (end == std::string_view::npos) end = text.size();
        std::string_view value = text.substr(at, end - at);
        ++field;
        // A zombie has exited: only its exit status waits to be collected.
        if (field == 3 && (value == "Z" || value == "X"))
            return make_error("process " + std::to_string(pid) + " has exited", ESRCH);
        if (field == 22) {
            ProcessIdentity identity;
            identity.pid = pid;
            auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), identity.start_time);
            if (ec != std::errc() || ptr != value.data() + value.size()) return make_error("parse " + path);
            return identity;
        }
        at = end;
    }
    return make_error("parse " + path);
}

bool process_alive(const ProcessIdentity& process) {
    if (process.pid <= 0) return false;
    auto now = identify_process(process.pid);
    return now && now->start_time == process.start_time;
}

// A prepared statement: bind by position (1-based), step, read columns; finalized on destruction.
struct StateDb::Statement {
    sqlite3_stmt* stmt = nullptr;
    sqlite3* db = nullptr;
    ~Statement() { sqlite3_finalize(stmt); }
    Statement& bind(int i, const std::string& value) {
        sqlite3_bind_text(stmt, i, value.data(), static_cast<int>(value.size()), SQLITE_TRANSIENT);
        return *this;
    }
    Statement& bind(int i, int64_t value) {
        sqlite3_bind_int64(stmt, i, value);
        return *this;
    }
    Statement& bind_null(int i) {
        sqlite3_bind_null(stmt, i);
        return *this;
    }
    // SQLITE_ROW → true, SQLITE_DONE → false.
    Result<bool> step() {
        int rc = sqlite3_step(stmt);
        if (rc == SQLITE_ROW) return true;
        if (rc == SQLITE_DONE) return false;
        return make_error(std::string("state database: ") + sqlite3_errmsg(db),
                          sqlite3_extended_errcode(db) == SQLITE_CONSTRAINT_UNIQUE ||
                                  sqlite3_extended_errcode(db) == SQLITE_CONSTRAINT_PRIMARYKEY
                              ? EEXIST
                              : EIO);
    }
    std::string text(int i) const {
        auto p = sqlite3_column_text(stmt, i);
        return p ? std::string(reinterpret_cast<const char*>(p),
                               static_cast<size_t>(sqlite3_column_bytes(stmt, i)))
                 : std::string();
    }
    int64_t integer(int i) const { return sqlite3_column_int64(stmt, i); }
    bool is_null(int i) const { return sqlite3_column_type(stmt, i) == SQLITE_NULL; }
};

Error StateDb::error(const std::string& what) const {
    return Error{EIO, "state database: " + what + ": " + sqlite3_errmsg(db_)};
}

#define PREPARE(sql)                                                                     \
    ({                                                                                   \
        auto statement_ = std::make_unique<Statement>();                                 \
        statement_->db = db_;                                                            \
        if (sqlite3_prepare_v2(db_, (sql), -1, &statement_->stmt, nullptr) != SQLITE_OK) \
            return std::unexpected(error("prepare"));                                    \
        std::move(statement_);                                                           \
    })

// BEGIN IMMEDIATE ... COMMIT, rolled back unless committed.
class Transaction {
  public:
    explicit Transaction(sqlite3* db) : db_(db) {}
    Result<void> begin() {
        if (sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) != SQLITE_OK)
            return make_error(std::string("state database: begin: ") + sqlite3_errmsg(db_), EIO);
        open_ = true;
        return {};
    }
    Result<void> commit() {
        if (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK)
            return make_error(std::string("state database: commit: ") + sqlite3_errmsg(db_), EIO);
        open_ = false;
        return {};
    }
    ~Transaction() {
        if (open_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    }

  private:
    sqlite3* db_;
    bool open_ = false;
};

Result<StateDb> StateDb::open(const std::string& path) {
    // Creating the file, switching it to WAL and migrating are serialized across processes: SQLite reports
    // a busy journal-mode change at once instead of waiting for it.
    std::string lock_path = path + ".lock";
    int lock = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock < 0) return errno_error("state database: open " + lock_path);
    struct Unlock {
        int fd;
        ~Unlock() { ::close(fd); }
    } unlock{lock};
    while (flock(lock, LOCK_EX) != 0)
        if (errno != EINTR) return errno_error("state database: flock " + lock_path);
    StateDb db;
    int rc = sqlite3_open_v2(path.c_str(), &db.db_,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    if (rc != SQLITE_OK)
        return make_error(
            "state database " + path + ": " + (db.db_ ? sqlite3_errmsg(db.db_) : sqlite3_errstr(rc)), EIO);
    sqlite3_busy_timeout(db.db_, 10'000);
    TRY(db.exec("PRAGMA journal_mode=WAL"));
    TRY(db.exec("PRAGMA synchronous=NORMAL"));
    TRY(db.exec("PRAGMA foreign_keys=ON"));
    TRY(db.migrate());
    return db;
}

StateDb::StateDb(StateDb&& other) noexcept : db_(std::exchange(other.db_, nullptr)) {}
StateDb& StateDb::operator=(StateDb&& other) noexcept {
    if (this != &other) {
        sqlite3_close_v2(db_);
        db_ = std::exchange(other.db_, nullptr);
    }
    return *this;
}
StateDb::~StateDb() {
    sqlite3_close_v2(db_);
}

Result<void> StateDb::exec(const char* sql) {
    char* message = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &message) != SQLITE_OK) {
        std::string text = message ? message : sqlite3_errmsg(db_);
        sqlite3_free(message);
        return make_error("state database: " + text, EIO);
    }
    return {};
}

Result<void> StateDb::migrate() {
    Transaction transaction(db_);
    TRY(transaction.begin());
    auto version = PREPARE("PRAGMA user_version");
    int64_t current = TRY(version->step()) ? version->integer(0) : 0;
    if (current > kSchemaVersion)
        return make_error(fmt::format("state database: schema version {} is newer than this sandlot's {}",
                                      current, kSchemaVersion));
    if (current < 1) TRY(exec(kSchemaV1));
    // Later versions: if (current < 2) TRY(exec(kSchemaV2)); ...
    if (current < kSchemaVersion) TRY(exec(fmt::format("PRAGMA user_version={}", kSchemaVersion).c_str()));
    return transaction.commit();
}

Result<Labels> StateDb::read_labels(const char* kind, const std::string& owner) {
    auto statement = PREPARE("SELECT key, value FROM labels WHERE kind = ? AND owner = ?");
    statement->bind(1, std::string(kind)).bind(2, owner);
    Labels labels;
    while (TRY(statement->step()))
        labels[statement->text(0)] = statement->text(1);
    return labels;
}

Result<void> StateDb::write_labels(const char* kind, const std::string& owner, const Labels& labels) {
    auto erase = PREPARE("DELETE FROM labels WHERE kind = ? AND owner = ?");
    erase->bind(1, std::string(kind)).bind(2, owner);
    TRY(erase->step());
    for (const auto& [key, value] : labels) {
        auto insert = PREPARE("INSERT INTO labels (kind, owner, key, value) VALUES (?, ?, ?, ?)");
        insert->bind(1, std::string(kind)).bind(2, owner).bind(3, key).bind(4, value);
        TRY(insert->step());
    }
    return {};
}

namespace {

SandboxRecord read_sandbox(const StateDb::Statement& s) {
    SandboxRecord r;
    r.id = s.text(0);
    r.name = s.text(1);
    r.config = s.text(2);
    r.status = parse_status(s.text(3)).value_or(SandboxStatus::Crashed);
    r.created_ns = s.integer(4);
    r.updated_ns = s.integer(5);
    r.started_ns = s.integer(6);
    r.stopped_ns = s.integer(7);
    r.vmm = {static_cast<int>(s.integer(8)), static_cast<uint64_t>(s.integer(9))};
    r.supervisor = {static_cast<int>(s.integer(10)), static_cast<uint64_t>(s.integer(11))};
    r.exit_reason = s.text(12);
    if (!s.is_null(13)) r.exit_code = static_cast<int>(s.integer(13));
    r.request = s.text(14);
    r.request_timeout_ms = s.integer(15);
    return r;
}

}  // namespace

Result<SandboxRecord> StateDb::insert_sandbox(const std::string& name, const std::string& config,
                                              const Labels& labels) {
    Transaction transaction(db_);
    TRY(transaction.begin());
    SandboxRecord record;
    record.id = random_id();
    record.name = name;
    record.config = config;
    record.labels = labels;
    record.created_ns = record.updated_ns = unix_now_ns();
    auto insert = PREPARE(
        "INSERT INTO sandboxes (id, name, config, status, created_ns, updated_ns) "
        "VALUES (?, ?, ?, 'created', ?, ?)");
    insert->bind(1, record.id)
        .bind(2, name)
        .bind(3, config)
        .bind(4, record.created_ns)
        .bind(5, record.updated_ns);
    auto inserted = insert->step();
    if (!inserted && inserted.error().code == EEXIST)
        return make_error("a sandbox named \"" + name + "\" already exists", EEXIST);
    TRY(inserted);
    TRY(write_labels("sandbox", record.id, labels));
    TRY(transaction.commit());
    return record;
}

Result<std::optional<SandboxRecord>> StateDb::find_sandbox_where(const char* column,
                                                                 const std::string& value) {
    auto sql = fmt::format("SELECT {} FROM sandboxes WHERE {} = ?", kSandboxColumns, column);
    auto statement = PREPARE(sql.c_str());
    statement->bind(1, value);
    if (!TRY(statement->step())) return std::optional<SandboxRecord>();
    auto record = read_sandbox(*statement);
    record.labels = TRY(read_labels("sandbox", record.id));
    return std::optional<SandboxRecord>(std::move(record));
}

Result<std::optional<SandboxRecord>> StateDb::find_sandbox(const std::string& name) {
    return find_sandbox_where("name", name);
}

Result<std::optional<SandboxRecord>> StateDb::find_sandbox_by_id(const std::string& id) {
    return find_sandbox_where("id", id);
}

Result<std::vector<SandboxRecord>> StateDb::list_sandboxes(const SandboxFilter& filter) {
    auto sql = fmt::format("SELECT {} FROM sandboxes ORDER BY created_ns, name", kSandboxColumns);
    auto statement = PREPARE(sql.c_str());
    std::vector<SandboxRecord> result;
    while (TRY(statement->step())) {
        auto record = read_sandbox(*statement);
        if (!filter.statuses.empty() &&
            std::find(filter.statuses.begin(), filter.statuses.end(), record.status) == filter.statuses.end())
            continue;
        record.labels = TRY(read_labels("sandbox", record.id));
        bool match = true;
        for (const auto& [key, value] : filter.labels) {
            auto it = record.labels.find(key);
            match = match && it != record.labels.end() && it->second == value;
        }
        if (match) result.push_back(std::move(record));
    }
    return result;
}

Result<SandboxRecord> StateDb::update_sandbox(const std::string& id,
                                              const std::function<Result<void>(SandboxRecord&)>& change) {
    Transaction transaction(db_);
    TRY(transaction.begin());
    auto found = TRY(find_sandbox_by_id(id));
    if (!found) return make_error("sandbox " + id + " no longer exists", ENOENT);
    SandboxRecord record = std::move(*found);
    TRY(change(record));
    record.updated_ns = unix_now_ns();
    auto update = PREPARE(
        "UPDATE sandboxes SET name = ?, config = ?, status = ?, created_ns = ?, updated_ns = ?, started_ns = "
        "?, "
        "stopped_ns = ?, vmm_pid = ?, vmm_start = ?, supervisor_pid = ?, supervisor_start = ?, exit_reason = "
        "?, "
        "exit_code = ?, request = ?, request_timeout_ms = ? WHERE id = ?");
    update->bind(1, record.name)
        .bind(2, record.config)
        .bind(3, std::string(status_name(record.status)))
        .bind(4, record.created_ns)
        .bind(5, record.updated_ns)
        .bind(6, record.started_ns)
        .bind(7, record.stopped_ns)
        .bind(8, int64_t{record.vmm.pid})
        .bind(9, static_cast<int64_t>(record.vmm.start_time))
        .bind(10, int64_t{record.supervisor.pid})
        .bind(11, static_cast<int64_t>(record.supervisor.start_time))
        .bind(12, record.exit_reason);
    if (record.exit_code)
        update->bind(13, int64_t{*record.exit_code});
    else
        update->bind_null(13);
    update->bind(14, record.request).bind(15, record.request_timeout_ms).bind(16, record.id);
    auto updated = update->step();
    if (!updated && updated.error().code == EEXIST)
        return make_error("a sandbox named \"" + record.name + "\" already exists", EEXIST);
    TRY(updated);
    TRY(write_labels("sandbox", record.id, record.labels));
    TRY(transaction.commit());
    return record;
}

Result<void> StateDb::delete_sandbox(const std::string& id) {
    Transaction transaction(db_);
    TRY(transaction.begin());
    auto erase = PREPARE("DELETE FROM sandboxes WHERE id = ?");
    erase->bind(1, id);
    TRY(erase->step());
    TRY(write_labels("sandbox", id, {}));
    return transaction.commit();
}

Result<void> StateDb::insert_volume(const VolumeRecord& volume) {
    Transaction transaction(db_);
    TRY(transaction.begin());
    auto insert = PREPARE("INSERT INTO volumes (name, path, size_bytes, created_ns) VALUES (?, ?, ?, ?)");
    insert->bind(1, volume.name)
        .bind(2, volume.path)
        .bind(3, static_cast<int64_t>(volume.size_bytes))
        .bind(4, volume.created_ns ? volume.created_ns : unix_now_ns());
    auto inserted = insert->step();
    if (!inserted && inserted.error().code == EEXIST)
        return make_error("a volume named \"" + volume.name + "\" already exists", EEXIST);
    TRY(inserted);
    TRY(write_labels("volume", volume.name, volume.labels));
    return transaction.commit();
}

Result<std::optional<VolumeRecord>> StateDb::find_volume(const std::string& name) {
    for (auto& volume : TRY(list_volumes()))
        if (volume.name == name) return std::optional<VolumeRecord>(std::move(volume));
    return std::optional<VolumeRecord>();
}

Result<std::vector<VolumeRecord>> StateDb::list_volumes() {
    auto statement = PREPARE("SELECT name, path, size_bytes, created_ns FROM volumes ORDER BY name");
    std::vector<VolumeRecord> result;
    while (TRY(statement->step())) {
        VolumeRecord v;
        v.name = statement->text(0);
        v.path = statement->text(1);
        v.size_bytes = static_cast<uint64_t>(statement->integer(2));
        v.created_ns = statement->integer(3);
        v.labels = TRY(read_labels("volume", v.name));
        result.push_back(std::move(v));
    }
    return result;
}

Result<void> StateDb::delete_volume(const std::string& name) {
    Transaction transaction(db_);
    TRY(transaction.begin());
    auto erase = PREPARE("DELETE FROM volumes WHERE name = ?");
    erase->bind(1, name);
    TRY(erase->step());
    TRY(write_labels("volume", name, {}));
    return transaction.commit();
}

Result<void> StateDb::upsert_image(const ImageRecord& image) {
    Transaction transaction(db_);
    TRY(transaction.begin());
    auto upsert = PREPARE(
        "INSERT INTO images (name, reference, path, digest, size_bytes, created_ns) VALUES (?, ?, ?, ?, ?, "
        "?) "
        "ON CONFLICT(name) DO UPDATE SET reference = excluded.reference, path = excluded.path, "
        "digest = excluded.digest, size_bytes = excluded.size_bytes, created_ns = excluded.created_ns");
    upsert->bind(1, image.name)
        .bind(2, image.reference)
        .bind(3, image.path)
        .bind(4, image.digest)
        .bind(5, static_cast<int64_t>(image.size_bytes))
        .bind(6, image.created_ns ? image.created_ns : unix_now_ns());
    TRY(upsert->step());
    TRY(write_labels("image", image.name, image.labels));
    return transaction.commit();
}

Result<std::optional<ImageRecord>> StateDb::find_image(const std::string& name) {
    for (auto& image : TRY(list_images()))
        if (image.name == name) return std::optional<ImageRecord>(std::move(image));
    return std::optional<ImageRecord>();
}

Result<std::vector<ImageRecord>> StateDb::list_images() {
    auto statement =
        PREPARE("SELECT name, reference, path, digest, size_bytes, created_ns FROM images ORDER BY name");
    std::vector<ImageRecord> result;
    while (TRY(statement->step())) {
        ImageRecord i;
        i.name = statement->text(0);
        i.reference = statement->text(1);
        i.path = statement->text(2);
        i.digest = statement->text(3);
        i.size_bytes = static_cast<uint64_t>(statement->integer(4));
        i.created_ns = statement->integer(5);
        i.labels = TRY(read_labels("image", i.name));
        result.push_back(std::move(i));
    }
    return result;
}

Result<void> StateDb::delete_image(const std::string& name) {
    Transaction transaction(db_);
    TRY(transaction.begin());
    auto erase = PREPARE("DELETE FROM images WHERE name = ?");
    erase->bind(1, name);
    TRY(erase->step());
    TRY(write_labels("image", name, {}));
    return transaction.commit();
}

}  // namespace sandlot::host
