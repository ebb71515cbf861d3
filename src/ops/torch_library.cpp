// torch.ops.kvq.*: every mechanism as a PyTorch operator with autograd, for Python users:
//   torch.ops.load_library("build/libkvq_torch.so")
//   out = torch.ops.kvq.intention(q, k, v, alpha, causal=True)
// Each schema is registered as a composite kernel: autograd runs through the C++ implementation
// (including intention's custom backward), on whatever device the tensors live.
#include <torch/custom_class.h>
#include <torch/library.h>

#include "kvq/kvq.h"
#include "kvq/modules/state_dict.h"

namespace kvq {
namespace {

using at::Tensor;
using c10::optional;
using functional::AttentionFuncOptions;

AttentionFuncOptions options_of(bool causal, const optional<Tensor>& key_padding_mask,
                                optional<double> scale = c10::nullopt) {
  AttentionFuncOptions options;
  options.causal(causal).scale(scale);
  if (key_padding_mask) options.key_padding_mask(*key_padding_mask);
  return options;
}

Tensor softmax_op(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                  const optional<Tensor>& mask, optional<double> scale) {
  return functional::softmax_attention(q, k, v, options_of(causal, mask, scale));
}
Tensor kv_op(const Tensor& k, const Tensor& v, bool causal, const optional<Tensor>& mask,
             optional<double> scale) {
  return functional::kv_attention(k, v, options_of(causal, mask, scale));
}
Tensor kv_pos_op(const Tensor& k, const Tensor& v, const Tensor& pos_weight,
                 const Tensor& pos_bias, bool causal, const optional<Tensor>& mask,
                 optional<double> scale) {
  return functional::kv_pos_attention(k, v, pos_weight, pos_bias, options_of(causal, mask, scale));
}
Tensor linear_op(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                 const optional<Tensor>& mask, double eps) {
  return functional::linear_attention(q, k, v, options_of(causal, mask).eps(eps));
}
Tensor linear_identity_op(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                          const optional<Tensor>& mask) {
  return functional::linear_identity_attention(q, k, v, options_of(causal, mask));
}
Tensor intention_op(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& alpha,
                    bool causal, const optional<Tensor>& mask) {
  return functional::intention(q, k, v, alpha, options_of(causal, mask));
}
Tensor softmax_intention_op(const Tensor& q, const Tensor& k, const Tensor& v,
                            const Tensor& alpha, bool causal, const optional<Tensor>& mask,
                            optional<double> scale) {
  return functional::softmax_intention(q, k, v, alpha, options_of(causal, mask, scale));
}
Tensor kernel_intention_op(const Tensor& q, const Tensor& k, const Tensor& v,
                           const Tensor& alpha, bool causal, const optional<Tensor>& mask,
                           optional<double> scale) {
  return functional::kernel_intention(q, k, v, alpha, options_of(causal, mask, scale));
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
  const auto& info = find_mechanism(mechanism);
  auto options = options_of(causal, mask, scale).chunk_size(chunk_size);
  if (info.has_softmax) options.dropout(dropout).training(training);
  TORCH_CHECK(info.uses_alpha == alpha.has_value(), "kvq.attention: mechanism '", mechanism,
              info.uses_alpha ? "' needs alpha" : "' takes no alpha");
  TORCH_CHECK(pos_weight.has_value() == pos_bias.has_value(),
              "kvq.attention: pos_weight and pos_bias go together (the kv-pos projection)");
  if (pos_weight) {
    TORCH_CHECK(info.has_softmax, "kvq.attention: pos_weight/pos_bias (kv-pos) add a term to "
                "softmax scores, and mechanism '", mechanism, "' has none");
    options = functional::with_kv_pos_terms(options, *pos_weight, *pos_bias, k.size(2),
                                            q.scalar_type());
  }
  return info.fn(q, k, v, alpha ? *alpha : Tensor(), options);
}

// ---- Decoding (kvq/functional/decoding.h): the state in, the state out ----
// The states are plain tensors: intention (L, B) with L (B, H, d, d) the lower Cholesky factor of
// A_t = alpha I + sum k k^T and B (B, H, d, dv) = sum k v^T; linear (S, z) with
// S (B, H, d, dv) = sum phi(k) v^T and z (B, H, d) = sum phi(k). A step copies the state it is
// given, so the caller's tensors are never modified.

using StateTuple = std::tuple<Tensor, Tensor, Tensor>;

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
  return {out, s.factor, s.kv_sum};
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
  return {out, s.factor, s.kv_sum};
}

StateTuple linear_prefill_op(const Tensor& q, const Tensor& k, const Tensor& v, double eps) {
  auto [out, s] = functional::linear_prefill(q, k, v, AttentionFuncOptions().eps(eps));
  return {out, s.kv_sum, s.key_sum};
}

StateTuple linear_step_op(const Tensor& kv_sum, const Tensor& key_sum, const Tensor& q,
                          const Tensor& k, const Tensor& v, double eps) {
  TORCH_CHECK(kv_sum.dim() == 4, "kvq.linear_step: S must be (B, H, d, dv), got ", kv_sum.sizes());
  TORCH_CHECK(key_sum.dim() == 3, "kvq.linear_step: z must be (B, H, d), got ", key_sum.sizes());
  auto s = state_of("kvq.linear_step", "linear", "S", kv_sum, "z", key_sum, kv_sum.size(3));
  s.kv_sum = kv_sum.clone();
  s.key_sum = key_sum.clone();
  auto out = functional::linear_step(s, q, k, v, AttentionFuncOptions().eps(eps));
  return {out, s.kv_sum, s.key_sum};
}

std::vector<std::string> mechanism_names_op() { return mechanism_names(); }

// (default projection, uses alpha, has a softmax, its op schema, chunk-parallel causal form) of a
// registered mechanism.
std::tuple<std::string, bool, bool, std::string, bool> mechanism_info_op(const std::string& name) {
  const auto& info = find_mechanism(name);
  return {projection_name(info.projection), info.uses_alpha, info.has_softmax, info.op,
          info.chunked};
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
  m.def("positional_encoding_2d(int rows, int cols, int channels) -> Tensor",
        &positional_encoding_2d_op);
  m.def("attention(str mechanism, Tensor q, Tensor k, Tensor v, Tensor? alpha=None, "
        "Tensor? pos_weight=None, Tensor? pos_bias=None, bool causal=False, "
        "Tensor? key_padding_mask=None, float? scale=None, float dropout=0.0, "
        "bool training=False, int chunk_size=0) -> Tensor",
        &attention_op);
  m.def("intention_prefill(Tensor q, Tensor k, Tensor v, Tensor alpha) -> (Tensor, Tensor, Tensor)",
        &intention_prefill_op);
  m.def(
      "intention_step(Tensor L, Tensor B, Tensor q, Tensor k, Tensor v) "
      "-> (Tensor, Tensor, Tensor)",
      &intention_step_op);
  m.def("linear_prefill(Tensor q, Tensor k, Tensor v, float eps=1e-6) -> (Tensor, Tensor, Tensor)",
        &linear_prefill_op);
  m.def(
      "linear_step(Tensor S, Tensor z, Tensor q, Tensor k, Tensor v, float eps=1e-6) "
      "-> (Tensor, Tensor, Tensor)",
      &linear_step_op);
  m.def("mechanism_names() -> str[]", &mechanism_names_op);
  m.def("mechanism_info(str name) -> (str, bool, bool, str, bool)", &mechanism_info_op);

  using Holder = MultiHeadKVQHolder;
  const nn::MultiHeadKVQOptions defaults(1, 1);
  const auto optional_scale = [](optional<double> scale) -> c10::IValue {
    return scale ? c10::IValue(*scale) : c10::IValue();
  };
  m.class_<Holder>("MultiHeadKVQ")
      .def(torch::init(&make_multi_head_kvq), "",
           {torch::arg("embed_dim"), torch::arg("num_heads"), torch::arg("mechanism"),
            torch::arg("projection"), torch::arg("batch_first"),
            torch::arg("dropout") = defaults.dropout(), torch::arg("bias") = defaults.bias(),
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
