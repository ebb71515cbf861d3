#pragma once
// State dicts that PyTorch reads and writes: the parameters and buffers of a LibTorch module under
// the dotted names Python's Module.state_dict() uses ("q_proj.weight", "alpha_raw", ...), saved
// with torch::pickle_save, which Python's torch.load reads; torch.save(dict(...)) from Python
// loads back. This is how kvq::nn::MultiHeadKVQ and the Python kvq.nn.MultiHeadKVQ exchange
// weights.
#include <torch/torch.h>

#include <string>

namespace kvq {
namespace nn {

// Every parameter and buffer of `module` (recursively), detached, by dotted name.
c10::Dict<std::string, torch::Tensor> state_dict(const torch::nn::Module& module);

// Copies `state` into the module's parameters and buffers. Strict, as PyTorch's default: a missing
// or unexpected name, or a shape mismatch, throws naming it.
void load_state_dict(torch::nn::Module& module, const c10::Dict<std::string, torch::Tensor>& state);

// state_dict(module) in torch.save's format (Python: torch.load(path) gives the dict, with the
// default weights_only=True of PyTorch >= 2.6).
void save_state_dict(const torch::nn::Module& module, const std::string& path);

// Reads a dict of tensors saved by save_state_dict or by Python's torch.save(dict, path).
c10::Dict<std::string, torch::Tensor> read_state_dict(const std::string& path);

}  // namespace nn
}  // namespace kvq
