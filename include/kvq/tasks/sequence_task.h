#pragma once
// Experiment 1 of the Key-Value Transformer paper (Borji 2023; docs: tasks.md): the synthetic
// per-token sequence tasks reverse, sort, copy, sub and swap, learnt by the encoder-only
// SequenceTagger with any registered mechanism.
//
// One run: fixed train / val / test sets from kvq::data::make_synthetic_splits(data seed), the
// model initialised from torch::manual_seed(seed), mini-batches from a BatchSampler(seed), Adam
// with the learning rate set before every update from the schedule (the paper code's
// cosine-product by default), gradient clipping, cross-entropy per token. Validation (loss, token
// and sequence accuracy) every `eval_every` updates and at the end of every epoch, the test split
// once at the end. Files in the run directory (kvq::train::RunDir):
//   config.json    the resolved config (written by the driver)
//   metrics.jsonl  {"step","split":"train","epoch","loss","token_acc","lr","tokens_per_s"} every
//                  log_every updates; {"step","split":"val"|"test","loss","token_acc","seq_acc"}
//   checkpoint.pt  every checkpoint_every updates, at every epoch end and at the end (atomic)
//   best.pt        the checkpoint of the best validation token accuracy so far
//   results.json   the summary (kvq::tasks::TrainSummary) of a finished run
// A run resumed from checkpoint.pt ends with parameters, metrics records (time fields aside) and
// results bit-identical to the uninterrupted run's, at the same thread count.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "kvq/data/synthetic_tasks.h"
#include "kvq/models/sequence_tagger.h"
#include "kvq/tasks/common_config.h"
#include "kvq/tasks/task_registry.h"
#include "kvq/train/config.h"
#include "kvq/train/run_dir.h"

namespace kvq {
namespace tasks {

// The config of one synthetic-task run (CommonTaskConfig: seed, mechanism, shape, optimiser,
// schedule, ...). Defaults are the paper's (preset "paper" equals them).
struct SequenceTaskConfig : CommonTaskConfig {
  SequenceTaskConfig() {
    task = "sort";
    block.ffn_dim(128);  // 2 * d_model, the paper's
    batch_size = 128;
    schedule = "cosine-product";
    warmup_steps = 5;
    grad_clip = 5.0;
    eval_batch_size = 1000;
  }
  int64_t length = 64;                 // sequence length L
  int64_t vocab_size = 10;             // tokens V, uniform in [0, V)
  int64_t num_train = 50000;           // fixed training samples
  int64_t num_val = 1000;              // validation samples
  int64_t num_test = 10000;            // test samples
  int64_t data_seed = -1;              // seed of the data sets; -1 = seed
  int64_t epochs = 2;                  // passes over the training set
};

// The schema: every field above, presets "paper" (tasks.md: L 64, d 64, depth 2, heads 2,
// 50k/1k/10k, batch 128, Adam 1e-3, cosine-product with 5 warm-up updates, clip 5, 2 epochs,
// dropout 0.1) and "quick" (L 16, 20k/500/2k samples, batch 64, 3 epochs, Adam 2e-3: about
// 15 s per mechanism on 2 CPU cores; sort with softmax reaches test token accuracy 0.999),
// and checks (task and mechanism names, positive sizes, d_model a multiple of num_heads, ...).
const train::ConfigSchema<SequenceTaskConfig>& sequence_task_schema();

// Total optimiser updates of a run: epochs * floor(num_train / batch_size).
int64_t sequence_task_total_steps(const SequenceTaskConfig& config);

// The run's model, built after torch::manual_seed(config.seed) so its initial parameters are a
// function of the config.
models::SequenceTagger make_sequence_model(const SequenceTaskConfig& config);

// Metrics of `model` on (inputs (N, L), targets (N, L)) in eval mode and without gradients:
// {"loss": mean token cross-entropy, "token_acc", "seq_acc": share of rows entirely right,
//  "samples": N}. Batches of `batch_size` rows. The model's train/eval mode is restored.
nlohmann::json evaluate_sequence_model(models::SequenceTagger& model, const torch::Tensor& inputs,
                                       const torch::Tensor& targets, int64_t batch_size);

// Trains (or, with context.resume, continues) the run described above in `run` and returns the
// summary (also written to results.json). Thread count: whatever at::set_num_threads says.
TrainSummary train_sequence_task(const SequenceTaskConfig& config, const train::RunDir& run,
                                 const TrainContext& context = {});

// Metrics of a run's best.pt or checkpoint.pt on its val or test split (data rebuilt from the
// config): evaluate_sequence_model's keys plus "checkpoint" (the file) and "step".
nlohmann::json evaluate_sequence_task(const SequenceTaskConfig& config, const train::RunDir& run,
                                      const EvalOptions& options = {});

// The checks a run makes of the config beyond the schema's (TaskInfo::check): the learning-rate
// schedule over the run's updates.
void check_sequence_task(const SequenceTaskConfig& config);

// The registry entry of synthetic task `name` (one of kvq::data::kSyntheticTaskNames).
TaskInfo sequence_task_info(const std::string& name);

}  // namespace tasks
}  // namespace kvq
