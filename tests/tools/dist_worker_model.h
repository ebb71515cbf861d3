// The model kvq_dist_worker trains (tests/tools/dist_worker.cpp), also built by
// tests/train/test_distributed.cpp to read the workers' checkpoints.
#pragma once

#include "kvq/models/sequence_tagger.h"

namespace kvq {
namespace test_tools {

// A one-layer softmax SequenceTagger over the sort task's 8 tokens (d_model 16, 2 heads, no
// dropout), in `dtype`. Parameters from the current torch::manual_seed.
inline models::SequenceTagger dist_worker_model(torch::Dtype dtype) {
  models::SequenceTagger model(
      models::SequenceTaggerOptions(8, 8)
          .block(
              models::TransformerBlockOptions(16, 2).ffn_dim(32).dropout(0.0).mechanism("softmax"))
          .num_layers(1));
  model->to(dtype);
  return model;
}

}  // namespace test_tools
}  // namespace kvq
