#include "kvq/tasks/sequence_task.h"

#include <c10/util/Exception.h>

#include <algorithm>

#include "kvq/train/checkpoint.h"
#include "kvq/tasks/training_loop.h"

namespace kvq {
namespace tasks {

namespace {

using Config = SequenceTaskConfig;
using detail::contains_name;
using train::join_names;

uint64_t data_seed(const Config& c) {
  return static_cast<uint64_t>(c.data_seed >= 0 ? c.data_seed : c.seed);
}

data::SyntheticSplits make_data(const Config& c) {
  return data::make_synthetic_splits(
      data::parse_synthetic_task(c.task), data_seed(c),
      data::SyntheticTaskOptions().vocab_size(c.vocab_size).length(c.length), c.num_train,
      c.num_val, c.num_test);
}

}  // namespace

const train::ConfigSchema<Config>& sequence_task_schema() {
  static const auto schema = [] {
    const auto task_list = data::synthetic_task_names();
    train::ConfigSchema<Config> schema("synthetic");
    add_common_fields(schema)
        .field("length", &Config::length, "sequence length L")
        .field("vocab_size", &Config::vocab_size, "tokens V, uniform in [0, V)")
        .field("num_train", &Config::num_train, "fixed training samples")
        .field("num_val", &Config::num_val, "validation samples")
        .field("num_test", &Config::num_test, "test samples")
        .field("data_seed", &Config::data_seed, "seed of the data sets; -1 = seed")
        .field("epochs", &Config::epochs, "passes over the training set")
        .field("norm_first", detail::member<Config>(&Config::block),
               &models::TransformerBlockOptions::norm_first,
               "Pre-LN encoder blocks (+ final LayerNorm); false = Post-LN, the paper's")
        .preset("paper",
                {{"length", 64}, {"vocab_size", 10}, {"num_train", 50000}, {"num_val", 1000},
                 {"num_test", 10000}, {"d_model", 64}, {"num_heads", 2}, {"num_layers", 2},
                 {"ffn_dim", 128}, {"dropout", 0.1}, {"batch_size", 128}, {"epochs", 2},
                 {"lr", 1e-3}, {"schedule", "cosine-product"}, {"warmup_steps", 5},
                 {"min_lr", 0.0}, {"grad_clip", 5.0}},
                "tasks.md experiment 1: L 64, d 64, depth 2, heads 2, 50k/1k/10k, batch 128, "
                "Adam 1e-3, cosine-product (warm-up 5), clip 5, 2 epochs, dropout 0.1")
        .preset("quick",
                {{"length", 16}, {"num_train", 20000}, {"num_val", 500}, {"num_test", 2000},
                 {"d_model", 64}, {"num_heads", 2}, {"num_layers", 2}, {"ffn_dim", 128},
                 {"batch_size", 64},
                 {"epochs", 3}, {"lr", 2e-3}, {"checkpoint_every", 200}, {"eval_every", 100},
                 {"eval_batch_size", 500}},
                "L 16, 20k/500/2k samples, batch 64, 3 epochs, Adam 2e-3: ~15 s per mechanism "
                "on 2 cores (sort, softmax: test token accuracy 0.999)")
        .check("task must be one of: " + join_names(task_list),
               [task_list](const Config& c) { return contains_name(task_list, c.task); })
        .check("length must be >= 1", [](const Config& c) { return c.length >= 1; })
        .check("vocab_size must be >= 2", [](const Config& c) { return c.vocab_size >= 2; })
        .check("num_train must be >= batch_size (at least one batch per epoch)",
               [](const Config& c) { return c.num_train >= c.batch_size; })
        .check("num_val and num_test must be >= 1",
               [](const Config& c) { return c.num_val >= 1 && c.num_test >= 1; })
        .check("data_seed must be >= -1", [](const Config& c) { return c.data_seed >= -1; })
        .check("epochs must be >= 1", [](const Config& c) { return c.epochs >= 1; })
        .upgrade(detail::upgrade_zero_ffn_dim(2));
    return schema;
  }();
  return schema;
}

int64_t sequence_task_total_steps(const Config& c) {
  return c.epochs * (c.num_train / c.batch_size);
}

models::SequenceTagger make_sequence_model(const Config& c) {
  torch::manual_seed(static_cast<uint64_t>(c.seed));
  return models::SequenceTagger(models::SequenceTaggerOptions(c.vocab_size, c.vocab_size)
                                    .block(c.block)
                                    .num_layers(c.num_layers));
}

nlohmann::json evaluate_sequence_model(models::SequenceTagger& model, const torch::Tensor& inputs,
                                       const torch::Tensor& targets, int64_t batch_size) {
  TORCH_CHECK(inputs.dim() == 2 && targets.sizes() == inputs.sizes(),
              "evaluate_sequence_model: inputs and targets must both be (N, L), got ",
              inputs.sizes(), " and ", targets.sizes());
  TORCH_CHECK(batch_size >= 1, "evaluate_sequence_model: batch_size must be >= 1, got ",
              batch_size);
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  const int64_t n = inputs.size(0), length = inputs.size(1);
  const int64_t classes = model->options.num_classes();
  const auto device = train::model_device(*model);
  double loss_sum = 0;
  int64_t correct = 0, rows_correct = 0;
  for (int64_t start = 0; start < n; start += batch_size) {
    const int64_t end = std::min(n, start + batch_size);
    const auto x = inputs.slice(0, start, end).to(device);
    const auto y = targets.slice(0, start, end).to(device);
    const auto logits = model->forward(x);
    loss_sum += torch::nn::functional::cross_entropy(
                    logits.reshape({-1, classes}), y.reshape({-1}),
                    torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                    .item<double>();
    const auto right = logits.argmax(-1) == y;
    correct += right.sum().item<int64_t>();
    rows_correct += right.all(1).sum().item<int64_t>();
  }
  model->train(was_training);
  const double tokens = static_cast<double>(n * length);
  return {{"loss", loss_sum / tokens},
          {"token_acc", static_cast<double>(correct) / tokens},
          {"seq_acc", static_cast<double>(rows_correct) / static_cast<double>(n)},
          {"samples", n}};
}

TrainSummary train_sequence_task(const Config& c, const train::RunDir& run,
                                 const TrainContext& context) {
  const auto splits = make_data(c);
  auto model = make_sequence_model(c);
  model->to(context.device);
  const auto optimizer = make_optimizer(model->parameters(), c);
  // The batch order gets its own stream, distinct from the data generator's mt19937_64(seed).
  util::BatchSampler sampler(c.num_train, c.batch_size,
                             stream_seed(c.seed, SeedStream::kSyntheticBatches));
  const int64_t classes = model->options.num_classes();

  auto loop = training_loop_for(c, *model, *optimizer, sequence_task_total_steps(c),
                                sequence_task_schema().name());
  loop.flops_per_item = token_training_flops(*model, model->blocks, c.length, /*causal=*/false);
  loop.batches = train::BatchSource::rows_of(
      {{"inputs", splits.train.inputs}, {"targets", splits.train.targets}}, sampler);
  loop.steps_per_epoch = sampler.batches_per_epoch();
  loop.loss = [&](const train::Batch& batch, int64_t) {
    const auto& y = batch["targets"];
    const auto logits = model->forward(batch["inputs"]);
    BatchLoss out;
    out.loss =
        torch::nn::functional::cross_entropy(logits.reshape({-1, classes}), y.reshape({-1}));
    out.items = y.numel();
    out.correct = (logits.detach().argmax(-1) == y).sum().item<int64_t>();
    return out;
  };
  loop.evaluate = [&](const std::string& split) {
    const auto& data = split == "test" ? splits.test : splits.val;
    return evaluate_sequence_model(model, data.inputs, data.targets, c.eval_batch_size);
  };
  loop.evaluate_part = [&](const std::string& split, int64_t part, int64_t parts) {
    const auto& data = split == "test" ? splits.test : splits.val;
    const auto [begin, end] = part_range(data.inputs.size(0), part, parts);
    return evaluate_sequence_model(model, data.inputs.slice(0, begin, end),
                                   data.targets.slice(0, begin, end), c.eval_batch_size);
  };
  auto summary = run_summary(c, *model);
  summary["epochs"] = c.epochs;
  return run_training_loop(loop, run, context, summary);
}

nlohmann::json evaluate_sequence_task(const Config& c, const train::RunDir& run,
                                      const EvalOptions& options) {
  const std::string path = checkpoint_to_evaluate(run, options);
  auto model = make_sequence_model(c);
  model->to(options.device);
  train::load_model_weights(path, *model);
  const auto splits = make_data(c);
  const auto& split = options.split == "test" ? splits.test : splits.val;
  auto out = evaluate_sequence_model(model, split.inputs, split.targets, c.eval_batch_size);
  return with_checkpoint_info(out, path, options);
}

void check_sequence_task(const Config& c) {
  make_schedule(c, sequence_task_total_steps(c), sequence_task_schema().name());
}

TaskInfo sequence_task_info(const std::string& name) {
  data::parse_synthetic_task(name);
  return make_task_info<Config>(
      name, "synthetic",
      "synthetic per-token task '" + name + "' (Borji 2023, experiment 1), SequenceTagger",
      sequence_task_schema(), check_sequence_task, train_sequence_task, evaluate_sequence_task,
      {"token_acc", /*maximize=*/true, "token_acc", "tok", "samples"});
}

}  // namespace tasks
}  // namespace kvq
