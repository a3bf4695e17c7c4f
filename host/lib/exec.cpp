#include "host/lib/exec.h"

namespace sandlot::host {

int ExitStatus::shell_code() const {
    if (spawn_failure) {
        switch (spawn_failure->kind) {
            case proto::SpawnErrorKind::NotFound:
                return 127;
            case proto::SpawnErrorKind::PermissionDenied:
            case proto::SpawnErrorKind::NotExecutable:
                return 126;
            default:
                return 125;
        }
    }
    if (signal > 0) return 128 + signal;
    if (exit_code >= 0 && exit_code <= 255) return exit_code;
    return 125;  // no status we can express (should not happen with a sane agent)
}

}  // namespace sandlot::host
