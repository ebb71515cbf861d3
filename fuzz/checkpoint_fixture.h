#pragma once
// The model, optimiser and sampler whose checkpoints the checkpoint target loads; the seed
// generator (make_seeds.cpp) saves its seeds from the same ones.
#include <torch/torch.h>

#include <memory>

#include "kvq/util/sampler.h"

namespace kvq {
namespace fuzz {

// A parameter of each kind of layout and a buffer: Linear(3, 2) and a (2) buffer.
struct FixtureNetImpl : torch::nn::Module {
  FixtureNetImpl() {
    fc = register_module("fc", torch::nn::Linear(3, 2));
    scale = register_buffer("scale", torch::ones({2}));
  }
  torch::nn::Linear fc{nullptr};
  torch::Tensor scale;
};
TORCH_MODULE(FixtureNet);

struct CheckpointFixture {
  FixtureNet model;
  std::unique_ptr<torch::optim::Adam> optimizer;
  util::BatchSampler sampler{10, 2, 0};

  // After one Adam step, so that the optimiser has state to save and restore.
  CheckpointFixture() {
    torch::manual_seed(0);
    model = FixtureNet();
    optimizer = std::make_unique<torch::optim::Adam>(model->parameters(),
                                                     torch::optim::AdamOptions(1e-3));
    optimizer->zero_grad();
    model->fc->forward(torch::ones({4, 3})).sum().backward();
    optimizer->step();
  }
};

}  // namespace fuzz
}  // namespace kvq
