#include "kvq/tasks/distill_task.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

#include "kvq/env/grid_world.h"
#include "kvq/env/teacher.h"
#include "kvq/tasks/training_loop.h"
#include "kvq/train/checkpoint.h"

namespace kvq {
namespace tasks {

namespace {

using Config = DistillTaskConfig;
namespace F = torch::nn::functional;

// Level seeds of the three splits: disjoint ranges.
constexpr uint64_t kTrainLevelSeed = 0;
constexpr uint64_t kValLevelSeed = 1000000000;
constexpr uint64_t kTestLevelSeed = 2000000000;

env::GridWorldOptions world_options(const Config& c) {
  return env::GridWorldOptions()
      .height(c.height)
      .width(c.width)
      .wall_density(c.wall_density)
      .num_distractors(c.num_distractors);
}

env::TrajectoryDataset dataset(const Config& c, uint64_t seed0, int64_t levels) {
  return env::make_teacher_dataset(seed0, levels, world_options(c),
                                   env::TeacherOptions().temperature(c.temperature));
}

// The student's logits of the states `index` of `d`, on `device` (the model's).
torch::Tensor logits_of(models::GridPolicy& model, const env::TrajectoryDataset& d,
                        const torch::Tensor& index, const torch::Device& device) {
  return model->forward(d.types.index_select(0, index).to(device),
                        d.rows.index_select(0, index).to(device),
                        d.cols.index_select(0, index).to(device));
}

torch::Tensor kl_teacher_student(const torch::Tensor& logits, const torch::Tensor& teacher) {
  return F::kl_div(torch::log_softmax(logits, -1), teacher,
                   F::KLDivFuncOptions().reduction(torch::kBatchMean));
}

// KL and agreement of the student on a data set's states.
nlohmann::json evaluate_states(models::GridPolicy& model, const Config& c,
                               const env::TrajectoryDataset& d) {
  torch::NoGradGuard no_grad;
  const int64_t n = d.types.size(0);
  std::vector<torch::Tensor> logits;
  const auto device = train::model_device(*model);
  for (int64_t start = 0; start < n; start += c.eval_batch_size) {
    logits.push_back(
        logits_of(model, d, torch::arange(start, std::min(n, start + c.eval_batch_size)), device)
            .to(torch::kCPU));
  }
  const auto all = torch::cat(logits, 0);
  return {{"loss", kl_teacher_student(all, d.teacher_probs).item<double>()},
          {"agreement", env::action_agreement(all, d.optimal)},
          {"states", n}};
}

nlohmann::json evaluate_split(models::GridPolicy& model, const Config& c,
                              const std::string& split, const env::TrajectoryDataset& val) {
  const bool was_training = model->is_training();
  model->eval();
  nlohmann::json out;
  if (split != "test") {
    out = evaluate_states(model, c, val);
  } else {
    out = evaluate_states(model, c, dataset(c, kTestLevelSeed, c.test_levels));
    const auto levels = env::generate_levels(kTestLevelSeed, c.test_levels, world_options(c));
    const auto device = train::model_device(*model);
    const env::Policy student = [&](const env::Observation& batch) {
      torch::NoGradGuard no_grad;
      return model
          ->forward(batch.types.to(device), batch.rows.to(device), batch.cols.to(device))
          .to(torch::kCPU);
    };
    const auto acted = env::evaluate_policy(student, levels, world_options(c),
                                            env::EvalOptions().batch_size(c.eval_batch_size));
    // The student is trained towards the teacher's soft-max policy, so it also acts by sampling
    // its own distribution (as the teacher does at its temperature), beside the greedy argmax.
    const uint64_t act_seed = mix_seeds(static_cast<uint64_t>(c.seed), 0xAC7);
    const auto sampled = env::evaluate_policy(
        student, levels, world_options(c),
        env::EvalOptions().batch_size(c.eval_batch_size).greedy(false).seed(act_seed));
    const auto teacher = env::evaluate_teacher(
        levels, world_options(c), env::TeacherOptions().temperature(c.temperature).greedy(true));
    const auto teacher_sampled = env::evaluate_teacher(
        levels, world_options(c), env::TeacherOptions().temperature(c.temperature), act_seed);
    const auto random = env::evaluate_random_policy(levels, world_options(c));
    out["success"] = acted.success_rate;
    out["return"] = acted.mean_return;
    out["length"] = acted.mean_length;
    out["success_sampled"] = sampled.success_rate;
    out["return_sampled"] = sampled.mean_return;
    out["teacher_success"] = teacher.success_rate;
    out["teacher_return"] = teacher.mean_return;
    out["teacher_success_sampled"] = teacher_sampled.success_rate;
    out["random_success"] = random.success_rate;
    out["random_return"] = random.mean_return;
  }
  model->train(was_training);
  return out;
}

}  // namespace

const train::ConfigSchema<Config>& distill_task_schema() {
  static const auto schema = [] {
    train::ConfigSchema<Config> schema("distill");
    add_common_fields(schema)
        .field("height", &Config::height, "grid rows")
        .field("width", &Config::width, "grid columns")
        .field("wall_density", &Config::wall_density, "share of cells that are walls")
        .field("num_distractors", &Config::num_distractors, "distractor objects per level")
        .field("temperature", &Config::temperature,
               "teacher soft-max temperature over -distance")
        .field("train_levels", &Config::train_levels, "levels of the training trajectories")
        .field("val_levels", &Config::val_levels, "levels of the validation trajectories")
        .field("test_levels", &Config::test_levels, "held-out levels of the test")
        .field("epochs", &Config::epochs, "passes over the training states")
        .field("train_states", &Config::train_states,
               "\"trajectories\": the teacher's trajectories on the training levels; \"all\": "
               "every state of those levels, labelled by the teacher")
        .preset("full",
                {{"height", 9}, {"width", 9}, {"train_levels", 10000}, {"val_levels", 500},
                 {"test_levels", 1000}, {"train_states", "all"}, {"epochs", 4}, {"d_model", 64},
                 {"num_heads", 4}, {"num_layers", 4}, {"ffn_dim", 128}, {"batch_size", 64},
                 {"lr", 1e-3},
                 {"schedule", "cosine"}, {"warmup_steps", 200}},
                "9x9 levels, every state of 10k training levels, 4 epochs, d 64, 4 heads, 4 layers")
        .preset("quick",
                {{"height", 9}, {"width", 9}, {"train_levels", 1500}, {"val_levels", 200},
                 {"test_levels", 500}, {"train_states", "all"}, {"epochs", 4}, {"d_model", 64},
                 {"num_heads", 4}, {"num_layers", 4}, {"ffn_dim", 128}, {"batch_size", 64},
                 {"lr", 2e-3},
                 {"schedule", "cosine"}, {"warmup_steps", 100}, {"eval_every", 200},
                 {"checkpoint_every", 200}},
                "9x9 levels, every state of 1500 training levels, 4 epochs, d 64, 4 heads, 4 "
                "layers")
        .check("height and width must be in [2, 32]",
               [](const Config& c) {
                 return c.height >= 2 && c.width >= 2 && c.height <= 32 && c.width <= 32;
               })
        .check("wall_density must be in [0, 0.6]",
               [](const Config& c) { return c.wall_density >= 0 && c.wall_density <= 0.6; })
        .check("num_distractors must be >= 0",
               [](const Config& c) { return c.num_distractors >= 0; })
        .check("temperature must be >= 0", [](const Config& c) { return c.temperature >= 0; })
        .check("train_levels, val_levels and test_levels must be >= 1",
               [](const Config& c) {
                 return c.train_levels >= 1 && c.val_levels >= 1 && c.test_levels >= 1;
               })
        .check("epochs must be >= 1", [](const Config& c) { return c.epochs >= 1; })
        .check("train_states must be \"trajectories\" or \"all\"", [](const Config& c) {
          return c.train_states == "trajectories" || c.train_states == "all";
        })
        .upgrade(detail::upgrade_zero_ffn_dim(2));
    return schema;
  }();
  return schema;
}

models::GridPolicy make_distill_model(const Config& c) {
  torch::manual_seed(static_cast<uint64_t>(c.seed));
  return models::GridPolicy(models::GridPolicyOptions(env::kNumTokenTypes, env::kNumActions)
                                .max_side(std::max(c.height, c.width))
                                .block(c.block)
                                .num_layers(c.num_layers));
}

TrainSummary train_distill_task(const Config& c, const train::RunDir& run,
                                const TrainContext& context) {
  const auto train_data =
      c.train_states == "all"
          ? env::make_state_dataset(kTrainLevelSeed, c.train_levels, world_options(c),
                                    env::TeacherOptions().temperature(c.temperature))
          : dataset(c, kTrainLevelSeed, c.train_levels);
  const auto val_data = dataset(c, kValLevelSeed, c.val_levels);
  const int64_t states = train_data.types.size(0);
  TORCH_CHECK(states >= c.batch_size, "config distill: ", states,
              " training states are fewer than batch_size = ", c.batch_size);
  auto model = make_distill_model(c);
  model->to(context.device);
  const auto optimizer = make_optimizer(model->parameters(), c);
  util::BatchSampler sampler(states, c.batch_size,
                             stream_seed(c.seed, SeedStream::kDistillBatches));
  const int64_t total = c.epochs * sampler.batches_per_epoch();

  auto loop = training_loop_for(c, *model, *optimizer, total, "distill");
  // The optimal actions stay on the CPU, where the agreement is counted.
  loop.batches = train::BatchSource::rows_of({{"types", train_data.types},
                                              {"rows", train_data.rows},
                                              {"cols", train_data.cols},
                                              {"teacher_probs", train_data.teacher_probs},
                                              {"optimal", train_data.optimal}},
                                             sampler)
                     .on_host({"optimal"});
  loop.steps_per_epoch = sampler.batches_per_epoch();
  loop.loss = [&](const train::Batch& batch, int64_t) {
    const auto logits = model->forward(batch["types"], batch["rows"], batch["cols"]);
    const int64_t items = batch["types"].size(0);
    BatchLoss out;
    out.loss = kl_teacher_student(logits, batch["teacher_probs"]);
    out.items = items;
    out.correct = static_cast<int64_t>(
        std::llround(env::action_agreement(logits.detach().to(torch::kCPU), batch["optimal"]) *
                     static_cast<double>(items)));
    return out;
  };
  loop.evaluate = [&](const std::string& split) {
    return evaluate_split(model, c, split, val_data);
  };
  auto summary = run_summary(c, *model);
  summary["train_states"] = states;
  return run_training_loop(loop, run, context, summary);
}

nlohmann::json evaluate_distill_task(const Config& c, const train::RunDir& run,
                                     const EvalOptions& options) {
  const std::string path = checkpoint_to_evaluate(run, options);
  auto model = make_distill_model(c);
  model->to(options.device);
  train::load_model_weights(path, *model);
  const auto val = options.split == "val" ? dataset(c, kValLevelSeed, c.val_levels)
                                          : env::TrajectoryDataset{};
  auto out = evaluate_split(model, c, options.split, val);
  return with_checkpoint_info(out, path, options);
}

TaskInfo distill_task_info() {
  return make_task_info<Config>(
      "distill", "distillation",
      "grid-world policy distillation from a shortest-path teacher (Garnelo & Czarnecki 2023)",
      // No check before the data: the run's updates depend on the number of training states
      // (the schedule is checked when it trains).
      distill_task_schema(), nullptr, train_distill_task, evaluate_distill_task,
      {"agreement", /*maximize=*/true, "agreement", "state", ""});
}

}  // namespace tasks
}  // namespace kvq
