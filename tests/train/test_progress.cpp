// The progress display, driven by a fake clock into a string stream: what a terminal and a log
// file receive, how often, and the numbers in the line.
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <sstream>
#include <string>

#include "kvq/train/progress.h"
#include "test_files.h"

namespace {

namespace T = kvq::train;

int64_t count(const std::string& text, const std::string& part) {
  int64_t n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + part.size())) ++n;
  return n;
}

TEST(TrainProgress, FormatsDurationsAndRates) {
  EXPECT_EQ(T::format_duration(0), "00:00");
  EXPECT_EQ(T::format_duration(123), "02:03");
  EXPECT_EQ(T::format_duration(3723), "1:02:03");
  EXPECT_EQ(T::format_duration(-1), "?");
  EXPECT_EQ(T::format_duration(std::numeric_limits<double>::infinity()), "?");
  EXPECT_EQ(T::format_rate(950), "950");
  EXPECT_EQ(T::format_rate(5.123), "5.12");
  EXPECT_EQ(T::format_rate(51234), "51.2k");
  EXPECT_EQ(T::format_rate(2.5e6), "2.50M");
  EXPECT_EQ(T::format_rate(999.7), "1.00k");
}

// With the model FLOPs of an item and the rate they are measured against, the line shows the
// model FLOP utilisation: 400 tok in 2 s x 1e6 FLOPs / 4e9 FLOP/s = 5%.
TEST(TrainProgress, ShowsTheModelFlopUtilisation) {
  std::ostringstream out;
  double now = 0;
  T::ProgressBar bar(10, T::ProgressOptions().unit("tok").flops_per_item(1e6).peak_flops(4e9), 0,
                     out, /*terminal=*/false, [&] { return now; });
  now = 2.0;
  bar.update(4, 1.0, 400);
  EXPECT_HAS(bar.status(), "200 tok/s | mfu 5.0% | elapsed");
  std::ostringstream plain;
  T::ProgressBar without(10, T::ProgressOptions().unit("tok"), 0, plain, false, [&] { return now; });
  without.update(4, 1.0, 400);
  EXPECT_EQ(without.status().find("mfu"), std::string::npos);
}

TEST(TrainProgress, TerminalRedrawsInPlaceAtMostEveryRefreshInterval) {
  std::ostringstream out;
  double now = 0;
  T::ProgressBar bar(10, T::ProgressOptions().label("train").unit("tok").refresh_seconds(0.25),
                     0, out, /*terminal=*/true, [&] { return now; });
  now = 0.5;
  bar.update(1, 2.5, 100);  // first update: drawn
  now = 0.6;
  bar.update(2, 2.4, 100);  // 0.1 s later: not drawn
  now = 0.7;
  bar.update(3, 2.3, 100);  // 0.2 s: not drawn
  EXPECT_EQ(count(out.str(), "\r"), 1);
  now = 2.0;
  bar.update(4, 1.2345678, 100);  // drawn: 400 tok in 2 s, 0.5 s/step, 6 steps left
  EXPECT_EQ(count(out.str(), "\r"), 2);
  const std::string last = out.str().substr(out.str().rfind('\r'));
  EXPECT_HAS(last, "train  40% [#########               ] 4/10 loss 1.235 | 200 tok/s | ETA 00:03");
  EXPECT_HAS(last, "\x1b[K");
  EXPECT_EQ(count(out.str(), "\n"), 0);  // all on one line so far

  bar.note("val loss 1.1");
  EXPECT_HAS(out.str(), "\r\x1b[Kval loss 1.1\n\rtrain  40%");
  now = 2.1;
  bar.update(10, 1.0, 100);  // the last step is always drawn
  EXPECT_HAS(out.str(), "10/10");
  bar.finish();
  EXPECT_EQ(out.str().back(), '\n');
  const auto size = out.str().size();
  bar.finish();
  bar.update(11, 0.5, 1);
  EXPECT_EQ(out.str().size(), size);
}

TEST(TrainProgress, LogModePrintsOccasionalPlainLines) {
  std::ostringstream out;
  double now = 0;
  T::ProgressBar bar(100, T::ProgressOptions().line_seconds(30), 0, out, /*terminal=*/false,
                     [&] { return now; });
  for (int step = 1; step <= 100; ++step) {
    now = step;  // one second per step
    bar.update(step, 1.0 / step, 10);
  }
  bar.finish();
  const auto text = out.str();
  // The first update, then t = 31, 61, 91, then the final state.
  EXPECT_EQ(count(text, "\n"), 5) << text;
  EXPECT_EQ(text.find('\r'), std::string::npos);
  EXPECT_EQ(text.find('\x1b'), std::string::npos);
  EXPECT_HAS(text, "1/100 (1%) loss 1 | 10 items/s | elapsed 00:01 | ETA 01:39\n");
  EXPECT_HAS(text, "31/100 (31%)");
  EXPECT_HAS(text, "100/100 (100%) loss 0.01 | 10 items/s | elapsed 01:40 | ETA 00:00\n");
}

TEST(TrainProgress, ResumedRunEstimatesFromItsOwnSteps) {
  std::ostringstream out;
  double now = 0;
  T::ProgressBar bar(100, {}, /*start_step=*/60, out, false, [&] { return now; });
  now = 10;
  bar.update(70, 0.5, 0);  // 10 steps in 10 s, 30 left
  EXPECT_HAS(bar.status(), "70/100 (70%) loss 0.5 | 0 items/s | elapsed 00:10 | ETA 00:30");
  T::ProgressBar fresh(5, {}, 0, out, false, [&] { return now; });
  EXPECT_HAS(fresh.status(), "0/5 (0%) | ? items/s | elapsed 00:00 | ETA ?");
}

}  // namespace
