// Task configs: the JSON file of `--config` and the `--set key=value` overrides, resolved through
// kvq::train::ConfigSchema (defaults -> preset -> file -> sets -> checks) on a schema with one
// field of every type, ranges of both integer widths, presets and a check.
// Input: the JSON file's text, then optionally a line "%%" followed by one `key=value` per line;
// a first line "preset NAME" (before the JSON) picks a preset. An accepted config must save to
// config.json and read back (as `kvq train --resume` does) to the same config.
#include "fuzz_target.h"
#include "kvq/train/config.h"

namespace {

struct FuzzConfig {
  std::string task = "fuzz";
  int64_t steps = 100;
  int heads = 4;
  double lr = 1e-3;
  bool causal = false;
  std::vector<int64_t> seeds = {0, 1};
  std::vector<std::string> mechanisms = {"softmax"};
};

const kvq::train::ConfigSchema<FuzzConfig>& schema() {
  static const auto s =
      kvq::train::ConfigSchema<FuzzConfig>("fuzz")
          .field("task", &FuzzConfig::task, "task name")
          .field("steps", &FuzzConfig::steps, "optimiser updates")
          .field("heads", &FuzzConfig::heads, "attention heads (an int member)")
          .field("lr", &FuzzConfig::lr, "learning rate")
          .field("causal", &FuzzConfig::causal, "causal attention")
          .field("seeds", &FuzzConfig::seeds, "one run per seed")
          .field("mechanisms", &FuzzConfig::mechanisms, "mechanisms to compare")
          .preset("quick", {{"steps", 10}, {"seeds", {0}}}, "smoke test")
          .preset("paper", {{"lr", 3e-4}, {"mechanisms", {"softmax", "kv"}}})
          .check("steps must be > 0", [](const FuzzConfig& c) { return c.steps > 0; });
  return s;
}

// Every error of a resolution starts with "config fuzz: <source>: ".
void expect_config_error(const c10::Error& e) { kvq::fuzz::expect_names(e, "config fuzz: "); }

}  // namespace

KVQ_FUZZ_TARGET(config) {
  std::string text(reinterpret_cast<const char*>(data), size);
  kvq::train::ConfigSources sources;
  if (text.compare(0, 7, "preset ") == 0) {
    const size_t end = text.find('\n');
    sources.preset = text.substr(7, end == std::string::npos ? std::string::npos : end - 7);
    text = end == std::string::npos ? "" : text.substr(end + 1);
  }
  const size_t split = text.find("\n%%\n");
  const std::string json = split == std::string::npos ? text : text.substr(0, split);
  if (split != std::string::npos) {
    size_t start = split + 4;
    while (start <= text.size()) {
      size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      sources.sets.push_back(text.substr(start, end - start));
      start = end + 1;
    }
  }
  if (!json.empty()) sources.file = kvq::fuzz::write_scratch("config.json", json);

  FuzzConfig config;
  try {
    config = schema().resolve(sources);
  } catch (const c10::Error& e) {
    expect_config_error(e);
    return 0;
  }
  const auto values = schema().to_json(config);
  (void)schema().format(config);
  (void)schema().format_help();
  (void)schema().diff(schema().to_json(FuzzConfig{}), values);

  const std::string saved = kvq::fuzz::scratch_dir() + "/saved.json";
  schema().save(config, saved);
  FuzzConfig again;
  try {
    again = schema().resolve({"", saved, {}});
  } catch (const c10::Error& e) {
    kvq::fuzz::fail(std::string("a saved config does not read back: ") +
                    e.what_without_backtrace());
  }
  kvq::fuzz::expect(schema().to_json(again) == values,
                    "a saved config reads back to another config: " + values.dump() + " vs " +
                        schema().to_json(again).dump());
  return 0;
}
