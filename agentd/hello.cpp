#include "agentd/hello.h"

#include <sched.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "agentd/exec_limits.h"
#include "proto/exec.h"
#include "proto/version.h"

namespace sandlot::agent {

namespace {

uint32_t cpus_online() {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n > 0) return static_cast<uint32_t>(n);
    // Without /sys or /proc, fall back to the CPUs we may run on.
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return static_cast<uint32_t>(CPU_COUNT(&set));
    return 1;  // we are running on at least this one
}

uint64_t mem_total_kib() {
    struct sysinfo info {};
    if (sysinfo(&info) != 0) return 0;
    return static_cast<uint64_t>(info.totalram) * info.mem_unit / 1024;
}

std::string kernel_release() {
    struct utsname uts {};
    if (uname(&uts) != 0) return "";
    return uts.release;
}

}  // namespace

uint64_t boottime_ns() {
    timespec ts{};
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

proto::Hello build_hello(const AgentTimes& times) {
    proto::Hello hello;
    hello.protocol_major = proto::kProtocolMajor;
    hello.protocol_minor = proto::kProtocolMinor;
    hello.features = proto::kFeatureExec | proto::kFeaturePty | proto::kFeatureExecUser |
                     proto::kFeatureExecRlimits | proto::kFeatureExecTimeout | proto::kFeatureStats |
                     proto::kFeatureFs;
    hello.agent_version = std::string(proto::kAgentVersion);
    hello.agent_start_ns = times.start_ns;
    hello.agent_ready_ns = times.ready_ns;
    hello.cpus_online = cpus_online();
    hello.mem_total_kib = mem_total_kib();
    hello.kernel_release = kernel_release();
    hello.max_frame_payload = proto::kMaxFramePayload;
    hello.max_streams = kMaxStreams;
    hello.stdin_window = kStdinWindow;
    hello.hello_ns = boottime_ns();
    return hello;
}

}  // namespace sandlot::agent
