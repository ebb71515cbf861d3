#pragma once
// The training loop every registered task runs: learning rate from the schedule before each
// update, zero_grad / loss / backward / clip / step, running train records, validation and the
// best checkpoint, periodic atomic checkpoints, resume, the progress bar, the final test and
// results.json. A task supplies its model, optimiser, training data (train::BatchSource: the loop
// takes each batch, this worker's share of it, on the device), its metrics' names (TaskMetrics,
// from its registry row) and two callbacks: the loss of one training batch and the metrics of a
// split. The data-parallel exchanges are train::Reducer's, the skip-or-stop rule for numerical
// faults train::FaultBudget's.
//
// Files in the run directory (kvq::train::RunDir):
//   metrics.jsonl  {"step","split":"train","epoch","loss",<train_accuracy>,"lr",<unit>_per_s,
//                  "mfu","skipped"} every log_every updates and at the end ("mfu": model FLOP
//                  utilisation, with TrainingLoop::flops_per_item; "skipped": updates skipped
//                  so far); {"step","split":"val"|"test",<metrics>}; {"step","split":"fault",
//                  "quantity","where","action" (skipped | stopped | reported),"message"} for
//                  every numerical fault
//   checkpoint.pt  every checkpoint_every updates, at every epoch end and at the end (atomic)
//   best.pt        the checkpoint of the best validation score so far
//   results.json   the summary (TrainSummary) of a finished run
// A run resumed from checkpoint.pt ends with parameters, metrics records (time fields aside) and
// results bit-identical to the uninterrupted run's, at the same thread count, provided the
// callbacks draw randomness only from torch's default generator and the batch source.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "kvq/tasks/common_config.h"
#include "kvq/tasks/task_registry.h"
#include "kvq/train/batch_source.h"
#include "kvq/train/faults.h"
#include "kvq/train/run_dir.h"
#include "kvq/train/schedules.h"

namespace kvq {
namespace tasks {

// What the loss callback returns for one training batch.
// With several workers (TrainContext::dist) `loss` must be the mean over the `items` of the
// worker's share: the loop weights each worker's loss and gradients by its items, so the update
// is that of the mean over the whole batch (token counts may differ between shares).
struct BatchLoss {
  torch::Tensor loss;     // scalar, differentiable: what backward() runs on
  int64_t items = 0;      // tokens / samples / targets in the batch (throughput, accuracy)
  int64_t correct = -1;   // right predictions among `items`; -1 = no train accuracy
};

struct TrainingLoop {
  torch::nn::Module* model = nullptr;
  torch::optim::Optimizer* optimizer = nullptr;
  train::LrSchedule schedule;
  // Where each update's batch comes from: rows a sampler picks from a training set (the
  // sampler's state goes into every checkpoint), or a batch drawn from the step. Empty (the
  // default): the loss callback makes its own data and receives an empty Batch (one worker only).
  train::BatchSource batches;
  int64_t total_steps = 0;
  // Updates per epoch: validation and a checkpoint at every epoch end; 0 = no epochs.
  int64_t steps_per_epoch = 0;
  int64_t log_every = 20;
  int64_t eval_every = 0;        // 0 = epoch ends and the end only
  int64_t checkpoint_every = 0;  // 0 = epoch ends and the end only
  double grad_clip = 0.0;        // 0 = off
  // Updates with a numerical fault the run may skip in all before it stops (counted over the
  // whole run, across resumes); 0 = stop at the first fault.
  int64_t max_skipped_steps = 0;
  // The loss of `batch` (from `batches`: this worker's share of the update's batch, on the
  // device) at update `step` (0-based), model in train mode, gradients enabled.
  std::function<BatchLoss(const train::Batch& batch, int64_t step)> loss;
  // Metrics of the model on "val" or "test": must hold "loss" and metrics.best; numbers only
  // (they become metrics records). Called in train mode; it switches modes itself.
  std::function<nlohmann::json(const std::string& split)> evaluate;
  // Optional, for sharded evaluation with several workers: the metrics of part `part` of `parts`
  // of the split (its items [n part / parts, n (part + 1) / parts)), every number a mean over
  // the items counted by the field metrics.eval_count except that field itself. The loop sums
  // the parts (means weighted by their counts). Unset: every worker evaluates the whole split
  // with `evaluate` and rank 0's metrics are taken. Never used with one worker.
  std::function<nlohmann::json(const std::string& split, int64_t part, int64_t parts)>
      evaluate_part;  // part_range below gives its items
  // With several workers, torch's default generator is seeded from (seed, step, rank) before
  // every update, so dropout and augmentation are deterministic per seed and differ per worker,
  // and a resumed group draws what the uninterrupted one drew. Unused with one worker.
  uint64_t seed = 0;
  // The validation metric that picks best.pt and whether larger is better, the train accuracy's
  // name in the train records (used when the loss callback reports `correct`), the progress and
  // throughput unit (<unit>_per_s, counted from BatchLoss::items) and evaluate_part's count.
  TaskMetrics metrics;
  // Progress bar label.
  std::string label;
  // Model FLOPs (forward + backward) of one item, as kvq/train/flops.h counts them; 0 = not
  // counted. With them the run measures the float32 matmul rate of its device at its start
  // (train::measure_gemm_flops, 1024 x 1024, at its thread count; times the workers) and
  // reports the model FLOP utilisation against it: "mfu" in the train records and results.json
  // (with "model_flops_per_item" and "gemm_gflops", one worker's rate), and on the progress line.
  double flops_per_item = 0;
};

// What run_training_loop throws when it stops on a numerical fault (non-finite loss or gradient,
// failed factorisation): a c10::Error whose message is several lines: what happened, at which
// step, where; the last good checkpoint; and how to resume (train_task adds the command line).
// step() is the step of the fault (updates counted from 1), checkpoint_step() that of the last
// checkpoint on disk (-1: none yet).
using train::NumericalFault;

// Data-parallel training (context.dist set, world size W > 1): each worker takes its share of
// every batch (rows [B r / W, B (r + 1) / W) for rank r of W; B must be a multiple of W), the
// gradients are summed over the workers in buckets, weighted by
// their items, so every worker makes the same update as one process with the whole batch would,
// up to the order of floating-point sums; parameters are broadcast from rank 0 at the start;
// numerical faults are decided from all-reduced flags, so every worker skips or stops together;
// evaluation is sharded (evaluate_part) or run by each worker; rank 0 alone writes metrics,
// checkpoints (which record W) and results.json, and shows the progress bar. A resume must have
// the W of the checkpoint (an error otherwise); the checkpoint is read by rank 0 and broadcast.
//
// Runs (or, with context.resume and a checkpoint in `run`, continues) `loop`, then evaluates the
// test split and writes results.json: `summary` (task-specific fields: task, mechanism, seed,
// params, ...) plus "steps", "train_seconds", "threads", "device", "test" (the test metrics) and
// "best_val" {metrics.best: value, "step"}. A resumed run whose results.json exists returns it.
// With context.stop_after_step the loop stops there and returns {"stopped_at": step} merged into
// `summary` (no test, no results.json).
//
// Numerical faults. Each update checks, with one host synchronisation, that the loss and every
// gradient are finite; a factorisation that fails in the forward or backward (an op's
// c10::LinAlgError, or kvq's "not numerically positive definite" error) is caught as well. A
// fault is reported on stderr and as a "fault" metrics record naming the step (updates counted
// from 1), the quantity (the loss, the first parameter whose gradient is not finite, by module
// path, or "factorisation" with the op's message) and where (forward, backward, val, test). The
// update is then skipped (no optimiser step; the batch is consumed and the step counts) while
// fewer than loop.max_skipped_steps updates have been skipped in the run; otherwise the loop
// throws NumericalFault: nothing is saved for the faulty step and the last good checkpoint stays
// as it was. While evaluating, a failed factorisation always stops (there are no metrics); a
// non-finite loss is reported (action "reported") and kept as the split's metric. A checkpoint
// that cannot be written stops the run with an error naming the file and the reason; the
// previous file stays intact (atomic_file.h).
TrainSummary run_training_loop(const TrainingLoop& loop, const train::RunDir& run,
                               const TrainContext& context, nlohmann::json summary);

// Part `part` (in [0, parts)) of n items, as evaluate_part takes them: the contiguous range
// [n part / parts, n (part + 1) / parts) as {begin, end}; the parts cover 0..n-1 once.
inline std::pair<int64_t, int64_t> part_range(int64_t n, int64_t part, int64_t parts) {
  return {n * part / parts, n * (part + 1) / parts};
}

// A loop with the parts every task sets the same way: `model`, `optimizer`, the config's
// schedule over `total_steps` (errors name `schema_name`), its log / eval / checkpoint frequencies,
// gradient clipping, seed, label, and the metrics of the config's task (its registry row's
// TaskInfo::metrics). The task adds the batch source, epochs and callbacks.
TrainingLoop training_loop_for(const CommonTaskConfig& config, torch::nn::Module& model,
                               torch::optim::Optimizer& optimizer, int64_t total_steps,
                               const std::string& schema_name);

// The summary fields of every run: task, mechanism, projection (resolved), seed, params.
nlohmann::json run_summary(const CommonTaskConfig& config, const torch::nn::Module& model);

// `metrics` of an evaluated checkpoint with "checkpoint" (its path), "step" (from its meta) and
// "split" (options.split) added: what a task's evaluate function returns to `kvq eval`.
nlohmann::json with_checkpoint_info(nlohmann::json metrics, const std::string& checkpoint,
                                    const EvalOptions& options);

// The checkpoint file `kvq eval` reads: best.pt for options.checkpoint == "best" (falling back to
// checkpoint.pt when the run has none), checkpoint.pt for "last". Checks options.checkpoint
// (best | last) and options.split (test | val) and that the file exists; errors name them.
std::string checkpoint_to_evaluate(const train::RunDir& run, const EvalOptions& options);

// "split loss 0.1234 acc 0.9876 ...": the numbers of `metrics` in key order, for notes and logs.
std::string describe_metrics(const std::string& split, const nlohmann::json& metrics);

}  // namespace tasks
}  // namespace kvq
