// The synthetic-task training loop on a tiny config (48 updates of a one-block, width-16 model):
// it trains (the loss falls, metrics and checkpoints are written, results.json and `eval` agree),
// and a run interrupted after a mid-run checkpoint and resumed in a fresh model ends bit-identical
// to the uninterrupted run, for a softmax, a kv-pos and an intention model. Also the driver's
// refusals: an existing run directory without --resume, a resume with a changed config.
#include <gtest/gtest.h>

#include <cmath>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "kvq/tasks/sequence_task.h"
#include "kvq/tasks/task_registry.h"
#include "kvq/train/checkpoint.h"
#include "kvq/train/metrics_log.h"
#include "test_files.h"

namespace {

namespace KT = kvq::tasks;
namespace T = kvq::train;
namespace fs = std::filesystem;

using kvq_test_files::error_of;
using kvq_test_files::TempDir;

constexpr int64_t kTotalSteps = 48;  // 3 epochs of 512 / 32

// 16 updates per epoch; validation every 8, checkpoints every 11 and at epoch ends (16, 32):
// the checkpoint at 22 falls between two train records (every 4), so it carries a partial window.
std::vector<std::string> tiny_sets(const std::string& mechanism) {
  return {"length=8",        "num_train=512",     "num_val=64",      "num_test=128",
          "d_model=16",      "ffn_dim=32",        "num_heads=2",     "num_layers=1",
          "batch_size=32",
          "epochs=3",        "lr=5e-3",           "eval_every=8",    "checkpoint_every=11",
          "log_every=4",     "eval_batch_size=50", "mechanism=" + mechanism};
}

KT::TrainOptions tiny_options(const std::string& mechanism, const std::string& run_dir) {
  KT::TrainOptions o;
  o.sources.sets = tiny_sets(mechanism);
  o.seed = 3;
  o.run_dir = run_dir;
  o.print_config = false;
  o.context.quiet = true;
  return o;
}

std::vector<nlohmann::json> records(const std::string& run_dir, const std::string& split) {
  std::vector<nlohmann::json> out;
  for (auto r : T::read_metrics((fs::path(run_dir) / "metrics.jsonl").string())) {
    if (r.value("split", "") != split) continue;
    r.erase("tok_per_s");  // the fields that depend on the clock
    r.erase("mfu");
    out.push_back(r);
  }
  return out;
}

// Names of the parameters and buffers that differ between two checkpoints of the same config.
std::string differing(const KT::SequenceTaskConfig& c, const std::string& a, const std::string& b) {
  auto ma = KT::make_sequence_model(c), mb = KT::make_sequence_model(c);
  T::load_model_weights(a, *ma);
  T::load_model_weights(b, *mb);
  std::string out;
  const auto pb = mb->named_parameters();
  for (const auto& item : ma->named_parameters()) {
    if (!torch::equal(item.value(), pb[item.key()])) out += item.key() + " ";
  }
  const auto bb = mb->named_buffers();
  for (const auto& item : ma->named_buffers()) {
    if (!torch::equal(item.value(), bb[item.key()])) out += item.key() + " ";
  }
  return out;
}

TEST(SequenceTask, TinyRunTrainsAndWritesItsFiles) {
  TempDir tmp;
  const auto out = KT::train_task("copy", tiny_options("softmax", tmp.file("run")));
  const fs::path run(out.run_dir);
  for (const char* file : {"config.json", "metrics.jsonl", "checkpoint.pt", "best.pt",
                           "results.json"}) {
    EXPECT_TRUE(fs::exists(run / file)) << file;
  }
  const auto train = records(out.run_dir, "train");
  ASSERT_EQ(train.size(), size_t(kTotalSteps / 4));
  EXPECT_EQ(train.front()["step"], 4);
  EXPECT_EQ(train.back()["step"], kTotalSteps);
  const double first = train.front()["loss"], last = train.back()["loss"];
  EXPECT_LT(last, 0.7 * first) << "first " << first << ", last " << last;

  const auto val = records(out.run_dir, "val");
  ASSERT_EQ(val.size(), size_t(kTotalSteps / 8));
  const auto test = records(out.run_dir, "test");
  ASSERT_EQ(test.size(), 1u);
  EXPECT_EQ(test[0]["step"], kTotalSteps);

  EXPECT_EQ(T::read_checkpoint_meta((run / "checkpoint.pt").string())["step"], kTotalSteps);
  EXPECT_EQ(out.summary["steps"], kTotalSteps);
  EXPECT_EQ(out.summary["test"]["token_acc"], test[0]["token_acc"]);
  EXPECT_GT(out.summary["params"].get<int64_t>(), 0);
  // Model FLOPs per token, counted by hand for this tagger (d 16, 2 heads, ffn 32, one block,
  // 10 tokens, L 8, softmax): Linear layers 2 (10*16 + 4*16*16 + 2*16*32 + 16*16 + 16*10) = 5248,
  // attention 2 heads * 2 n^2 (d + dv) / n = 2 * 2 * 8 * 16 = 512; forward + backward 3x.
  EXPECT_EQ(out.summary["model_flops_per_item"].get<double>(), 3.0 * (5248 + 512));
  EXPECT_GT(out.summary["gemm_gflops"].get<double>(), 0.0);
  const double mfu = out.summary["mfu"].get<double>();
  EXPECT_TRUE(std::isfinite(mfu) && mfu > 0) << mfu;
  for (const auto& r : T::read_metrics((run / "metrics.jsonl").string())) {
    if (r["split"] == "train") {
      EXPECT_GT(r.at("mfu").get<double>(), 0.0) << r;
    }
  }
  // Chance level is 1/10; 48 updates of copy get far above it.
  EXPECT_GT(out.summary["test"]["token_acc"].get<double>(), 0.3);

  // `kvq eval` on the last checkpoint reproduces the test metrics exactly.
  const auto [task, config] = KT::task_of_run(out.run_dir);
  EXPECT_EQ(task->name, "copy");
  KT::EvalOptions eval;
  eval.checkpoint = "last";
  const auto metrics = task->evaluate(config, T::RunDir::open(out.run_dir), eval);
  EXPECT_EQ(metrics["token_acc"], out.summary["test"]["token_acc"]);
  EXPECT_EQ(metrics["seq_acc"], out.summary["test"]["seq_acc"]);
  EXPECT_EQ(metrics["step"], kTotalSteps);
}

class SequenceTaskResume : public ::testing::TestWithParam<std::string> {};

TEST_P(SequenceTaskResume, InterruptedAndResumedRunIsBitIdentical) {
  TempDir tmp;
  const std::string mechanism = GetParam();
  const auto whole = KT::train_task("sort", tiny_options(mechanism, tmp.file("whole")));

  // Killed after update 25: the last checkpoint is update 22, records up to 24 are on disk.
  auto first = tiny_options(mechanism, tmp.file("parts"));
  first.context.stop_after_step = 25;
  const auto stopped = KT::train_task("sort", first);
  EXPECT_EQ(stopped.summary["stopped_at"], 25);
  EXPECT_FALSE(fs::exists(fs::path(stopped.run_dir) / "results.json"));
  const std::string ckpt = (fs::path(stopped.run_dir) / "checkpoint.pt").string();
  EXPECT_EQ(T::read_checkpoint_meta(ckpt)["step"], 22);
  EXPECT_EQ(records(stopped.run_dir, "train").back()["step"], 24);

  torch::manual_seed(999);  // the resumed process starts from another RNG state
  torch::rand({100});
  KT::TrainOptions again;
  again.run_dir = stopped.run_dir;
  again.resume = true;
  again.print_config = false;
  again.context.quiet = true;
  const auto parts = KT::train_task("sort", again);

  const auto c = KT::sequence_task_schema().from_json(whole.config);
  const std::string whole_ckpt = (fs::path(whole.run_dir) / "checkpoint.pt").string();
  EXPECT_EQ(differing(c, whole_ckpt, ckpt), "");
  EXPECT_EQ(parts.summary["test"], whole.summary["test"]);
  EXPECT_EQ(parts.summary["best_val"], whole.summary["best_val"]);
  for (const char* split : {"train", "val", "test"}) {
    EXPECT_EQ(records(parts.run_dir, split), records(whole.run_dir, split)) << split;
  }
  // The comparison can fail: training moved the parameters away from the initialisation, and a
  // run with another seed ends elsewhere.
  auto init = KT::make_sequence_model(c);
  T::TrainingState unused;
  torch::optim::Adam opt(init->parameters());
  T::save_checkpoint(tmp.file("init.pt"), *init, opt, unused);
  EXPECT_NE(differing(c, whole_ckpt, tmp.file("init.pt")), "");
  auto other = tiny_options(mechanism, tmp.file("other"));
  other.seed = 4;
  other.sources.sets.push_back("data_seed=3");  // same data, other init / dropout / order
  const auto other_run = KT::train_task("sort", other);
  EXPECT_NE(differing(c, whole_ckpt, (fs::path(other_run.run_dir) / "checkpoint.pt").string()),
            "");
}

INSTANTIATE_TEST_SUITE_P(Mechanisms, SequenceTaskResume,
                         ::testing::Values("softmax", "kv-pos", "intention"));

TEST(SequenceTask, DriverRefusesToOverwriteOrToResumeWithAnotherConfig) {
  TempDir tmp;
  auto first = tiny_options("softmax", tmp.file("run"));
  first.context.stop_after_step = 10;
  KT::train_task("copy", first);

  auto message = error_of([&] { KT::train_task("copy", tiny_options("softmax", tmp.file("run"))); });
  EXPECT_HAS(message, tmp.file("run"));
  EXPECT_HAS(message, "--resume");

  // lr would be a recovery key (test_training_faults.cpp); the batch size may not change.
  auto changed = tiny_options("softmax", tmp.file("run"));
  changed.sources.sets.push_back("batch_size=16");
  changed.resume = true;
  message = error_of([&] { KT::train_task("copy", changed); });
  EXPECT_HAS(message, "batch_size: 32 -> 16");

  auto wrong_task = tiny_options("softmax", tmp.file("run"));
  wrong_task.resume = true;
  message = error_of([&] { KT::train_task("sort", wrong_task); });
  EXPECT_HAS(message, "\"copy\"");

  message = error_of([&] {
    auto o = tiny_options("softmax", tmp.file("missing"));
    o.resume = true;
    KT::train_task("copy", o);
  });
  EXPECT_HAS(message, "nothing to resume");
}

// attention_dropout: -1 (the default, and what a config saved before the key reads as) keeps the
// blocks' dropout on the attention weights; 0 is the paper's code; other values are refused by name.
TEST(SequenceTask, AttentionDropoutReachesEveryBlock) {
  const auto& schema = KT::sequence_task_schema();
  const auto attention_dropout_of = [&](const nlohmann::json& patch) {
    auto model = KT::make_sequence_model(schema.from_json(patch));
    std::vector<double> out;
    for (size_t i = 0; i < model->blocks->size(); ++i) {
      out.push_back(*model->blocks->ptr<kvq::models::TransformerBlockImpl>(i)
                         ->self_attn->options.dropout());
    }
    return out;
  };
  EXPECT_EQ(attention_dropout_of({{"dropout", 0.2}}), (std::vector<double>{0.2, 0.2}));
  EXPECT_EQ(attention_dropout_of({{"dropout", 0.2}, {"attention_dropout", 0.0}}),
            (std::vector<double>{0.0, 0.0}));
  EXPECT_EQ(attention_dropout_of({{"attention_dropout", 0.05}, {"num_layers", 3}}),
            (std::vector<double>{0.05, 0.05, 0.05}));
  for (double bad : {1.0, -0.5}) {
    const auto message = error_of([&] { schema.from_json({{"attention_dropout", bad}}); });
    EXPECT_HAS(message, "attention_dropout must be -1 (= dropout) or in [0, 1)");
  }
}

}  // namespace
