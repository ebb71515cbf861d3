#pragma once
// The one operator under every mechanism op of torch.ops.kvq (docs/python.md, "Ops under
// torch.compile"):
//
//   kvq::_mechanism_forward(str mechanism, bool inner, Tensor? q, Tensor k, Tensor v,
//       Tensor? alpha, Tensor? pos_weight, Tensor? pos_bias, bool causal,
//       Tensor? key_padding_mask, float? scale, float eps, float dropout, bool training,
//       int chunk_size) -> Tensor                                       (B, H, m, dv)
//   kvq::_mechanism_backward(Tensor grad_out, <the same inputs but dropout and training>)
//       -> (Tensor dq, Tensor dk, Tensor dv, Tensor dalpha, Tensor dpos_weight, Tensor dpos_bias)
//
// `inner` false runs the registry row's public functional form (MechanismInfo::call: kvq.softmax,
// kvq.kv, ...), true its inner mechanism as MultiHeadKVQ calls it after the projections
// (MechanismInfo::fn, kv-pos terms from pos_weight / pos_bias: kvq.attention). The public ops are
// CompositeImplicitAutograd wrappers over _mechanism_forward, which has CPU and CUDA kernels (kvq's
// functional code), a Meta kernel (shapes only: FakeTensor, torch.compile) and an Autograd kernel:
// - in eager mode it calls kvq's functional code directly, whose own autograd (the analytic
//   backward kernels) records the graph;
// - under tracing (FakeTensor, a TorchDispatchMode, functionalization, meta tensors) it records
//   _mechanism_forward and, for the backward, _mechanism_backward, which recomputes the forward
//   with kvq's autograd and differentiates it: the same gradients, for one more forward.
// Absent gradients (an input that is None) are returned as empty tensors.
#include <torch/library.h>

namespace kvq {
namespace ops {

// The schemas above, the kernels and the Autograd kernel, into `library` (TORCH_LIBRARY(kvq)).
void define_mechanism_ops(torch::Library& library);
// CPU and CUDA share kernels: kvq's functional code runs on any device.
void impl_mechanism_ops_backend(torch::Library& library);
void impl_mechanism_ops_meta(torch::Library& library);
void impl_mechanism_ops_autograd(torch::Library& library);

// Calls kvq::_mechanism_forward through the dispatcher (what every public mechanism op does).
at::Tensor mechanism_forward(const std::string& mechanism, bool inner,
                             const c10::optional<at::Tensor>& q, const at::Tensor& k,
                             const at::Tensor& v, const c10::optional<at::Tensor>& alpha,
                             const c10::optional<at::Tensor>& pos_weight,
                             const c10::optional<at::Tensor>& pos_bias, bool causal,
                             const c10::optional<at::Tensor>& key_padding_mask,
                             c10::optional<double> scale, double eps, double dropout,
                             bool training, int64_t chunk_size);

// True when the call is being traced rather than run: an input is a Python tensor subclass
// (FakeTensor, FunctionalTensor) or functionalized, every input is on the meta device, or a
// TorchDispatchMode is active. Ops then record themselves instead of running kvq's code.
bool is_tracing(at::TensorList tensors);

// For Meta kernels: the dispatcher sends a call with any meta tensor to them, so a meta tensor
// among real ones is refused here as kvq's functions refuse other device mixes.
void check_all_meta(const char* op, at::TensorList tensors);

}  // namespace ops
}  // namespace kvq
