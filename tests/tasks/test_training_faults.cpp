// Numerical faults and failed writes in the shared training loop, injected into real runs:
//   - a NaN loss (TrainContext::nan_loss_at_step) in the sort task: the run stops with
//     NumericalFault naming the step and the loss, checkpoint.pt of the last good step is intact,
//     the message gives resume commands, and the suggested resume finishes the run;
//   - a non-finite gradient with a finite loss: the first parameter with a bad gradient is named
//     by its module path, the update is skipped (parameters untouched) and counted in the metrics;
//   - a singular system fed to intention in float32: the op's factorisation error is caught,
//     reported with its message, skipped or stopped on;
//   - a non-finite validation or test loss is reported; a failed factorisation there stops;
//   - a checkpoint write that fails on a full device stops with the file and the reason named,
//     the previous checkpoint intact and loadable.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "kvq/functional/intention.h"
#include "kvq/tasks/task_registry.h"
#include "kvq/tasks/training_loop.h"
#include "kvq/util/atomic_file.h"
#include "kvq/train/checkpoint.h"
#include "kvq/train/metrics_log.h"
#include "kvq/train/run_dir.h"
#include "test_files.h"

namespace {

namespace KT = kvq::tasks;
namespace T = kvq::train;
namespace fs = std::filesystem;

using kvq_test_files::error_of;
using kvq_test_files::TempDir;

std::vector<nlohmann::json> records(const std::string& run_dir, const std::string& split) {
  std::vector<nlohmann::json> out;
  for (const auto& r : T::read_metrics((fs::path(run_dir) / "metrics.jsonl").string())) {
    if (r.value("split", "") == split) out.push_back(r);
  }
  return out;
}

int64_t checkpoint_step(const std::string& run_dir) {
  return T::read_checkpoint_meta((fs::path(run_dir) / "checkpoint.pt").string())
      .at("step")
      .get<int64_t>();
}

// The sort task, 48 updates of a one-block model; checkpoints at 11, 16, 22, 32, 33, 44, 48.
KT::TrainOptions tiny_sort(const std::string& run_dir, const std::vector<std::string>& extra) {
  KT::TrainOptions o;
  o.sources.sets = {"length=8",     "num_train=512", "num_val=64",    "num_test=128",
                    "d_model=16",   "ffn_dim=32",    "num_heads=2",   "num_layers=1",
                    "batch_size=32", "epochs=3",    "lr=5e-3",       "eval_every=8",
                    "checkpoint_every=11", "log_every=4", "eval_batch_size=64",
                    "mechanism=intention"};
  o.sources.sets.insert(o.sources.sets.end(), extra.begin(), extra.end());
  o.seed = 3;
  o.run_dir = run_dir;
  o.print_config = false;
  o.context.quiet = true;
  return o;
}

// The NumericalFault message of f, or "<no fault>" (another error fails the test).
std::string fault_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const KT::NumericalFault& e) {
    return e.what_without_backtrace();
  } catch (const c10::Error& e) {
    ADD_FAILURE() << "not a NumericalFault: " << e.what_without_backtrace();
    return "";
  }
  return "<no fault>";
}

TEST(TrainingFaults, NanLossStopsKeepsTheLastCheckpointAndTheHintedResumeFinishes) {
  TempDir tmp;
  const std::string dir = tmp.file("run");
  auto options = tiny_sort(dir, {"max_skipped_steps=0"});
  options.context.nan_loss_at_step = 13;
  const auto message = fault_of([&] { KT::train_task("sort", options); });
  std::cout << "[fault] " << message << std::endl;
  EXPECT_HAS(message, "numerical fault at step 13/48: non-finite loss (forward)");
  EXPECT_HAS(message, "max_skipped_steps = 0");
  EXPECT_HAS(message, (fs::path(dir) / "checkpoint.pt").string() + " (step 11) is intact");
  EXPECT_HAS(message, "kvq train --resume --run-dir " + dir + " --set lr=0.0025");
  EXPECT_HAS(message, "--set alpha_floor=0.001");
  EXPECT_HAS(message, "--set grad_clip=2.5");  // the task's default clip is 5
  // Nothing of the faulty step reached the checkpoint; no results.
  EXPECT_EQ(checkpoint_step(dir), 11);
  EXPECT_FALSE(fs::exists(fs::path(dir) / "results.json"));
  const auto faults = records(dir, "fault");
  ASSERT_EQ(faults.size(), 1u);
  EXPECT_EQ(faults[0]["step"], 13);
  EXPECT_EQ(faults[0]["quantity"], "loss");
  EXPECT_EQ(faults[0]["action"], "stopped");
  const auto lr_before = records(dir, "train").back();
  ASSERT_EQ(lr_before["step"], 12);

  // The hinted resume: only the learning rate changes; the run finishes from step 11.
  KT::TrainOptions again;
  again.run_dir = dir;
  again.resume = true;
  again.print_config = false;
  again.context.quiet = true;
  again.sources.sets = {"lr=0.0025"};
  const auto resumed = KT::train_task("sort", again);
  EXPECT_EQ(resumed.summary["steps"], 48);
  EXPECT_EQ(resumed.config["lr"], 0.0025);
  EXPECT_EQ(T::RunDir::open(dir).load_config()["lr"], 0.0025);
  EXPECT_TRUE(fs::exists(fs::path(dir) / "results.json"));
  // The record of step 12 was written again, at half the rate of the schedule.
  const auto lr_after = records(dir, "train")[2];
  ASSERT_EQ(lr_after["step"], 12);
  EXPECT_DOUBLE_EQ(lr_after["lr"].get<double>(), lr_before["lr"].get<double>() / 2);

  // Other keys still may not change on resume.
  again.sources.sets = {"d_model=32"};
  const auto refused = error_of([&] { KT::train_task("sort", again); });
  EXPECT_HAS(refused, "d_model: 16 -> 32");
  EXPECT_HAS(refused, "a resume may change only lr, min_lr, grad_clip, alpha_floor");
}

TEST(TrainingFaults, NanLossWithinTheBudgetIsSkippedAndCounted) {
  TempDir tmp;
  const std::string dir = tmp.file("run");
  auto options = tiny_sort(dir, {"max_skipped_steps=1"});
  options.context.nan_loss_at_step = 13;
  const auto out = KT::train_task("sort", options);
  EXPECT_EQ(out.summary["steps"], 48);
  const auto faults = records(dir, "fault");
  ASSERT_EQ(faults.size(), 1u);
  EXPECT_EQ(faults[0]["action"], "skipped");
  for (const auto& r : records(dir, "train")) {
    EXPECT_EQ(r["skipped"], r["step"].get<int64_t>() < 13 ? 0 : 1) << r.dump();
    EXPECT_TRUE(std::isfinite(r["loss"].get<double>())) << r.dump();
  }
}

// A model with a module path: block.weight, block.gate, head.weight, head.bias.
struct BlockImpl : torch::nn::Module {
  BlockImpl() {
    weight = register_parameter("weight", torch::full({4}, 0.5));
    gate = register_parameter("gate", torch::zeros({1}));
  }
  torch::Tensor weight, gate;
};
TORCH_MODULE(Block);

struct TinyImpl : torch::nn::Module {
  TinyImpl() {
    block = register_module("block", Block());
    head = register_module("head", torch::nn::Linear(4, 1));
  }
  Block block{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(Tiny);

struct TinyRun {
  TempDir tmp;
  Tiny model;
  torch::optim::SGD optimizer{model->parameters(), torch::optim::SGDOptions(0.1)};
  KT::TrainingLoop loop;
  KT::TrainContext context;
  TinyRun() {
    loop.model = model.get();
    loop.optimizer = &optimizer;
    loop.schedule.kind = "constant";
    loop.schedule.base_lr = 0.1;
    loop.total_steps = 6;
    loop.log_every = 1;
    loop.checkpoint_every = 2;
    loop.evaluate = [](const std::string&) { return nlohmann::json{{"loss", 1.0}}; };
    context.quiet = true;
  }
  T::RunDir run() const { return T::RunDir::open(tmp.dir()); }
  torch::Tensor input() const { return torch::linspace(-1, 1, 4).view({1, 4}); }
  // A finite loss whose gradient is fine, except at `bad_step`, where sqrt(gate) at gate = 0 sends
  // an infinite gradient to block.gate (and only there) while the loss stays finite.
  void finite_loss_with_bad_gradient_at(int64_t bad_step) {
    loop.loss = [this, bad_step](const T::Batch&, int64_t step) {
      auto y = model->head->forward(input() * model->block->weight).sum();
      if (step == bad_step) y = y + torch::sqrt(model->block->gate.abs()).sum();
      return KT::BatchLoss{(y - 1).pow(2), 1};
    };
  }
};

std::vector<torch::Tensor> snapshot(torch::nn::Module& m) {
  std::vector<torch::Tensor> out;
  for (const auto& p : m.parameters()) out.push_back(p.detach().clone());
  return out;
}

bool same(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  for (size_t i = 0; i < a.size(); ++i) {
    if (!torch::equal(a[i], b[i])) return false;
  }
  return true;
}

TEST(TrainingFaults, NonFiniteGradientNamesTheParameterAndTheSkippedUpdateChangesNothing) {
  TinyRun r;
  r.finite_loss_with_bad_gradient_at(3);  // the 4th update
  r.loop.max_skipped_steps = 1;
  std::vector<torch::Tensor> before_bad, after_bad;
  const auto loss = r.loop.loss;
  r.loop.loss = [&](const T::Batch& batch, int64_t step) {
    if (step == 3) before_bad = snapshot(*r.model);
    if (step == 4) after_bad = snapshot(*r.model);
    return loss(batch, step);
  };
  KT::run_training_loop(r.loop, r.run(), r.context, {});
  ASSERT_FALSE(before_bad.empty());
  EXPECT_TRUE(same(before_bad, after_bad)) << "the skipped update changed the parameters";
  const auto faults = records(r.tmp.dir(), "fault");
  ASSERT_EQ(faults.size(), 1u);
  EXPECT_EQ(faults[0]["step"], 4);
  EXPECT_EQ(faults[0]["quantity"], "gradient of block.gate");
  EXPECT_EQ(faults[0]["where"], "backward");
  const auto train = records(r.tmp.dir(), "train");
  ASSERT_EQ(train.size(), 6u);
  EXPECT_EQ(train[2]["skipped"], 0);
  EXPECT_EQ(train[3]["skipped"], 1);
  EXPECT_FALSE(train[3].contains("loss"));  // its only update was skipped
  EXPECT_EQ(train[5]["skipped"], 1);

  // The same fault with no budget left stops the run, naming the parameter.
  TinyRun s;
  s.finite_loss_with_bad_gradient_at(3);
  s.loop.max_skipped_steps = 0;
  const auto message = fault_of([&] { KT::run_training_loop(s.loop, s.run(), s.context, {}); });
  std::cout << "[fault] " << message << std::endl;
  EXPECT_HAS(message, "step 4/6: gradient of block.gate (backward)");
  EXPECT_HAS(message, "(step 2) is intact");
  EXPECT_EQ(checkpoint_step(s.tmp.dir()), 2);
}

// K^T K + alpha I with k = (1, 1) and alpha = 1e-30: in float32 1 + 1e-30 == 1, so the system is
// exactly [[1, 1], [1, 1]] and its Cholesky factorisation fails at the second pivot.
TEST(TrainingFaults, SingularSystemInIntentionIsCaughtWithTheOpsMessage) {
  for (const int64_t budget : {0, 2}) {
    TinyRun r;
    r.loop.max_skipped_steps = budget;
    const auto q = torch::ones({1, 1, 1, 2});
    r.loop.loss = [&](const T::Batch&, int64_t step) {
      const auto w = r.model->block->weight.narrow(0, 0, 2);
      // Keys (2, 1.5) normally; (1, 1) with alpha 1e-30 at update 3.
      auto k = step == 2 ? torch::ones({1, 1, 1, 2})
                         : (w * torch::tensor({4.0f, 3.0f})).view({1, 1, 1, 2});
      const auto alpha = torch::full({}, step == 2 ? 1e-30 : 1.0);
      const auto out = kvq::functional::intention(q, k, k.narrow(-1, 0, 1), alpha);
      return KT::BatchLoss{(out.sum() - 1).pow(2), 1};
    };
    if (budget == 0) {
      const auto message =
          fault_of([&] { KT::run_training_loop(r.loop, r.run(), r.context, {}); });
      std::cout << "[fault] " << message << std::endl;
      EXPECT_HAS(message, "step 3/6: factorisation (forward): intention: K^T K + alpha I");
      EXPECT_HAS(message, "is not numerically positive definite in Float");
      EXPECT_HAS(message, "(step 2) is intact");
      EXPECT_EQ(checkpoint_step(r.tmp.dir()), 2);
    } else {
      KT::run_training_loop(r.loop, r.run(), r.context, {});
      const auto faults = records(r.tmp.dir(), "fault");
      ASSERT_EQ(faults.size(), 1u);
      EXPECT_EQ(faults[0]["quantity"], "factorisation");
      EXPECT_EQ(faults[0]["action"], "skipped");
      EXPECT_HAS(faults[0]["message"].get<std::string>(), "not numerically positive definite");
      EXPECT_EQ(records(r.tmp.dir(), "train").back()["skipped"], 1);
      EXPECT_EQ(checkpoint_step(r.tmp.dir()), 6);
    }
  }
}

// A non-finite validation loss is the model's score: reported, kept, never best. A validation
// whose factorisation fails has no score: the run stops, even with budget left for updates.
TEST(TrainingFaults, EvaluationFaultsAreReportedOrStop) {
  TinyRun r;
  r.finite_loss_with_bad_gradient_at(-1);
  r.loop.eval_every = 3;
  r.loop.max_skipped_steps = 5;
  r.loop.evaluate = [](const std::string&) { return nlohmann::json{{"loss", std::nan("")}}; };
  KT::run_training_loop(r.loop, r.run(), r.context, {});
  const auto faults = records(r.tmp.dir(), "fault");
  ASSERT_EQ(faults.size(), 3u);  // val after 3 and 6, test
  for (const auto& f : faults) EXPECT_EQ(f["action"], "reported") << f.dump();
  EXPECT_EQ(faults[2]["where"], "test");
  EXPECT_EQ(records(r.tmp.dir(), "val").size(), 2u);
  EXPECT_FALSE(fs::exists(r.tmp.path / "best.pt"));

  TinyRun s;
  s.finite_loss_with_bad_gradient_at(-1);
  s.loop.eval_every = 3;
  s.loop.max_skipped_steps = 5;
  s.loop.evaluate = [](const std::string&) {
    const auto k = torch::ones({1, 1, 1, 2});  // the singular system of the test above
    kvq::functional::intention(k, k, k, torch::full({}, 1e-30));
    return nlohmann::json{{"loss", 1.0}};
  };
  const auto message = fault_of([&] { KT::run_training_loop(s.loop, s.run(), s.context, {}); });
  EXPECT_HAS(message, "evaluation after step 3/6: factorisation (val): intention: K^T K + alpha I");
  EXPECT_HAS(message, "(step 2) is intact");
}

TEST(TrainingFaults, FailedCheckpointWriteStopsAndKeepsThePreviousOne) {
  TinyRun r;
  r.finite_loss_with_bad_gradient_at(-1);
  const std::string path = r.run().checkpoint_path().string();
  const auto loss = r.loop.loss;
  std::vector<torch::Tensor> at_checkpoint;
  r.loop.loss = [&](const T::Batch& batch, int64_t step) {
    // After the checkpoint of step 2 the device is full: the temporary file of the next save
    // is /dev/full, where every write fails with ENOSPC.
    if (step == 2) {
      at_checkpoint = snapshot(*r.model);
      fs::create_symlink("/dev/full", kvq::util::temp_path_for(path));
    }
    return loss(batch, step);
  };
  const auto message = error_of([&] { KT::run_training_loop(r.loop, r.run(), r.context, {}); });
  std::cout << "[write] " << message << std::endl;
  EXPECT_HAS(message, "train: step 4: cannot save " + path);
  EXPECT_HAS(message, "No space left on device");
  EXPECT_HAS(message, "The checkpoint of step 2 is what --resume continues from");
  EXPECT_FALSE(fs::exists(fs::symlink_status(kvq::util::temp_path_for(path))));  // cleaned up
  // The previous checkpoint is intact: step 2, loadable, with the parameters of step 2.
  EXPECT_EQ(checkpoint_step(r.tmp.dir()), 2);
  Tiny reader;
  T::load_model_weights(path, *reader);
  EXPECT_TRUE(same(snapshot(*reader), at_checkpoint));
}

}  // namespace
