// The typed configuration facility, on a worked example: the config of the Key-Value Transformer
// synthetic-task experiment, declared once, then converted, overridden (preset, file, --set),
// checked, printed and saved.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "kvq/train/config.h"

#include "test_files.h"

namespace {

namespace T = kvq::train;
namespace fs = std::filesystem;

// ---- The worked example -------------------------------------------------------------------
// One struct, defaults as member initialisers, one comment per field.
struct SyntheticConfig {
  std::string task = "reverse";                                    // reverse|sort|copy|sub|swap
  int64_t length = 64;                                             // sequence length L
  int d_model = 64;                                                // model width d
  int depth = 2;                                                   // encoder layers
  double lr = 1e-3;                                                // Adam learning rate
  double dropout = 0.1;                                            // dropout probability
  bool causal = false;                                             // causal attention mask
  std::vector<int64_t> seeds = {0, 1, 2};                          // one run per seed
  std::vector<std::string> variants = {"softmax", "kv", "kv-pos"};  // mechanisms compared
};

// The single declaration everything else derives from.
const T::ConfigSchema<SyntheticConfig>& synthetic_schema() {
  static const auto schema =
      T::ConfigSchema<SyntheticConfig>("synthetic")
          .field("task", &SyntheticConfig::task, "reverse, sort, copy, sub or swap")
          .field("length", &SyntheticConfig::length, "sequence length L")
          .field("d_model", &SyntheticConfig::d_model, "model width d")
          .field("depth", &SyntheticConfig::depth, "encoder layers")
          .field("lr", &SyntheticConfig::lr, "Adam learning rate")
          .field("dropout", &SyntheticConfig::dropout, "dropout probability")
          .field("causal", &SyntheticConfig::causal, "causal attention mask")
          .field("seeds", &SyntheticConfig::seeds, "one run per seed")
          .field("variants", &SyntheticConfig::variants, "mechanisms compared")
          .preset("paper", {{"length", 128}, {"d_model", 256}, {"depth", 4}},
                  "a large cell of the paper's grid")
          .preset("quick", {{"length", 8}, {"d_model", 16}, {"seeds", {0}}},
                  "CPU smoke test")
          .check("length must be >= 2", [](const SyntheticConfig& c) { return c.length >= 2; })
          .check("dropout must be in [0, 1)",
                 [](const SyntheticConfig& c) { return c.dropout >= 0 && c.dropout < 1; });
  return schema;
}

using kvq_test_files::error_of;

using kvq_test_files::TempDir;

SyntheticConfig resolve_sets(const std::vector<std::string>& sets) {
  return synthetic_schema().resolve({"", "", sets});
}

// ---- Tests --------------------------------------------------------------------------------

TEST(TrainConfig, DefaultsToJsonInDeclarationOrder) {
  const auto& schema = synthetic_schema();
  EXPECT_EQ(schema.keys(), (std::vector<std::string>{"task", "length", "d_model", "depth", "lr",
                                                     "dropout", "causal", "seeds", "variants"}));
  const auto j = schema.to_json(SyntheticConfig{});
  EXPECT_EQ(j.at("task"), "reverse");
  EXPECT_EQ(j.at("length"), 64);
  EXPECT_EQ(j.at("lr"), 1e-3);
  EXPECT_EQ(j.at("causal"), false);
  EXPECT_EQ(j.at("seeds"), nlohmann::json({0, 1, 2}));
  EXPECT_EQ(j.at("variants"), nlohmann::json({"softmax", "kv", "kv-pos"}));
  // from_json of a partial object keeps the other defaults.
  const auto c = schema.from_json({{"lr", 5e-4}, {"variants", {"kv"}}});
  EXPECT_EQ(c.lr, 5e-4);
  EXPECT_EQ(c.variants, std::vector<std::string>{"kv"});
  EXPECT_EQ(c.length, 64);
  EXPECT_EQ(schema.to_json(schema.from_json(j)), j);
}

TEST(TrainConfig, SetOverridesEveryType) {
  const auto c = resolve_sets({"task=sort", "length=128", "d_model=-3", "lr=3e-4", "dropout=0",
                               "causal=true", "seeds=4, 5,6", "variants=[kv ,softmax]"});
  EXPECT_EQ(c.task, "sort");
  EXPECT_EQ(c.length, 128);
  EXPECT_EQ(c.d_model, -3);
  EXPECT_EQ(c.lr, 3e-4);
  EXPECT_EQ(c.dropout, 0.0);
  EXPECT_TRUE(c.causal);
  EXPECT_EQ(c.seeds, (std::vector<int64_t>{4, 5, 6}));
  EXPECT_EQ(c.variants, (std::vector<std::string>{"kv", "softmax"}));
  // Later assignments win; "--key=value" is accepted; empty text is the empty list; bool 0/1.
  const auto d = resolve_sets({"lr=1", "--lr=2", "seeds=", "causal=1", "causal=FALSE"});
  EXPECT_EQ(d.lr, 2.0);
  EXPECT_TRUE(d.seeds.empty());
  EXPECT_FALSE(d.causal);
  // Strings are verbatim, '=' included.
  EXPECT_EQ(resolve_sets({"task=a=b"}).task, "a=b");
}

TEST(TrainConfig, BadTextNamesKeyExpectedTypeAndText) {
  struct Case {
    std::string set, type, text;
  };
  for (const auto& c : std::vector<Case>{{"length=1.5", "expects int", "'1.5'"},
                                         {"length=64k", "expects int", "'64k'"},
                                         {"length=", "expects int", "''"},
                                         {"lr=fast", "expects float", "'fast'"},
                                         {"lr=nan", "expects float", "'nan'"},
                                         {"causal=maybe", "expects bool", "'maybe'"},
                                         {"seeds=1,x", "expects int list", "'x'"},
                                         {"d_model=3000000000", "expects int", "out of range"}}) {
    const auto message = error_of([&] { resolve_sets({c.set}); });
    const std::string key = c.set.substr(0, c.set.find('='));
    EXPECT_HAS(message, "config synthetic: --set " + c.set);
    EXPECT_HAS(message, "'" + key + "' " + c.type);
    EXPECT_HAS(message, c.text);
  }
  EXPECT_HAS(error_of([] { resolve_sets({"length"}); }), "expected key=value");
  // int64 fields take the whole int64 range, `int` fields only int's.
  EXPECT_EQ(resolve_sets({"length=3000000000"}).length, 3000000000LL);
}

TEST(TrainConfig, UnknownKeyListsValidKeysAndClosestMatch) {
  const auto message = error_of([] { resolve_sets({"lenght=3"}); });
  EXPECT_HAS(message, "unknown key 'lenght'");
  EXPECT_HAS(message, "did you mean 'length'?");
  EXPECT_HAS(message, "valid keys: task, length, d_model, depth, lr, dropout, causal, seeds, variants");
  const auto far = error_of([] { resolve_sets({"optimizer=sgd"}); });
  EXPECT_HAS(far, "unknown key 'optimizer'");
  EXPECT_EQ(far.find("did you mean"), std::string::npos) << far;
  EXPECT_EQ(T::edit_distance("lenght", "length"), 2u);
  EXPECT_EQ(T::edit_distance("", "abc"), 3u);
  EXPECT_EQ(T::edit_distance("kitten", "sitting"), 3u);
}

TEST(TrainConfig, FileOverridesAreTypeChecked) {
  TempDir dir;
  const auto good = dir.write("good.json", R"({"lr": 0.01, "dropout": 0, "seeds": [7], "causal": true})");
  const auto c = synthetic_schema().resolve({"", good, {}});
  EXPECT_EQ(c.lr, 0.01);
  EXPECT_EQ(c.dropout, 0.0);  // an integer is a valid float
  EXPECT_EQ(c.seeds, std::vector<int64_t>{7});
  EXPECT_TRUE(c.causal);

  struct Case {
    std::string text, expected;
  };
  for (const auto& k : std::vector<Case>{
           {R"({"length": "64"})", "'length' expects int, got \"64\""},
           {R"({"length": 64.0})", "'length' expects int, got 64.0"},
           {R"({"causal": 1})", "'causal' expects bool, got 1"},
           {R"({"seeds": [1, "2"]})", "'seeds' expects int list"},
           {R"({"variants": "kv"})", "'variants' expects string list"},
           {R"({"d_model": 99999999999})", "out of range"},
           {R"({"lenght": 3})", "unknown key 'lenght' (did you mean 'length'?)"},
           {R"([1, 2])", "expected a JSON object"},
           {R"({"lr": 1e-3,)", "not valid JSON"}}) {
    const auto path = dir.write("bad.json", k.text);
    const auto message = error_of([&] { synthetic_schema().resolve({"", path, {}}); });
    EXPECT_HAS(message, "config synthetic: file " + path);
    EXPECT_HAS(message, k.expected);
  }
  const auto missing = (dir.path / "missing.json").string();
  const auto message = error_of([&] { synthetic_schema().resolve({"", missing, {}}); });
  EXPECT_HAS(message, "file " + missing);
  EXPECT_HAS(message, "no such file");
}

// Found by fuzzing (fuzz/corpus/config/number-overflow.json): a number too large for a double is
// not a parse_error in nlohmann_json but an out_of_range, which escaped as a library exception
// naming no file. The readers of metrics, results, run directories and checkpoint metadata
// caught the same too narrow exception type.
TEST(TrainConfig, NumberTooLargeInAFileIsANamedError) {
  TempDir dir;
  const auto path = dir.write("huge.json", R"({"lr": 47.5E6320368})");
  const auto message = error_of([&] { synthetic_schema().resolve({"", path, {}}); });
  EXPECT_HAS(message, "config synthetic: file " + path);
  EXPECT_HAS(message, "not valid JSON");
  EXPECT_HAS(message, "number overflow");
}

// Found by fuzzing (fuzz/corpus/config/set-not-utf8.txt): a --set string must be UTF-8 like every
// JSON string, otherwise printing or saving the resolved config failed later, in the JSON
// library, without naming the override.
TEST(TrainConfig, SetStringsMustBeUtf8) {
  for (const std::string set : {"task=\xFFsort", "variants=kv,\xC3"}) {
    const auto message = error_of([&] { resolve_sets({set}); });
    EXPECT_HAS(message, "config synthetic: --set " + set);
    EXPECT_HAS(message, "not valid UTF-8");
  }
  EXPECT_EQ(resolve_sets({"task=s\xC3\xBC" "d"}).task, "s\xC3\xBC" "d");
}

TEST(TrainConfig, PresetThenFileThenSets) {
  TempDir dir;
  const auto file = dir.write("o.json", R"({"length": 16, "lr": 0.5})");
  const auto& schema = synthetic_schema();
  const auto preset_only = schema.resolve({"quick", "", {}});
  EXPECT_EQ(preset_only.length, 8);
  EXPECT_EQ(preset_only.d_model, 16);
  EXPECT_EQ(preset_only.seeds, std::vector<int64_t>{0});
  EXPECT_EQ(preset_only.lr, 1e-3);
  const auto with_file = schema.resolve({"quick", file, {}});
  EXPECT_EQ(with_file.length, 16);
  EXPECT_EQ(with_file.d_model, 16);
  EXPECT_EQ(with_file.lr, 0.5);
  const auto all = schema.resolve({"quick", file, {"length=32"}});
  EXPECT_EQ(all.length, 32);
  EXPECT_EQ(all.lr, 0.5);
  EXPECT_EQ(schema.resolve({"paper", "", {}}).d_model, 256);

  const auto message = error_of([] { synthetic_schema().resolve({"tiny", "", {}}); });
  EXPECT_HAS(message, "unknown preset 'tiny'");
  EXPECT_HAS(message, "valid presets: paper, quick");
}

TEST(TrainConfig, ChecksRunOnTheResolvedConfig) {
  EXPECT_HAS(error_of([] { resolve_sets({"length=1"}); }), "config synthetic: check: length must be >= 2");
  EXPECT_HAS(error_of([] { resolve_sets({"dropout=1"}); }), "dropout must be in [0, 1)");
  EXPECT_HAS(error_of([] { synthetic_schema().from_json({{"length", 0}}); }), "length must be >= 2");
  // A later override can repair an earlier one: checks see only the final values.
  EXPECT_EQ(resolve_sets({"length=1", "length=2"}).length, 2);
}

TEST(TrainConfig, DeclarationMistakesThrowWhenTheSchemaIsBuilt) {
  struct C {
    int64_t a = 1;
    int64_t b = 2;
  };
  EXPECT_HAS(error_of([] { T::ConfigSchema<C>("c").field("a", &C::a, "").field("a", &C::b, ""); }),
             "field 'a' declared twice");
  EXPECT_HAS(error_of([] { T::ConfigSchema<C>("c").field("Bad-Key", &C::a, ""); }),
             "must match [a-z][a-z0-9_]*");
  EXPECT_HAS(error_of([] { T::ConfigSchema<C>("c").field("a", &C::a, "").preset("p", {{"z", 1}}); }),
             "preset 'p': unknown key 'z'");
  EXPECT_HAS(error_of([] { T::ConfigSchema<C>("c").field("a", &C::a, "").preset("p", {{"a", "x"}}); }),
             "preset 'p': 'a' expects int");
  EXPECT_HAS(error_of([] {
               T::ConfigSchema<C>("c").field("a", &C::a, "").preset("p", {{"a", 2}}).preset("p", {{"a", 3}});
             }),
             "preset 'p' declared twice");
}

TEST(TrainConfig, FormatShowsEveryResolvedValueWithItsHelp) {
  const auto c = resolve_sets({"lr=0.25", "variants=kv"});
  const auto text = synthetic_schema().format(c);
  EXPECT_HAS(text, "config synthetic:\n");
  EXPECT_HAS(text, "  lr       = 0.25");
  EXPECT_HAS(text, "# Adam learning rate");
  EXPECT_HAS(text, "  variants = [\"kv\"]");
  EXPECT_HAS(text, "  task     = \"reverse\"");
  // One line per field, in declaration order.
  EXPECT_LT(text.find("  task "), text.find("  length "));
  EXPECT_LT(text.find("  seeds "), text.find("  variants "));
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 10);

  const auto help = synthetic_schema().format_help();
  EXPECT_HAS(help, "length=<int>");
  EXPECT_HAS(help, "seeds=<int list>");
  EXPECT_HAS(help, "sequence length L (default 64)");
  EXPECT_HAS(help, "quick: CPU smoke test");
}

TEST(TrainConfig, SavedConfigReadsBackAsAFileOverride) {
  TempDir dir;
  const auto& schema = synthetic_schema();
  const auto c = schema.resolve({"quick", "", {"task=swap", "lr=0.003", "causal=true"}});
  const auto path = (dir.path / "run" / "config.json").string();
  schema.save(c, path);
  const auto back = schema.resolve({"", path, {}});
  EXPECT_EQ(schema.to_json(back), schema.to_json(c));
  // Saved in declaration order, not alphabetically.
  std::ifstream in(path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_LT(text.find("\"task\""), text.find("\"length\""));
  EXPECT_LT(text.find("\"length\""), text.find("\"causal\""));

  const auto changes = schema.diff(schema.to_json(SyntheticConfig{}), schema.to_json(c));
  EXPECT_EQ(changes.front(), "task: \"reverse\" -> \"swap\"");
  EXPECT_EQ(changes.size(), 6u);  // task, length, d_model, lr, causal, seeds
}

// A key added after a run was saved: the schema's upgrade says what its absence meant, for a
// run's saved config only; a --config file without the key still gets today's default.
TEST(TrainConfig, UpgradesApplyOnlyToConfigsSavedByRuns) {
  const auto schema =
      T::ConfigSchema<SyntheticConfig>("synthetic")
          .field("task", &SyntheticConfig::task, "task")
          .field("causal", &SyntheticConfig::causal, "causal attention mask")
          .field("dropout", &SyntheticConfig::dropout, "dropout probability")
          .upgrade([](nlohmann::json& saved) {
            if (!saved.contains("causal")) saved["causal"] = true;
          })
          .upgrade([](nlohmann::json& saved) {  // in declaration order, after the first
            if (saved.value("causal", false)) saved["dropout"] = 0.0;
          });
  TempDir dir;
  const auto old_run = dir.write("old.json", R"({"task": "sort", "dropout": 0.3})");
  const auto new_run = dir.write("new.json", R"({"task": "sort", "causal": false})");
  const auto old_config = schema.resolve({"", old_run, {}, true});
  EXPECT_TRUE(old_config.causal);
  EXPECT_EQ(old_config.dropout, 0.0);
  const auto as_file = schema.resolve({"", old_run, {}});
  EXPECT_FALSE(as_file.causal);
  EXPECT_EQ(as_file.dropout, 0.3);
  const auto new_config = schema.resolve({"", new_run, {"dropout=0.2"}, true});
  EXPECT_FALSE(new_config.causal);
  EXPECT_EQ(new_config.dropout, 0.2);
  nlohmann::json saved = {{"task", "copy"}};
  schema.upgrade_saved(saved);
  EXPECT_EQ(saved, nlohmann::json({{"task", "copy"}, {"causal", true}, {"dropout", 0.0}}));
}

TEST(TrainConfig, WithAppliesOneMoreOverride) {
  const auto& schema = synthetic_schema();
  const auto c = schema.with(SyntheticConfig{}, "depth=6");
  EXPECT_EQ(c.depth, 6);
  EXPECT_EQ(c.length, 64);
  EXPECT_HAS(error_of([&] { schema.with(c, "depth=six"); }), "'depth' expects int, got 'six'");
}

}  // namespace
