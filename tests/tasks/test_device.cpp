// Training on a GPU (TrainContext::device, `kvq train --device cuda`): every task family that
// needs no downloaded data trains a tiny config on the GPU and on the CPU from the same seed
// without dropout, and the two runs agree up to float32 rounding; the GPU run's checkpoint
// evaluates to the same metrics on the CPU (EvalOptions::device); greedy generation and
// translation produce the same tokens on both devices. Skipped where this LibTorch has no CUDA
// or no GPU is visible (CI has none).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <ostream>
#include <string>
#include <vector>

#include "kvq/tasks/lm_task.h"
#include "kvq/tasks/task_registry.h"
#include "kvq/tasks/translation_task.h"
#include "kvq/train/run_dir.h"
#include "test_files.h"

namespace {

namespace KT = kvq::tasks;
using kvq_test_files::TempDir;

const torch::Device kCuda(torch::kCUDA, 0);

KT::TrainOptions tiny(const std::vector<std::string>& sets, const std::string& run_dir,
                      const torch::Device& device) {
  KT::TrainOptions o;
  o.sources.sets = sets;
  o.sources.sets.push_back("dropout=0");  // the devices draw dropout masks from other generators
  o.seed = 1;
  o.run_dir = run_dir;
  o.print_config = false;
  o.context.quiet = true;
  o.context.device = device;
  return o;
}

// |a - b| / max(1, |b|): float32 training on two devices differs by rounding alone.
double relative_difference(double a, double b) {
  return std::abs(a - b) / std::max(1.0, std::abs(b));
}

struct Family {
  std::string task;
  std::vector<std::string> sets;
};

// The test's name in gtest's output and CTest's list.
void PrintTo(const Family& family, std::ostream* out) { *out << family.task; }

std::vector<Family> families() {
  return {
      {"sort", {"length=12", "num_train=512", "num_val=64", "num_test=128", "batch_size=32",
                "epochs=2", "d_model=32", "ffn_dim=64", "num_heads=2", "mechanism=kv-pos"}},
      {"human-numbers", {"context=16", "batch_size=16", "steps=40", "d_model=32", "ffn_dim=128",
                         "num_heads=2", "num_layers=1", "eval_every=20", "eval_windows=40",
                         "mechanism=intention"}},
      {"icl-linear", {"x_dim=3", "steps=30", "batch_size=16", "d_model=16", "ffn_dim=64",
                      "num_heads=2", "eval_episodes=40", "eval_contexts=[2,8]", "warmup_steps=5",
                      "mechanism=softmax-intention"}},
      {"few-shot", {"episodes=gaussian", "point_dim=8", "num_shots=2", "num_queries=3",
                    "encoder_channels=16", "steps=30", "batch_size=8", "val_episodes=20",
                    "test_episodes=60", "warmup_steps=5", "mechanism=linear"}},
      {"distill", {"height=5", "width=5", "num_distractors=1", "train_levels=40",
                   "val_levels=10", "test_levels=30", "epochs=1", "d_model=16", "ffn_dim=32",
                   "num_heads=2", "num_layers=1", "batch_size=16", "warmup_steps=2",
                   "mechanism=softmax"}},
      {"translation", {"min_freq=1", "val_fraction=0.1", "test_fraction=0.1", "d_model=32",
                       "ffn_dim=128", "num_heads=2", "num_layers=1", "batch_size=8", "epochs=2",
                       "mechanism=kv"}},
  };
}

class TrainOnCuda : public ::testing::TestWithParam<Family> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA in this LibTorch, or no GPU";
  }
};

// The same tiny run on the CPU and on the GPU; the GPU run's last checkpoint evaluated on each.
TEST_P(TrainOnCuda, MatchesTheCpuRunAndEvaluatesOnTheCpu) {
  const auto& f = GetParam();
  TempDir tmp;
  auto sets = f.sets;
  if (f.task == "translation") {
    sets.push_back("tsv_file=" + kvq_test_files::write_toy_translation_tsv(tmp));
  }
  const auto cpu = KT::train_task(f.task, tiny(sets, tmp.file("cpu"), torch::kCPU));
  const auto gpu = KT::train_task(f.task, tiny(sets, tmp.file("cuda"), kCuda));
  EXPECT_EQ(cpu.summary.at("device"), "cpu");
  EXPECT_EQ(gpu.summary.at("device"), "cuda:0");
  const double cpu_loss = cpu.summary.at("test").at("loss").get<double>();
  const double gpu_loss = gpu.summary.at("test").at("loss").get<double>();
  const double diff = relative_difference(gpu_loss, cpu_loss);
  std::cout << "[device] " << f.task << " test loss cpu " << cpu_loss << " cuda " << gpu_loss
            << " relative difference " << diff << std::endl;
  EXPECT_LE(diff, 1e-3) << "cpu " << cpu.summary.at("test") << "\ncuda "
                        << gpu.summary.at("test");

  const auto run = kvq::train::RunDir::open(gpu.run_dir);
  const auto& info = KT::find_task(f.task);
  KT::EvalOptions eval;
  eval.checkpoint = "last";
  eval.device = torch::kCPU;
  const auto on_cpu = info.evaluate(run.load_config(), run, eval);
  eval.device = kCuda;
  const auto on_gpu = info.evaluate(run.load_config(), run, eval);
  std::cout << "[device] " << f.task << " eval of the cuda checkpoint: loss on cpu "
            << on_cpu.at("loss") << ", on cuda " << on_gpu.at("loss") << std::endl;
  EXPECT_LE(
      relative_difference(on_cpu.at("loss").get<double>(), on_gpu.at("loss").get<double>()),
      1e-5)
      << on_cpu << "\n" << on_gpu;

  // Greedy decoding (top-k 1; greedy translation) gives the same tokens on both devices.
  if (f.task == "human-numbers") {
    const auto greedy = kvq::models::GenerateOptions().max_new_tokens(30).top_k(1);
    const auto config = run.load_config();
    EXPECT_EQ(KT::generate_from_run(config, run, "one hundred", greedy, "last", kCuda).text,
              KT::generate_from_run(config, run, "one hundred", greedy, "last", torch::kCPU).text);
  }
  if (f.task == "translation") {
    const std::vector<std::string> sentences = {"the red car is big", "a blue tree"};
    const auto config = run.load_config();
    EXPECT_EQ(KT::translate_with_run(config, run, sentences, "last", true, kCuda).lines,
              KT::translate_with_run(config, run, sentences, "last", true, torch::kCPU).lines);
  }
}

INSTANTIATE_TEST_SUITE_P(Families, TrainOnCuda, ::testing::ValuesIn(families()),
                         [](const ::testing::TestParamInfo<Family>& info) {
                           return kvq_test_files::test_name(info.param.task);
                         });

}  // namespace
