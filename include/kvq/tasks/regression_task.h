#pragma once
// Experiment 1 of the Intention paper (Garnelo & Czarnecki 2023; docs: tasks.md): in-context
// regression. Each episode is a new function; the context (x, y) pairs become keys and values of
// kvq::models::InContextRegressor and the target x its queries. Three registered tasks:
//   icl-linear    y = w.x + noise, x and w ~ N(0, I) in R^x_dim; Bayes-optimal predictor: the
//                 ridge posterior mean with alpha = noise^2 (kvq::data::ridge_posterior_mean)
//   icl-gp        1D Gaussian-process functions (RBF kernel, random length scale); Bayes-optimal
//                 predictor given the episode's length scale: the GP posterior mean
//   icl-sinusoid  A sin(x + phi) + noise; no closed-form Bayes predictor (nearest-neighbour and
//                 zero predictors as baselines)
// Training draws a fresh batch of episodes every update from (seed, update): the number of
// context points N uniform in [min_context, max_context] (one N per batch), num_targets targets;
// loss = mean squared error against the noisy targets. Evaluation uses fixed episodes (the same
// for every mechanism and run seed): eval_episodes per context size in eval_contexts, different
// ones for "val" and "test". Metrics: "mse_n<N>" the model's MSE against the noisy targets at N
// context points, "bayes_n<N>" the Bayes-optimal predictor's MSE on the same episodes (linear,
// gp), "mse" and "bayes" their means over the sizes (the loss is "mse"); the nearest-neighbour and
// zero predictors' MSE under "baselines" {"nn_n<N>", "zero_n<N>"}.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "kvq/models/in_context_regressor.h"
#include "kvq/tasks/common_config.h"
#include "kvq/tasks/task_registry.h"
#include "kvq/train/run_dir.h"

namespace kvq {
namespace tasks {

struct RegressionTaskConfig : CommonTaskConfig {
  RegressionTaskConfig() {
    task = "icl-linear";
    block = models::TransformerBlockOptions(64, 4)
                .ffn_dim(256).activation("gelu").dropout(0.0).norm_first(true);  // 4 * d_model
    num_layers = 1;
    batch_size = 64;
    lr = 1e-3;
    schedule = "cosine";
    warmup_steps = 200;
    grad_clip = 1.0;
    eval_every = 500;
    checkpoint_every = 500;
    eval_batch_size = 250;
  }
  int64_t x_dim = 8;               // icl-linear: input dimension d_x
  double noise_std = 0.1;          // observation noise of y
  double length_scale_min = 0.1;   // icl-gp: RBF length scale drawn uniformly in [min, max]
  double length_scale_max = 0.6;
  int64_t min_context = 1;         // training context size N, uniform in [min, max]
  int64_t max_context = 32;
  int64_t num_targets = 16;        // targets per episode
  std::vector<int64_t> eval_contexts = {2, 4, 8, 16, 32};  // N of the evaluation episodes
  int64_t eval_episodes = 500;     // evaluation episodes per context size
  int64_t steps = 4000;            // optimiser updates
  bool feed_forward = false;       // a feed-forward branch after each attention layer
  bool layer_norm = false;         // Pre-LN in each layer and before the readout
  int64_t feature_dim = 0;         // learned feature map of x before the embeddings; 0 = none
};

const train::ConfigSchema<RegressionTaskConfig>& regression_task_schema(const std::string& task);

models::InContextRegressor make_regression_model(const RegressionTaskConfig& config);

TrainSummary train_regression_task(const RegressionTaskConfig& config, const train::RunDir& run,
                                   const TrainContext& context = {});
nlohmann::json evaluate_regression_task(const RegressionTaskConfig& config,
                                        const train::RunDir& run,
                                        const EvalOptions& options = {});

// The checks a run makes of the config beyond the schema's (TaskInfo::check): the learning-rate
// schedule over its `steps` updates.
void check_regression_task(const RegressionTaskConfig& config);

// The registry entry of `name`: icl-linear, icl-gp or icl-sinusoid.
TaskInfo regression_task_info(const std::string& name);

}  // namespace tasks
}  // namespace kvq
