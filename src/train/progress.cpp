#include "kvq/train/progress.h"

#include <c10/util/Exception.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <sstream>

namespace kvq {
namespace train {

namespace {

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string format_loss(double loss) {
  std::ostringstream out;
  out << std::setprecision(4) << loss;
  return out.str();
}

}  // namespace

bool stderr_is_terminal() {
  if (::isatty(STDERR_FILENO) == 0) return false;
  const char* term = std::getenv("TERM");
  return term == nullptr || std::strcmp(term, "dumb") != 0;
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto total = static_cast<int64_t>(std::llround(seconds));
  const int64_t h = total / 3600, m = (total / 60) % 60, s = total % 60;
  char buffer[64];
  if (h > 0) {
    std::snprintf(buffer, sizeof(buffer), "%lld:%02lld:%02lld", static_cast<long long>(h),
                  static_cast<long long>(m), static_cast<long long>(s));
  } else {
    std::snprintf(buffer, sizeof(buffer), "%02lld:%02lld", static_cast<long long>(m),
                  static_cast<long long>(s));
  }
  return buffer;
}

std::string format_rate(double per_second) {
  if (!std::isfinite(per_second) || per_second < 0) return "?";
  const char* suffixes[] = {"", "k", "M", "G", "T"};
  int i = 0;
  while (per_second >= 999.5 && i < 4) {
    per_second /= 1000.0;
    ++i;
  }
  char buffer[64];
  if (i == 0) {
    std::snprintf(buffer, sizeof(buffer), per_second >= 99.5 ? "%.0f" : "%.3g", per_second);
  } else {
    std::snprintf(buffer, sizeof(buffer), per_second >= 99.95 ? "%.0f%s"
                                          : per_second >= 9.995 ? "%.1f%s"
                                                                : "%.2f%s",
                  per_second, suffixes[i]);
  }
  return buffer;
}

ProgressBar::ProgressBar(int64_t total_steps, ProgressOptions options, int64_t start_step)
    : ProgressBar(total_steps, std::move(options), start_step, std::cerr, stderr_is_terminal(),
                  steady_seconds) {}

ProgressBar::ProgressBar(int64_t total_steps, ProgressOptions options, int64_t start_step,
                         std::ostream& out, bool terminal, Clock clock)
    : total_(total_steps),
      start_step_(start_step),
      options_(std::move(options)),
      out_(out),
      terminal_(terminal),
      clock_(std::move(clock)),
      start_time_(clock_()),
      step_(start_step) {
  TORCH_CHECK(total_steps >= 1, "ProgressBar: total_steps must be >= 1, got ", total_steps);
  TORCH_CHECK(start_step >= 0 && start_step <= total_steps,
              "ProgressBar: start_step must be in [0, total_steps], got ", start_step);
  TORCH_CHECK(options_.bar_width() >= 1, "ProgressBar: bar_width must be >= 1");
}

ProgressBar::~ProgressBar() {
  if (line_open_) out_ << "\n" << std::flush;
}

void ProgressBar::update(int64_t step, double loss, int64_t items) {
  if (finished_) return;
  step_ = step;
  loss_ = loss;
  has_loss_ = true;
  items_ += items;
  const double now = clock_();
  const double interval = terminal_ ? options_.refresh_seconds() : options_.line_seconds();
  if (!drawn_ || now - last_draw_ >= interval || (terminal_ && step >= total_)) draw();
}

void ProgressBar::note(const std::string& line) {
  if (terminal_ && line_open_) {
    out_ << "\r\x1b[K" << line << "\n";
    out_ << "\r" << bar_line() << "\x1b[K" << std::flush;
  } else {
    out_ << line << "\n" << std::flush;
  }
}

void ProgressBar::finish() {
  if (finished_) return;
  if (terminal_) {
    out_ << "\r" << bar_line() << "\x1b[K\n" << std::flush;
  } else if (last_drawn_step_ != step_ || !drawn_) {
    out_ << status() << "\n" << std::flush;
  }
  line_open_ = false;
  finished_ = true;
}

std::string ProgressBar::status() const {
  const double elapsed = clock_() - start_time_;
  const int64_t done = step_ - start_step_;
  const double percent = 100.0 * std::min<double>(1.0, static_cast<double>(step_) / total_);
  std::ostringstream out;
  if (!options_.label().empty()) out << options_.label() << " ";
  out << step_ << "/" << total_ << " (" << static_cast<int>(percent) << "%)";
  if (has_loss_) out << " loss " << format_loss(loss_);
  out << " | " << throughput(elapsed);
  out << " | elapsed " << format_duration(elapsed);
  out << " | ETA "
      << (done > 0 ? format_duration(elapsed / done * std::max<int64_t>(0, total_ - step_))
                   : std::string("?"));
  return out.str();
}

std::string ProgressBar::throughput(double elapsed) const {
  std::ostringstream out;
  out << (elapsed > 0 ? format_rate(items_ / elapsed) : std::string("?")) << " "
      << options_.unit() << "/s";
  if (options_.flops_per_item() > 0 && options_.peak_flops() > 0 && elapsed > 0) {
    const double mfu = items_ / elapsed * options_.flops_per_item() / options_.peak_flops();
    out << " | mfu " << std::fixed << std::setprecision(mfu < 0.1 ? 1 : 0) << 100.0 * mfu << "%";
  }
  return out.str();
}

std::string ProgressBar::bar_line() const {
  const double elapsed = clock_() - start_time_;
  const int64_t done = step_ - start_step_;
  const double fraction = std::clamp(static_cast<double>(step_) / total_, 0.0, 1.0);
  const auto width = options_.bar_width();
  const auto filled = static_cast<int64_t>(fraction * width);
  std::ostringstream out;
  if (!options_.label().empty()) out << options_.label() << " ";
  out << std::setw(3) << static_cast<int>(fraction * 100) << "% ["
      << std::string(filled, '#') << std::string(width - filled, ' ') << "] " << step_ << "/"
      << total_;
  if (has_loss_) out << " loss " << format_loss(loss_);
  out << " | " << throughput(elapsed);
  out << " | ETA "
      << (done > 0 ? format_duration(elapsed / done * std::max<int64_t>(0, total_ - step_))
                   : std::string("?"));
  return out.str();
}

void ProgressBar::draw() {
  if (terminal_) {
    out_ << "\r" << bar_line() << "\x1b[K" << std::flush;
    line_open_ = true;
  } else {
    out_ << status() << "\n" << std::flush;
  }
  drawn_ = true;
  last_draw_ = clock_();
  last_drawn_step_ = step_;
}

}  // namespace train
}  // namespace kvq
