// results.json, the summary of a finished run that a resumed run (and so `kvq compare --resume`)
// reads back: kvq::train::read_results on the input as a file. An accepted summary must have the
// types compare relies on, and write back (write_results) to a file that reads the same.
#include <cmath>

#include "fuzz_target.h"
#include "kvq/train/metrics_log.h"

KVQ_FUZZ_TARGET(results) {
  const std::string path = kvq::fuzz::write_scratch("results.json", data, size);
  nlohmann::json results;
  try {
    results = kvq::train::read_results(path);
  } catch (const c10::Error& e) {
    kvq::fuzz::expect_names(e, path);
    return 0;
  }
  // What compare reads (app/compare_command.cpp): must not throw.
  for (const auto& [key, value] : results.at("test").items()) {
    kvq::fuzz::expect(value.is_number(), "read_results: test metric " + key + " not a number");
    (void)value.get<double>();
  }
  (void)results.value("projection", "");
  (void)results.value("params", int64_t{0});
  (void)results.value("params", 0.0);
  (void)results.value("train_seconds", 0.0);
  (void)results.value("steps", int64_t{0});

  const std::string copy = kvq::fuzz::scratch_dir() + "/results-copy.json";
  kvq::train::write_results(copy, results);
  const auto again = kvq::train::read_results(copy);
  kvq::fuzz::expect(again.at("test").size() == results.at("test").size(),
                    "results round trip changed the test metrics");
  for (const auto& [key, value] : results.at("test").items()) {
    const double a = value.get<double>(), b = again.at("test").at(key).get<double>();
    kvq::fuzz::expect(a == b || (std::isnan(a) && std::isnan(b)),
                      "results round trip changed test metric " + key);
  }
  return 0;
}
