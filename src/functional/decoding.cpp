#include "kvq/functional/decoding.h"

#include <initializer_list>

#include "functional/checks.h"
#include "functional/kernel_ridge.h"
#include "functional/least_squares.h"
#include "functional/softmax_mixer.h"
#include "kvq/functional/cholesky_update.h"
#include "kvq/functional/intention.h"
#include "kvq/functional/kernel_intention.h"
#include "kvq/functional/linear_attention.h"

namespace kvq {
namespace functional {
namespace {

using torch::Tensor;
using namespace detail;

// ---- Options ----

// A prefill is the batched causal forward, without dropout.
AttentionFuncOptions prefill_options(AttentionFuncOptions o) {
  o.causal(true).dropout(0.0).training(false);
  return o;
}

// A step's one query sees every cached key (rows 0 .. rows - 1), the padded prefix keys masked.
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

// The leading `rows` along each of `dims` (undefined stays undefined).
Tensor leading(const Tensor& x, std::initializer_list<int64_t> dims, int64_t rows) {
  if (!x.defined()) return x;
  auto out = x;
  for (auto dim : dims) out = out.narrow(dim, 0, rows);
  return out;
}

// A zero buffer with `capacity` rows along each of `dims` that starts with x (detached).
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

// The KV cache of a prefix: keys (B, H, n, d), values (B, H, n, dv) or undefined, mask (B, n).
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

// u = A^{-1} x for A = L L^T with L the state's factor: x (B, H, 1, d) -> (B, H, 1, d).
Tensor solve_with_factor(const Tensor& factor, const Tensor& x) {
  return torch::cholesky_solve(x.transpose(-2, -1), factor).transpose(-2, -1);
}

// L and B of the least-squares state from a prefix (padded keys zeroed: exact).
void least_squares_prefix(const char* op, DecodeState& s, const Tensor& k, const Tensor& v,
                          const Tensor& alpha, const AttentionFuncOptions& options) {
  const auto dtype = solve_dtype(k.scalar_type());
  const auto& mask = options.key_padding_mask();
  const auto kd = zero_padded_keys(k.to(dtype), mask).detach();
  s.factor = cholesky_checked(op, "alpha I + K^T K",
                              regularised_gram(kd, alpha.detach().to(k.device(), dtype)))
                 .contiguous();
  if (v.defined()) {
    s.kv_sum = torch::matmul(kd.transpose(-2, -1), zero_padded_keys(v.to(dtype), mask).detach());
  }
}

Tensor phi(const Tensor& x) { return torch::elu(x) + 1; }

}  // namespace

Tensor DecodeState::cached_keys() const { return leading(keys, {2}, length); }
Tensor DecodeState::cached_values() const { return leading(values, {2}, length); }
Tensor DecodeState::cached_key_padding_mask() const {
  return leading(key_padding_mask, {1}, length);
}

// ---- The KV cache: any mechanism, and the softmax family ----

namespace {

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

// Appends (k_t, v_t) and runs `mix` for q_t over every cached key.
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

}  // namespace

std::pair<Tensor, DecodeState> cached_prefill(const MixFn& mix, const Tensor& q, const Tensor& k,
                                              const Tensor& v, const AttentionFuncOptions& options) {
  return kv_cache_prefill("cached_prefill", "cached", mix, q, k, v, options);
}

Tensor cached_step(const MixFn& mix, DecodeState& s, const Tensor& q, const Tensor& k,
                   const Tensor& v, const AttentionFuncOptions& options) {
  return kv_cache_step("cached_step", "cached", mix, s, q, k, v, options);
}

std::pair<Tensor, DecodeState> softmax_prefill(const Tensor& q, const Tensor& k, const Tensor& v,
                                               const AttentionFuncOptions& options) {
  return kv_cache_prefill("softmax_prefill", "softmax", softmax_mix, q, k, v, options);
}

Tensor softmax_step(DecodeState& s, const Tensor& q, const Tensor& k, const Tensor& v,
                    const AttentionFuncOptions& options) {
  return kv_cache_step("softmax_step", "softmax", softmax_mix, s, q, k, v, options);
}

// ---- Linear ----

std::pair<Tensor, DecodeState> linear_prefill(const Tensor& q, const Tensor& k, const Tensor& v,
                                              const AttentionFuncOptions& options) {
  const auto dims = check_prefill("linear_prefill", q, k, v, options);
  auto s = new_state("linear", dims);
  auto out =
      dims.n == 0 ? empty_output(q, dims) : linear_attention(q, k, v, prefill_options(options));
  const auto phi_k = zero_padded_keys(phi(k), options.key_padding_mask()).detach();
  s.kv_sum = torch::matmul(phi_k.transpose(-2, -1), v.detach());
  s.key_sum = phi_k.sum(2);
  return {out, std::move(s)};
}

Tensor linear_step(DecodeState& s, const Tensor& q, const Tensor& k, const Tensor& v,
                   const AttentionFuncOptions& options) {
  check_step("linear_step", "linear", s, q, k, v);
  TORCH_CHECK(options.eps() >= 0, "linear_step: eps must be >= 0, got ", options.eps());
  const auto dtype = s.kv_sum.scalar_type();
  const auto phi_k = phi(k.to(dtype));
  s.kv_sum.add_(torch::matmul(phi_k.transpose(-2, -1), v.to(dtype)));
  s.key_sum.add_(phi_k.squeeze(2));
  const auto phi_q = phi(q.to(dtype));
  const auto normaliser = torch::matmul(phi_q, s.key_sum.unsqueeze(-1)) + options.eps();
  s.length += 1;
  return (torch::matmul(phi_q, s.kv_sum) / normaliser).to(q.scalar_type());
}

std::pair<Tensor, DecodeState> linear_identity_prefill(const Tensor& q, const Tensor& k,
                                                       const Tensor& v,
                                                       const AttentionFuncOptions& options) {
  const auto dims = check_prefill("linear_identity_prefill", q, k, v, options);
  auto s = new_state("linear_identity", dims);
  auto out = dims.n == 0 ? empty_output(q, dims)
                         : linear_identity_attention(q, k, v, prefill_options(options));
  const auto kz = zero_padded_keys(k, options.key_padding_mask()).detach();
  s.kv_sum = torch::matmul(kz.transpose(-2, -1), v.detach());
  return {out, std::move(s)};
}

Tensor linear_identity_step(DecodeState& s, const Tensor& q, const Tensor& k, const Tensor& v,
                            const AttentionFuncOptions&) {
  check_step("linear_identity_step", "linear_identity", s, q, k, v);
  const auto dtype = s.kv_sum.scalar_type();
  s.kv_sum.add_(torch::matmul(k.to(dtype).transpose(-2, -1), v.to(dtype)));
  s.length += 1;
  return torch::matmul(q.to(dtype), s.kv_sum).to(q.scalar_type());
}

// ---- Intention ----

std::pair<Tensor, DecodeState> intention_prefill(const Tensor& q, const Tensor& k, const Tensor& v,
                                                 const Tensor& alpha,
                                                 const AttentionFuncOptions& options) {
  const auto dims = check_prefill("intention_prefill", q, k, v, options);
  check_alpha("intention_prefill", alpha, dims.heads);
  auto s = new_state("intention", dims);
  auto out =
      dims.n == 0 ? empty_output(q, dims) : intention(q, k, v, alpha, prefill_options(options));
  least_squares_prefix("intention_prefill", s, k, v, alpha, options);
  return {out, std::move(s)};
}

Tensor intention_step(DecodeState& s, const Tensor& q, const Tensor& k, const Tensor& v,
                      const AttentionFuncOptions&) {
  check_step("intention_step", "intention", s, q, k, v);
  const auto dtype = s.factor.scalar_type();
  const auto kd = k.to(dtype);
  cholesky_rank1_update_(s.factor, kd.squeeze(2));                  // A_t = A_{t-1} + k k^T
  s.kv_sum.add_(torch::matmul(kd.transpose(-2, -1), v.to(dtype)));  // B_t = B_{t-1} + k v^T
  const auto u = solve_with_factor(s.factor, q.to(dtype));          // q^T A_t^{-1}
  s.length += 1;
  return torch::matmul(u, s.kv_sum).to(q.scalar_type());
}

std::pair<Tensor, DecodeState> softmax_intention_prefill(const Tensor& q, const Tensor& k,
                                                         const Tensor& v, const Tensor& alpha,
                                                         const AttentionFuncOptions& options) {
  const auto dims = check_prefill("softmax_intention_prefill", q, k, v, options);
  check_alpha("softmax_intention_prefill", alpha, dims.heads);
  auto s = new_state("softmax_intention", dims);
  auto out = dims.n == 0 ? empty_output(q, dims)
                         : softmax_intention(q, k, v, alpha, prefill_options(options));
  least_squares_prefix("softmax_intention_prefill", s, k, Tensor(), alpha, options);
  const auto dtype = s.factor.scalar_type();
  cache_prefix(s, k.to(dtype), v.to(dtype), options.key_padding_mask());
  return {out, std::move(s)};
}

Tensor softmax_intention_step(DecodeState& s, const Tensor& q, const Tensor& k, const Tensor& v,
                              const AttentionFuncOptions& options) {
  check_step("softmax_intention_step", "softmax_intention", s, q, k, v);
  const auto dtype = s.factor.scalar_type();
  const auto kd = k.to(dtype);
  cache_row(s, kd, v.to(dtype));
  const int64_t rows = s.length + 1;
  auto factor = s.factor.clone();  // the state changes only once the step has succeeded
  cholesky_rank1_update_(factor, kd.squeeze(2));
  const auto q_tilde = solve_with_factor(factor, q.to(dtype));  // q^T A_t^{-1}
  auto out = softmax_mix(q_tilde, leading(s.keys, {2}, rows), leading(s.values, {2}, rows),
                         step_options(options, s, rows));
  s.factor = factor;
  s.length = rows;
  return out.to(q.scalar_type());
}

// ---- Kernel intention ----

std::pair<Tensor, DecodeState> kernel_intention_prefill(const Tensor& q, const Tensor& k,
                                                        const Tensor& v, const Tensor& alpha,
                                                        const AttentionFuncOptions& options) {
  const auto dims = check_prefill("kernel_intention_prefill", q, k, v, options);
  check_alpha("kernel_intention_prefill", alpha, dims.heads);
  auto s = new_state("kernel_intention", dims);
  const auto dtype = solve_dtype(q.scalar_type());
  const int64_t capacity = capacity_for(dims.n + 1);
  CausalKernelParts parts;  // L and Z of the prefix
  if (dims.n == 0) {
    parts.out = empty_output(q, dims);
    parts.factor = k.new_zeros({dims.batch, dims.heads, 0, 0}, k.options().dtype(dtype));
    parts.z = k.new_zeros({dims.batch, dims.heads, 0, dims.dv}, k.options().dtype(dtype));
  } else {
    parts = causal_kernel_intention(kernel_system(q, k, v, alpha, prefill_options(options)));
  }
  s.factor = with_capacity(parts.factor, {2, 3}, capacity);
  s.kernel_values = with_capacity(parts.z, {2}, capacity);
  cache_prefix(s, k.to(dtype), Tensor(), options.key_padding_mask());
  return {parts.out.to(q.scalar_type()), std::move(s)};
}

Tensor kernel_intention_step(DecodeState& s, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& alpha, const AttentionFuncOptions& options) {
  check_step("kernel_intention_step", "kernel_intention", s, q, k, v);
  check_alpha("kernel_intention_step", alpha, s.heads);
  const auto dtype = s.keys.scalar_type();
  const int64_t t = s.length;
  const double scale = default_scale(options, s.dim);
  const auto kd = k.to(dtype), vd = v.to(dtype);
  cache_row(s, kd, Tensor());
  const auto mask = step_options(options, s, t + 1).key_padding_mask();  // (B, t + 1) or none
  // kappa(K, x) for the cached keys 0 .. rows-1, padded keys' entries zero: (B, H, rows, 1).
  const auto kappa_keys = [&](const Tensor& x, int64_t rows) {
    auto kappa =
        torch::exp(torch::matmul(leading(s.keys, {2}, rows), (x * scale).transpose(-2, -1)));
    if (mask.defined()) {
      kappa = kappa.masked_fill(mask.narrow(1, 0, rows).view({s.batch, 1, rows, 1}), 0);
    }
    return kappa;
  };
  // The new row of L: l = L^{-1} c, L_tt = sqrt(kappa(k_t, k_t) + alpha - l . l).
  const auto l = t == 0 ? kd.new_zeros({s.batch, s.heads, 0, 1})
                        : torch::linalg_solve_triangular(leading(s.factor, {2, 3}, t),
                                                         kappa_keys(kd, t), /*upper=*/false);
  const auto pivot = torch::exp(torch::matmul(kd * scale, kd.transpose(-2, -1))) +
                     alpha_for_heads(alpha.to(kd.device(), dtype)) -
                     l.pow(2).sum(2, /*keepdim=*/true);  // (B, H, 1, 1)
  // As cholesky_checked: an error on the CPU; elsewhere a NaN pivot, without a host
  // synchronisation.
  TORCH_CHECK(!pivot.device().is_cpu() || pivot.gt(0).all().item<bool>(),
              "kernel_intention_step: kappa(K, K) + alpha I is not numerically positive definite "
              "in ", dtype,
              "; increase alpha relative to the kernel's scale, or compute in float64");
  const auto diag = pivot.sqrt();
  const auto z = (vd - torch::matmul(l.transpose(-2, -1), leading(s.kernel_values, {2}, t))) / diag;
  auto row = s.factor.narrow(2, t, 1);
  row.narrow(3, 0, t).copy_(l.transpose(-2, -1));
  row.narrow(3, t, 1).copy_(diag);
  s.kernel_values.narrow(2, t, 1).copy_(z);
  // o_t = (L^{-1} kappa(K_{<=t}, q_t))^T Z.
  const auto u = torch::linalg_solve_triangular(leading(s.factor, {2, 3}, t + 1),
                                                kappa_keys(q.to(dtype), t + 1), /*upper=*/false);
  s.length = t + 1;
  return torch::matmul(u.transpose(-2, -1), leading(s.kernel_values, {2}, t + 1))
      .to(q.scalar_type());
}

}  // namespace functional
}  // namespace kvq
