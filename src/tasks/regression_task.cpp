#include "kvq/tasks/regression_task.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <memory>

#include "kvq/data/regression_episodes.h"
#include "kvq/tasks/training_loop.h"
#include "kvq/train/checkpoint.h"

namespace kvq {
namespace tasks {

namespace {

using Config = RegressionTaskConfig;

const std::vector<std::string>& regression_task_names() {
  static const std::vector<std::string> names = {"icl-linear", "icl-gp", "icl-sinusoid"};
  return names;
}

data::RegressionKind kind_of(const std::string& task) {
  return data::parse_regression_kind(task.substr(std::string("icl-").size()));
}

int64_t x_dim_of(const Config& c) { return c.task == "icl-linear" ? c.x_dim : 1; }

data::RegressionEpisodeOptions episode_options(const Config& c, int64_t num_context) {
  return data::RegressionEpisodeOptions()
      .num_context(num_context)
      .num_targets(c.num_targets)
      .noise_std(c.noise_std)
      .x_dim(x_dim_of(c))
      .length_scale_min(c.length_scale_min)
      .length_scale_max(c.length_scale_max);
}

// The training batch of update `step`: its context size and episodes, a function of (seed, step).
data::RegressionEpisode training_batch(const Config& c, int64_t step) {
  const uint64_t key = mix_seeds(static_cast<uint64_t>(c.seed), static_cast<uint64_t>(step));
  const int64_t span = c.max_context - c.min_context + 1;
  const int64_t n = c.min_context + static_cast<int64_t>(key % static_cast<uint64_t>(span));
  return data::make_regression_episode(kind_of(c.task), c.batch_size, mix_seeds(key, 1),
                                       episode_options(c, n));
}

// The fixed evaluation episodes of a split at context size n (independent of the run's seed).
data::RegressionEpisode evaluation_episodes(const Config& c, const std::string& split,
                                            int64_t n) {
  const uint64_t split_key = split == "test" ? 0x7E57 : 0x7A11D;
  return data::make_regression_episode(kind_of(c.task), c.eval_episodes,
                                       mix_seeds(split_key, static_cast<uint64_t>(n)),
                                       episode_options(c, n));
}

double mse(const torch::Tensor& prediction, const torch::Tensor& target) {
  return (prediction.to(torch::kFloat64) - target.to(torch::kFloat64)).pow(2).mean().item<double>();
}

nlohmann::json evaluate_model(models::InContextRegressor& model, const Config& c,
                              const std::string& split) {
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  const auto kind = kind_of(c.task);
  nlohmann::json out, baselines;
  double mse_sum = 0, bayes_sum = 0;
  const auto device = train::model_device(*model);
  for (const int64_t n : c.eval_contexts) {
    const auto e = evaluation_episodes(c, split, n);
    std::vector<torch::Tensor> predictions;
    for (int64_t start = 0; start < c.eval_episodes; start += c.eval_batch_size) {
      const int64_t end = std::min(c.eval_episodes, start + c.eval_batch_size);
      const auto batch = [&](const torch::Tensor& t) { return t.slice(0, start, end).to(device); };
      predictions.push_back(
          model->forward(batch(e.context_x), batch(e.context_y), batch(e.target_x))
              .to(torch::kCPU));
    }
    const std::string suffix = "_n" + std::to_string(n);
    const double model_mse = mse(torch::cat(predictions, 0), e.target_y);
    out["mse" + suffix] = model_mse;
    mse_sum += model_mse;
    if (kind != data::RegressionKind::Sinusoid) {
      const double bayes =
          mse(data::bayes_optimal_prediction(kind, e, episode_options(c, n)).mean, e.target_y);
      out["bayes" + suffix] = bayes;
      bayes_sum += bayes;
    }
    baselines["nn" + suffix] =
        mse(data::nearest_neighbour_predictor(e.context_x, e.context_y, e.target_x), e.target_y);
    baselines["zero" + suffix] = mse(torch::zeros_like(e.target_y), e.target_y);
  }
  model->train(was_training);
  const double sizes = static_cast<double>(c.eval_contexts.size());
  out["mse"] = mse_sum / sizes;
  if (kind != data::RegressionKind::Sinusoid) out["bayes"] = bayes_sum / sizes;
  out["baselines"] = baselines;
  return out;
}

train::ConfigSchema<Config> build_schema(const std::string& task) {
  train::ConfigSchema<Config> schema(task);
  add_common_fields(schema)
      .field("x_dim", &Config::x_dim, "icl-linear: input dimension d_x")
      .field("noise_std", &Config::noise_std, "observation noise of y")
      .field("length_scale_min", &Config::length_scale_min, "icl-gp: smallest RBF length scale")
      .field("length_scale_max", &Config::length_scale_max, "icl-gp: largest RBF length scale")
      .field("min_context", &Config::min_context, "smallest training context size")
      .field("max_context", &Config::max_context, "largest training context size")
      .field("num_targets", &Config::num_targets, "targets per episode")
      .field("eval_contexts", &Config::eval_contexts, "context sizes of the evaluation episodes")
      .field("eval_episodes", &Config::eval_episodes, "evaluation episodes per context size")
      .field("steps", &Config::steps, "optimiser updates")
      .field("feed_forward", &Config::feed_forward, "feed-forward branch after each attention")
      .field("layer_norm", &Config::layer_norm, "Pre-LN in each layer and before the readout")
      .field("feature_dim", &Config::feature_dim,
             "width of a learned feature map of x (2-layer GELU MLP) before the embeddings; "
             "0 = none (keys linear in x)")
      .check("task must be one of: icl-linear, icl-gp, icl-sinusoid",
             [](const Config& c) { return detail::contains_name(regression_task_names(), c.task); })
      .check("x_dim must be >= 1", [](const Config& c) { return c.x_dim >= 1; })
      .check("noise_std must be > 0 (the Bayes-optimal predictors need noise)",
             [](const Config& c) { return c.noise_std > 0; })
      .check("length scales must satisfy 0 < length_scale_min <= length_scale_max",
             [](const Config& c) {
               return c.length_scale_min > 0 && c.length_scale_min <= c.length_scale_max;
             })
      .check("contexts must satisfy 1 <= min_context <= max_context",
             [](const Config& c) { return c.min_context >= 1 && c.min_context <= c.max_context; })
      .check("num_targets must be >= 1", [](const Config& c) { return c.num_targets >= 1; })
      .check("eval_contexts must be non-empty with every size >= 1",
             [](const Config& c) {
               return !c.eval_contexts.empty() &&
                      std::all_of(c.eval_contexts.begin(), c.eval_contexts.end(),
                                  [](int64_t n) { return n >= 1; });
             })
      .check("eval_episodes must be >= 1", [](const Config& c) { return c.eval_episodes >= 1; })
      .check("steps must be >= 1", [](const Config& c) { return c.steps >= 1; })
      .check("feature_dim must be >= 0", [](const Config& c) { return c.feature_dim >= 0; })
      .upgrade(detail::upgrade_zero_ffn_dim(4));
  // Linear functions need no feature map (one intention layer is then exactly ridge regression);
  // GP and sinusoid functions need nonlinear features of x for any mechanism.
  const int64_t features = task == "icl-linear" ? 0 : 64;
  schema.preset("full",
                {{"d_model", 64}, {"num_heads", 4}, {"num_layers", 1}, {"ffn_dim", 256},
                 {"batch_size", 64},
                 {"steps", 20000}, {"lr", 1e-3}, {"schedule", "cosine"}, {"warmup_steps", 500},
                 {"eval_every", 1000}, {"checkpoint_every", 1000}, {"eval_episodes", 2000},
                 {"feature_dim", features}},
                "one layer, d 64, 4 heads, batch 64 episodes, 20k updates, Adam 1e-3 cosine, "
                "2000 evaluation episodes per context size; GP and sinusoid: feature map 64");
  schema.preset("quick",
                {{"d_model", 64}, {"num_heads", 4}, {"num_layers", 1}, {"ffn_dim", 256},
                 {"batch_size", 64},
                 {"steps", 3000}, {"lr", 3e-3}, {"schedule", "cosine"}, {"warmup_steps", 200},
                 {"eval_every", 500}, {"checkpoint_every", 500}, {"eval_episodes", 500},
                 {"feature_dim", features}},
                "one layer, d 64, 4 heads, batch 64 episodes, 3000 updates, Adam 3e-3 cosine; "
                "GP and sinusoid: feature map 64");
  return schema;
}

}  // namespace

const train::ConfigSchema<Config>& regression_task_schema(const std::string& task) {
  return schema_of_task<Config>(regression_task_names(), task, build_schema,
                                "in-context regression");
}

models::InContextRegressor make_regression_model(const Config& c) {
  torch::manual_seed(static_cast<uint64_t>(c.seed));
  return models::InContextRegressor(models::InContextRegressorOptions(x_dim_of(c), 1)
                                        .block(c.block)
                                        .num_layers(c.num_layers)
                                        .feed_forward(c.feed_forward)
                                        .layer_norm(c.layer_norm)
                                        .feature_dim(c.feature_dim));
}

TrainSummary train_regression_task(const Config& c, const train::RunDir& run,
                                   const TrainContext& context) {
  auto model = make_regression_model(c);
  model->to(context.device);
  const auto optimizer = make_optimizer(model->parameters(), c);
  auto loop = training_loop_for(c, *model, *optimizer, c.steps, c.task);
  loop.batches = train::BatchSource::drawn([&](int64_t step) {
    const auto e = training_batch(c, step);
    return train::Batch{{"context_x", e.context_x},
                        {"context_y", e.context_y},
                        {"target_x", e.target_x},
                        {"target_y", e.target_y}};
  });
  loop.loss = [&](const train::Batch& batch, int64_t) {
    const auto& y = batch["target_y"];
    BatchLoss out;
    out.loss = torch::mse_loss(
        model->forward(batch["context_x"], batch["context_y"], batch["target_x"]), y);
    out.items = y.numel();
    return out;
  };
  loop.evaluate = [&](const std::string& split) { return evaluate_model(model, c, split); };
  auto summary = run_summary(c, *model);
  return run_training_loop(loop, run, context, summary);
}

nlohmann::json evaluate_regression_task(const Config& c, const train::RunDir& run,
                                        const EvalOptions& options) {
  const std::string path = checkpoint_to_evaluate(run, options);
  auto model = make_regression_model(c);
  model->to(options.device);
  train::load_model_weights(path, *model);
  auto out = evaluate_model(model, c, options.split);
  return with_checkpoint_info(out, path, options);
}

void check_regression_task(const Config& c) { make_schedule(c, c.steps, c.task); }

TaskInfo regression_task_info(const std::string& name) {
  auto info = make_task_info<Config>(
      name, "in-context-regression",
      "in-context regression, " + name.substr(4) + " functions (Garnelo & Czarnecki 2023)",
      regression_task_schema(name), check_regression_task, train_regression_task,
      evaluate_regression_task, {"mse", /*maximize=*/false, "acc", "target", ""});
  info.context_curve = {"mse_n", name == "icl-sinusoid" ? "" : "bayes_n"};
  return info;
}

}  // namespace tasks
}  // namespace kvq
