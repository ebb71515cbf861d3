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

std::vector<std::string> mechanism_names_op() { return mechanism_names(); }

// (default projection, uses alpha, has a softmax, its op schema) of a registered mechanism.
std::tuple<std::string, bool, bool, std::string> mechanism_info_op(const std::string& name) {
  const auto& info = find_mechanism(name);
  return {projection_name(info.projection), info.uses_alpha, info.has_softmax, info.op};
}

// The C++ module itself, for Python code that wants to run or exchange weights with it:
//   m = torch.classes.kvq.MultiHeadKVQ(embed_dim, num_heads, mechanism, projection, batch_first)
struct MultiHeadKVQHolder : torch::CustomClassHolder {
  nn::MultiHeadKVQ module;
  MultiHeadKVQHolder(int64_t embed_dim, int64_t num_heads, const std::string& mechanism,
                     const std::string& projection, bool batch_first)
      : module(nn::MultiHeadKVQOptions(embed_dim, num_heads)
                   .mechanism(mechanism)
                   .projection(projection)
                   .batch_first(batch_first)) {}
};

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
  m.def("mechanism_names() -> str[]", &mechanism_names_op);
  m.def("mechanism_info(str name) -> (str, bool, bool, str)", &mechanism_info_op);

  using Holder = MultiHeadKVQHolder;
  m.class_<Holder>("MultiHeadKVQ")
      .def(torch::init<int64_t, int64_t, std::string, std::string, bool>())
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
