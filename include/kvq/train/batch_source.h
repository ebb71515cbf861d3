#pragma once
// The training batches of a run as the loop hands them to a task's loss: named tensors whose rows
// (dim 0) are the batch's items, cut to this worker's share of the batch and moved to the
// device. A task names its data once (the rows a sampler indexes, or a function that draws the
// batch of a step); the loop does the indexing, sharding and moving.
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "kvq/util/sampler.h"

namespace kvq {
namespace train {

// Named tensors with the same number of rows: a batch, or the data set whose rows make one.
class Batch {
 public:
  Batch() = default;
  Batch(std::initializer_list<std::pair<std::string, torch::Tensor>> fields);
  // Adds the field `name`, or replaces it.
  Batch& set(const std::string& name, torch::Tensor tensor);
  // The field `name`; an unknown name fails naming the fields there are.
  const torch::Tensor& operator[](const std::string& name) const;
  bool empty() const { return fields_.empty(); }
  // The rows (dim 0) every field has; 0 with no field. Fields of different rows fail.
  int64_t rows() const;
  const std::vector<std::pair<std::string, torch::Tensor>>& fields() const { return fields_; }

 private:
  std::vector<std::pair<std::string, torch::Tensor>> fields_;
};

class BatchSource {
 public:
  // No data: the loss makes its own (it gets an empty Batch; one worker only).
  BatchSource() = default;
  // The rows sampler.next() picks from the fields of `data` (a fixed training set). The
  // sampler's state goes into every checkpoint.
  static BatchSource rows_of(Batch data, util::BatchSampler& sampler);
  // The batch draw(step) returns for update `step` (data drawn from the step, e.g. episodes
  // from mix_seeds(seed, step)); every worker draws the whole batch and keeps its share.
  static BatchSource drawn(std::function<Batch(int64_t step)> draw);
  // Fields the loss gets on the CPU, as they are (e.g. to augment or trim them there first);
  // the others are moved to the device.
  BatchSource& on_host(std::vector<std::string> names);

  // This worker's share of the batch of update `step` (0-based): of its B rows, rank r of W takes
  // rows [B r / W, B (r + 1) / W); B must be a multiple of W. Advances the sampler.
  Batch next(int64_t step, int64_t rank, int64_t world, const torch::Device& device);
  // The sampler of rows_of, else null.
  util::BatchSampler* sampler() const { return sampler_; }

 private:
  Batch data_;
  util::BatchSampler* sampler_ = nullptr;
  std::function<Batch(int64_t)> draw_;
  std::vector<std::string> host_fields_;
};

}  // namespace train
}  // namespace kvq
