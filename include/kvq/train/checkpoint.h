#pragma once
// Training checkpoints: everything needed to continue a run as if it had never stopped. A run
// trained for N steps, checkpointed after k, and continued from that checkpoint in a fresh
// process (fresh model and optimiser, load_checkpoint, N - k more steps) ends with bit-identical
// parameters, provided the trainer draws its randomness only from what is saved here: torch's
// default generators (dropout, torch::rand*) and the data-order state it puts in
// TrainingState::data (e.g. BatchSampler::state(), which holds a std::mt19937_64).
//
// One file (a LibTorch archive, the format torch::save writes) holds:
//   model      every parameter and buffer, by name (name, shape and dtype checked on load)
//   optimizer  the optimiser state (Adam/AdamW moments and step counts; Optimizer::save)
//   rng        the state of torch's default CPU generator, and of each CUDA device's default
//              generator when CUDA is available
//   meta       JSON: format version, step, epoch, data, schedule, extra, optimiser kind,
//              parameter names/shapes/dtypes, LibTorch version
// It is written atomically (atomic_file.h): a crash while saving leaves the previous checkpoint
// intact, and a stale temporary file of an interrupted save is never read.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace kvq {
namespace train {

// The trainer's counters and any JSON-representable state it needs to continue.
struct TrainingState {
  int64_t step = 0;          // optimiser updates done
  int64_t epoch = 0;         // the trainer's epoch counter
  nlohmann::json data;       // data-order state, e.g. BatchSampler::state(); null if none
  nlohmann::json schedule;   // the schedule, e.g. to_json(LrSchedule); null if none
  nlohmann::json extra;      // anything else (best validation score, ...); null if none
};

struct CheckpointLoadOptions {
  /// Restore torch's default generators (CPU, and CUDA devices present in both the checkpoint
  /// and this process). Off only for evaluation or deliberate re-randomisation. Default: true.
  TORCH_ARG(bool, restore_rng) = true;
};

// Writes `model`, `optimizer`, `state` and the current state of torch's default generators to
// `path` atomically; missing directories are created. Call it right after the step it records,
// before any further random draw. Errors name the file.
void save_checkpoint(const std::string& path, const torch::nn::Module& model,
                     const torch::optim::Optimizer& optimizer, const TrainingState& state);

// Restores a save_checkpoint file into an existing `model` and `optimizer` built the same way,
// and returns the saved state. Parameters are copied into the model's own tensors (so the
// optimiser keeps tracking them), on the model's device. Everything is checked before anything
// is changed: a file that is missing or not a kvq checkpoint, a parameter or buffer missing on
// either side or with another shape or dtype (the error names it and both shapes), or another
// optimiser kind or parameter count all fail with the file's name, leaving model and optimiser
// untouched.
TrainingState load_checkpoint(const std::string& path, torch::nn::Module& model,
                              torch::optim::Optimizer& optimizer,
                              const CheckpointLoadOptions& options = {});

// Only the parameters and buffers of a checkpoint (for evaluation), with the same checks.
void load_model_weights(const std::string& path, torch::nn::Module& model);

// The checkpoint's meta JSON (step, epoch, data, schedule, extra, optimizer, parameters, ...)
// without touching any model.
nlohmann::json read_checkpoint_meta(const std::string& path);

// The device of the model's parameters (the first one's; CPU for a model without any): where
// load_checkpoint and load_model_weights put what they read, and where the task drivers move
// each batch before the forward.
torch::Device model_device(const torch::nn::Module& model);

// "Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "LBFGS" or "unknown": what the meta records and
// load_checkpoint compares.
std::string optimizer_kind(const torch::optim::Optimizer& optimizer);

}  // namespace train
}  // namespace kvq
