#pragma once
// Shared helpers of the functional tests: error metrics and the tolerance policy of
// docs/mechanisms.md, deterministic inputs, and one dispatch that runs a mechanism either through
// kvq's public functional API or through the float64 oracle of tests/reference.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "kvq/kvq.h"
#include "reference/oracle_table.h"
#include "reference/oracles.h"

namespace kvq_test {

namespace F = kvq::functional;

// ---- Tolerance policy (docs/mechanisms.md, "Tolerance policy for tests") ----
constexpr double kTolSolve64 = 1e-10;   // fp64 impl vs fp64 oracle, mechanisms with a solve
constexpr double kTolMatmul64 = 1e-12;  // fp64 impl vs fp64 oracle, plain matmul mechanisms
constexpr double kTolNrmse32 = 1e-5;    // fp32 impl vs fp64 oracle, well-conditioned inputs
constexpr double kTolGrad = 1e-6;       // central differences vs autograd, fp64

// Relative error of `out` against the reference: max |out - ref| / max |ref|, in float64.
// (max |out - ref| when the reference is identically zero.)
inline double max_rel_err(const torch::Tensor& out, const torch::Tensor& ref) {
  const auto o = out.detach().to(torch::kFloat64);
  const auto r = ref.detach().to(torch::kFloat64);
  const double diff = (o - r).abs().max().item<double>();
  const double scale = r.abs().max().item<double>();
  return scale > 0 ? diff / scale : diff;
}

// Normalised RMSE: sqrt(mean((out - ref)^2)) / sqrt(mean(ref^2)), in float64.
inline double nrmse(const torch::Tensor& out, const torch::Tensor& ref) {
  const auto o = out.detach().to(torch::kFloat64);
  const auto r = ref.detach().to(torch::kFloat64);
  const double num = (o - r).pow(2).mean().sqrt().item<double>();
  const double den = r.pow(2).mean().sqrt().item<double>();
  return den > 0 ? num / den : num;
}

// Relative error of a gradient: max |got - want| / max(max |want|, 1e-2). The floor only matters
// for gradients that are zero in exact arithmetic (e.g. kv-pos pos_bias, which cancels under the
// row softmax); there the finite-difference noise (~1e-10) is compared with 1e-2.
inline double grad_rel_err(const torch::Tensor& got, const torch::Tensor& want) {
  const double diff = (got - want).abs().max().item<double>();
  return diff / std::max(want.abs().max().item<double>(), 1e-2);
}

// d loss / d x (x float64, contiguous) by central differences with step 1e-6, perturbing x in
// place one entry at a time.
inline torch::Tensor central_differences(const std::function<double()>& loss,
                                         const torch::Tensor& x) {
  constexpr double kStep = 1e-6;
  torch::NoGradGuard no_grad;
  auto num = torch::zeros_like(x);
  double* p = x.data_ptr<double>();
  double* g = num.data_ptr<double>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double old = p[i];
    p[i] = old + kStep;
    const double up = loss();
    p[i] = old - kStep;
    const double down = loss();
    p[i] = old;
    g[i] = (up - down) / (2 * kStep);
  }
  return num;
}

// One line per comparison, quoted by the closing note.
inline void report(const std::string& label, const std::string& metric, double value) {
  std::ostringstream line;
  line << "[max-err] " << label << " " << metric << "=" << std::scientific << std::setprecision(3)
       << value;
  std::cout << line.str() << std::endl;
}

// ---- Mechanisms ----
// A mechanism is its registry name: the suites iterate over kvq::mechanisms() and run each row's
// functional form (MechanismInfo::call) against its float64 oracle (reference/oracle_table.h).
using Mech = std::string;

inline std::vector<Mech> all_mechs() { return kvq::mechanism_names(); }
inline const std::string& mech_name(const Mech& m) { return m; }

inline bool uses_alpha(const Mech& m) { return kvq::find_mechanism(m).traits.uses_alpha; }
// Mechanisms whose algorithm has a linear solve: the looser fp64 tolerance applies.
inline bool has_solve(const Mech& m) {
  return kvq::find_mechanism(m).family == kvq::Family::LeastSquares;
}
// kv and kv-pos take only k (queries are the keys): self-attention shapes only.
inline bool keys_are_queries(const Mech& m) {
  return kvq::find_mechanism(m).projection != kvq::Projection::QKV;
}
inline double fp64_tolerance(const Mech& m) { return has_solve(m) ? kTolSolve64 : kTolMatmul64; }

// ---- Cases and inputs ----
enum class MaskKind { None, Trailing, Scattered, AllFalse };

struct Case {
  std::string label;
  int64_t B = 2, H = 2, m = 9, n = 9, d = 4, dv = 3;
  bool causal = false;
  MaskKind mask = MaskKind::None;
  bool alpha_per_head = false;
  double alpha_base = 1.0;
  int64_t chunk = 64;  // longer than d here; 0 = the library default (head width d)
  int64_t pos_channels = 10;
  bool pos_per_head = true;
};

// Everything a mechanism may take. Generated in float64, then optionally cast with to().
struct Inputs {
  torch::Tensor q, k, v, alpha, mask, pos_weight, pos_bias;

  Inputs to(torch::ScalarType dtype) const {
    Inputs out = *this;
    out.q = q.to(dtype);
    out.k = k.to(dtype);
    out.v = v.to(dtype);
    out.alpha = alpha.to(dtype);
    out.pos_weight = pos_weight.to(dtype);
    out.pos_bias = pos_bias.to(dtype);
    return out;
  }
  // What a mechanism's functional form takes (the row's call ignores what it does not use).
  kvq::MechanismArgs args() const { return {q, k, v, alpha, pos_weight, pos_bias}; }
};

// (B, n) bool. Trailing: batch element b pads its last (b + 1) * n / 5 keys (at least one).
// Scattered: every key j with j % 3 == 2 in odd batch elements, j % 4 == 3 in even ones. Key 0 is
// never padded, so with the causal mask every query still sees at least one key.
inline torch::Tensor make_mask(MaskKind kind, int64_t B, int64_t n) {
  if (kind == MaskKind::None) return {};
  auto mask = torch::zeros({B, n}, torch::kBool);
  auto acc = mask.accessor<bool, 2>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 1; j < n; ++j) {
      if (kind == MaskKind::Trailing) {
        const int64_t pad = std::max<int64_t>(1, (b + 1) * n / 5);
        acc[b][j] = j >= n - pad;
      } else if (kind == MaskKind::Scattered) {
        acc[b][j] = (b % 2 == 1) ? (j % 3 == 2) : (j % 4 == 3);
      }
    }
  }
  return mask;
}

// q, k, v with unit-scale N(0, 1) entries; alpha = alpha_base (scalar) or alpha_base * [0.5 .. 1.5]
// over the heads; pos_weight N(0, 0.5^2), pos_bias N(0, 1).
inline Inputs make_inputs(const Case& c, uint64_t seed) {
  torch::manual_seed(seed);
  const auto o = torch::TensorOptions().dtype(torch::kFloat64);
  Inputs in;
  in.q = torch::randn({c.B, c.H, c.m, c.d}, o);
  in.k = torch::randn({c.B, c.H, c.n, c.d}, o);
  in.v = torch::randn({c.B, c.H, c.n, c.dv}, o);
  in.alpha = c.alpha_per_head ? c.alpha_base * torch::linspace(0.5, 1.5, c.H, o)
                              : torch::full({}, c.alpha_base, o);
  in.mask = make_mask(c.mask, c.B, c.n);
  in.pos_weight = c.pos_per_head ? 0.5 * torch::randn({c.H, c.pos_channels}, o)
                                 : 0.5 * torch::randn({c.pos_channels}, o);
  in.pos_bias = c.pos_per_head ? torch::randn({c.H}, o) : torch::randn({}, o);
  return in;
}

inline F::AttentionFuncOptions make_options(bool causal, const torch::Tensor& mask,
                                            int64_t chunk = 64) {
  return F::AttentionFuncOptions().causal(causal).key_padding_mask(mask).chunk_size(chunk);
}

// The mechanism through kvq's public functional API (its registry row's functional form).
inline torch::Tensor run_impl(const Mech& m, const Inputs& in, const F::AttentionFuncOptions& opt) {
  return kvq::find_mechanism(m).call(in.args(), opt);
}

// The same mechanism through its float64 oracle (default scale 1/sqrt(d), default eps 1e-6).
inline torch::Tensor run_oracle(const Mech& m, const Inputs& in, bool causal,
                                const torch::Tensor& mask) {
  const auto* oracle = kvq_ref::find_oracle(m);
  TORCH_CHECK(oracle != nullptr, "no float64 oracle for '", m, "' in tests/reference/oracle_table.cpp");
  return (*oracle)(in.args(), causal, mask);
}

// " alpha()" / " alpha(H)" for the mechanisms that take alpha, "" otherwise.
inline std::string alpha_label(const Mech& mech, const Case& c) {
  if (!uses_alpha(mech)) return "";
  std::ostringstream s;
  s << " alpha" << (c.alpha_per_head ? "(H)=" : "()=") << c.alpha_base
    << (c.alpha_per_head ? "*[0.5..1.5]" : "");
  return s.str();
}

// Runs kvq and the oracle on the same values (the oracle sees the fp32 inputs widened to fp64, so
// only the computation differs) and checks the policy: fp64 max relative error <= 1e-12 / 1e-10,
// fp32 normalised RMSE <= 1e-5. Returns the error.
inline double check_against_oracle(const Mech& mech, const Case& c, torch::ScalarType dtype,
                                   uint64_t seed = 1234) {
  SCOPED_TRACE(mech_name(mech) + " " + c.label);
  const auto in = make_inputs(c, seed).to(dtype);
  const auto out = run_impl(mech, in, make_options(c.causal, in.mask, c.chunk));
  const auto ref = run_oracle(mech, in, c.causal, in.mask);
  const int64_t rows = keys_are_queries(mech) ? c.n : c.m;
  EXPECT_EQ(out.sizes(), torch::IntArrayRef({c.B, c.H, rows, c.dv}));
  EXPECT_EQ(out.scalar_type(), dtype);
  if (out.sizes() != ref.sizes()) return 1.0;
  const bool fp64 = dtype == torch::kFloat64;
  const double err = fp64 ? max_rel_err(out, ref) : nrmse(out, ref);
  const std::string label =
      mech_name(mech) + " " + c.label + alpha_label(mech, c) + (fp64 ? " fp64" : " fp32");
  report(label, fp64 ? "relerr" : "nrmse", err);
  EXPECT_LE(err, fp64 ? fp64_tolerance(mech) : kTolNrmse32) << label;
  return err;
}

// The standard sweep of cases for a mechanism: self-attention and cross-attention (m != n, not for
// kv / kv-pos), causal with chunk 4 and T = 11 / 13 (not multiples of the chunk) and with the
// chunk 64 and the default chunk (0 = d) at T = 150, masks trailing and scattered, alpha scalar and per head, dv != d.
inline std::vector<Case> standard_cases(const Mech& mech) {
  std::vector<Case> cases;
  Case c;
  c.label = "self";
  c.m = c.n = 9, c.d = 5, c.dv = 4;
  cases.push_back(c);
  c.label = "self+mask(scattered)";
  c.mask = MaskKind::Scattered, c.alpha_per_head = true, c.H = 3;
  cases.push_back(c);
  if (!keys_are_queries(mech)) {
    Case x;
    x.label = "cross(m=7,n=11)+mask(trailing)";
    x.m = 7, x.n = 11, x.d = 4, x.dv = 6, x.mask = MaskKind::Trailing;
    cases.push_back(x);
    x.label = "cross(m=12,n=5)";
    x.m = 12, x.n = 5, x.d = 3, x.dv = 2, x.mask = MaskKind::None, x.alpha_per_head = true;
    cases.push_back(x);
  }
  Case k;
  k.label = "causal T=11 chunk=4";
  k.causal = true, k.m = k.n = 11, k.d = 4, k.dv = 5, k.chunk = 4, k.alpha_per_head = true;
  cases.push_back(k);
  k.label = "causal+mask(scattered) T=13 chunk=4";
  k.m = k.n = 13, k.mask = MaskKind::Scattered, k.alpha_per_head = false, k.d = 6, k.dv = 3;
  cases.push_back(k);
  k.label = "causal+mask(trailing) T=10 chunk=3";
  k.m = k.n = 10, k.mask = MaskKind::Trailing, k.alpha_per_head = true, k.chunk = 3, k.d = 3;
  cases.push_back(k);
  Case big;
  big.label = "causal+mask(scattered) T=150 chunk=64";
  big.B = 1, big.H = 2, big.m = big.n = 150, big.d = 8, big.dv = 5, big.causal = true;
  big.mask = MaskKind::Scattered, big.alpha_per_head = true;
  cases.push_back(big);
  big.label = "causal T=150 chunk=0(default, = d)";
  big.chunk = 0;
  big.mask = MaskKind::None, big.alpha_per_head = false, big.B = 2, big.H = 1;
  cases.push_back(big);
  return cases;
}

// Whether a c10::Error's message (without backtrace) names one of `names` as a whole word, i.e. not
// inside a longer identifier ("k" does not match in "kvq" or "key", it does in "k must be").
inline bool mentions(const std::string& message, const std::string& name) {
  auto is_ident = [](char ch) { return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_'; };
  for (size_t pos = message.find(name); pos != std::string::npos;
       pos = message.find(name, pos + 1)) {
    const bool left_ok = pos == 0 || !is_ident(message[pos - 1]);
    const size_t end = pos + name.size();
    const bool right_ok = end >= message.size() || !is_ident(message[end]);
    if (left_ok && right_ok) return true;
  }
  return false;
}

// Expects fn() to throw c10::Error whose message names one of `names`.
template <typename Fn>
void expect_error_naming(Fn&& fn, std::initializer_list<const char*> names,
                         const std::string& what) {
  SCOPED_TRACE(what);
  try {
    fn();
    ADD_FAILURE() << what << ": no exception";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    bool named = false;
    std::string wanted;
    for (const char* n : names) {
      named = named || mentions(msg, n);
      wanted += std::string(" '") + n + "'";
    }
    EXPECT_TRUE(named) << what << ": the message should name one of" << wanted << "; got: " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": threw a non-c10::Error: " << e.what();
  }
}

}  // namespace kvq_test
