#include "kvq/data/regression_episodes.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <sstream>

namespace kvq {
namespace data {
namespace {

static_assert(kRegressionKindNames.size() == static_cast<size_t>(RegressionKind::Sinusoid) + 1,
              "kRegressionKindNames and RegressionKind must list the same families");

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

std::string shape_string(const std::vector<int64_t>& dims, const std::vector<const char*>& names) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < dims.size(); ++i) {
    out << (i ? ", " : "");
    if (dims[i] < 0) {
      out << names[i];
    } else {
      out << dims[i];
    }
  }
  out << ")";
  return out.str();
}

// `arg` is a floating-point tensor of shape `layout` (names of the dimensions); entries of
// `expected` >= 0 are required sizes, -1 any size.
void check_tensor(const char* op, const char* arg, const torch::Tensor& t,
                  const std::vector<const char*>& layout, const std::vector<int64_t>& expected) {
  const auto n = static_cast<int64_t>(expected.size());
  bool ok = t.defined() && t.dim() == n && t.is_floating_point();
  for (int64_t i = 0; ok && i < n; ++i) ok = expected[i] < 0 || t.size(i) == expected[i];
  TORCH_CHECK(ok, op, ": ", arg, " must be a floating-point tensor of shape ",
              shape_string(std::vector<int64_t>(expected.size(), -1), layout), " = ",
              shape_string(expected, layout), ", got ",
              t.defined() ? c10::toString(t.scalar_type()) : "an undefined tensor", " ",
              t.defined() ? t.sizes() : c10::IntArrayRef{});
}

struct RegressionDims {
  int64_t batch, n, m, dx, dy;
};

// context_x (B, N, dx), context_y (B, N, dy) when given, target_x (B, M, dx).
RegressionDims check_regression_inputs(const char* op, const torch::Tensor& context_x,
                                       const torch::Tensor* context_y,
                                       const torch::Tensor& target_x) {
  check_tensor(op, "context_x", context_x, {"B", "N", "dx"}, {-1, -1, -1});
  RegressionDims d{context_x.size(0), context_x.size(1), 0, context_x.size(2), 0};
  if (context_y != nullptr) {
    check_tensor(op, "context_y", *context_y, {"B", "N", "dy"}, {d.batch, d.n, -1});
    d.dy = context_y->size(2);
  }
  check_tensor(op, "target_x", target_x, {"B", "M", "dx"}, {d.batch, -1, d.dx});
  d.m = target_x.size(1);
  return d;
}

// length_scale () or (B), every entry > 0, as float64 (B, 1, 1).
torch::Tensor checked_length_scale(const char* op, const torch::Tensor& length_scale,
                                   int64_t batch) {
  TORCH_CHECK(length_scale.defined() && length_scale.is_floating_point() &&
                  (length_scale.dim() == 0 || (length_scale.dim() == 1 &&
                                               length_scale.size(0) == batch)),
              op, ": length_scale must be a floating-point tensor of shape () or (B) = (", batch,
              "), got ",
              length_scale.defined() ? c10::toString(length_scale.scalar_type())
                                     : "an undefined tensor",
              " ", length_scale.defined() ? length_scale.sizes() : c10::IntArrayRef{});
  auto l = length_scale.to(torch::kFloat64);
  TORCH_CHECK(l.numel() == 0 || l.min().item<double>() > 0, op,
              ": length_scale must be > 0 everywhere, got a minimum of ", l.min().item<double>());
  return l.dim() == 0 ? l.view({1, 1, 1}) : l.view({-1, 1, 1});
}

// x1 (B, P, dx), x2 (B, Q, dx), l (B, 1, 1), all float64 -> (B, P, Q). Few passes over the
// (B, P, Q) result: GP episodes spend most of their time here.
torch::Tensor rbf64(const torch::Tensor& x1, const torch::Tensor& x2, const torch::Tensor& l,
                    double signal_var) {
  auto diff = x1.unsqueeze(2) - x2.unsqueeze(1);  // (B, P, Q, dx)
  auto sq = diff.size(3) == 1 ? diff.squeeze(3).square() : diff.square().sum(3);
  // s^2 exp(-sq / (2 l^2)) = exp(sq * (-1 / (2 l^2)) + log s^2)
  return (sq * (-0.5 / (l * l))).add_(std::log(signal_var)).exp_();
}

torch::Tensor cholesky_or_throw(const char* op, const char* what, const torch::Tensor& a,
                                const char* remedy) {
  auto [factor, info] = torch::linalg_cholesky_ex(a);
  TORCH_CHECK(!info.ne(0).any().item<bool>(), op, ": ", what,
              " is not numerically positive definite; ", remedy);
  return factor;
}

// Cholesky factor of X^T X + alpha I, x float64 (B, N, dx) -> (B, dx, dx).
torch::Tensor ridge_factor(const char* op, const torch::Tensor& x, double alpha) {
  auto a = torch::matmul(x.transpose(1, 2), x) + alpha * torch::eye(x.size(2), kF64);
  return cholesky_or_throw(op, "X^T X + alpha I", a, "increase alpha");
}

struct GPContext {
  torch::Tensor factor;  // Cholesky factor of K(X, X) + noise_var I, (B, N, N)
  torch::Tensor cross;   // K(x*, X), (B, M, N)
};

GPContext gp_context(const char* op, const torch::Tensor& context_x, const torch::Tensor& target_x,
                     const torch::Tensor& length_scale, double signal_var, double noise_var,
                     int64_t batch) {
  TORCH_CHECK(std::isfinite(signal_var) && signal_var > 0, op,
              ": signal_var must be finite and > 0, got ", signal_var);
  TORCH_CHECK(std::isfinite(noise_var) && noise_var > 0, op,
              ": noise_var must be finite and > 0, got ", noise_var);
  auto l = checked_length_scale(op, length_scale, batch);
  auto x = context_x.to(torch::kFloat64);
  auto k = rbf64(x, x, l, signal_var) + noise_var * torch::eye(x.size(1), kF64);
  return {cholesky_or_throw(op, "K(X, X) + noise_var I", k, "increase noise_var"),
          rbf64(target_x.to(torch::kFloat64), x, l, signal_var)};
}

void check_options(const RegressionEpisodeOptions& o, int64_t batch_size) {
  const char* op = "make_regression_episode";
  TORCH_CHECK(batch_size >= 1, op, ": batch_size must be >= 1, got ", batch_size);
  TORCH_CHECK(o.num_context() >= 0, op, ": num_context must be >= 0, got ", o.num_context());
  TORCH_CHECK(o.num_targets() >= 0, op, ": num_targets must be >= 0, got ", o.num_targets());
  TORCH_CHECK(std::isfinite(o.noise_std()) && o.noise_std() >= 0, op,
              ": noise_std must be finite and >= 0, got ", o.noise_std());
  TORCH_CHECK(o.dtype() == torch::kFloat32 || o.dtype() == torch::kFloat64, op,
              ": dtype must be kFloat32 or kFloat64, got ", o.dtype());
}

void check_range(const char* lo_name, double lo, const char* hi_name, double hi) {
  TORCH_CHECK(std::isfinite(lo) && std::isfinite(hi) && lo <= hi, "make_regression_episode: need ",
              lo_name, " <= ", hi_name, ", both finite, got ", lo_name, " = ", lo, ", ", hi_name,
              " = ", hi);
}

torch::Tensor uniform(at::Generator& gen, torch::IntArrayRef size, double lo, double hi) {
  return torch::empty(size, kF64).uniform_(lo, hi, gen);
}

torch::Tensor normal(at::Generator& gen, torch::IntArrayRef size) {
  return torch::empty(size, kF64).normal_(0.0, 1.0, gen);
}

// Splits the joint (B, N + M, ...) draws into the episode and casts to the requested dtype.
RegressionEpisode split_episode(const torch::Tensor& x, const torch::Tensor& f,
                                const torch::Tensor& eps, const RegressionEpisodeOptions& o) {
  const int64_t n = o.num_context(), m = o.num_targets();
  auto y = f + o.noise_std() * eps.unsqueeze(-1);
  auto cast = [&](const torch::Tensor& t) { return t.to(o.dtype()).contiguous(); };
  RegressionEpisode e;
  e.context_x = cast(x.narrow(1, 0, n));
  e.context_y = cast(y.narrow(1, 0, n));
  e.target_x = cast(x.narrow(1, n, m));
  e.target_y = cast(y.narrow(1, n, m));
  e.target_f = cast(f.narrow(1, n, m));
  return e;
}

}  // namespace

std::vector<std::string> regression_kind_names() {
  return {kRegressionKindNames.begin(), kRegressionKindNames.end()};
}

std::string regression_kind_name(RegressionKind kind) {
  return kRegressionKindNames.at(static_cast<size_t>(kind));
}

RegressionKind parse_regression_kind(const std::string& name) {
  std::ostringstream valid;
  for (size_t i = 0; i < kRegressionKindNames.size(); ++i) {
    if (name == kRegressionKindNames[i]) return static_cast<RegressionKind>(i);
    valid << (i ? ", " : "") << kRegressionKindNames[i];
  }
  TORCH_CHECK(false, "unknown regression family '", name, "'; valid names: ", valid.str());
}

torch::Tensor rbf_kernel(const torch::Tensor& x1, const torch::Tensor& x2,
                         const torch::Tensor& length_scale, double signal_var) {
  const char* op = "rbf_kernel";
  check_tensor(op, "x1", x1, {"B", "P", "dx"}, {-1, -1, -1});
  check_tensor(op, "x2", x2, {"B", "Q", "dx"}, {x1.size(0), -1, x1.size(2)});
  TORCH_CHECK(signal_var > 0, op, ": signal_var must be > 0, got ", signal_var);
  auto l = checked_length_scale(op, length_scale, x1.size(0));
  return rbf64(x1.to(torch::kFloat64), x2.to(torch::kFloat64), l, signal_var)
      .to(x1.scalar_type());
}

torch::Tensor sample_gp_prior(const torch::Tensor& x, const torch::Tensor& length_scale,
                              double signal_var, double jitter, at::Generator generator) {
  const char* op = "sample_gp_prior";
  check_tensor(op, "x", x, {"B", "P", "dx"}, {-1, -1, -1});
  TORCH_CHECK(signal_var > 0, op, ": signal_var must be > 0, got ", signal_var);
  TORCH_CHECK(jitter >= 0, op, ": jitter must be >= 0, got ", jitter);
  TORCH_CHECK(generator.device().is_cpu(), op, ": generator must be a CPU generator");
  const int64_t batch = x.size(0), points = x.size(1);
  auto l = checked_length_scale(op, length_scale, batch);
  auto x64 = x.to(torch::kFloat64);
  auto k = rbf64(x64, x64, l, signal_var) + jitter * torch::eye(points, kF64);
  auto factor = cholesky_or_throw(op, "K(x, x) + jitter I", k,
                                  "increase jitter or draw fewer or less clustered points");
  auto z = normal(generator, {batch, points, 1});
  return torch::matmul(factor, z).to(x.scalar_type());
}

RegressionEpisode make_regression_episode(RegressionKind kind, int64_t batch_size, uint64_t seed,
                                          const RegressionEpisodeOptions& o) {
  const char* op = "make_regression_episode";
  check_options(o, batch_size);
  const int64_t b = batch_size, p = o.num_context() + o.num_targets();
  auto gen = at::detail::createCPUGenerator(seed);
  switch (kind) {
    case RegressionKind::Linear: {
      TORCH_CHECK(o.x_dim() >= 1, op, ": x_dim must be >= 1, got ", o.x_dim());
      TORCH_CHECK(std::isfinite(o.weight_std()) && o.weight_std() >= 0, op,
                  ": weight_std must be finite and >= 0, got ", o.weight_std());
      auto w = o.weight_std() * normal(gen, {b, o.x_dim()});
      auto x = normal(gen, {b, p, o.x_dim()});
      auto f = torch::matmul(x, w.unsqueeze(-1));
      auto e = split_episode(x, f, normal(gen, {b, p}), o);
      e.weights = w.to(o.dtype());
      return e;
    }
    case RegressionKind::GP: {
      check_range("gp_x_min", o.gp_x_min(), "gp_x_max", o.gp_x_max());
      check_range("length_scale_min", o.length_scale_min(), "length_scale_max",
                  o.length_scale_max());
      TORCH_CHECK(o.length_scale_min() > 0, op, ": length_scale_min must be > 0, got ",
                  o.length_scale_min());
      TORCH_CHECK(std::isfinite(o.signal_std()) && o.signal_std() > 0, op,
                  ": signal_std must be finite and > 0, got ", o.signal_std());
      TORCH_CHECK(std::isfinite(o.jitter()) && o.jitter() >= 0, op,
                  ": jitter must be finite and >= 0, got ", o.jitter());
      auto l = uniform(gen, {b}, o.length_scale_min(), o.length_scale_max());
      auto x = uniform(gen, {b, p, 1}, o.gp_x_min(), o.gp_x_max());
      auto f = sample_gp_prior(x, l, o.signal_std() * o.signal_std(), o.jitter(), gen);
      auto e = split_episode(x, f, normal(gen, {b, p}), o);
      e.length_scale = l.to(o.dtype());
      return e;
    }
    case RegressionKind::Sinusoid: {
      check_range("amplitude_min", o.amplitude_min(), "amplitude_max", o.amplitude_max());
      check_range("phase_min", o.phase_min(), "phase_max", o.phase_max());
      check_range("sinusoid_x_min", o.sinusoid_x_min(), "sinusoid_x_max", o.sinusoid_x_max());
      auto amplitude = uniform(gen, {b}, o.amplitude_min(), o.amplitude_max());
      auto phase = uniform(gen, {b}, o.phase_min(), o.phase_max());
      auto x = uniform(gen, {b, p, 1}, o.sinusoid_x_min(), o.sinusoid_x_max());
      auto f = amplitude.view({b, 1, 1}) * torch::sin(x + phase.view({b, 1, 1}));
      auto e = split_episode(x, f, normal(gen, {b, p}), o);
      e.amplitude = amplitude.to(o.dtype());
      e.phase = phase.to(o.dtype());
      return e;
    }
  }
  TORCH_CHECK(false, op, ": invalid kind value ", static_cast<int>(kind));
}

torch::Tensor ridge_posterior_mean(const torch::Tensor& context_x, const torch::Tensor& context_y,
                                   const torch::Tensor& target_x, double alpha) {
  const char* op = "ridge_posterior_mean";
  check_regression_inputs(op, context_x, &context_y, target_x);
  TORCH_CHECK(std::isfinite(alpha) && alpha > 0, op, ": alpha must be finite and > 0, got ",
              alpha);
  auto x = context_x.to(torch::kFloat64);
  auto factor = ridge_factor(op, x, alpha);
  auto w = torch::cholesky_solve(torch::matmul(x.transpose(1, 2), context_y.to(torch::kFloat64)),
                                 factor);  // (B, dx, dy)
  return torch::matmul(target_x.to(torch::kFloat64), w).to(context_y.scalar_type());
}

torch::Tensor ridge_predictive_variance(const torch::Tensor& context_x,
                                        const torch::Tensor& target_x, double noise_var,
                                        double weight_var, bool noisy_targets) {
  const char* op = "ridge_predictive_variance";
  check_regression_inputs(op, context_x, nullptr, target_x);
  TORCH_CHECK(std::isfinite(noise_var) && noise_var > 0, op,
              ": noise_var must be finite and > 0, got ", noise_var);
  TORCH_CHECK(std::isfinite(weight_var) && weight_var > 0, op,
              ": weight_var must be finite and > 0, got ", weight_var);
  auto factor = ridge_factor(op, context_x.to(torch::kFloat64), noise_var / weight_var);
  auto v = torch::linalg_solve_triangular(factor, target_x.to(torch::kFloat64).transpose(1, 2),
                                          /*upper=*/false);  // (B, dx, M)
  auto quad = v.pow(2).sum(1).unsqueeze(-1);                  // x*^T A^{-1} x*, (B, M, 1)
  return (noise_var * (noisy_targets ? quad + 1.0 : quad)).to(target_x.scalar_type());
}

torch::Tensor gp_posterior_mean(const torch::Tensor& context_x, const torch::Tensor& context_y,
                                const torch::Tensor& target_x, const torch::Tensor& length_scale,
                                double signal_var, double noise_var) {
  const char* op = "gp_posterior_mean";
  const auto d = check_regression_inputs(op, context_x, &context_y, target_x);
  const auto gp = gp_context(op, context_x, target_x, length_scale, signal_var, noise_var, d.batch);
  auto weights = torch::cholesky_solve(context_y.to(torch::kFloat64), gp.factor);  // (B, N, dy)
  return torch::matmul(gp.cross, weights).to(context_y.scalar_type());
}

torch::Tensor gp_posterior_variance(const torch::Tensor& context_x, const torch::Tensor& target_x,
                                    const torch::Tensor& length_scale, double signal_var,
                                    double noise_var, bool noisy_targets) {
  const char* op = "gp_posterior_variance";
  const auto d = check_regression_inputs(op, context_x, nullptr, target_x);
  const auto gp = gp_context(op, context_x, target_x, length_scale, signal_var, noise_var, d.batch);
  auto v = torch::linalg_solve_triangular(gp.factor, gp.cross.transpose(1, 2),
                                          /*upper=*/false);  // (B, N, M)
  auto var = (signal_var - v.pow(2).sum(1)).clamp_min(0.0).unsqueeze(-1);
  return (noisy_targets ? var + noise_var : var).to(target_x.scalar_type());
}

torch::Tensor nearest_neighbour_predictor(const torch::Tensor& context_x,
                                          const torch::Tensor& context_y,
                                          const torch::Tensor& target_x) {
  const char* op = "nearest_neighbour_predictor";
  const auto d = check_regression_inputs(op, context_x, &context_y, target_x);
  TORCH_CHECK(d.n >= 1, op, ": needs at least one context point, got context_x ",
              context_x.sizes());
  auto dist = (target_x.to(torch::kFloat64).unsqueeze(2) -
               context_x.to(torch::kFloat64).unsqueeze(1))
                  .pow(2)
                  .sum(-1);                  // (B, M, N)
  auto nearest = dist.argmin(-1, false);    // (B, M)
  return context_y.gather(1, nearest.unsqueeze(-1).expand({d.batch, d.m, d.dy}));
}

torch::Tensor zero_predictor(const torch::Tensor& context_y, const torch::Tensor& target_x) {
  const char* op = "zero_predictor";
  check_tensor(op, "context_y", context_y, {"B", "N", "dy"}, {-1, -1, -1});
  check_tensor(op, "target_x", target_x, {"B", "M", "dx"}, {context_y.size(0), -1, -1});
  return torch::zeros({context_y.size(0), target_x.size(1), context_y.size(2)},
                      context_y.options());
}

RegressionPrediction bayes_optimal_prediction(RegressionKind kind, const RegressionEpisode& e,
                                              const RegressionEpisodeOptions& o) {
  const char* op = "bayes_optimal_prediction";
  const double noise_var = o.noise_std() * o.noise_std();
  switch (kind) {
    case RegressionKind::Linear: {
      TORCH_CHECK(o.noise_std() > 0 && o.weight_std() > 0, op,
                  ": the linear posterior needs noise_std > 0 and weight_std > 0, got noise_std = ",
                  o.noise_std(), ", weight_std = ", o.weight_std());
      const double weight_var = o.weight_std() * o.weight_std();
      return {ridge_posterior_mean(e.context_x, e.context_y, e.target_x, noise_var / weight_var),
              ridge_predictive_variance(e.context_x, e.target_x, noise_var, weight_var)};
    }
    case RegressionKind::GP: {
      TORCH_CHECK(e.length_scale.defined(), op,
                  ": episode.length_scale is undefined; pass an episode of the gp family");
      const double total_noise = noise_var + o.jitter();
      TORCH_CHECK(total_noise > 0, op, ": the gp posterior needs noise_std > 0 or jitter > 0");
      const double signal_var = o.signal_std() * o.signal_std();
      return {gp_posterior_mean(e.context_x, e.context_y, e.target_x, e.length_scale, signal_var,
                                total_noise),
              gp_posterior_variance(e.context_x, e.target_x, e.length_scale, signal_var,
                                    total_noise)};
    }
    case RegressionKind::Sinusoid:
      TORCH_CHECK(false, op,
                  ": the sinusoid family has no closed-form posterior; compare with "
                  "nearest_neighbour_predictor and zero_predictor");
  }
  TORCH_CHECK(false, op, ": invalid kind value ", static_cast<int>(kind));
}

}  // namespace data
}  // namespace kvq
