// /init of the boot benchmark's guest: says that init runs, then restarts the VM.
//
// The kernel runs with reboot=t, so reboot(RB_AUTOBOOT) triple-faults: sandlot-vmm exits on the shutdown and
// QEMU (with -no-reboot) exits on the reset. Static and free of libc++ machinery: it runs as PID 1 with
// nothing mounted.
#include <fcntl.h>
#include <sys/reboot.h>
#include <time.h>
#include <unistd.h>

#include <cstring>

#include "benchmarks/boot/marker.h"

namespace {

// The harness reads the VMM's /proc/<pid>/smaps when it sees the marker; the VM must still be up by then.
constexpr long kPauseAfterMarkerNs = 300'000'000;

void write_all(int fd, const char* text, size_t size) {
    while (size > 0) {
        ssize_t n = write(fd, text, size);
        if (n <= 0) return;  // nobody to tell; the restart still ends the run
        text += n;
        size -= static_cast<size_t>(n);
    }
}

}  // namespace

int main() {
    int console = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (console < 0) console = STDOUT_FILENO;  // the kernel's own console fds, if it opened one

    char line[64];
    size_t length = std::strlen(sandlot::bench::kInitMarker);
    std::memcpy(line, sandlot::bench::kInitMarker, length);
    line[length++] = '\n';
    write_all(console, line, length);

    timespec delay{0, kPauseAfterMarkerNs};
    while (nanosleep(&delay, &delay) != 0) {
    }
    sync();
    reboot(RB_AUTOBOOT);
    for (;;)
        pause();  // PID 1 must never return
}
