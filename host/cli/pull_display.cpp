#include "host/cli/pull_display.h"

#include <algorithm>
#include <string>

#include <fmt/format.h>

#include "host/cli/sandbox_args.h"

namespace sandlot::cli {

void PullDisplay::update(const host::PullProgress& p) {
    if (lines_.size() < p.layers) lines_.resize(p.layers);
    auto& line = lines_[p.layer];
    line = p;
    auto now = std::chrono::steady_clock::now();
    bool state_changed = line.state != host::PullProgress::State::Downloading;
    if (!state_changed && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    draw();
}

void PullDisplay::draw() {
    std::string out;
    if (drawn_) out += fmt::format("\x1b[{}A", drawn_);
    for (const auto& l : lines_) {
        if (l.digest.size() < 19) continue;  // not reported yet
        out += "\x1b[2K" + l.digest.substr(7, 12) + ": ";
        switch (l.state) {
            case host::PullProgress::State::Waiting:
                out += "waiting";
                break;
            case host::PullProgress::State::Present:
                out += "already present";
                break;
            case host::PullProgress::State::Done:
                out += "done " + human_bytes(l.total);
                break;
            case host::PullProgress::State::Downloading: {
                constexpr int kWidth = 30;
                int filled =
                    l.total
                        ? static_cast<int>(kWidth * std::min<double>(1.0, double(l.done) / double(l.total)))
                        : 0;
                out += "[" + std::string(filled, '=') + std::string(kWidth - filled, ' ') + "] " +
                       human_bytes(l.done) + " / " + human_bytes(l.total);
                break;
            }
        }
        out += "\n";
    }
    drawn_ = static_cast<size_t>(std::count_if(
        lines_.begin(), lines_.end(), [](const host::PullProgress& l) { return l.digest.size() >= 19; }));
    fmt::print(stderr, "{}", out);
}

}  // namespace sandlot::cli
