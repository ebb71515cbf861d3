#include "kvq/tasks/few_shot_task.h"

#include <c10/util/Exception.h>

#include <algorithm>

#include "kvq/data/few_shot.h"
#include "kvq/data/gaussian_episodes.h"
#include "kvq/registry.h"
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

data::GaussianEpisodeOptions gaussian_options(const Config& c) {
  return data::GaussianEpisodeOptions()
      .num_ways(c.num_ways)
      .num_shots(c.num_shots)
      .num_queries(c.num_queries)
      .dim(c.point_dim)
      .class_std(c.class_std)
      .noise_std(c.noise_std);
}

bool gaussian(const Config& c) { return c.episodes == "gaussian"; }

// A config saved by an earlier kvq, in today's terms. Before the label readout (no "readout")
// the model had a linear head; before "readout_features" it compared projected features, and
// its "alpha_init" was then the default 1, which a mechanism without alpha never read and which
// the check now refuses for one (the default is 10 since).
void upgrade_saved_config(nlohmann::json& saved) {
  if (!saved.contains("readout")) saved["readout"] = "head";
  if (saved.contains("readout_features")) return;
  saved["readout_features"] = "projected";
  const auto mechanism = saved.find("mechanism");
  if (mechanism == saved.end() || !mechanism->is_string()) return;
  const auto name = mechanism->get<std::string>();
  if (detail::contains_name(mechanism_names(), name) && !find_mechanism(name).traits.uses_alpha) {
    saved.erase("alpha_init");
  }
}

// Where episodes come from: Fashion-MNIST's meta splits (loaded once) or the Gaussian family.
class EpisodeSource {
 public:
  explicit EpisodeSource(const Config& c) : c_(c) {
    if (!gaussian(c)) {
      splits_ = data::load_fashion_mnist_meta_splits(c.data_dir.empty() ? data::kFashionMnistDir
                                                                        : c.data_dir);
    }
  }

  // n meta-training episodes drawn from `seed`.
  data::EpisodeBatch train(int64_t n, uint64_t seed) const {
    return gaussian(c_) ? data::sample_gaussian_episodes(gaussian_options(c_), n, seed)
                        : data::sample_episodes(splits_.train, episode_options(c_), n, seed);
  }

  // The fixed meta-test episodes of "val" or "test".
  data::EpisodeBatch evaluation(const std::string& split) const {
    const bool test = split == "test";
    const int64_t n = test ? c_.test_episodes : c_.val_episodes;
    const uint64_t seed = test ? 0x7E57 : 0x7A11D;
    return gaussian(c_) ? data::sample_gaussian_episodes(gaussian_options(c_), n, seed)
                        : data::sample_episodes(splits_.test, episode_options(c_), n, seed);
  }

 private:
  const Config& c_;
  data::MetaSplits splits_;
};

// Mean query cross-entropy, query accuracy and the prototype baseline's accuracy on `episodes`.
nlohmann::json evaluate_episodes(models::FewShotClassifier& model, const Config& c,
                                 const data::EpisodeBatch& episodes) {
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  const int64_t n = episodes.support_images.size(0);
  double loss_sum = 0;
  const bool on_encoder = c.readout == "labels" && c.readout_features == "encoder";
  int64_t correct = 0, proto_correct = 0, norm_proto_correct = 0, bayes_correct = 0,
          input_proto_correct = 0, queries = 0;
  const auto device = train::model_device(*model);
  for (int64_t start = 0; start < n; start += c.eval_batch_size) {
    const int64_t end = std::min(n, start + c.eval_batch_size);
    const auto batch = [&](const torch::Tensor& t) { return t.slice(0, start, end).to(device); };
    const auto support_images = batch(episodes.support_images);
    const auto query_images = batch(episodes.query_images);
    const auto support = model->encode(support_images);
    const auto query = model->encode(query_images);
    const auto support_labels = batch(episodes.support_labels);
    const auto y = batch(episodes.query_labels);
    const auto logits = model->forward_features(support, support_labels, query);
    loss_sum += F::cross_entropy(logits.reshape({-1, c.num_ways}), y.reshape({-1}),
                                 F::CrossEntropyFuncOptions().reduction(torch::kSum))
                    .item<double>();
    auto hits = [&](const torch::Tensor& predicted) {
      return (predicted == y).sum().item<int64_t>();
    };
    auto prototype_hits = [&](const torch::Tensor& s, const torch::Tensor& q) {
      return hits(data::prototype_predict(s, support_labels, q, c.num_ways));
    };
    correct += hits(logits.argmax(-1));
    proto_correct += prototype_hits(support, query);
    if (on_encoder) {  // the features the readout compares
      const int64_t width = support.size(2);
      norm_proto_correct +=
          prototype_hits(torch::layer_norm(support, {width}), torch::layer_norm(query, {width}));
    }
    if (gaussian(c)) {
      const auto points = support_images.flatten(2);
      const auto query_points = query_images.flatten(2);
      bayes_correct += hits(data::gaussian_bayes_logits(points, support_labels, query_points,
                                                        c.num_ways, c.class_std, c.noise_std)
                                .argmax(-1));
      input_proto_correct += prototype_hits(points, query_points);
    }
    queries += y.numel();
  }
  model->train(was_training);
  const double q = static_cast<double>(queries);
  nlohmann::json out = {{"loss", loss_sum / q},
                        {"acc", static_cast<double>(correct) / q},
                        {"proto_acc", static_cast<double>(proto_correct) / q},
                        {"episodes", n}};
  if (on_encoder) out["norm_proto_acc"] = static_cast<double>(norm_proto_correct) / q;
  if (gaussian(c)) {
    out["bayes_acc"] = static_cast<double>(bayes_correct) / q;
    out["input_proto_acc"] = static_cast<double>(input_proto_correct) / q;
  }
  return out;
}

}  // namespace

const train::ConfigSchema<Config>& few_shot_task_schema() {
  static const auto schema = [] {
    train::ConfigSchema<Config> schema("few-shot");
    add_common_fields(schema)
        .field("episodes", &Config::episodes,
               "\"fashion-mnist\" (classes 0-4 meta-train, 5-9 meta-test) or \"gaussian\" "
               "(Gaussian clusters, fresh classes every episode, MLP encoder)")
        .field("data_dir", &Config::data_dir,
               "Fashion-MNIST IDX directory; \"\" = /usr/share/datasets/fashion-mnist")
        .field("num_ways", &Config::num_ways,
               "classes per episode N (at most 5 with fashion-mnist)")
        .field("num_shots", &Config::num_shots, "support images per class K")
        .field("num_queries", &Config::num_queries, "query images per class Q")
        .field("encoder_channels", &Config::encoder_channels,
               "channels of the Conv-4 blocks (gaussian: width of the MLP encoder's 2 layers)")
        .field("point_dim", &Config::point_dim, "gaussian: dimension D of a point")
        .field("class_std", &Config::class_std, "gaussian: std of a class mean's coordinates")
        .field("noise_std", &Config::noise_std,
               "gaussian: std of a point's coordinates around its class mean")
        .field("steps", &Config::steps, "optimiser updates (batches of batch_size episodes)")
        .field("readout", &Config::readout,
               "\"labels\": values are the support labels' embeddings, scored against the same "
               "embeddings (in-context classification); \"head\": a linear head on the query "
               "outputs")
        .field("readout_features", &Config::readout_features,
               "readout \"labels\": \"encoder\" compares the encoder's features (normalised, "
               "no projection; needs num_layers = 1), \"projected\" learned projections of them")
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
        .preset("gaussian",
                {{"episodes", "gaussian"}, {"num_ways", 5}, {"num_shots", 1},
                 {"num_queries", 5}, {"point_dim", 32}, {"class_std", 1.0}, {"noise_std", 1.5},
                 {"encoder_channels", 64}, {"batch_size", 16}, {"steps", 10000}, {"lr", 2e-3},
                 {"schedule", "cosine"}, {"warmup_steps", 100}, {"eval_every", 1000},
                 {"checkpoint_every", 1000}, {"val_episodes", 100}, {"test_episodes", 600}},
                "Gaussian clusters (D 32, class std 1, noise std 1.5), 5-way 1-shot, 5 queries, "
                "MLP encoder of width 64, 16 episodes a batch, 10k updates, Adam 2e-3 cosine")
        .upgrade(upgrade_saved_config)
        .upgrade(detail::upgrade_zero_ffn_dim(2))
        .check("episodes must be \"fashion-mnist\" or \"gaussian\"",
               [](const Config& c) {
                 return c.episodes == "fashion-mnist" || c.episodes == "gaussian";
               })
        .check("num_ways must be >= 2, and <= 5 with fashion-mnist (5 classes on each side of "
               "the meta split)",
               [](const Config& c) { return c.num_ways >= 2 && (gaussian(c) || c.num_ways <= 5); })
        .check("point_dim must be >= 1, class_std and noise_std > 0", [](const Config& c) {
          return c.point_dim >= 1 && c.class_std > 0 && c.noise_std > 0;
        })
        .check("readout_features must be \"encoder\" or \"projected\"",
               [](const Config& c) {
                 return c.readout_features == "encoder" || c.readout_features == "projected";
               })
        .check("readout_features \"encoder\" needs num_layers = 1 with readout \"labels\" "
               "(use readout_features=projected for more layers)",
               [](const Config& c) {
                 return c.readout != "labels" || c.readout_features != "encoder" ||
                        c.num_layers == 1;
               })
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
  auto options = models::FewShotClassifierOptions(c.num_ways);
  if (gaussian(c)) {  // points as D-channel 1x1 images through a 2-layer MLP
    options.in_channels(c.point_dim).image_size(1).encoder("mlp").encoder_blocks(2);
  }
  return models::FewShotClassifier(options.encoder_channels(c.encoder_channels)
                                       .num_layers(c.num_layers)
                                       .readout(c.readout)
                                       .readout_features(c.readout_features)
                                       // alpha_init etc. back to the library's defaults
                                       // where the mechanism has no alpha (the task's
                                       // alpha_init default is its own)
                                       .block(models::layer_block(c.block, c.block.mechanism())));
}

TrainSummary train_few_shot_task(const Config& c, const train::RunDir& run,
                                 const TrainContext& context) {
  const EpisodeSource source(c);
  const auto val = source.evaluation("val");
  auto model = make_few_shot_model(c);
  model->to(context.device);
  const auto optimizer = make_optimizer(model->parameters(), c);
  auto loop = training_loop_for(c, *model, *optimizer, c.steps, c.task);
  loop.batches = train::BatchSource::drawn([&](int64_t step) {
    const auto e = source.train(
        c.batch_size, mix_seeds(static_cast<uint64_t>(c.seed), static_cast<uint64_t>(step)));
    return train::Batch{{"support_images", e.support_images},
                        {"support_labels", e.support_labels},
                        {"query_images", e.query_images},
                        {"query_labels", e.query_labels}};
  });
  loop.loss = [&](const train::Batch& batch, int64_t) {
    const auto& y = batch["query_labels"];
    const auto logits =
        model->forward(batch["support_images"], batch["support_labels"], batch["query_images"]);
    BatchLoss out;
    out.loss = F::cross_entropy(logits.reshape({-1, c.num_ways}), y.reshape({-1}));
    out.items = y.numel();
    out.correct = (logits.detach().argmax(-1) == y).sum().item<int64_t>();
    return out;
  };
  loop.evaluate = [&](const std::string& split) {
    return evaluate_episodes(model, c, split == "test" ? source.evaluation("test") : val);
  };
  auto summary = run_summary(c, *model);
  summary["ways"] = c.num_ways;
  summary["shots"] = c.num_shots;
  return run_training_loop(loop, run, context, summary);
}

nlohmann::json evaluate_few_shot_task(const Config& c, const train::RunDir& run,
                                      const EvalOptions& options) {
  const std::string path = checkpoint_to_evaluate(run, options);
  auto model = make_few_shot_model(c);
  model->to(options.device);
  train::load_model_weights(path, *model);
  auto out = evaluate_episodes(model, c, EpisodeSource(c).evaluation(options.split));
  return with_checkpoint_info(out, path, options);
}

void check_few_shot_task(const Config& c) { make_schedule(c, c.steps, c.task); }

TaskInfo few_shot_task_info() {
  return make_task_info<Config>(
      "few-shot", "few-shot",
      "N-way K-shot Fashion-MNIST (disjoint meta-train / meta-test classes) or Gaussian-cluster "
      "episodes (Garnelo & Czarnecki 2023)",
      few_shot_task_schema(), check_few_shot_task, train_few_shot_task, evaluate_few_shot_task,
      {"acc", /*maximize=*/true, "acc", "query", ""});
}

}  // namespace tasks
}  // namespace kvq
