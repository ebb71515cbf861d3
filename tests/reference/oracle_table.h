#pragma once
// The float64 oracle of every registered mechanism (tests/reference/oracles.h), attached to its
// registry row by name here in tests/, so that src/ never depends on the tests. The oracle,
// gradient and invariant suites run each row of kvq::mechanisms() against its entry; the registry
// coverage test fails when a row has none.
#include <torch/torch.h>

#include <functional>
#include <string>

#include "kvq/registry.h"

namespace kvq_ref {

// The mechanism on `args` (the tensors its functional form takes, kvq::MechanismArgs) with the
// default scale and eps, in float64 -> (B, H, m, dv).
using Oracle = std::function<torch::Tensor(const kvq::MechanismArgs& args, bool causal,
                                           const torch::Tensor& key_padding_mask)>;

// The oracle of the registered mechanism `name`; nullptr when the tests have none.
const Oracle* find_oracle(const std::string& name);

}  // namespace kvq_ref
