#include "kvq/functional/decoding.h"

#include "functional/decoding_buffers.h"

namespace kvq {
namespace functional {
namespace detail {
namespace {

using torch::Tensor;

// Room for `rows` cached rows: the buffers double (copying the first `length` rows) when full.
void reserve_rows(DecodeState& s, int64_t rows) {
  if (s.keys.size(2) >= rows) return;
  const int64_t capacity = capacity_for(rows), n = s.length;
  s.keys = with_capacity(leading(s.keys, {2}, n), {2}, capacity);
  s.values = with_capacity(leading(s.values, {2}, n), {2}, capacity);
  s.key_padding_mask = with_capacity(leading(s.key_padding_mask, {1}, n), {1}, capacity);
  s.kernel_values = with_capacity(leading(s.kernel_values, {2}, n), {2}, capacity);
  if (s.mechanism == "kernel_intention") {
    s.factor = with_capacity(leading(s.factor, {2, 3}, n), {2, 3}, capacity);
  }
}

}  // namespace

using torch::Tensor;

AttentionFuncOptions prefill_options(AttentionFuncOptions o) {
  o.causal(true).dropout(0.0).training(false);
  return o;
}

AttentionFuncOptions step_options(AttentionFuncOptions o, const DecodeState& s, int64_t rows) {
  o.causal(false).dropout(0.0).training(false);
  o.key_padding_mask(s.key_padding_mask.defined() ? s.key_padding_mask.narrow(1, 0, rows)
                                                  : Tensor());
  return o;
}

// ---- Buffers of `capacity` rows ----

int64_t capacity_for(int64_t rows) {
  int64_t capacity = 16;
  while (capacity < rows) capacity *= 2;
  return capacity;
}

Tensor leading(const Tensor& x, std::initializer_list<int64_t> dims, int64_t rows) {
  if (!x.defined()) return x;
  auto out = x;
  for (auto dim : dims) out = out.narrow(dim, 0, rows);
  return out;
}

Tensor with_capacity(const Tensor& x, std::initializer_list<int64_t> dims, int64_t capacity) {
  if (!x.defined()) return x;
  auto sizes = x.sizes().vec();
  for (auto dim : dims) sizes[dim] = capacity;
  auto out = torch::zeros(sizes, x.options().requires_grad(false));
  auto block = out;
  for (auto dim : dims) block = block.narrow(dim, 0, x.size(dim));
  block.copy_(x.detach());
  return out;
}

void cache_prefix(DecodeState& s, const Tensor& k, const Tensor& v, const Tensor& mask) {
  const int64_t capacity = capacity_for(k.size(2) + 1);
  s.keys = with_capacity(k, {2}, capacity);
  s.values = with_capacity(v, {2}, capacity);
  s.key_padding_mask = with_capacity(mask, {1}, capacity);
}

// Writes row `length` of the KV cache (the length is advanced by the caller once the step is done).
void cache_row(DecodeState& s, const Tensor& k, const Tensor& v) {
  reserve_rows(s, s.length + 1);
  s.keys.narrow(2, s.length, 1).copy_(k);
  if (v.defined()) s.values.narrow(2, s.length, 1).copy_(v);
}

// ---- States and checks ----

DecodeState new_state(const char* mechanism, const Dims& dims) {
  DecodeState s;
  s.mechanism = mechanism;
  s.batch = dims.batch, s.heads = dims.heads, s.dim = dims.d, s.value_dim = dims.dv;
  s.length = dims.n;
  return s;
}

Dims check_prefill(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                   const AttentionFuncOptions& options) {
  return check_qkv(op, q, k, v, prefill_options(options));
}

// q_t, k_t (B, H, 1, d) and v_t (B, H, 1, dv) of the state's sizes, for a state that `mechanism`'s
// prefill built.
void check_step(const char* op, const char* mechanism, const DecodeState& s, const Tensor& q,
                const Tensor& k, const Tensor& v) {
  TORCH_CHECK(
      s.mechanism == mechanism, op, ": needs the state built by ", mechanism, "_prefill, got ",
      s.mechanism.empty() ? std::string("an empty state") : "one of " + s.mechanism + "_prefill");
  check_heads_tensor(op, "q", "(B, H, 1, d)", q);
  check_heads_tensor(op, "k", "(B, H, 1, d)", k);
  check_heads_tensor(op, "v", "(B, H, 1, dv)", v);
  const auto expect = [&](const char* name, const Tensor& x, int64_t width, const char* layout) {
    TORCH_CHECK(
        x.size(0) == s.batch && x.size(1) == s.heads && x.size(2) == 1 && x.size(3) == width, op,
        ": ", name, " must have shape ", layout, " = (", s.batch, ", ", s.heads, ", 1, ", width,
        ") for a state of batch size B = ", s.batch, ", H = ", s.heads, " heads, d = ", s.dim,
        ", dv = ", s.value_dim, "; got ", x.sizes());
  };
  expect("q", q, s.dim, "(B, H, 1, d)");
  expect("k", k, s.dim, "(B, H, 1, d)");
  expect("v", v, s.value_dim, "(B, H, 1, dv)");
  auto held = s.keys;  // every state holds keys, kv_sum or factor
  if (!held.defined()) held = s.kv_sum.defined() ? s.kv_sum : s.factor;
  const auto device = held.device();
  for (const auto* x : {&q, &k, &v}) {
    TORCH_CHECK(x->scalar_type() == q.scalar_type() && x->device() == device, op,
                ": q, k and v must have one dtype and be on the state's device ", device, ", got ",
                q.scalar_type(), ", ", k.scalar_type(), ", ", v.scalar_type(), " on ", q.device(),
                ", ", k.device(), ", ", v.device());
  }
}

Tensor empty_output(const Tensor& q, const Dims& dims) {
  return q.new_empty({dims.batch, dims.heads, 0, dims.dv});
}

// A state named `mechanism` holding the prefix's keys and values; the prefix's causal output.
std::pair<Tensor, DecodeState> kv_cache_prefill(const char* op, const char* mechanism,
                                                const MixFn& mix, const Tensor& q, const Tensor& k,
                                                const Tensor& v,
                                                const AttentionFuncOptions& options) {
  const auto dims = check_prefill(op, q, k, v, options);
  auto s = new_state(mechanism, dims);
  auto out = dims.n == 0 ? empty_output(q, dims) : mix(q, k, v, prefill_options(options));
  cache_prefix(s, k, v, options.key_padding_mask());
  return {out, std::move(s)};
}

Tensor kv_cache_step(const char* op, const char* mechanism, const MixFn& mix, DecodeState& s,
                     const Tensor& q, const Tensor& k, const Tensor& v,
                     const AttentionFuncOptions& options) {
  check_step(op, mechanism, s, q, k, v);
  const auto dtype = s.keys.scalar_type();
  cache_row(s, k.to(dtype), v.to(dtype));
  const int64_t rows = s.length + 1;
  auto out = mix(q.to(dtype), leading(s.keys, {2}, rows), leading(s.values, {2}, rows),
                 step_options(options, s, rows));
  s.length = rows;
  return out.to(q.scalar_type());
}

}  // namespace detail

using torch::Tensor;
using namespace detail;

Tensor DecodeState::cached_keys() const { return leading(keys, {2}, length); }
Tensor DecodeState::cached_values() const { return leading(values, {2}, length); }
Tensor DecodeState::cached_key_padding_mask() const {
  return leading(key_padding_mask, {1}, length);
}

std::pair<Tensor, DecodeState> cached_prefill(const MixFn& mix, const Tensor& q, const Tensor& k,
                                              const Tensor& v, const AttentionFuncOptions& options) {
  return kv_cache_prefill("cached_prefill", "cached", mix, q, k, v, options);
}

Tensor cached_step(const MixFn& mix, DecodeState& s, const Tensor& q, const Tensor& k,
                   const Tensor& v, const AttentionFuncOptions& options) {
  return kv_cache_step("cached_step", "cached", mix, s, q, k, v, options);
}

}  // namespace functional
}  // namespace kvq
