#include "ops/mechanism_op.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <tuple>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/autograd.h>

#include "kvq/kvq.h"

namespace kvq {
namespace ops {
namespace {

using at::Tensor;
using c10::optional;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// The non-tensor arguments of _mechanism_forward, and the mask.
struct CallOptions {
  std::string mechanism;
  bool inner = false;
  bool causal = false;
  optional<Tensor> key_padding_mask;
  optional<double> scale;
  double eps = 1e-6;
  double dropout = 0.0;
  bool training = false;
  int64_t chunk_size = 0;
};

// The differentiable inputs; an undefined tensor is an input the op was not given.
struct Inputs {
  Tensor q, k, v, alpha, pos_weight, pos_bias;
  std::vector<Tensor> list() const { return {q, k, v, alpha, pos_weight, pos_bias}; }
};

Tensor value_or_undefined(const optional<Tensor>& t) { return t ? *t : Tensor(); }
optional<Tensor> optional_of(const Tensor& t) {
  return t.defined() ? optional<Tensor>(t) : optional<Tensor>();
}
Inputs inputs_of(const optional<Tensor>& q, const Tensor& k, const Tensor& v,
                 const optional<Tensor>& alpha, const optional<Tensor>& pos_weight,
                 const optional<Tensor>& pos_bias) {
  return {value_or_undefined(q),          k, v, value_or_undefined(alpha),
          value_or_undefined(pos_weight), value_or_undefined(pos_bias)};
}

// kvq's functional code: the registry row's public form, or its inner mechanism (kvq.attention).
Tensor run(const CallOptions& c, const Inputs& in) {
  const auto& info = find_mechanism(c.mechanism);
  functional::AttentionFuncOptions options;
  options.causal(c.causal).scale(c.scale).eps(c.eps).chunk_size(c.chunk_size);
  if (c.key_padding_mask) options.key_padding_mask(*c.key_padding_mask);
  if (info.traits.has_softmax) options.dropout(c.dropout).training(c.training);
  if (!c.inner) {
    return info.call(MechanismArgs{in.q, in.k, in.v, in.alpha, in.pos_weight, in.pos_bias},
                     options);
  }
  TORCH_CHECK(in.q.defined(), "kvq.attention: q is required");
  TORCH_CHECK(info.traits.uses_alpha == in.alpha.defined(), "kvq.attention: mechanism '", c.mechanism,
              info.traits.uses_alpha ? "' needs alpha" : "' takes no alpha");
  TORCH_CHECK(in.pos_weight.defined() == in.pos_bias.defined(),
              "kvq.attention: pos_weight and pos_bias go together (the kv-pos projection)");
  if (in.pos_weight.defined()) {
    TORCH_CHECK(info.traits.has_softmax, "kvq.attention: pos_weight/pos_bias (kv-pos) add a term to "
                "softmax scores, and mechanism '", c.mechanism, "' has none");
    options = functional::with_kv_pos_terms(options, in.pos_weight, in.pos_bias, in.k.size(2),
                                            in.q.scalar_type());
  }
  return info.fn(in.q, in.k, in.v, in.alpha, options);
}

// Outputs in the layout the Meta kernels promise: contiguous.
Tensor contiguous_output(const Tensor& t) { return t.contiguous(); }

Tensor forward_kernel(const std::string& mechanism, bool inner, const optional<Tensor>& q,
                      const Tensor& k, const Tensor& v, const optional<Tensor>& alpha,
                      const optional<Tensor>& pos_weight, const optional<Tensor>& pos_bias,
                      bool causal, const optional<Tensor>& key_padding_mask,
                      optional<double> scale, double eps, double dropout, bool training,
                      int64_t chunk_size) {
  const CallOptions c{mechanism, inner,   causal,   key_padding_mask, scale,
                      eps,       dropout, training, chunk_size};
  return contiguous_output(run(c, inputs_of(q, k, v, alpha, pos_weight, pos_bias)));
}

// dq, dk, dv, dalpha, dpos_weight, dpos_bias: the schema's six results, in Inputs' order.
using Gradients = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
Gradients to_tuple(const std::vector<Tensor>& g) { return {g[0], g[1], g[2], g[3], g[4], g[5]}; }
std::vector<Tensor> to_list(const Gradients& g) {
  return std::apply([](const auto&... t) { return std::vector<Tensor>{t...}; }, g);
}

// The backward by recomputation: kvq's forward with its own autograd, differentiated at grad_out.
Gradients backward_kernel(const Tensor& grad_out, const std::string& mechanism, bool inner,
                          const optional<Tensor>& q, const Tensor& k, const Tensor& v,
                          const optional<Tensor>& alpha, const optional<Tensor>& pos_weight,
                          const optional<Tensor>& pos_bias, bool causal,
                          const optional<Tensor>& key_padding_mask, optional<double> scale,
                          double eps, int64_t chunk_size) {
  // The dispatcher reached this kernel below autograd; the recomputation needs it back.
  c10::impl::LocalDispatchKeySet keys = c10::impl::tls_local_dispatch_key_set();
  c10::impl::ForceDispatchKeyGuard with_autograd(
      keys.included_, keys.excluded_ - c10::autograd_dispatch_keyset_with_ADInplaceOrView);
  at::AutoGradMode grad_mode(true);

  const Inputs given = inputs_of(q, k, v, alpha, pos_weight, pos_bias);
  std::vector<Tensor> leaves;
  Inputs in;
  auto leaf = [&](const Tensor& t) {
    if (!t.defined()) return Tensor();
    leaves.push_back(t.detach().requires_grad_(true));
    return leaves.back();
  };
  in.q = leaf(given.q), in.k = leaf(given.k), in.v = leaf(given.v);
  in.alpha = leaf(given.alpha), in.pos_weight = leaf(given.pos_weight);
  in.pos_bias = leaf(given.pos_bias);
  const CallOptions c{mechanism, inner, causal, key_padding_mask, scale, eps, 0.0, false,
                      chunk_size};
  const Tensor out = run(c, in);
  const auto grads = torch::autograd::grad({out}, leaves, {grad_out}, /*retain_graph=*/false,
                                           /*create_graph=*/false, /*allow_unused=*/true);
  std::vector<Tensor> result;
  size_t next = 0;
  for (const auto& t : given.list()) {
    if (!t.defined()) {
      result.push_back(at::empty({0}, k.options()));
      continue;
    }
    const Tensor& g = grads[next++];
    result.push_back(g.defined() ? contiguous_output(g)
                                 : at::zeros_like(t, at::MemoryFormat::Contiguous));
  }
  return to_tuple(result);
}

// ---- Meta: shapes only ----

Tensor forward_meta(const std::string&, bool, const optional<Tensor>& q, const Tensor& k,
                    const Tensor& v, const optional<Tensor>&, const optional<Tensor>&,
                    const optional<Tensor>&, bool, const optional<Tensor>&, optional<double>,
                    double, double, bool, int64_t) {
  const Tensor& queries = q ? *q : k;
  check_all_meta("kvq", {queries, k, v});
  TORCH_CHECK(queries.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "kvq: q, k and v must be 4-D (B, H, T, d), got q ", queries.sym_sizes(), ", k ",
              k.sym_sizes(), ", v ", v.sym_sizes());
  return at::empty_symint({queries.sym_size(0), queries.sym_size(1), queries.sym_size(2),
                           v.sym_size(3)},
                          queries.options());
}

Tensor empty_like_contiguous(const Tensor& t) {
  return at::empty_symint(t.sym_sizes(), t.options());
}

Gradients backward_meta(const Tensor&, const std::string&, bool, const optional<Tensor>& q,
                        const Tensor& k, const Tensor& v, const optional<Tensor>& alpha,
                        const optional<Tensor>& pos_weight, const optional<Tensor>& pos_bias,
                        bool, const optional<Tensor>&, optional<double>, double, int64_t) {
  auto grad_or_empty = [&](const optional<Tensor>& t) {
    return t ? empty_like_contiguous(*t) : at::empty({0}, k.options());
  };
  return {grad_or_empty(q),     empty_like_contiguous(k),   empty_like_contiguous(v),
          grad_or_empty(alpha), grad_or_empty(pos_weight), grad_or_empty(pos_bias)};
}

// ---- Autograd ----

const auto& forward_handle() {
  static const auto handle = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("kvq::_mechanism_forward", "")
                                 .typed<decltype(forward_kernel)>();
  return handle;
}
const auto& backward_handle() {
  static const auto handle = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("kvq::_mechanism_backward", "")
                                 .typed<decltype(backward_kernel)>();
  return handle;
}

// Records _mechanism_forward and, as its backward, _mechanism_backward (the traced path).
struct MechanismFunction : public torch::autograd::Function<MechanismFunction> {
  // The optional inputs stay optionals: autograd records no input for an absent one.
  static Tensor forward(AutogradContext* ctx, const optional<Tensor>& q, const Tensor& k,
                        const Tensor& v, const optional<Tensor>& alpha,
                        const optional<Tensor>& pos_weight, const optional<Tensor>& pos_bias,
                        const CallOptions& c) {
    TORCH_CHECK(!(c.training && c.dropout > 0), "kvq: mechanism '", c.mechanism,
                "' with attention dropout ", c.dropout, " in training cannot be traced (its "
                "backward would recompute the forward with another dropout mask); trace it with "
                "dropout=0 or in eval mode, or run it eagerly");
    ctx->save_for_backward({value_or_undefined(q), k, v, value_or_undefined(alpha),
                            value_or_undefined(pos_weight), value_or_undefined(pos_bias)});
    ctx->saved_data["mechanism"] = c.mechanism;
    ctx->saved_data["inner"] = c.inner;
    ctx->saved_data["causal"] = c.causal;
    ctx->saved_data["key_padding_mask"] = c.key_padding_mask;
    ctx->saved_data["scale"] = c.scale;
    ctx->saved_data["eps"] = c.eps;
    ctx->saved_data["chunk_size"] = c.chunk_size;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return forward_handle().call(c.mechanism, c.inner, q, k, v, alpha, pos_weight, pos_bias,
                                 c.causal, c.key_padding_mask, c.scale, c.eps, c.dropout,
                                 c.training, c.chunk_size);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    tensor_list result(7);  // q, k, v, alpha, pos_weight, pos_bias, the options
    if (!grad_outputs[0].defined()) return result;
    const auto& d = ctx->saved_data;
    const auto grads = backward_handle().call(
        grad_outputs[0], d.at("mechanism").toStringRef(), d.at("inner").toBool(),
        optional_of(saved[0]), saved[1], saved[2], optional_of(saved[3]), optional_of(saved[4]),
        optional_of(saved[5]), d.at("causal").toBool(),
        d.at("key_padding_mask").toOptional<Tensor>(), d.at("scale").toOptional<double>(),
        d.at("eps").toDouble(), d.at("chunk_size").toInt());
    const auto g = to_list(grads);
    for (size_t i = 0; i < g.size(); ++i) {
      if (saved[i].defined()) result[i] = g[i];
    }
    return result;
  }
};

Tensor forward_autograd(const std::string& mechanism, bool inner, const optional<Tensor>& q,
                        const Tensor& k, const Tensor& v, const optional<Tensor>& alpha,
                        const optional<Tensor>& pos_weight, const optional<Tensor>& pos_bias,
                        bool causal, const optional<Tensor>& key_padding_mask,
                        optional<double> scale, double eps, double dropout, bool training,
                        int64_t chunk_size) {
  auto tensors = inputs_of(q, k, v, alpha, pos_weight, pos_bias).list();
  if (key_padding_mask) tensors.push_back(*key_padding_mask);
  if (!is_tracing(tensors)) {  // kvq's own autograd records the analytic backward
    return forward_kernel(mechanism, inner, q, k, v, alpha, pos_weight, pos_bias, causal,
                          key_padding_mask, scale, eps, dropout, training, chunk_size);
  }
  const CallOptions c{mechanism, inner,   causal,   key_padding_mask, scale,
                      eps,       dropout, training, chunk_size};
  return MechanismFunction::apply(q, k, v, alpha, pos_weight, pos_bias, c);
}

}  // namespace

bool is_tracing(at::TensorList tensors) {
  if (c10::impl::TorchDispatchModeTLS::stack_len() > 0) return true;
  const c10::DispatchKeySet traced({c10::DispatchKey::Python, c10::DispatchKey::Functionalize});
  bool all_meta = true;
  for (const auto& t : tensors) {
    if (!t.defined()) continue;
    if (t.key_set().has_any(traced)) return true;
    all_meta = all_meta && t.is_meta();
  }
  return all_meta;  // meta tensors get shapes; a meta tensor among others is refused by kvq
}

void check_all_meta(const char* op, at::TensorList tensors) {
  for (const auto& t : tensors) {
    TORCH_CHECK(t.is_meta(), op, ": all tensors must be on one device; got a meta tensor beside "
                "one on ", t.device());
  }
}

Tensor mechanism_forward(const std::string& mechanism, bool inner, const optional<Tensor>& q,
                         const Tensor& k, const Tensor& v, const optional<Tensor>& alpha,
                         const optional<Tensor>& pos_weight, const optional<Tensor>& pos_bias,
                         bool causal, const optional<Tensor>& key_padding_mask,
                         optional<double> scale, double eps, double dropout, bool training,
                         int64_t chunk_size) {
  return forward_handle().call(mechanism, inner, q, k, v, alpha, pos_weight, pos_bias, causal,
                               key_padding_mask, scale, eps, dropout, training, chunk_size);
}

void define_mechanism_ops(torch::Library& m) {
  m.def("_mechanism_forward(str mechanism, bool inner, Tensor? q, Tensor k, Tensor v, "
        "Tensor? alpha, Tensor? pos_weight, Tensor? pos_bias, bool causal, "
        "Tensor? key_padding_mask, float? scale, float eps, float dropout, bool training, "
        "int chunk_size) -> Tensor");
  m.def("_mechanism_backward(Tensor grad_out, str mechanism, bool inner, Tensor? q, Tensor k, "
        "Tensor v, Tensor? alpha, Tensor? pos_weight, Tensor? pos_bias, bool causal, "
        "Tensor? key_padding_mask, float? scale, float eps, int chunk_size) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

void impl_mechanism_ops_backend(torch::Library& m) {
  m.impl("_mechanism_forward", TORCH_FN(forward_kernel));
  m.impl("_mechanism_backward", TORCH_FN(backward_kernel));
}
void impl_mechanism_ops_meta(torch::Library& m) {
  m.impl("_mechanism_forward", TORCH_FN(forward_meta));
  m.impl("_mechanism_backward", TORCH_FN(backward_meta));
}
void impl_mechanism_ops_autograd(torch::Library& m) {
  m.impl("_mechanism_forward", TORCH_FN(forward_autograd));
}

}  // namespace ops
}  // namespace kvq
