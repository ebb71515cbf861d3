// The JSONL metrics log: one object per line, reopened logs append, a torn last line is ignored
// by the reader and cut by the next writer, non-finite numbers survive, and a resumed run can
// drop the records past its checkpoint.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <string>

#include "kvq/train/metrics_log.h"

#include "test_files.h"

namespace {

namespace T = kvq::train;
namespace fs = std::filesystem;

using kvq_test_files::error_of;

using kvq_test_files::TempDir;

std::string text_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(TrainMetricsLog, OneObjectPerLineVisibleBeforeClose) {
  TempDir dir;
  const auto path = (dir.path / "sub" / "metrics.jsonl").string();
  T::MetricsWriter writer(path);
  writer.write({{"step", 1}, {"split", "train"}, {"loss", 2.5}});
  // Already on disk while the writer is open (an interrupted run keeps it).
  EXPECT_EQ(text_of(path), "{\"loss\":2.5,\"split\":\"train\",\"step\":1}\n");
  writer.write({{"step", 2}, {"split", "val"}, {"loss", 2.0}, {"acc", 0.5}});
  const auto records = T::read_metrics(path);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[1].at("acc"), 0.5);
  EXPECT_HAS(error_of([&] { writer.write(nlohmann::json::array({1, 2})); }),
             "a record must be a JSON object");
}

TEST(TrainMetricsLog, ReopenAppendsAndRepairsATornLastLine) {
  TempDir dir;
  const auto path = (dir.path / "m.jsonl").string();
  { T::MetricsWriter(path).write({{"step", 1}}); }
  std::ofstream(path, std::ios::app) << "{\"step\": 2, \"lo";  // killed mid-write
  EXPECT_EQ(T::read_metrics(path).size(), 1u);                 // the torn line is ignored
  {
    T::MetricsWriter writer(path);  // cuts it
    writer.write({{"step", 3}});
  }
  EXPECT_EQ(text_of(path), "{\"step\":1}\n{\"step\":3}\n");

  std::ofstream(path, std::ios::app) << "garbage\n{\"step\":4}\n";
  EXPECT_HAS(error_of([&] { T::read_metrics(path); }), path + ":3: not valid JSON");
  EXPECT_HAS(error_of([&] { T::read_metrics((dir.path / "none").string()); }), "no such file");
}

TEST(TrainMetricsLog, NonFiniteNumbersRoundTrip) {
  TempDir dir;
  const auto path = (dir.path / "m.jsonl").string();
  T::MetricsWriter writer(path);
  writer.write({{"step", 1},
                {"loss", std::numeric_limits<double>::quiet_NaN()},
                {"grad", {std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity()}}});
  EXPECT_HAS(text_of(path), "\"loss\":\"NaN\"");
  const auto r = T::read_metrics(path).at(0);
  EXPECT_TRUE(std::isnan(r.at("loss").get<double>()));
  EXPECT_EQ(r.at("grad")[0].get<double>(), std::numeric_limits<double>::infinity());
  EXPECT_EQ(r.at("grad")[1].get<double>(), -std::numeric_limits<double>::infinity());
}

TEST(TrainMetricsLog, TruncateDropsRecordsPastTheCheckpointStep) {
  TempDir dir;
  const auto path = (dir.path / "m.jsonl").string();
  {
    T::MetricsWriter writer(path);
    writer.write({{"event", "start"}});
    for (int step = 1; step <= 6; ++step) writer.write({{"step", step}, {"loss", 1.0 / step}});
  }
  EXPECT_EQ(T::truncate_metrics(path, 4), 2);
  const auto records = T::read_metrics(path);
  ASSERT_EQ(records.size(), 5u);
  EXPECT_EQ(records.front().at("event"), "start");
  EXPECT_EQ(records.back().at("step"), 4);
  EXPECT_EQ(T::truncate_metrics((dir.path / "absent.jsonl").string(), 4), 0);
  EXPECT_FALSE(fs::exists(dir.path / "absent.jsonl"));
}

TEST(TrainMetricsLog, SeriesSelectsByFieldsAndSkipsNonNumbers) {
  const std::vector<nlohmann::json> records = {
      {{"step", 1}, {"split", "train"}, {"loss", 3.0}},
      {{"step", 1}, {"split", "val"}, {"loss", 2.5}},
      {{"step", 2}, {"split", "train"}, {"loss", 2.0}},
      {{"step", 2}, {"split", "train"}, {"loss", nullptr}},
      {{"step", 3}, {"split", "val"}, {"loss", 1.5}},
  };
  const auto val = T::metric_series(records, "loss", "step", {{"split", "val"}});
  EXPECT_EQ(val.x, (std::vector<double>{1, 3}));
  EXPECT_EQ(val.y, (std::vector<double>{2.5, 1.5}));
  const auto all = T::metric_series(records, "loss");
  EXPECT_EQ(all.y, (std::vector<double>{3.0, 2.5, 2.0, 1.5}));
}

TEST(TrainResults, NonFiniteMetricsRoundTrip) {
  TempDir dir;
  const auto path = dir.file("results.json");
  const double inf = std::numeric_limits<double>::infinity();
  T::write_results(path, {{"task", "sort"}, {"params", 12}, {"train_seconds", 1.5},
                          {"test", {{"loss", std::nan("")}, {"mse_n2", -inf}, {"samples", 64}}},
                          {"best_val", {{"loss", inf}, {"step", 3}}}});
  // JSON has no NaN: written as the metrics file writes it, not as null.
  EXPECT_HAS(text_of(path), "\"NaN\"");
  const auto back = T::read_results(path);
  EXPECT_TRUE(std::isnan(back.at("test").at("loss").get<double>()));
  EXPECT_EQ(back.at("test").at("mse_n2").get<double>(), -inf);
  EXPECT_EQ(back.at("test").at("samples").get<int64_t>(), 64);
  EXPECT_EQ(back.at("best_val").at("loss").get<double>(), inf);
  EXPECT_EQ(back.at("params").get<int64_t>(), 12);
}

TEST(TrainResults, NullMetricOfOlderFilesReadsAsNaN) {
  TempDir dir;
  const auto path = dir.write("results.json", R"({"test": {"loss": null, "accuracy": 0.5}})");
  const auto back = T::read_results(path);
  EXPECT_TRUE(std::isnan(back.at("test").at("loss").get<double>()));
  EXPECT_EQ(back.at("test").at("accuracy").get<double>(), 0.5);
}

// Found while writing the results fuzz target: results.json used to be read with a bare
// nlohmann::json::parse, and `kvq compare --resume` then indexed it unchecked, so a damaged file
// ended in a JSON library exception that named no file, or in an out-of-range float-to-int
// conversion.
TEST(TrainResults, DamagedFilesFailNamingTheFileAndTheField) {
  TempDir dir;
  const auto check = [&](const std::string& text, const std::string& part) {
    const auto path = dir.write("results.json", text);
    const auto message = error_of([&] { T::read_results(path); });
    EXPECT_HAS(message, "read_results: " + path);
    EXPECT_HAS(message, part);
  };
  check("{\"test\": {\"loss\": 1", "not valid JSON");
  check("[1, 2]", "not a JSON object");
  check("{\"steps\": 3}", "no \"test\" object");
  check(R"({"test": [1]})", "no \"test\" object");
  check(R"({"test": {"loss": "low"}})", "test metric \"loss\" is not a number");
  check(R"({"test": {}, "steps": 1e300})", "\"steps\" is not an integer");
  check(R"({"test": {}, "params": "many"})", "\"params\" is not an integer");
  check(R"({"test": {}, "train_seconds": "1"})", "\"train_seconds\" is not a number");
  check(R"({"test": {}, "projection": 2})", "\"projection\" is not a string");
  EXPECT_HAS(error_of([&] { T::read_results(dir.file("missing.json")); }), "missing.json");
}

}  // namespace
