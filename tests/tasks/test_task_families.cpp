// Every registered task family on tiny configs through the generic driver: presets resolve, a run
// trains and writes its files, the task's own metrics and baselines are reported, and an
// interrupted run resumed from its checkpoint ends with bit-identical results, both for a task
// with a batch sampler (human-numbers) and for one whose batches are a function of the update
// number (icl-linear). Tasks needing data that may be absent (Fashion-MNIST) skip without it.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "kvq/data/idx.h"
#include "kvq/data/synthetic_tasks.h"
#include "kvq/env/grid_world.h"
#include "kvq/models/grid_policy.h"
#include "kvq/registry.h"
#include "kvq/tasks/task_registry.h"
#include "kvq/tasks/translation_task.h"
#include "kvq/train/metrics_log.h"
#include "kvq/train/run_dir.h"
#include "test_files.h"

namespace {

namespace KT = kvq::tasks;
namespace fs = std::filesystem;
using kvq_test_files::TempDir;

KT::TrainOptions tiny(const std::vector<std::string>& sets, const std::string& run_dir) {
  KT::TrainOptions o;
  o.sources.sets = sets;
  o.seed = 1;
  o.run_dir = run_dir;
  o.print_config = false;
  o.context.quiet = true;
  return o;
}

// The metrics records of a run without the clock-dependent fields (throughput <unit>_per_s, mfu).
std::vector<nlohmann::json> records(const std::string& run_dir) {
  std::vector<nlohmann::json> out;
  for (auto r : kvq::train::read_metrics((fs::path(run_dir) / "metrics.jsonl").string())) {
    for (auto it = r.begin(); it != r.end();) {
      const auto& key = it.key();
      const bool clock = key == "mfu" ||
                         (key.size() > 6 && key.substr(key.size() - 6) == "_per_s");
      it = clock ? r.erase(it) : std::next(it);
    }
    out.push_back(r);
  }
  return out;
}

TEST(TaskFamilies, EveryTaskResolvesAndChecksItsPresetsForEveryMechanism) {
  for (const auto& task : KT::tasks()) {
    const auto presets = task.schema->preset_names();
    const bool has_quick = std::count(presets.begin(), presets.end(), "quick") == 1;
    const bool has_long = std::count(presets.begin(), presets.end(), "paper") +
                              std::count(presets.begin(), presets.end(), "full") ==
                          1;
    EXPECT_TRUE(has_quick && has_long) << task.name << " needs quick and paper or full";
    for (const auto& preset : presets) {
      for (const auto& mechanism : kvq::mechanism_names()) {
        kvq::train::ConfigSources sources;
        sources.preset = preset;
        sources.sets = {"mechanism=" + mechanism};
        // Data-dir tasks need a directory; resolving only checks the config, not the files.
        if (task.name == "mnist" || task.name.rfind("cifar", 0) == 0) {
          sources.sets.push_back("data_dir=/nonexistent");
        }
        const auto config = task.resolve(sources);
        EXPECT_EQ(config.at("task"), task.name);
        EXPECT_EQ(config.at("mechanism"), mechanism);
        // A preset passes the checks a run makes before its data (TaskInfo::check) too.
        EXPECT_NO_THROW(task.check(config)) << task.name << " preset " << preset;
      }
    }
  }
}

TEST(TaskFamilies, DataDirIsRequiredWhereThereIsNoDefault) {
  kvq_test_files::expect_error([] { KT::find_task("cifar10").resolve({}); },
                               {"data_dir must be given"});
  kvq_test_files::expect_error(
      [] { KT::find_task("fashion-mnist").resolve({"", "", {"patch_size=5"}}); },
      {"patch_size must divide"});
}

// Runs `task` once to the end and once stopped at `stop` and resumed; the metrics records and
// results must be identical.
void expect_resume_is_exact(const std::string& task, const std::vector<std::string>& sets,
                            int64_t stop) {
  TempDir tmp;
  const auto whole = KT::train_task(task, tiny(sets, tmp.file("whole")));
  auto first = tiny(sets, tmp.file("parts"));
  first.context.stop_after_step = stop;
  const auto partial = KT::train_task(task, first);
  ASSERT_EQ(partial.summary.value("stopped_at", -1), stop);
  auto second = tiny(sets, tmp.file("parts"));
  second.resume = true;
  const auto resumed = KT::train_task(task, second);
  EXPECT_EQ(resumed.summary.at("test"), whole.summary.at("test"));
  EXPECT_EQ(resumed.summary.at("best_val"), whole.summary.at("best_val"));
  EXPECT_EQ(records(resumed.run_dir), records(whole.run_dir));
}

// A run of `task` with `sets` saved by an earlier kvq: trained to `stop`, its config.json then
// rewritten by `make_old` as that kvq wrote it. Checks that it evaluates as before the rewrite and
// resumes to the uninterrupted run's results; returns (saved config, config as read today).
std::pair<nlohmann::json, nlohmann::json> expect_old_run_evaluates_and_resumes(
    const std::string& task, const std::vector<std::string>& sets, int64_t stop,
    const std::function<void(nlohmann::json&)>& make_old) {
  TempDir tmp;
  const auto whole = KT::train_task(task, tiny(sets, tmp.file("whole")));
  auto first = tiny(sets, tmp.file("parts"));
  first.context.stop_after_step = stop;
  KT::train_task(task, first);

  const auto saved = kvq::train::RunDir::open(tmp.file("parts")).load_config();
  auto old = saved;
  make_old(old);
  KT::EvalOptions last;
  last.checkpoint = "last";
  const auto evaluate = [&] {
    const auto [info, config] = KT::task_of_run(tmp.file("parts"));
    return info->evaluate(config, kvq::train::RunDir::open(tmp.file("parts")), last);
  };
  const auto expected = evaluate();
  tmp.write("parts/config.json", old.dump(2));
  EXPECT_EQ(evaluate(), expected);
  auto read_today = KT::task_of_run(tmp.file("parts")).second;

  auto second = tiny(sets, tmp.file("parts"));
  second.sources.sets.clear();
  second.seed.reset();
  second.resume = true;
  const auto resumed = KT::train_task(task, second);
  EXPECT_EQ(resumed.summary.at("test"), whole.summary.at("test"));
  EXPECT_EQ(records(resumed.run_dir), records(whole.run_dir));
  return {saved, read_today};
}

TEST(TaskFamilies, HumanNumbersTrainsBeatsUnigramAndResumesExactly) {
  const std::vector<std::string> sets = {
      "context=16",   "batch_size=16", "steps=60",        "d_model=32",       "ffn_dim=128",
      "num_heads=2",  "num_layers=1", "dropout=0.1",     "lr=3e-3",          "eval_every=20",
      "checkpoint_every=25",
      "log_every=10", "eval_windows=40", "mechanism=intention"};
  TempDir tmp;
  const auto out = KT::train_task("human-numbers", tiny(sets, tmp.file("run")));
  const auto& test = out.summary.at("test");
  // Unigram cross-entropy of the 30 words is ~2.8 nats; 60 updates learn the number grammar.
  EXPECT_LT(test.at("loss").get<double>(), test.at("unigram_loss").get<double>() - 0.5) << test;
  EXPECT_NEAR(test.at("bits").get<double>() * std::log(2.0), test.at("loss").get<double>(), 1e-12);
  expect_resume_is_exact("human-numbers", sets, 25);
}

TEST(TaskFamilies, InContextLinearRegressionReportsBayesAndResumesExactly) {
  const std::vector<std::string> sets = {
      "x_dim=3",        "steps=40",          "batch_size=16",   "d_model=16",     "ffn_dim=64",
      "num_heads=2",    "eval_every=15",     "checkpoint_every=15", "eval_episodes=40",
      "eval_contexts=[2,8]", "warmup_steps=5", "mechanism=intention"};
  TempDir tmp;
  const auto out = KT::train_task("icl-linear", tiny(sets, tmp.file("run")));
  const auto& test = out.summary.at("test");
  for (const char* key : {"mse", "mse_n2", "mse_n8", "bayes", "bayes_n2", "bayes_n8"}) {
    ASSERT_TRUE(test.contains(key)) << key << " missing in " << test;
  }
  // Bayes-optimal error falls with more context and is below the zero predictor's.
  EXPECT_LT(test.at("bayes_n8").get<double>(), test.at("bayes_n2").get<double>());
  EXPECT_LT(test.at("bayes_n8").get<double>(),
            test.at("baselines").at("zero_n8").get<double>());
  expect_resume_is_exact("icl-linear", sets, 15);
}

// Gaussian-cluster few-shot episodes: fresh classes every update, the Bayes-optimal and the
// input prototype accuracies on the same test episodes, and an exact resume.
TEST(TaskFamilies, FewShotGaussianReportsBayesAndResumesExactly) {
  const std::vector<std::string> sets = {
      "episodes=gaussian", "point_dim=8",      "num_shots=2",        "num_queries=3",
      "encoder_channels=16", "steps=40",       "batch_size=8",       "eval_every=15",
      "checkpoint_every=15", "val_episodes=20", "test_episodes=60",  "warmup_steps=5",
      "mechanism=intention"};
  TempDir tmp;
  const auto out = KT::train_task("few-shot", tiny(sets, tmp.file("run")));
  const auto& test = out.summary.at("test");
  for (const char* key :
       {"acc", "loss", "proto_acc", "norm_proto_acc", "bayes_acc", "input_proto_acc"}) {
    ASSERT_TRUE(test.contains(key)) << key << " missing in " << test;
  }
  // 5-way: chance is 0.2; the optimal rule on 2 shots of 8-D clusters is far above it.
  EXPECT_GT(test.at("bayes_acc").get<double>(), 0.4) << test;
  EXPECT_GE(test.at("bayes_acc").get<double>(), test.at("acc").get<double>()) << test;
  expect_resume_is_exact("few-shot", sets, 15);
}

// Runs saved before the label readout ("readout", then a linear head) or before
// "readout_features" (then projected features, and alpha_init the default 1 whatever the
// mechanism) still evaluate, with the model they were trained as, and resume exactly.
TEST(TaskFamilies, FewShotRunsSavedBeforeTheReadoutKeysEvaluateAndResume) {
  struct Case {
    std::vector<std::string> sets;
    std::vector<std::string> keys_then_absent;
  };
  const std::vector<std::string> common = {
      "episodes=gaussian", "point_dim=8",        "num_shots=2",      "num_queries=3",
      "encoder_channels=16", "steps=30",         "batch_size=8",     "eval_every=15",
      "checkpoint_every=15", "val_episodes=10",  "test_episodes=30", "warmup_steps=5"};
  const std::vector<Case> cases = {
      {{"mechanism=softmax", "readout_features=projected"}, {"readout_features"}},
      {{"mechanism=intention", "readout=head", "readout_features=projected"},
       {"readout", "readout_features"}}};
  for (const auto& c : cases) {
    auto sets = common;
    sets.insert(sets.end(), c.sets.begin(), c.sets.end());
    SCOPED_TRACE(sets.back());
    const auto [saved, today] =
        expect_old_run_evaluates_and_resumes("few-shot", sets, 15, [&](nlohmann::json& old) {
          for (const auto& key : c.keys_then_absent) old.erase(key);
          old["alpha_init"] = 1.0;
        });
    EXPECT_EQ(today.at("readout"), saved.at("readout"));
  }
}

// Before ffn_dim had one meaning (the feed-forward width, as in every block), a task's
// ffn_dim = 0 stood for its model's own multiple of d_model, and attention_dropout was a key of the
// synthetic tasks only. A config saved then, of every preset of every task, reads today as the
// preset does: the same width, and the attention dropout unset (= dropout).
TEST(TaskFamilies, ConfigsSavedBeforeFfnDimHadOneMeaningReadAsToday) {
  const std::map<std::string, int64_t> old_multiple = {
      {"reverse", 2}, {"sort", 2},          {"copy", 2},       {"sub", 2},
      {"swap", 2},    {"fashion-mnist", 1}, {"mnist", 1},      {"cifar10", 1},
      {"cifar100", 1}, {"char-lm", 4},      {"human-numbers", 4}, {"translation", 4},
      {"icl-linear", 4}, {"icl-gp", 4},     {"icl-sinusoid", 4}, {"few-shot", 2},
      {"distill", 2}};
  const auto synthetic = kvq::data::synthetic_task_names();
  for (const auto& [name, multiple] : old_multiple) {
    const auto& task = KT::find_task(name);
    for (const auto& preset : task.schema->preset_names()) {
      SCOPED_TRACE(task.name + " " + preset);
      kvq::train::ConfigSources sources;
      sources.preset = preset;
      if (task.name == "mnist" || task.name.rfind("cifar", 0) == 0) {
        sources.sets = {"data_dir=/nonexistent"};  // read with the data, not here
      }
      const auto today = task.resolve(sources);
      auto saved = today;
      saved["ffn_dim"] = 0;
      if (std::find(synthetic.begin(), synthetic.end(), task.name) == synthetic.end()) {
        saved.erase("attention_dropout");
      }
      task.schema->upgrade_saved(saved);
      EXPECT_EQ(saved.at("ffn_dim").get<int64_t>(), multiple * today.at("d_model").get<int64_t>());
      EXPECT_EQ(saved.at("ffn_dim"), today.at("ffn_dim"));
      EXPECT_EQ(saved.value("attention_dropout", -1.0), -1.0);
      EXPECT_EQ(today.at("attention_dropout").get<double>(), -1.0);
    }
  }
}

// A run saved that way evaluates with the model it was trained as and resumes exactly: sort and
// distill (2 d_model), with one block of width 16 and ffn_dim 32.
TEST(TaskFamilies, RunsSavedBeforeFfnDimHadOneMeaningEvaluateAndResume) {
  struct Case {
    std::string task;
    std::vector<std::string> sets;
    int64_t stop;
  };
  const std::vector<Case> cases = {
      {"sort",
       {"length=8", "num_train=256", "num_val=32", "num_test=64", "d_model=16", "ffn_dim=32",
        "num_heads=2", "num_layers=1", "batch_size=32", "epochs=2", "checkpoint_every=4",
        "eval_every=8", "eval_batch_size=32", "dropout=0.1"},
       4},
      {"distill",
       {"height=5", "width=5", "num_distractors=1", "train_levels=20", "val_levels=5",
        "test_levels=10", "epochs=2", "d_model=16", "ffn_dim=32", "num_heads=2", "num_layers=1",
        "batch_size=16", "warmup_steps=2", "checkpoint_every=5", "dropout=0.1"},
       5}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.task);
    const auto [saved, today] =
        expect_old_run_evaluates_and_resumes(c.task, c.sets, c.stop, [&](nlohmann::json& old) {
          old["ffn_dim"] = 0;
          if (c.task != "sort") old.erase("attention_dropout");
        });
    EXPECT_EQ(today.at("ffn_dim"), 32);
  }
}

TEST(TaskFamilies, DistillationReportsStudentTeacherAndRandom) {
  TempDir tmp;
  const auto out = KT::train_task(
      "distill", tiny({"height=5", "width=5", "num_distractors=1", "train_levels=40",
                       "val_levels=10", "test_levels=30", "epochs=2", "d_model=16",
                       "ffn_dim=32", "num_heads=2", "num_layers=1", "batch_size=16",
                       "warmup_steps=2"},
                      tmp.file("run")));
  const auto& test = out.summary.at("test");
  // The teacher acts optimally on solvable levels; a random walk does not always arrive.
  EXPECT_EQ(test.at("teacher_success").get<double>(), 1.0);
  EXPECT_LT(test.at("random_success").get<double>(), 1.0);
  for (const char* key : {"agreement", "success", "return", "loss", "success_sampled",
                          "return_sampled", "teacher_success_sampled"}) {
    ASSERT_TRUE(test.contains(key)) << key;
  }
  EXPECT_GT(test.at("teacher_success_sampled").get<double>(),
            test.at("random_success").get<double>());
  EXPECT_GE(test.at("agreement").get<double>(), 0.0);
  EXPECT_LE(test.at("agreement").get<double>(), 1.0);
}

TEST(TaskFamilies, TranslationOnAUserTsvTrainsAndTranslates) {
  TempDir tmp;
  const std::string file = kvq_test_files::write_toy_translation_tsv(tmp);
  const auto out = KT::train_task(
      "translation",
      tiny({"tsv_file=" + file, "min_freq=1", "val_fraction=0.1", "test_fraction=0.1",
            "d_model=32", "ffn_dim=128", "num_heads=2", "num_layers=1", "batch_size=8", "epochs=4",
            "schedule=constant", "lr=3e-3", "warmup_steps=0", "label_smoothing=0.1"},
           tmp.file("run")));
  const auto& test = out.summary.at("test");
  EXPECT_GE(test.at("bleu").get<double>(), 0.0);
  EXPECT_LE(test.at("bleu").get<double>(), 100.0);
  EXPECT_LT(test.at("loss").get<double>(), test.at("unigram_loss").get<double>()) << test;
  const auto run = kvq::train::RunDir::open(out.run_dir);
  const auto lines =
      KT::translate_with_run(run.load_config(), run, {"the red car is big", "a blue tree"});
  EXPECT_EQ(lines.lines.size(), 2u);
  // The decoder caches change nothing but the speed.
  EXPECT_EQ(KT::translate_with_run(run.load_config(), run, {"the red car is big", "a blue tree"},
                                   "best", /*use_cache=*/false)
                .lines,
            lines.lines);
  kvq_test_files::expect_error(
      [&] { KT::translate_with_run(nlohmann::json{{"task", "sort"}}, run, {"x"}); },
      {"translate needs a translation run"});
}

TEST(TaskFamilies, FashionMnistTinyViTLearnsWellAboveChance) {
  std::error_code ec;
  const std::string images =
      std::string(kvq::data::kFashionMnistDir) + "/train-images-idx3-ubyte.gz";
  if (!fs::exists(images, ec)) {
    GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  }
  TempDir tmp;
  const auto out = KT::train_task(
      "fashion-mnist",
      tiny({"num_train=2048", "num_val=256", "num_test=512", "epochs=2", "batch_size=64",
            "d_model=32", "ffn_dim=32", "num_heads=2", "num_layers=1", "lr=3e-3",
            "optimizer=adamw"},
           tmp.file("run")));
  // Ten classes: chance is 0.1; 64 updates of a tiny ViT reach well above 0.4.
  EXPECT_GT(out.summary.at("test").at("acc").get<double>(), 0.4) << out.summary.at("test");
}

TEST(GridPolicy, LogitsForEveryMechanismAndGradients) {
  const auto level = kvq::env::generate_level(3, kvq::env::GridWorldOptions().height(6).width(5));
  const auto obs = kvq::env::stack_observations(
      {kvq::env::observe(level, level.start), kvq::env::observe(level, level.goal)});
  for (const auto& mechanism : kvq::mechanism_names()) {
    torch::manual_seed(0);
    kvq::models::GridPolicy policy(
        kvq::models::GridPolicyOptions(kvq::env::kNumTokenTypes, kvq::env::kNumActions)
            .max_side(6)
            .block(
                kvq::models::TransformerBlockOptions(16, 2).norm_first(true).mechanism(mechanism))
            .num_layers(1));
    const auto logits = policy->forward(obs.types, obs.rows, obs.cols);
    ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{2, kvq::env::kNumActions})) << mechanism;
    logits.sum().backward();
    for (const auto& p : policy->named_parameters()) {
      ASSERT_TRUE(p.value().grad().defined()) << mechanism << " " << p.key();
    }
  }
  kvq::models::GridPolicy policy(kvq::models::GridPolicyOptions(7, 4).max_side(4));
  kvq_test_files::expect_error([&] { policy->forward(obs.types, obs.rows, obs.cols); },
                               {"GridPolicy", "rows"});
}

}  // namespace
