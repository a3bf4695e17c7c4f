// The state database and the name/label rules: validation, CRUD with label and status filters, and
// read-modify-write that stays exact with many processes at once.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "host/lib/lifecycle.h"
#include "host/lib/names.h"
#include "host/lib/state_db.h"
#include "tests/support/temp_dir.h"

namespace sandlot::host {
namespace {

TEST(HostNames, SandboxNames) {
    EXPECT_TRUE(validate_sandbox_name("web-1"));
    EXPECT_TRUE(validate_sandbox_name("π-sandbox"));
    EXPECT_TRUE(validate_sandbox_name(std::string(128, 'x')));
    EXPECT_FALSE(validate_sandbox_name(std::string(129, 'x')));
    EXPECT_FALSE(validate_sandbox_name(""));
    EXPECT_FALSE(validate_sandbox_name("a/b"));
    EXPECT_FALSE(validate_sandbox_name("-rf"));
    EXPECT_FALSE(validate_sandbox_name(".hidden"));
    EXPECT_FALSE(validate_sandbox_name("tab\there"));
    EXPECT_FALSE(validate_sandbox_name("bad\xff"));
    EXPECT_FALSE(validate_sandbox_name("\xc0\xaf"));          // overlong '/'
    EXPECT_FALSE(validate_sandbox_name("\xed\xa0\x80"));      // a surrogate
    EXPECT_FALSE(validate_sandbox_name("\xf4\x90\x80\x80"));  // above U+10FFFF
    auto error = validate_sandbox_name("");
    EXPECT_EQ(error.error().message, "invalid sandbox name \"\": it is empty");
}

TEST(HostNames, Labels) {
    auto label = parse_label("team=a=b");
    ASSERT_TRUE(label);
    EXPECT_EQ(label->first, "team");
    EXPECT_EQ(label->second, "a=b");
    EXPECT_TRUE(parse_label("app.kubernetes.io/name="));
    EXPECT_FALSE(parse_label("novalue"));
    EXPECT_FALSE(parse_label("=x"));
    EXPECT_FALSE(parse_label("-k=v"));
    EXPECT_FALSE(parse_label("k y=v"));
    EXPECT_FALSE(parse_label("k=" + std::string(1025, 'v')));
    EXPECT_FALSE(parse_label("k=line\nbreak"));
    auto reserved = parse_label("sandlot.owner=me");
    ASSERT_FALSE(reserved);
    EXPECT_NE(reserved.error().message.find("reserved prefix \"sandlot.\""), std::string::npos);
    EXPECT_FALSE(parse_label("io.sandlot.x=1"));
}

class HostStateDb : public ::testing::Test {
  protected:
    std::string path() const { return dir_ / "sandlot.db"; }
    test::TempDir dir_{"sandlot-state"};
};

TEST_F(HostStateDb, InsertFindListAndFilters) {
    auto db = StateDb::open(path());
    ASSERT_TRUE(db) << db.error().to_string();
    auto a = db->insert_sandbox("a", "{}", {{"team", "x"}, {"tier", "1"}});
    ASSERT_TRUE(a) << a.error().to_string();
    EXPECT_EQ(a->id.size(), 16u);
    ASSERT_TRUE(db->insert_sandbox("b", "{}", {{"team", "x"}}));
    ASSERT_TRUE(db->insert_sandbox("c", "{}", {}));
    auto duplicate = db->insert_sandbox("a", "{}", {});
    ASSERT_FALSE(duplicate);
    EXPECT_EQ(duplicate.error().code, EEXIST);
    EXPECT_EQ(duplicate.error().message, "a sandbox named \"a\" already exists");

    auto found = db->find_sandbox("a");
    ASSERT_TRUE(found && *found);
    EXPECT_EQ((*found)->labels.at("tier"), "1");
    EXPECT_EQ((*found)->status, SandboxStatus::Created);
    EXPECT_FALSE(*db->find_sandbox("nope"));

    SandboxFilter team;
    team.labels = {{"team", "x"}};
    EXPECT_EQ(db->list_sandboxes(team)->size(), 2u);
    team.labels["tier"] = "1";
    EXPECT_EQ(db->list_sandboxes(team)->size(), 1u);
    ASSERT_TRUE(db->update_sandbox(a->id, [](SandboxRecord& r) -> Result<void> {
        r.status = SandboxStatus::Running;
        r.exit_code = 7;
        r.labels["new"] = "label";
        return {};
    }));
    SandboxFilter running;
    running.statuses = {SandboxStatus::Running};
    auto list = db->list_sandboxes(running);
    ASSERT_EQ(list->size(), 1u);
    EXPECT_EQ(list->front().name, "a");
    EXPECT_EQ(list->front().exit_code, 7);
    EXPECT_EQ(list->front().labels.at("new"), "label");

    // An aborted change writes nothing.
    auto aborted = db->update_sandbox(a->id, [](SandboxRecord& r) -> Result<void> {
        r.status = SandboxStatus::Crashed;
        return make_error("no");
    });
    EXPECT_FALSE(aborted);
    EXPECT_EQ((*db->find_sandbox("a"))->status, SandboxStatus::Running);

    ASSERT_TRUE(db->delete_sandbox(a->id));
    EXPECT_FALSE(*db->find_sandbox("a"));
    EXPECT_EQ(db->update_sandbox(a->id, [](SandboxRecord&) -> Result<void> { return {}; }).error().code,
              ENOENT);
}

TEST_F(HostStateDb, ReopenKeepsDataAndSchemaVersion) {
    {
        auto db = StateDb::open(path());
        ASSERT_TRUE(db);
        ASSERT_TRUE(db->insert_sandbox("kept", "{\"x\":1}", {}));
        ASSERT_TRUE(
            db->insert_volume({.name = "v", .path = "/p", .size_bytes = 3, .created_ns = 1, .labels = {}}));
        ASSERT_TRUE(db->upsert_image({.name = "img",
                                      .reference = "r",
                                      .path = "/i",
                                      .digest = "d",
                                      .size_bytes = 1,
                                      .created_ns = 1,
                                      .labels = {{"k", "v"}}}));
    }
    auto db = StateDb::open(path());
    ASSERT_TRUE(db);
    EXPECT_EQ((*db->find_sandbox("kept"))->config, "{\"x\":1}");
    EXPECT_EQ((*db->find_volume("v"))->size_bytes, 3u);
    EXPECT_EQ(db->insert_volume({.name = "v", .path = "/q", .size_bytes = 0, .created_ns = 0, .labels = {}})
                  .error()
                  .code,
              EEXIST);
    EXPECT_EQ((*db->find_image("img"))->labels.at("k"), "v");
    ASSERT_TRUE(db->delete_image("img"));
    ASSERT_TRUE(db->delete_volume("v"));
    EXPECT_TRUE(db->list_images()->empty());
    EXPECT_TRUE(db->list_volumes()->empty());
}

// Processes forked before any thread exists, each with its own connection.
std::vector<pid_t> fork_workers(int count, const std::function<int(int)>& work) {
    std::vector<pid_t> pids;
    for (int i = 0; i < count; ++i) {
        pid_t pid = fork();
        if (pid == 0) _exit(work(i));
        pids.push_back(pid);
    }
    return pids;
}

int wait_all(const std::vector<pid_t>& pids) {
    int failures = 0;
    for (pid_t pid : pids) {
        int status = 0;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failures;
    }
    return failures;
}

TEST_F(HostStateDb, ReadModifyWriteIsExactAcrossProcesses) {
    std::string id;
    {
        auto db = StateDb::open(path());
        ASSERT_TRUE(db);
        id = db->insert_sandbox("counter", "{}", {})->id;
    }
    constexpr int kWorkers = 6, kIncrements = 40;
    auto pids = fork_workers(kWorkers, [&](int) {
        auto db = StateDb::open(path());
        if (!db) return 1;
        for (int i = 0; i < kIncrements; ++i) {
            auto done = db->update_sandbox(id, [](SandboxRecord& r) -> Result<void> {
                r.exit_code = r.exit_code.value_or(0) + 1;
                return {};
            });
            if (!done) return 2;
        }
        return 0;
    });
    EXPECT_EQ(wait_all(pids), 0);
    auto db = StateDb::open(path());
    EXPECT_EQ((*db->find_sandbox("counter"))->exit_code, kWorkers * kIncrements);
}

TEST_F(HostStateDb, OneOfManyProcessesGetsAName) {
    auto pids = fork_workers(8, [&](int) {
        auto db = StateDb::open(path());
        if (!db) return 2;
        auto inserted = db->insert_sandbox("contested", "{}", {});
        if (inserted) return 0;
        return inserted.error().code == EEXIST ? 1 : 2;
    });
    int won = 0, lost = 0;
    for (pid_t pid : pids) {
        int status = 0;
        waitpid(pid, &status, 0);
        ASSERT_TRUE(WIFEXITED(status));
        if (WEXITSTATUS(status) == 0) ++won;
        if (WEXITSTATUS(status) == 1) ++lost;
    }
    EXPECT_EQ(won, 1);
    EXPECT_EQ(lost, 7);
}

// A child that stays alive (not yet a zombie, which reads as exited) until release_and_reap(): blocked
// reading a pipe whose write end only the parent holds.
int g_hold_pipe[2] = {-1, -1};
pid_t fork_held() {
    if (pipe2(g_hold_pipe, O_CLOEXEC) != 0) return -1;
    pid_t child = fork();
    if (child == 0) {
        close(g_hold_pipe[1]);
        char c;
        (void)!read(g_hold_pipe[0], &c, 1);
        _exit(0);
    }
    close(g_hold_pipe[0]);
    return child;
}
void release_and_reap(pid_t child) {
    close(g_hold_pipe[1]);
    waitpid(child, nullptr, 0);
}

TEST(HostProcessIdentity, PidReuseIsNotMistakenForTheProcess) {
    auto self = identify_process(getpid());
    ASSERT_TRUE(self);
    EXPECT_TRUE(process_alive(*self));
    ProcessIdentity other_start = *self;
    other_start.start_time += 1;
    EXPECT_FALSE(process_alive(other_start));
    pid_t child = fork_held();
    ASSERT_GT(child, 0);
    auto identity = identify_process(child);
    release_and_reap(child);
    ASSERT_TRUE(identity);
    EXPECT_FALSE(process_alive(*identity));
    EXPECT_FALSE(process_alive({}));
    EXPECT_EQ(status_name(SandboxStatus::Draining), "draining");
    EXPECT_EQ(parse_status("crashed"), SandboxStatus::Crashed);
    EXPECT_FALSE(parse_status("zombie"));
}

// A record that claims a supervisor nobody runs is corrected on the next read, not trusted.
TEST(HostLifecycle, RunningRecordWithoutItsSupervisorReadsAsCrashed) {
    test::TempDir dir("sandlot-lifecycle");
    auto home = SandboxHome::open(dir / "home");
    ASSERT_TRUE(home) << home.error().to_string();
    auto record = home->create("ghost", SandboxConfig{}, {{"team", "x"}});
    ASSERT_TRUE(record) << record.error().to_string();
    pid_t child = fork_held();
    ASSERT_GT(child, 0);
    auto gone = identify_process(child);
    release_and_reap(child);
    auto db = StateDb::open(dir / "home/sandlot.db");
    ASSERT_TRUE(db);
    ASSERT_TRUE(db->update_sandbox(record->id, [&](SandboxRecord& r) -> Result<void> {
        r.status = SandboxStatus::Running;
        r.supervisor = *gone;
        r.vmm = *gone;
        return {};
    }));
    auto now = home->get("ghost");
    ASSERT_TRUE(now);
    EXPECT_EQ(now->status, SandboxStatus::Crashed);
    EXPECT_EQ(now->exit_reason, "supervisor-died");
    EXPECT_EQ(now->supervisor.pid, 0);
    // Removable without -f now, and then really gone.
    ASSERT_TRUE(home->remove("ghost", false));
    EXPECT_EQ(home->get("ghost").error().code, ENOENT);
    EXPECT_EQ(home->get("ghost").error().message, "no sandbox named \"ghost\"");
}

TEST(HostLifecycle, CreateValidatesAndKeepsAPersistentUpperInItsDirectory) {
    test::TempDir dir("sandlot-lifecycle");
    auto home = SandboxHome::open(dir / "home");
    ASSERT_TRUE(home);
    SandboxConfig config;
    config.storage.root.image = "base";
    auto record = home->create("persist", config, {});
    ASSERT_TRUE(record);
    auto stored = config_from_json(record->config);
    ASSERT_TRUE(stored);
    EXPECT_EQ(stored->storage.root.upper_path, home->paths(*record).upper());
    config.ephemeral = true;
    auto ephemeral = home->create("temp", config, {});
    ASSERT_TRUE(ephemeral);
    EXPECT_EQ(config_from_json(ephemeral->config)->storage.root.upper_path, "");
    EXPECT_FALSE(home->create("", config, {}));
    EXPECT_FALSE(home->create("x", config, {{"sandlot.a", "b"}}));
    EXPECT_EQ(home->create("persist", config, {}).error().code, EEXIST);
    EXPECT_FALSE(home->exec("persist", {.argv = {"true"}}));
    auto logs = home->logs("persist", {});
    ASSERT_TRUE(logs);
    ASSERT_FALSE(logs->empty());
    EXPECT_EQ(logs->front().event, "create");
}

}  // namespace
}  // namespace sandlot::host
