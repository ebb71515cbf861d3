// Training checkpoints (checkpoint.pt, best.pt): kvq::train::read_checkpoint_meta,
// load_model_weights (kvq eval) and load_checkpoint (kvq train --resume) on the input as a file,
// into a fixed small model and Adam optimiser, then the data-order state it holds into a
// BatchSampler, as the training loop does. The file is a LibTorch archive (a zip of pickles and
// tensor records), so most of the code this reaches is LibTorch's reader; kvq must turn every
// failure into a one-line error naming the file.
#include "checkpoint_fixture.h"
#include "fuzz_target.h"
#include "kvq/train/checkpoint.h"

KVQ_FUZZ_TARGET(checkpoint) {
  static kvq::fuzz::CheckpointFixture fixture;
  const std::string path = kvq::fuzz::write_scratch("checkpoint.pt", data, size);
  try {
    const auto meta = kvq::train::read_checkpoint_meta(path);
    kvq::fuzz::expect(meta.is_object(), "read_checkpoint_meta returned a non-object");
  } catch (const c10::Error& e) {
    kvq::fuzz::expect_names(e, path);
    return 0;  // the loaders open the file the same way
  }
  try {
    kvq::train::load_model_weights(path, *fixture.model);
  } catch (const c10::Error& e) {
    kvq::fuzz::expect_names(e, path);
  }
  kvq::train::TrainingState state;
  try {
    state = kvq::train::load_checkpoint(path, *fixture.model, *fixture.optimizer);
  } catch (const c10::Error& e) {
    kvq::fuzz::expect_names(e, path);
    return 0;
  }
  for (const auto& p : fixture.model->parameters()) {
    kvq::fuzz::expect(p.defined() && p.dtype() == torch::kFloat32,
                      "load_checkpoint left a parameter undefined or of another dtype");
  }
  kvq::fuzz::expect(fixture.model->fc->weight.sizes() == torch::IntArrayRef({2, 3}),
                    "load_checkpoint changed a parameter's shape");
  if (!state.data.is_null()) {
    try {
      fixture.sampler.load_state(state.data);
    } catch (const c10::Error& e) {
      kvq::fuzz::expect_names(e, "BatchSampler::load_state");
    }
  }
  return 0;
}
