#pragma once
// Experiment 2 of the Intention paper (Garnelo & Czarnecki 2023; docs: tasks.md): N-way K-shot
// classification, registered as `few-shot`. episodes "fashion-mnist": meta-train episodes come
// from classes 0-4 of Fashion-MNIST's train split, meta-test episodes from classes 5-9 of its test
// split (kvq::data::load_fashion_mnist_meta_splits; data_dir "" = Debian's dataset-fashion-mnist).
// episodes "gaussian": Gaussian-cluster episodes with fresh classes in every episode
// (kvq/data/gaussian_episodes.h), an MLP encoder, and the Bayes-optimal accuracy beside.
// kvq::models::FewShotClassifier: a Conv-4 encoder, support features attended by query features
// through the chosen mechanism; with readout "labels" (the default) the values are the support
// labels' embeddings and the output is scored against the same embeddings (in-context
// classification: softmax contains the soft prototype rule, intention the ridge classifier).
// Training draws a fresh batch of meta-train episodes every update from (seed, update); loss =
// cross-entropy of the query labels. Evaluation uses fixed meta-test episodes (the same for every
// mechanism and seed; different ones for "val" and "test"). Metrics: "loss", "acc" (query
// accuracy) and "proto_acc", the prototype (nearest class mean, Snell et al. 2017) baseline on
// the same encoder's features; with readout_features "encoder" also "norm_proto_acc", the
// prototype rule on the normalised features the readout compares; with episodes "gaussian" also
// "bayes_acc" (the Bayes-optimal rule) and "input_proto_acc" (the prototype rule on the points).
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "kvq/models/few_shot_classifier.h"
#include "kvq/tasks/common_config.h"
#include "kvq/tasks/task_registry.h"
#include "kvq/train/run_dir.h"

namespace kvq {
namespace tasks {

struct FewShotTaskConfig : CommonTaskConfig {
  FewShotTaskConfig() {
    task = "few-shot";
    block = models::TransformerBlockOptions(64, 1)
                .ffn_dim(128).dropout(0.0).norm_first(true);  // 2 * d_model
    num_layers = 1;
    batch_size = 16;  // episodes
    lr = 1e-3;
    schedule = "cosine";
    warmup_steps = 100;
    eval_every = 250;
    checkpoint_every = 250;
    eval_batch_size = 50;
    // Ridge readout on normalised features (squared norm = feature width): alpha 10 rather than
    // 1; chosen on the validation episodes (5-shot intention, seed 0: 0.592 against 0.546).
    block.attention().alpha_init(10.0);
  }
  std::string episodes = "fashion-mnist";  // or "gaussian" (kvq/data/gaussian_episodes.h)
  std::string data_dir = "";        // "" = /usr/share/datasets/fashion-mnist
  int64_t num_ways = 5;             // classes per episode N
  int64_t num_shots = 1;            // support images per class K
  int64_t num_queries = 5;          // query images per class Q
  int64_t encoder_channels = 32;    // channels of the Conv-4 blocks
  int64_t steps = 2000;             // optimiser updates
  int64_t val_episodes = 200;       // fixed meta-test episodes for validation
  int64_t test_episodes = 1000;     // fixed meta-test episodes for the test
  std::string readout = "labels";   // "labels" (in-context classification) or "head"
  std::string readout_features = "encoder";  // "labels" readout on "encoder" or "projected" features
  int64_t point_dim = 32;           // gaussian: dimension D of a point
  double class_std = 1.0;           // gaussian: std of a class mean's coordinates
  double noise_std = 1.5;           // gaussian: std of a point's coordinates around its mean
};

const train::ConfigSchema<FewShotTaskConfig>& few_shot_task_schema();

models::FewShotClassifier make_few_shot_model(const FewShotTaskConfig& config);

TrainSummary train_few_shot_task(const FewShotTaskConfig& config, const train::RunDir& run,
                                 const TrainContext& context = {});
nlohmann::json evaluate_few_shot_task(const FewShotTaskConfig& config, const train::RunDir& run,
                                      const EvalOptions& options = {});

// The checks a run makes of the config beyond the schema's (TaskInfo::check): the learning-rate
// schedule over its `steps` updates.
void check_few_shot_task(const FewShotTaskConfig& config);

TaskInfo few_shot_task_info();

}  // namespace tasks
}  // namespace kvq
