#pragma once
// A training progress display on stderr:
//   train  37% [########                ] 370/1000 loss 1.234 | 5.12k items/s | ETA 02:03
// redrawn in place on a terminal at most every `refresh_seconds`; when stderr is not a terminal
// (CI logs, redirected output, TERM=dumb) it degrades to one plain line every `line_seconds`
// plus the first and the final state, with no control characters:
//   train 370/1000 (37%) loss 1.234 | 5.12k items/s | elapsed 01:02 | ETA 02:03
// Throughput is the items counted since the display started divided by the elapsed time; the
// ETA extrapolates the average time per step since then (a resumed run passes its start step).
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>

namespace kvq {
namespace train {

struct ProgressOptions {
  /// Text in front of the line, e.g. "train" or the run name. Default: "".
  TORCH_ARG(std::string, label) = "";
  /// Name of the counted items in the throughput, e.g. "tok" or "img". Default: "items".
  TORCH_ARG(std::string, unit) = "items";
  /// Minimum seconds between redraws on a terminal. Default: 0.25.
  TORCH_ARG(double, refresh_seconds) = 0.25;
  /// Seconds between plain lines when not on a terminal. Default: 30.
  TORCH_ARG(double, line_seconds) = 30.0;
  /// Width of the bar in characters (terminal only). Default: 24.
  TORCH_ARG(int64_t, bar_width) = 24;
  /// Model FLOPs of one item and the FLOP/s they are measured against (kvq/train/flops.h): with
  /// both > 0 the line shows the model FLOP utilisation, "mfu" = items/s x flops_per_item /
  /// peak_flops. Default: 0 (not shown).
  TORCH_ARG(double, flops_per_item) = 0.0;
  TORCH_ARG(double, peak_flops) = 0.0;
};

// Whether stderr is a terminal that understands "\r" and "\x1b[K" (isatty and TERM != dumb).
bool stderr_is_terminal();

// "MM:SS", or "H:MM:SS" from one hour on; "?" for a negative or non-finite duration.
std::string format_duration(double seconds);

// A rate with three significant digits and an SI suffix: 950 -> "950", 51234 -> "51.2k",
// 2.5e6 -> "2.50M".
std::string format_rate(double per_second);

class ProgressBar {
 public:
  // Seconds on a monotonic clock; injectable so tests need no real time.
  using Clock = std::function<double()>;

  // A display on std::cerr, terminal mode if stderr_is_terminal(), the steady clock.
  // `total_steps` >= 1; `start_step` is where a resumed run starts counting.
  explicit ProgressBar(int64_t total_steps, ProgressOptions options = {}, int64_t start_step = 0);
  // The same on any stream, with the terminal mode and the clock given.
  ProgressBar(int64_t total_steps, ProgressOptions options, int64_t start_step, std::ostream& out,
              bool terminal, Clock clock);
  // Ends a terminal line left open (when finish() was not called).
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // Records that `step` steps are done, the latest loss, and `items` more items processed
  // (e.g. the batch's tokens); redraws if the refresh interval has passed (terminal: also when
  // step reaches the total).
  void update(int64_t step, double loss, int64_t items);

  // Prints a line of its own (a validation result, a warning) without garbling the bar.
  void note(const std::string& line);

  // Draws the final state and ends the line. Further calls do nothing.
  void finish();

  // The current state as one line of plain text (what the non-terminal mode prints).
  std::string status() const;

 private:
  std::string bar_line() const;
  // "<rate> <unit>/s", and " | mfu <percent>%" when the options give the FLOPs.
  std::string throughput(double elapsed) const;
  void draw();

  int64_t total_, start_step_;
  ProgressOptions options_;
  std::ostream& out_;
  bool terminal_;
  Clock clock_;
  double start_time_;
  double last_draw_ = 0;
  bool drawn_ = false, line_open_ = false, finished_ = false;
  int64_t step_ = 0, last_drawn_step_ = -1;
  double loss_ = 0;
  bool has_loss_ = false;
  int64_t items_ = 0;
};

}  // namespace train
}  // namespace kvq
