#pragma once
// Experiment 3 of the Intention paper (Garnelo & Czarnecki 2023; docs: tasks.md): policy
// distillation in the project's grid world (kvq::env), registered as `distill`. The teacher acts
// from shortest-path distances (soft-max over negative distance at `temperature`); its
// trajectories on levels train_level_seed .. + train_levels form the training states, each with
// the teacher's action distribution; with train_states "all", every state of those levels
// (env::make_state_dataset), so the student also learns the states its own mistakes lead to. The
// student (kvq::models::GridPolicy, any mechanism) reads
// the cell tokens and is trained with KL(teacher || student), averaged over states.
// Validation: the same on the trajectories of val_levels other levels. Test, on test_levels
// held-out levels: "loss" (KL) and "agreement" (share of states where the student's argmax is an
// optimal action) on the teacher's trajectories, then the student acting greedily in the
// environment: "success" (reached the goal within max_steps), "return", "length"; beside them
// "teacher_success", "teacher_return" (the teacher acting greedily) and "random_success",
// "random_return" (uniform random actions) on the same levels.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "kvq/models/grid_policy.h"
#include "kvq/tasks/common_config.h"
#include "kvq/tasks/task_registry.h"
#include "kvq/train/run_dir.h"

namespace kvq {
namespace tasks {

struct DistillTaskConfig : CommonTaskConfig {
  DistillTaskConfig() {
    task = "distill";
    block = models::TransformerBlockOptions(64, 4)
                .ffn_dim(128).dropout(0.0).norm_first(true);  // 2 * d_model
    num_layers = 2;
    batch_size = 64;
    lr = 1e-3;
    schedule = "cosine";
    warmup_steps = 100;
    eval_batch_size = 500;
  }
  int64_t height = 9;                // grid rows
  int64_t width = 9;                 // grid columns
  double wall_density = 0.2;         // share of cells that are walls
  int64_t num_distractors = 3;       // distractor objects per level
  double temperature = 1.0;          // teacher soft-max temperature over -distance
  int64_t train_levels = 2000;       // levels whose teacher trajectories train the student
  int64_t val_levels = 200;          // levels for validation
  int64_t test_levels = 500;         // held-out levels for the test
  int64_t epochs = 5;                // passes over the training states
  std::string train_states = "trajectories";  // "trajectories" (the teacher's) or "all" (every
                                              // state of the training levels, teacher-labelled)
};

const train::ConfigSchema<DistillTaskConfig>& distill_task_schema();

models::GridPolicy make_distill_model(const DistillTaskConfig& config);

TrainSummary train_distill_task(const DistillTaskConfig& config, const train::RunDir& run,
                                const TrainContext& context = {});
nlohmann::json evaluate_distill_task(const DistillTaskConfig& config, const train::RunDir& run,
                                     const EvalOptions& options = {});

TaskInfo distill_task_info();

}  // namespace tasks
}  // namespace kvq
