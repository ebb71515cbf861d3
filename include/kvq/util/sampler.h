#pragma once
// The data order of epoch-based training: mini-batches of item indices, reshuffled every epoch
// from the sampler's own std::mt19937_64, with a state small enough for a checkpoint (the
// engine's state at the start of the current epoch and the position in it). Restoring that
// state reproduces the rest of the run's order exactly, mid-epoch included. The shuffle is
// Fisher-Yates with draws by rejection sampling on the raw 64-bit output (no
// std::uniform_int_distribution, whose algorithm the standard leaves open), so a seed gives the
// same order with every compiler.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace kvq {
namespace util {

// The textual state of an engine (operator<<), and an engine restored from it. Errors name the
// caller and the problem.
std::string rng_state(const std::mt19937_64& engine);
std::mt19937_64 rng_from_state(const std::string& state, const std::string& who);

// A uniform draw in [0, n), n >= 1, unbiased and portable (rejection on the raw output).
uint64_t uniform_below(std::mt19937_64& engine, uint64_t n);

// A uniformly random permutation of 0..n-1 (int64 (n)), drawn from `engine`.
torch::Tensor random_permutation(std::mt19937_64& engine, int64_t n);

struct BatchSamplerOptions {
  /// Reshuffle every epoch; false gives 0..N-1 in order. Default: true.
  TORCH_ARG(bool, shuffle) = true;
  /// Drop the last, incomplete batch of an epoch (as the paper's loaders do). Default: true.
  TORCH_ARG(bool, drop_last) = true;
};

class BatchSampler {
 public:
  // Batches of `batch_size` indices over `num_items` items, the order drawn from
  // std::mt19937_64(seed). Needs at least one batch per epoch.
  BatchSampler(int64_t num_items, int64_t batch_size, uint64_t seed,
               BatchSamplerOptions options = {});

  // The indices of the next batch, int64 (batch_size) (the last batch of an epoch may be shorter
  // without drop_last). The first call of an epoch draws that epoch's permutation.
  torch::Tensor next();

  int64_t num_items() const { return num_items_; }
  int64_t batch_size() const { return batch_size_; }
  int64_t batches_per_epoch() const;
  // Completed epochs, and batches taken in the current one (in [0, batches_per_epoch())).
  int64_t epoch() const { return epoch_; }
  int64_t batch_in_epoch() const { return batch_; }

  // {"num_items", "batch_size", "shuffle", "drop_last", "epoch", "batch", "rng"}: "rng" is the
  // engine state from which the current epoch's permutation is (or will be) drawn.
  nlohmann::json state() const;
  // Restores a state() of a sampler over the same items and batch size (checked: a mismatch
  // names the field and both values). The following next() calls continue that sampler's order.
  void load_state(const nlohmann::json& state);

 private:
  int64_t num_items_, batch_size_;
  BatchSamplerOptions options_;
  std::mt19937_64 rng_;              // draws the permutations
  std::mt19937_64 epoch_start_rng_;  // rng_ before this epoch's permutation was drawn
  torch::Tensor order_;              // this epoch's permutation; undefined until drawn
  int64_t epoch_ = 0, batch_ = 0;
};

}  // namespace util
}  // namespace kvq
