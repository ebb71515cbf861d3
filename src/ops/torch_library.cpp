// torch.ops.kvq.*: every mechanism as a PyTorch operator with autograd, for Python users:
//   torch.ops.load_library("build/libkvq_torch.so")
//   out = torch.ops.kvq.intention(q, k, v, alpha, causal=True)
// The mechanism ops are CompositeImplicitAutograd wrappers over kvq::_mechanism_forward, which has
// CPU, CUDA, Meta and Autograd kernels (ops/mechanism_op.h): eager calls run kvq's own autograd
// (the analytic backward kernels), traced calls (torch.compile, FakeTensor, opcheck) record the
// op and its backward op. The decoding ops have Meta kernels too, and no backward: they refuse
// inputs that require gradients.
#include <torch/custom_class.h>
#include <torch/library.h>

#include "kvq/functional/mesa.h"
#include "kvq/kvq.h"
#include "kvq/modules/state_dict.h"
#include "ops/mechanism_op.h"

namespace kvq {
namespace {

using at::Tensor;
using c10::optional;
using functional::AttentionFuncOptions;

const double kDefaultEps = AttentionFuncOptions().eps();

// The mechanism ops: kvq::_mechanism_forward (ops/mechanism_op.h) with one row's arguments.
Tensor softmax_op(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                  const optional<Tensor>& mask, optional<double> scale) {
  return ops::mechanism_forward("softmax", false, q, k, v, {}, {}, {}, causal, mask, scale,
                                kDefaultEps, 0.0, false, 0);
}
Tensor kv_op(const Tensor& k, const Tensor& v, bool causal, const optional<Tensor>& mask,
             optional<double> scale) {
  return ops::mechanism_forward("kv", false, {}, k, v, {}, {}, {}, causal, mask, scale,
                                kDefaultEps, 0.0, false, 0);
}
Tensor kv_pos_op(const Tensor& k, const Tensor& v, const Tensor& pos_weight,
                 const Tensor& pos_bias, bool causal, const optional<Tensor>& mask,
                 optional<double> scale) {
  return ops::mechanism_forward("kv-pos", false, {}, k, v, {}, pos_weight, pos_bias, causal, mask,
                                scale, kDefaultEps, 0.0, false, 0);
}
Tensor linear_op(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                 const optional<Tensor>& mask, double eps) {
  return ops::mechanism_forward("linear", false, q, k, v, {}, {}, {}, causal, mask, {}, eps, 0.0,
                                false, 0);
}
Tensor linear_identity_op(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                          const optional<Tensor>& mask) {
  return ops::mechanism_forward("linear-identity", false, q, k, v, {}, {}, {}, causal, mask, {},
                                kDefaultEps, 0.0, false, 0);
}
Tensor intention_op(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& alpha,
                    bool causal, const optional<Tensor>& mask) {
  return ops::mechanism_forward("intention", false, q, k, v, alpha, {}, {}, causal, mask, {},
                                kDefaultEps, 0.0, false, 0);
}
Tensor softmax_intention_op(const Tensor& q, const Tensor& k, const Tensor& v,
                            const Tensor& alpha, bool causal, const optional<Tensor>& mask,
                            optional<double> scale) {
  return ops::mechanism_forward("softmax-intention", false, q, k, v, alpha, {}, {}, causal, mask,
                                scale, kDefaultEps, 0.0, false, 0);
}
Tensor kernel_intention_op(const Tensor& q, const Tensor& k, const Tensor& v,
                           const Tensor& alpha, bool causal, const optional<Tensor>& mask,
                           optional<double> scale) {
  return ops::mechanism_forward("kernel-intention", false, q, k, v, alpha, {}, {}, causal, mask,
                                scale, kDefaultEps, 0.0, false, 0);
}
// The Mesa layer (kvq/functional/mesa.h): causal, CPU float32/float64, analytic backward through
// kvq's autograd function. Not a registry row (yet): no Meta kernel, so no torch.compile.
// Returns (o, final S_kk, final S_kv) always; kvq.functional.mesa drops the states unless asked.
std::tuple<Tensor, Tensor, Tensor> mesa_op(const Tensor& q, const Tensor& k, const Tensor& v,
                                           const Tensor& g, const Tensor& beta,
                                           const Tensor& lambda, const optional<Tensor>& initial_kk,
                                           const optional<Tensor>& initial_kv,
                                           const optional<Tensor>& mask, int64_t chunk_size) {
  auto options = functional::MesaOptions().chunk_size(chunk_size);
  if (initial_kk) options.initial_kk(*initial_kk);
  if (initial_kv) options.initial_kv(*initial_kv);
  if (mask) options.key_padding_mask(*mask);
  return functional::mesa_with_final_state(q, k, v, g, beta, lambda, options);
}
Tensor positional_encoding_2d_op(int64_t rows, int64_t cols, int64_t channels) {
  return functional::positional_encoding_2d(rows, cols, channels);
}

// Any registered mechanism by name, as MultiHeadKVQ calls it after its projections (the Python
// module's route): pos_weight / pos_bias given = the kv-pos score terms.
Tensor attention_op(const std::string& mechanism, const Tensor& q, const Tensor& k,
                    const Tensor& v, const optional<Tensor>& alpha,
                    const optional<Tensor>& pos_weight, const optional<Tensor>& pos_bias,
                    bool causal, const optional<Tensor>& mask, optional<double> scale,
                    double dropout, bool training, int64_t chunk_size) {
  return ops::mechanism_forward(mechanism, true, q, k, v, alpha, pos_weight, pos_bias, causal,
                                mask, scale, kDefaultEps, dropout, training, chunk_size);
}

// ---- Decoding (kvq/functional/decoding.h): the state in, the state out ----
// The states are plain tensors: intention (L, B) with L (B, H, d, d) the lower Cholesky factor of
// A_t = alpha I + sum k k^T and B (B, H, d, dv) = sum k v^T; linear (S, z) with
// S (B, H, d, dv) = sum phi(k) v^T and z (B, H, d) = sum phi(k). A step copies the state it is
// given, so the caller's tensors are never modified.

using StateTuple = std::tuple<Tensor, Tensor, Tensor>;

// The layout the Meta kernels promise.
StateTuple contiguous(const StateTuple& t) {
  return {std::get<0>(t).contiguous(), std::get<1>(t).contiguous(), std::get<2>(t).contiguous()};
}

// A DecodeState over copies of two state tensors: first (B, H, d, first_width) and second
// (B, H, d, ...) named in errors as the schema does.
functional::DecodeState state_of(const char* op, const char* mechanism, const char* first_name,
                                 const Tensor& first, const char* second_name, const Tensor& second,
                                 int64_t value_dim) {
  TORCH_CHECK(first.dim() == 4, op, ": ", first_name, " must be 4-D (B, H, d, ...), got ",
              first.sizes());
  const int64_t batch = first.size(0), heads = first.size(1), d = first.size(2);
  TORCH_CHECK(second.dim() >= 3 && second.size(0) == batch && second.size(1) == heads &&
                  second.size(2) == d,
              op, ": ", second_name, " must start with (B, H, d) = (", batch, ", ", heads, ", ", d,
              ") of ", first_name, " ", first.sizes(), ", got ", second.sizes());
  TORCH_CHECK(first.scalar_type() == second.scalar_type() && first.device() == second.device(), op,
              ": ", first_name, " and ", second_name, " must have one dtype and device");
  functional::DecodeState s;
  s.mechanism = mechanism;
  s.batch = batch, s.heads = heads, s.dim = d, s.value_dim = value_dim;
  return s;
}

StateTuple intention_prefill_op(const Tensor& q, const Tensor& k, const Tensor& v,
                                const Tensor& alpha) {
  auto [out, s] = functional::intention_prefill(q, k, v, alpha);
  return contiguous({out, s.factor, s.kv_sum});
}

StateTuple intention_step_op(const Tensor& factor, const Tensor& kv_sum, const Tensor& q,
                             const Tensor& k, const Tensor& v) {
  TORCH_CHECK(factor.dim() == 4 && factor.size(2) == factor.size(3),
              "kvq.intention_step: L must be (B, H, d, d), got ", factor.sizes());
  TORCH_CHECK(kv_sum.dim() == 4, "kvq.intention_step: B must be (B, H, d, dv), got ",
              kv_sum.sizes());
  auto s = state_of("kvq.intention_step", "intention", "L", factor, "B", kv_sum, kv_sum.size(3));
  s.factor = factor.clone(at::MemoryFormat::Contiguous);
  s.kv_sum = kv_sum.clone();
  auto out = functional::intention_step(s, q, k, v);
  return contiguous({out, s.factor, s.kv_sum});
}

StateTuple linear_prefill_op(const Tensor& q, const Tensor& k, const Tensor& v, double eps) {
  auto [out, s] = functional::linear_prefill(q, k, v, AttentionFuncOptions().eps(eps));
  return contiguous({out, s.kv_sum, s.key_sum});
}

StateTuple linear_step_op(const Tensor& kv_sum, const Tensor& key_sum, const Tensor& q,
                          const Tensor& k, const Tensor& v, double eps) {
  TORCH_CHECK(kv_sum.dim() == 4, "kvq.linear_step: S must be (B, H, d, dv), got ", kv_sum.sizes());
  TORCH_CHECK(key_sum.dim() == 3, "kvq.linear_step: z must be (B, H, d), got ", key_sum.sizes());
  auto s = state_of("kvq.linear_step", "linear", "S", kv_sum, "z", key_sum, kv_sum.size(3));
  s.kv_sum = kv_sum.clone();
  s.key_sum = key_sum.clone();
  auto out = functional::linear_step(s, q, k, v, AttentionFuncOptions().eps(eps));
  return contiguous({out, s.kv_sum, s.key_sum});
}

// The decoding ops' Meta kernels: the shapes of their outputs (FakeTensor, torch.compile).
StateTuple intention_prefill_meta(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& alpha) {
  ops::check_all_meta("kvq.intention_prefill", {q, k, v, alpha});
  const auto b = q.sym_size(0), h = q.sym_size(1), d = q.sym_size(3), dv = v.sym_size(3);
  return {at::empty_symint({b, h, k.sym_size(2), dv}, q.options()),
          at::empty_symint({b, h, d, d}, q.options()),
          at::empty_symint({b, h, d, dv}, q.options())};
}
StateTuple linear_prefill_meta(const Tensor& q, const Tensor& k, const Tensor& v, double) {
  ops::check_all_meta("kvq.linear_prefill", {q, k, v});
  const auto b = q.sym_size(0), h = q.sym_size(1), d = q.sym_size(3), dv = v.sym_size(3);
  return {at::empty_symint({b, h, k.sym_size(2), dv}, q.options()),
          at::empty_symint({b, h, d, dv}, q.options()), at::empty_symint({b, h, d}, q.options())};
}
StateTuple step_meta(const Tensor& first, const Tensor& second, const Tensor& q, const Tensor& v) {
  return {at::empty_symint({q.sym_size(0), q.sym_size(1), q.sym_size(2), v.sym_size(3)},
                           q.options()),
          at::empty_symint(first.sym_sizes(), first.options()),
          at::empty_symint(second.sym_sizes(), second.options())};
}
StateTuple intention_step_meta(const Tensor& factor, const Tensor& kv_sum, const Tensor& q,
                               const Tensor& k, const Tensor& v) {
  ops::check_all_meta("kvq.intention_step", {factor, kv_sum, q, k, v});
  return step_meta(factor, kv_sum, q, v);
}
StateTuple linear_step_meta(const Tensor& kv_sum, const Tensor& key_sum, const Tensor& q,
                            const Tensor& k, const Tensor& v, double) {
  ops::check_all_meta("kvq.linear_step", {kv_sum, key_sum, q, k, v});
  return step_meta(kv_sum, key_sum, q, v);
}

// The decoding ops have no backward. With grad mode on and an input that requires gradients they
// refuse, naming the op, eagerly and under tracing alike; otherwise they run below autograd.
void decoding_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                       torch::jit::Stack* stack) {
  if (at::GradMode::is_enabled()) {
    for (const auto& arg : torch::jit::last(*stack, op.schema().arguments().size())) {
      TORCH_CHECK(!(arg.isTensor() && arg.toTensor().requires_grad()), op.schema().name(),
                  ": decoding has no backward; call it under torch.no_grad() or with tensors "
                  "that do not require gradients");
    }
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  at::NoGradGuard no_grad;  // kvq's custom autograd functions look at the grad mode only
  op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
}

std::vector<std::string> mechanism_names_op() { return mechanism_names(); }

// The CPU kernels' buffer cache (kvq/functional/buffer_cache.h).
int64_t buffer_cache_bytes_op() { return functional::buffer_cache_bytes(); }
int64_t buffer_cache_limit_op() { return functional::buffer_cache_limit(); }

// (default projection, uses alpha, has a softmax, its op schema, chunk-parallel causal form) of a
// registered mechanism.
std::tuple<std::string, bool, bool, std::string, bool> mechanism_info_op(const std::string& name) {
  const auto& info = find_mechanism(name);
  return {projection_name(info.projection), info.traits.uses_alpha, info.traits.has_softmax,
          info.op, info.traits.chunked};
}

// The C++ module itself, for Python code that wants to run or exchange weights with it:
//   m = torch.classes.kvq.MultiHeadKVQ(embed_dim, num_heads, mechanism, projection, batch_first,
//                                      dropout=0.0, bias=True, alpha_init=1.0, ..., scale=None)
// the keyword options and their defaults those of kvq::nn::MultiHeadKVQOptions.
struct MultiHeadKVQHolder : torch::CustomClassHolder {
  nn::MultiHeadKVQ module;
  explicit MultiHeadKVQHolder(const nn::MultiHeadKVQOptions& options) : module(options) {}
};

c10::intrusive_ptr<MultiHeadKVQHolder> make_multi_head_kvq(
    int64_t embed_dim, int64_t num_heads, std::string mechanism, std::string projection,
    bool batch_first, double dropout, bool bias, double alpha_init, double alpha_floor,
    bool learn_alpha, int64_t pos_channels, std::string pos_map, int64_t chunk_size,
    optional<double> scale) {
  return c10::make_intrusive<MultiHeadKVQHolder>(nn::MultiHeadKVQOptions(embed_dim, num_heads)
                                                     .mechanism(mechanism)
                                                     .projection(projection)
                                                     .batch_first(batch_first)
                                                     .dropout(dropout)
                                                     .bias(bias)
                                                     .alpha_init(alpha_init)
                                                     .alpha_floor(alpha_floor)
                                                     .learn_alpha(learn_alpha)
                                                     .pos_channels(pos_channels)
                                                     .pos_map(pos_map)
                                                     .chunk_size(chunk_size)
                                                     .scale(scale));
}

}  // namespace
}  // namespace kvq

TORCH_LIBRARY(kvq, m) {
  using namespace kvq;
  m.def("softmax(Tensor q, Tensor k, Tensor v, bool causal=False, "
        "Tensor? key_padding_mask=None, float? scale=None) -> Tensor",
        &softmax_op);
  m.def("kv(Tensor k, Tensor v, bool causal=False, Tensor? key_padding_mask=None, "
        "float? scale=None) -> Tensor",
        &kv_op);
  m.def("kv_pos(Tensor k, Tensor v, Tensor pos_weight, Tensor pos_bias, bool causal=False, "
        "Tensor? key_padding_mask=None, float? scale=None) -> Tensor",
        &kv_pos_op);
  m.def("linear(Tensor q, Tensor k, Tensor v, bool causal=False, "
        "Tensor? key_padding_mask=None, float eps=1e-6) -> Tensor",
        &linear_op);
  m.def("linear_identity(Tensor q, Tensor k, Tensor v, bool causal=False, "
        "Tensor? key_padding_mask=None) -> Tensor",
        &linear_identity_op);
  m.def("intention(Tensor q, Tensor k, Tensor v, Tensor alpha, bool causal=False, "
        "Tensor? key_padding_mask=None) -> Tensor",
        &intention_op);
  m.def("softmax_intention(Tensor q, Tensor k, Tensor v, Tensor alpha, bool causal=False, "
        "Tensor? key_padding_mask=None, float? scale=None) -> Tensor",
        &softmax_intention_op);
  m.def("kernel_intention(Tensor q, Tensor k, Tensor v, Tensor alpha, bool causal=False, "
        "Tensor? key_padding_mask=None, float? scale=None) -> Tensor",
        &kernel_intention_op);
  m.def("mesa(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor lambda_, "
        "Tensor? initial_kk=None, Tensor? initial_kv=None, Tensor? key_padding_mask=None, "
        "int chunk_size=64) -> (Tensor, Tensor, Tensor)",
        &mesa_op);
  m.def("positional_encoding_2d(int rows, int cols, int channels) -> Tensor",
        &positional_encoding_2d_op);
  m.def("attention(str mechanism, Tensor q, Tensor k, Tensor v, Tensor? alpha=None, "
        "Tensor? pos_weight=None, Tensor? pos_bias=None, bool causal=False, "
        "Tensor? key_padding_mask=None, float? scale=None, float dropout=0.0, "
        "bool training=False, int chunk_size=0) -> Tensor",
        &attention_op);
  m.def("intention_prefill(Tensor q, Tensor k, Tensor v, Tensor alpha) -> (Tensor, Tensor, Tensor)");
  m.def("intention_step(Tensor L, Tensor B, Tensor q, Tensor k, Tensor v) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("linear_prefill(Tensor q, Tensor k, Tensor v, float eps=1e-6) -> (Tensor, Tensor, Tensor)");
  m.def("linear_step(Tensor S, Tensor z, Tensor q, Tensor k, Tensor v, float eps=1e-6) "
        "-> (Tensor, Tensor, Tensor)");
  ops::define_mechanism_ops(m);
  m.def("mechanism_names() -> str[]", &mechanism_names_op);
  m.def("mechanism_info(str name) -> (str, bool, bool, str, bool)", &mechanism_info_op);
  m.def("buffer_cache_bytes() -> int", &buffer_cache_bytes_op);
  m.def("buffer_cache_limit() -> int", &buffer_cache_limit_op);
  m.def("set_buffer_cache_limit(int bytes) -> ()", &functional::set_buffer_cache_limit);
  m.def("empty_buffer_cache() -> ()", &functional::empty_buffer_cache);

  using Holder = MultiHeadKVQHolder;
  const nn::MultiHeadKVQOptions defaults(1, 1);
  const auto optional_scale = [](optional<double> scale) -> c10::IValue {
    return scale ? c10::IValue(*scale) : c10::IValue();
  };
  m.class_<Holder>("MultiHeadKVQ")
      .def(torch::init(&make_multi_head_kvq), "",
           {torch::arg("embed_dim"), torch::arg("num_heads"), torch::arg("mechanism"),
            torch::arg("projection"), torch::arg("batch_first"),
            torch::arg("dropout") = defaults.dropout().value_or(0.0),
            torch::arg("bias") = defaults.bias(),
            torch::arg("alpha_init") = defaults.alpha_init(),
            torch::arg("alpha_floor") = defaults.alpha_floor(),
            torch::arg("learn_alpha") = defaults.learn_alpha(),
            torch::arg("pos_channels") = defaults.pos_channels(),
            torch::arg("pos_map") = defaults.pos_map(),
            torch::arg("chunk_size") = defaults.chunk_size(),
            torch::arg("scale") = optional_scale(defaults.scale())})
      .def("forward",
           [](const c10::intrusive_ptr<Holder>& self, const at::Tensor& query,
              const at::Tensor& key, const at::Tensor& value,
              const c10::optional<at::Tensor>& key_padding_mask, bool causal) {
             return self->module->forward(query, key, value,
                                          key_padding_mask ? *key_padding_mask : at::Tensor(),
                                          causal);
           })
      .def("train",
           [](const c10::intrusive_ptr<Holder>& self, bool on) { self->module->train(on); })
      .def("state_dict",
           [](const c10::intrusive_ptr<Holder>& self) { return nn::state_dict(*self->module); })
      .def("load_state_dict",
           [](const c10::intrusive_ptr<Holder>& self,
              const c10::Dict<std::string, at::Tensor>& state) {
             nn::load_state_dict(*self->module, state);
           })
      .def("save", [](const c10::intrusive_ptr<Holder>& self,
                      const std::string& path) { nn::save_state_dict(*self->module, path); })
      .def("load", [](const c10::intrusive_ptr<Holder>& self, const std::string& path) {
        nn::load_state_dict(*self->module, nn::read_state_dict(path));
      });
}

// The kernels of the ops above that are not CompositeImplicitAutograd: the mechanisms'
// _mechanism_forward / _mechanism_backward (ops/mechanism_op.h) and the decoding ops. kvq's code
// runs on any device, so CPU and CUDA share kernels.
namespace kvq {
namespace {
void impl_decoding(torch::Library& m) {
  m.impl("intention_prefill", TORCH_FN(intention_prefill_op));
  m.impl("intention_step", TORCH_FN(intention_step_op));
  m.impl("linear_prefill", TORCH_FN(linear_prefill_op));
  m.impl("linear_step", TORCH_FN(linear_step_op));
}
}  // namespace
}  // namespace kvq

TORCH_LIBRARY_IMPL(kvq, CPU, m) {
  kvq::impl_decoding(m);
  kvq::ops::impl_mechanism_ops_backend(m);
}
TORCH_LIBRARY_IMPL(kvq, CUDA, m) {
  kvq::impl_decoding(m);
  kvq::ops::impl_mechanism_ops_backend(m);
}
TORCH_LIBRARY_IMPL(kvq, Meta, m) {
  m.impl("intention_prefill", TORCH_FN(kvq::intention_prefill_meta));
  m.impl("intention_step", TORCH_FN(kvq::intention_step_meta));
  m.impl("linear_prefill", TORCH_FN(kvq::linear_prefill_meta));
  m.impl("linear_step", TORCH_FN(kvq::linear_step_meta));
  kvq::ops::impl_mechanism_ops_meta(m);
}
TORCH_LIBRARY_IMPL(kvq, Autograd, m) {
  for (const char* op : {"intention_prefill", "intention_step", "linear_prefill", "linear_step"}) {
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&kvq::decoding_autograd>());
  }
  kvq::ops::impl_mechanism_ops_autograd(m);
}
