#pragma once
// Append-only metrics in JSON Lines: one JSON object per line, e.g.
//   {"step":100,"split":"train","loss":1.93,"lr":0.001,"items_per_s":51234.5}
// Each record reaches the file with one write() of a whole line, so an interrupted run loses
// at most the line being written, and the reader ignores such a torn last line. JSON has no
// NaN or infinity: non-finite numbers are written as the strings "NaN", "Infinity",
// "-Infinity", which the reader turns back into numbers (a diverged loss stays visible).
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace kvq {
namespace train {

class MetricsWriter {
 public:
  // Opens `path` for appending (created, with missing directories, if absent). A torn last line
  // left by an interrupted writer is cut off first, so new records start on a line of their own.
  explicit MetricsWriter(const std::string& path);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  MetricsWriter(MetricsWriter&& other) noexcept;
  MetricsWriter& operator=(MetricsWriter&& other) noexcept;

  // Appends `record` (a JSON object) as one line. Errors name the file.
  void write(const nlohmann::json& record);

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

// Every record of a metrics file, in order. A last line without its newline (an interrupted
// write) is skipped; any other line that is not a JSON object is an error naming the file and
// line number. A missing file is an error.
std::vector<nlohmann::json> read_metrics(const std::string& path);

// Rewrites `path` (atomically) keeping only the records whose `step_key` is absent or <= max_step:
// after resuming from a checkpoint of step `max_step`, drops the records the interrupted run
// wrote past it. Returns the number of records dropped. A missing file is left missing. Call it
// before opening the run's MetricsWriter (an open writer keeps appending to the replaced file).
int64_t truncate_metrics(const std::string& path, int64_t max_step,
                         const std::string& step_key = "step");

// results.json, the summary of a finished run (kvq::tasks::TrainSummary): pretty-printed JSON,
// written atomically, with non-finite numbers as the strings of the metrics file ("NaN", ...).
void write_results(const std::string& path, const nlohmann::json& summary);

// A results.json read back (by a resumed run, and so by `kvq compare --resume`): a JSON object
// whose "test" is an object of numbers, the final test metrics. The strings "NaN", "Infinity",
// "-Infinity" and null (how older files hold a NaN) in "test" and "best_val" become numbers.
// The fields read as integers ("params", "steps"), numbers ("train_seconds") and strings ("task",
// "mechanism", "projection") must have that type when present. Errors name the file and the
// field.
nlohmann::json read_results(const std::string& path);

// One numeric column of `records` against another, for tables and plots: the (x, y) pairs of
// the records that have both as numbers and whose fields equal every field of `where`
// (e.g. {{"split", "val"}}).
struct MetricSeries {
  std::vector<double> x, y;
};
MetricSeries metric_series(const std::vector<nlohmann::json>& records, const std::string& y_key,
                           const std::string& x_key = "step",
                           const nlohmann::json& where = nlohmann::json::object());

}  // namespace train
}  // namespace kvq
