// Sandlot's state database: one SQLite file ($SANDLOT_HOME/sandlot.db) shared by every sandlot process.
//
// WAL mode and a busy timeout let many processes read and write at once; every read-modify-write of a
// sandbox is one BEGIN IMMEDIATE transaction (update_sandbox), so concurrent CLI invocations never lose
// each other's changes. The schema is versioned by PRAGMA user_version and migrated on open.
// A StateDb is one connection, used from one thread at a time.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proto/base/error.h"

struct sqlite3;

namespace sandlot::host {

// The wall clock as the records keep it: nanoseconds since the Unix epoch.
inline int64_t unix_now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

enum class SandboxStatus { Created, Running, Draining, Stopped, Crashed };
std::string_view status_name(SandboxStatus status);  // "created", "running", ...
std::optional<SandboxStatus> parse_status(std::string_view text);

using Labels = std::map<std::string, std::string>;

// A process, robust against pid reuse: the pid and its start time.
struct ProcessIdentity {
    int pid = 0;              // 0 = none
    uint64_t start_time = 0;  // /proc/PID/stat field 22 (clock ticks after boot)
};
Result<ProcessIdentity> identify_process(int pid);
bool process_alive(const ProcessIdentity& process);  // the same pid with the same start time

struct SandboxRecord {
    std::string id;
    std::string name;
    std::string config;  // JSON (host/lib/sandbox_config.h)
    SandboxStatus status = SandboxStatus::Created;
    Labels labels{};
    int64_t created_ns = 0, updated_ns = 0, started_ns = 0, stopped_ns = 0;  // unix ns; 0 = never
    ProcessIdentity vmm{}, supervisor{};
    std::string exit_reason{};       // how it ended (docs/design.md lists them)
    std::optional<int> exit_code{};  // the VMM's exit status, 128+N for signal N
    std::string request{};           // pending request from another process: "", "stop", "kill", "drain"
    int64_t request_timeout_ms = 0;  // the grace of a stop or drain
};

struct SandboxFilter {
    Labels labels{};                        // all must match
    std::vector<SandboxStatus> statuses{};  // any of them; empty = all
};

struct VolumeRecord {
    std::string name, path;
    uint64_t size_bytes = 0;
    int64_t created_ns = 0;
    Labels labels{};
};

struct ImageRecord {
    std::string name, reference, path, digest;
    uint64_t size_bytes = 0;
    int64_t created_ns = 0;
    Labels labels{};
};

class StateDb {
  public:
    static Result<StateDb> open(const std::string& path);
    StateDb(StateDb&&) noexcept;
    StateDb& operator=(StateDb&&) noexcept;
    ~StateDb();

    // A new record in status created with a fresh random id. A taken name: EEXIST.
    Result<SandboxRecord> insert_sandbox(const std::string& name, const std::string& config,
                                         const Labels& labels);
    Result<std::optional<SandboxRecord>> find_sandbox(const std::string& name);
    Result<std::optional<SandboxRecord>> find_sandbox_by_id(const std::string& id);
    Result<std::vector<SandboxRecord>> list_sandboxes(const SandboxFilter& filter = {});  // oldest first
    // Re-reads the record, lets `change` modify it (an Error aborts with nothing written), writes it back and
    // sets updated_ns, all in one transaction. ENOENT if the id is gone.
    Result<SandboxRecord> update_sandbox(const std::string& id,
                                         const std::function<Result<void>(SandboxRecord&)>& change);
    Result<void> delete_sandbox(const std::string& id);

    Result<void> insert_volume(const VolumeRecord& volume);  // EEXIST on a taken name
    Result<std::optional<VolumeRecord>> find_volume(const std::string& name);
    Result<std::vector<VolumeRecord>> list_volumes();
    Result<void> delete_volume(const std::string& name);

    Result<void> upsert_image(const ImageRecord& image);
    Result<std::optional<ImageRecord>> find_image(const std::string& name);
    Result<std::vector<ImageRecord>> list_images();
    Result<void> delete_image(const std::string& name);

    struct Statement;  // a prepared statement (state_db.cpp)

  private:
    StateDb() = default;
    Result<void> exec(const char* sql);
    Result<void> migrate();
    Result<Labels> read_labels(const char* kind, const std::string& owner);
    Result<void> write_labels(const char* kind, const std::string& owner, const Labels& labels);
    Result<std::optional<SandboxRecord>> find_sandbox_where(const char* column, const std::string& value);
    Error error(const std::string& what) const;
    sqlite3* db_ = nullptr;
};

}  // namespace sandlot::host
