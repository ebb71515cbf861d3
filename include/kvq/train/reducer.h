#pragma once
// What the training loop exchanges between the workers of a run: parameters and the checkpoint
// from rank 0 at the start, each update's gradients and statistics, the evaluation metrics and
// the fault flags. One process uses LocalReducer (nothing to exchange); a data-parallel group
// (train::Distributed) uses DataParallelReducer, so the loop reads the same for both.
#include <torch/torch.h>

#include <c10/util/Optional.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>

#include "kvq/train/checkpoint.h"
#include "kvq/train/distributed.h"
#include "kvq/train/faults.h"
#include "kvq/train/run_dir.h"

namespace kvq {
namespace train {

// One update's numbers: this worker's before the reduction, the whole batch's after it.
struct UpdateStats {
  double loss = 0;       // mean over `items`
  int64_t items = 0;     // tokens / samples / targets
  int64_t correct = -1;  // right predictions among `items`; -1 = no accuracy
};

class Reducer {
 public:
  virtual ~Reducer() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t world_size() const = 0;
  // Rank 0 writes the run's files and shows the progress.
  bool is_main() const { return rank() == 0; }

  // Rank 0's parameters and buffers of `model` on every worker (the start of a run).
  virtual void broadcast_parameters(torch::nn::Module& model) = 0;
  // Rank 0's `text` on every worker; `what` names it in errors.
  virtual std::string broadcast_string(const std::string& text, const std::string& what) = 0;
  // Loads the run's checkpoint.pt into `model` and `optimizer` on every worker and returns its
  // state, or returns nothing when the run has none. In a group rank 0 reads the file and
  // broadcasts its bytes, so the others need not see the run directory (another machine).
  virtual c10::optional<TrainingState> load_checkpoint(const RunDir& run, torch::nn::Module& model,
                                                       torch::optim::Optimizer& optimizer) = 0;

  // Combines this worker's update (its `stats`, gradients and `fault`) with the others'. Returns
  // the group's fault: this worker's own, or the first faulty rank's, named in `where`. Without
  // one, the gradients become the item-weighted mean over the workers (the gradient of the whole
  // batch's mean loss) and `stats` the whole batch's.
  virtual c10::optional<Fault> reduce_update(torch::nn::Module& model, UpdateStats& stats,
                                             c10::optional<Fault> fault) = 0;
  // The metrics of `split` on every worker, from this worker's `metrics` or its evaluation's
  // `fault` (a failed factorisation). `sharded`: `metrics` are this worker's part of the split (every number a mean over
  // the items counted by `count_key`, except that count), summed into the whole split's with
  // means weighted by the counts; otherwise rank 0's metrics are taken. Returns the group's
  // fault: a failed part is a fault of all; in the unsharded case, rank 0's.
  virtual c10::optional<Fault> reduce_evaluation(const std::string& split,
                                                 nlohmann::json& metrics,
                                                 c10::optional<Fault> fault, bool sharded,
                                                 const std::string& count_key) = 0;
  // Wall seconds in the update's collectives (waits for the slowest worker included).
  virtual double comm_seconds() const = 0;
};

// One process: every reduction is the identity and nothing is sent.
class LocalReducer : public Reducer {
 public:
  int64_t rank() const override { return 0; }
  int64_t world_size() const override { return 1; }
  void broadcast_parameters(torch::nn::Module&) override {}
  std::string broadcast_string(const std::string& text, const std::string&) override {
    return text;
  }
  c10::optional<TrainingState> load_checkpoint(const RunDir& run, torch::nn::Module& model,
                                               torch::optim::Optimizer& optimizer) override;
  c10::optional<Fault> reduce_update(torch::nn::Module&, UpdateStats&,
                                     c10::optional<Fault> fault) override {
    return fault;
  }
  c10::optional<Fault> reduce_evaluation(const std::string&, nlohmann::json&,
                                         c10::optional<Fault> fault, bool,
                                         const std::string&) override {
    return fault;
  }
  double comm_seconds() const override { return 0; }
};

// The workers of `dist`: collectives on the group's device.
class DataParallelReducer : public Reducer {
 public:
  explicit DataParallelReducer(std::shared_ptr<Distributed> dist);
  int64_t rank() const override { return dist_->rank(); }
  int64_t world_size() const override { return dist_->world_size(); }
  void broadcast_parameters(torch::nn::Module& model) override;
  std::string broadcast_string(const std::string& text, const std::string& what) override;
  c10::optional<TrainingState> load_checkpoint(const RunDir& run, torch::nn::Module& model,
                                               torch::optim::Optimizer& optimizer) override;
  c10::optional<Fault> reduce_update(torch::nn::Module& model, UpdateStats& stats,
                                     c10::optional<Fault> fault) override;
  c10::optional<Fault> reduce_evaluation(const std::string& split, nlohmann::json& metrics,
                                         c10::optional<Fault> fault, bool sharded,
                                         const std::string& count_key) override;
  double comm_seconds() const override { return comm_seconds_; }

 private:
  // Sums a float64 vector over the workers (moved to the group's device and back).
  torch::Tensor sum_over_workers(torch::Tensor values, const std::string& what);
  c10::optional<Fault> combine_parts(const std::string& split, nlohmann::json& part,
                                     const c10::optional<Fault>& fault,
                                     const std::string& count_key);

  std::shared_ptr<Distributed> dist_;
  double comm_seconds_ = 0;
};

// LocalReducer for a null `dist`, else DataParallelReducer.
std::unique_ptr<Reducer> make_reducer(std::shared_ptr<Distributed> dist);

}  // namespace train
}  // namespace kvq
