// The metrics log a run writes and `kvq compare` and resumed runs read back:
// kvq::train::read_metrics on the input as metrics.jsonl, then metric_series (compare's curves)
// and truncate_metrics (a resume drops the records past its checkpoint). After a truncation the
// file must read back to the records that were kept.
#include <cmath>

#include "fuzz_target.h"
#include "kvq/train/metrics_log.h"

namespace {

// JSON equality, with NaN equal to NaN (the metrics file keeps NaN as "NaN").
bool same(const nlohmann::json& a, const nlohmann::json& b) {
  if (a.is_number_float() && b.is_number_float() && std::isnan(a.get<double>()) &&
      std::isnan(b.get<double>())) {
    return true;
  }
  if (a.is_object() && b.is_object()) {
    if (a.size() != b.size()) return false;
    for (auto it = a.begin(); it != a.end(); ++it) {
      if (!b.contains(it.key()) || !same(it.value(), b.at(it.key()))) return false;
    }
    return true;
  }
  if (a.is_array() && b.is_array()) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
      if (!same(a[i], b[i])) return false;
    }
    return true;
  }
  return a == b;
}

}  // namespace

KVQ_FUZZ_TARGET(metrics) {
  const std::string path = kvq::fuzz::write_scratch("metrics.jsonl", data, size);
  std::vector<nlohmann::json> records;
  try {
    records = kvq::train::read_metrics(path);
  } catch (const c10::Error& e) {
    kvq::fuzz::expect_names(e, path);
    return 0;
  }
  for (const auto& r : records) kvq::fuzz::expect(r.is_object(), "read_metrics: a non-object");
  const auto series = kvq::train::metric_series(records, "loss", "step", {{"split", "val"}});
  kvq::fuzz::expect(series.x.size() == series.y.size(), "metric_series: x and y differ in length");
  (void)kvq::train::metric_series(records, "accuracy");

  const int64_t max_step = 5;
  const auto dropped = kvq::train::truncate_metrics(path, max_step);
  std::vector<nlohmann::json> kept;
  for (const auto& r : records) {
    const bool past = r.contains("step") && r.at("step").is_number() &&
                      r.at("step").get<double>() > static_cast<double>(max_step);
    if (!past) kept.push_back(r);
  }
  kvq::fuzz::expect(dropped == static_cast<int64_t>(records.size() - kept.size()),
                    "truncate_metrics: wrong count of dropped records");
  std::vector<nlohmann::json> again;
  try {
    again = kvq::train::read_metrics(path);
  } catch (const c10::Error& e) {
    kvq::fuzz::fail(std::string("a truncated metrics file does not read back: ") +
                    e.what_without_backtrace());
  }
  kvq::fuzz::expect(again.size() == kept.size(), "truncate_metrics: the file lost records");
  for (size_t i = 0; i < kept.size(); ++i) {
    kvq::fuzz::expect(same(again[i], kept[i]), "truncate_metrics changed record " +
                                                   std::to_string(i) + ": " + kept[i].dump() +
                                                   " -> " + again[i].dump());
  }
  return 0;
}
