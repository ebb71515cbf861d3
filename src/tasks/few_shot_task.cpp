#include "kvq/tasks/few_shot_task.h"

#include <c10/util/Exception.h>

#include <algorithm>

#include "kvq/data/few_shot.h"
#include "kvq/tasks/training_loop.h"
#include "kvq/train/checkpoint.h"

namespace kvq {
namespace tasks {

namespace {

using Config = FewShotTaskConfig;
namespace F = torch::nn::functional;

data::EpisodeOptions episode_options(const Config& c) {
  return data::EpisodeOptions()
      .num_ways(c.num_ways)
      .num_shots(c.num_shots)
      .num_queries(c.num_queries);
}

data::MetaSplits load_splits(const Config& c) {
  return data::load_fashion_mnist_meta_splits(c.data_dir.empty() ? data::kFashionMnistDir
                                                                 : c.data_dir);
}

// Mean query cross-entropy, query accuracy and the prototype baseline's accuracy on `episodes`.
nlohmann::json evaluate_episodes(models::FewShotClassifier& model, const Config& c,
                                 const data::EpisodeBatch& episodes) {
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  const int64_t n = episodes.support_images.size(0);
  double loss_sum = 0;
  int64_t correct = 0, proto_correct = 0, queries = 0;
  for (int64_t start = 0; start < n; start += c.eval_batch_size) {
    const int64_t end = std::min(n, start + c.eval_batch_size);
    const auto support = model->encode(episodes.support_images.slice(0, start, end));
    const auto query = model->encode(episodes.query_images.slice(0, start, end));
    const auto support_labels = episodes.support_labels.slice(0, start, end);
    const auto y = episodes.query_labels.slice(0, start, end);
    const auto logits = model->forward_features(support, support_labels, query);
    loss_sum += F::cross_entropy(logits.reshape({-1, c.num_ways}), y.reshape({-1}),
                                 F::CrossEntropyFuncOptions().reduction(torch::kSum))
                    .item<double>();
    correct += (logits.argmax(-1) == y).sum().item<int64_t>();
    proto_correct +=
        (data::prototype_predict(support, support_labels, query, c.num_ways) == y)
            .sum()
            .item<int64_t>();
    queries += y.numel();
  }
  model->train(was_training);
  const double q = static_cast<double>(queries);
  return {{"loss", loss_sum / q},
          {"acc", static_cast<double>(correct) / q},
          {"proto_acc", static_cast<double>(proto_correct) / q},
          {"episodes", n}};
}

data::EpisodeBatch evaluation_episodes(const Config& c, const data::MetaSplits& splits,
                                       const std::string& split) {
  return data::sample_episodes(splits.test, episode_options(c),
                               split == "test" ? c.test_episodes : c.val_episodes,
                               split == "test" ? 0x7E57 : 0x7A11D);
}

}  // namespace

const train::ConfigSchema<Config>& few_shot_task_schema() {
  static const auto schema = [] {
    train::ConfigSchema<Config> schema("few-shot");
    add_common_fields(schema)
        .field("data_dir", &Config::data_dir,
               "Fashion-MNIST IDX directory; \"\" = /usr/share/datasets/fashion-mnist")
        .field("num_ways", &Config::num_ways, "classes per episode N (at most 5)")
        .field("num_shots", &Config::num_shots, "support images per class K")
        .field("num_queries", &Config::num_queries, "query images per class Q")
        .field("encoder_channels", &Config::encoder_channels, "channels of the Conv-4 blocks")
        .field("steps", &Config::steps, "optimiser updates (batches of batch_size episodes)")
        .field("readout", &Config::readout,
               "\"labels\": values are the support labels' embeddings, scored against the same "
               "embeddings (in-context classification); \"head\": a linear head on the query "
               "outputs")
        .field("val_episodes", &Config::val_episodes, "fixed meta-test episodes for validation")
        .field("test_episodes", &Config::test_episodes, "fixed meta-test episodes for the test")
        .preset("full",
                {{"num_ways", 5}, {"num_shots", 1}, {"num_queries", 15},
                 {"encoder_channels", 64}, {"batch_size", 16}, {"steps", 10000}, {"lr", 1e-3},
                 {"schedule", "cosine"}, {"warmup_steps", 500}, {"eval_every", 1000},
                 {"checkpoint_every", 1000}, {"test_episodes", 2000}},
                "5-way 1-shot, 15 queries, Conv-4 (64 channels), 16 episodes a batch, 10k "
                "updates, Adam 1e-3 cosine")
        .preset("quick",
                {{"num_ways", 5}, {"num_shots", 1}, {"num_queries", 5},
                 {"encoder_channels", 32}, {"batch_size", 8}, {"steps", 2000}, {"lr", 2e-3},
                 {"schedule", "cosine"}, {"warmup_steps", 100}, {"eval_every", 400},
                 {"checkpoint_every", 400}, {"val_episodes", 100}, {"test_episodes", 600}},
                "5-way 1-shot, 5 queries, Conv-4 (32 channels), 8 episodes a batch, 2000 "
                "updates, Adam 2e-3 cosine")
        .check("num_ways must be in [2, 5] (5 classes on each side of the meta split)",
               [](const Config& c) { return c.num_ways >= 2 && c.num_ways <= 5; })
        .check("num_shots and num_queries must be >= 1",
               [](const Config& c) { return c.num_shots >= 1 && c.num_queries >= 1; })
        .check("encoder_channels must be a positive multiple of 8 (GroupNorm groups)",
               [](const Config& c) {
                 return c.encoder_channels >= 8 && c.encoder_channels % 8 == 0;
               })
        .check("readout must be \"labels\" or \"head\"",
               [](const Config& c) { return c.readout == "labels" || c.readout == "head"; })
        .check("steps must be >= 1", [](const Config& c) { return c.steps >= 1; })
        .check("val_episodes and test_episodes must be >= 1",
               [](const Config& c) { return c.val_episodes >= 1 && c.test_episodes >= 1; });
    return schema;
  }();
  return schema;
}

models::FewShotClassifier make_few_shot_model(const Config& c) {
  torch::manual_seed(static_cast<uint64_t>(c.seed));
  return models::FewShotClassifier(models::FewShotClassifierOptions(c.num_ways)
                                       .encoder_channels(c.encoder_channels)
                                       .d_model(c.d_model)
                                       .num_heads(c.num_heads)
                                       .num_layers(c.num_layers)
                                       .ffn_dim(c.ffn_dim)
                                       .dropout(c.dropout)
                                       .readout(c.readout)
                                       .attention(c.attention));
}

TrainSummary train_few_shot_task(const Config& c, const train::RunDir& run,
                                 const TrainContext& context) {
  const auto splits = load_splits(c);
  const auto val = evaluation_episodes(c, splits, "val");
  auto model = make_few_shot_model(c);
  const auto optimizer = make_optimizer(model->parameters(), c);
  auto loop = training_loop_for(c, *model, *optimizer, c.steps, c.task);
  loop.loss = [&](const torch::Tensor& index, int64_t step) {
    auto e = data::sample_episodes(
        splits.train, episode_options(c), c.batch_size,
        mix_seeds(static_cast<uint64_t>(c.seed), static_cast<uint64_t>(step)));
    if (index.defined()) {  // this worker's share of the batch (several workers)
      e.support_images = e.support_images.index_select(0, index);
      e.support_labels = e.support_labels.index_select(0, index);
      e.query_images = e.query_images.index_select(0, index);
      e.query_labels = e.query_labels.index_select(0, index);
    }
    const auto logits = model->forward(e.support_images, e.support_labels, e.query_images);
    BatchLoss out;
    out.loss = F::cross_entropy(logits.reshape({-1, c.num_ways}), e.query_labels.reshape({-1}));
    out.items = e.query_labels.numel();
    out.correct = (logits.detach().argmax(-1) == e.query_labels).sum().item<int64_t>();
    return out;
  };
  loop.evaluate = [&](const std::string& split) {
    return evaluate_episodes(model, c,
                             split == "test" ? evaluation_episodes(c, splits, "test") : val);
  };
  loop.best_metric = "acc";
  loop.maximize = true;
  loop.accuracy_key = "acc";
  loop.unit = "query";
  auto summary = run_summary(c, *model);
  summary["ways"] = c.num_ways;
  summary["shots"] = c.num_shots;
  return run_training_loop(loop, run, context, summary);
}

nlohmann::json evaluate_few_shot_task(const Config& c, const train::RunDir& run,
                                      const EvalOptions& options) {
  const std::string path = checkpoint_to_evaluate(run, options);
  auto model = make_few_shot_model(c);
  train::load_model_weights(path, *model);
  auto out = evaluate_episodes(model, c, evaluation_episodes(c, load_splits(c), options.split));
  return with_checkpoint_info(out, path, options);
}

TaskInfo few_shot_task_info() {
  return make_task_info<Config>(
      "few-shot", "few-shot",
      "N-way K-shot Fashion-MNIST, disjoint meta-train / meta-test classes (Garnelo & "
      "Czarnecki 2023)",
      few_shot_task_schema(),
      train_few_shot_task, evaluate_few_shot_task,
      "acc", "acc");
}

}  // namespace tasks
}  // namespace kvq
