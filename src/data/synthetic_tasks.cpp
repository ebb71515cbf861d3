#include "kvq/data/synthetic_tasks.h"

#include <random>
#include <sstream>

#include "kvq/util/sampler.h"

namespace kvq {
namespace data {
namespace {

static_assert(kSyntheticTaskNames.size() == static_cast<size_t>(SyntheticTask::Swap) + 1,
              "kSyntheticTaskNames and SyntheticTask must list the same tasks");

using util::uniform_below;

torch::Tensor draw_inputs(std::mt19937_64& engine, int64_t num_samples, int64_t length,
                          int64_t vocab_size) {
  auto inputs = torch::empty({num_samples, length}, torch::kInt64);
  int64_t* p = inputs.data_ptr<int64_t>();
  for (int64_t i = 0; i < num_samples * length; ++i) {
    p[i] = static_cast<int64_t>(uniform_below(engine, static_cast<uint64_t>(vocab_size)));
  }
  return inputs;
}

void check_options(const SyntheticTaskOptions& options, int64_t num_samples) {
  TORCH_CHECK(options.vocab_size() >= 1, "synthetic task: vocab_size must be >= 1, got ",
              options.vocab_size());
  TORCH_CHECK(options.length() >= 1, "synthetic task: length must be >= 1, got ", options.length());
  TORCH_CHECK(num_samples >= 0, "synthetic task: num_samples must be >= 0, got ", num_samples);
}

}  // namespace

std::vector<std::string> synthetic_task_names() {
  return {kSyntheticTaskNames.begin(), kSyntheticTaskNames.end()};
}

std::string synthetic_task_name(SyntheticTask task) {
  return kSyntheticTaskNames.at(static_cast<size_t>(task));
}

SyntheticTask parse_synthetic_task(const std::string& name) {
  std::ostringstream valid;
  for (size_t i = 0; i < kSyntheticTaskNames.size(); ++i) {
    if (name == kSyntheticTaskNames[i]) return static_cast<SyntheticTask>(i);
    valid << (i ? ", " : "") << kSyntheticTaskNames[i];
  }
  TORCH_CHECK(false, "unknown synthetic task '", name, "'; valid names: ", valid.str());
}

torch::Tensor synthetic_targets(SyntheticTask task, const torch::Tensor& inputs,
                                int64_t vocab_size) {
  TORCH_CHECK(inputs.dim() == 2 && inputs.scalar_type() == torch::kInt64,
              "synthetic_targets: inputs must be int64 (N, L), got ", inputs.scalar_type(), " ",
              inputs.sizes());
  TORCH_CHECK(vocab_size >= 1, "synthetic_targets: vocab_size must be >= 1, got ", vocab_size);
  if (inputs.numel() > 0) {
    TORCH_CHECK(inputs.min().item<int64_t>() >= 0 && inputs.max().item<int64_t>() < vocab_size,
                "synthetic_targets: inputs must lie in [0, ", vocab_size, ")");
  }
  const int64_t length = inputs.size(1);
  switch (task) {
    case SyntheticTask::Reverse:
      return inputs.flip({1});
    case SyntheticTask::Sort:
      return std::get<0>(inputs.sort(/*dim=*/1));
    case SyntheticTask::Copy:
      return inputs.clone();
    case SyntheticTask::Sub:
      return (vocab_size - 1) - inputs;
    case SyntheticTask::Swap: {
      const int64_t h = length / 2;
      return torch::cat({inputs.narrow(1, h, length - h), inputs.narrow(1, 0, h)}, 1);
    }
  }
  TORCH_CHECK(false, "synthetic_targets: invalid task value ", static_cast<int>(task));
}

SequencePairs make_synthetic_task(SyntheticTask task, int64_t num_samples, uint64_t seed,
                                  const SyntheticTaskOptions& options) {
  check_options(options, num_samples);
  std::mt19937_64 engine(seed);
  auto inputs = draw_inputs(engine, num_samples, options.length(), options.vocab_size());
  auto targets = synthetic_targets(task, inputs, options.vocab_size());
  return {inputs, targets};
}

SyntheticSplits make_synthetic_splits(SyntheticTask task, uint64_t seed,
                                      const SyntheticTaskOptions& options, int64_t num_train,
                                      int64_t num_val, int64_t num_test) {
  check_options(options, num_train);
  check_options(options, num_val);
  check_options(options, num_test);
  std::mt19937_64 engine(seed);
  SyntheticSplits out;
  for (auto [split, n] : {std::make_pair(&out.train, num_train), std::make_pair(&out.val, num_val),
                          std::make_pair(&out.test, num_test)}) {
    split->inputs = draw_inputs(engine, n, options.length(), options.vocab_size());
    split->targets = synthetic_targets(task, split->inputs, options.vocab_size());
  }
  return out;
}

}  // namespace data
}  // namespace kvq
