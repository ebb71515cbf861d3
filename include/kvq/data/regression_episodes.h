#pragma once
// In-context regression episodes and their exact baselines (Intention paper, Garnelo & Czarnecki
// 2023, few-shot experiments; docs: tasks.md, "Experiments of the Intention paper", item 1).
//
// An episode is a fresh function per batch element: N context pairs (x, y) to condition on and M
// targets to predict. Families:
//   linear    y = w.x + eps,              x ~ N(0, I_dx), w ~ N(0, weight_std^2 I), eps ~ N(0, noise^2)
//   gp        y = f(x) + eps,             f ~ GP(0, s^2 exp(-|x - x'|^2 / (2 l^2))), x ~ U[-2, 2],
//                                         l ~ U[l_min, l_max] per episode (neural-process style)
//   sinusoid  y = A sin(x + phi) + eps,   A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5] (MAML)
//
// Baselines: the Bayes-optimal predictors (ridge posterior for linear, GP posterior for gp), the
// nearest neighbour and the zero predictor. They compute in float64 and return the dtype of their
// y (or x) input.
#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace kvq {
namespace data {

// The single list of family names. The project registry takes them from here.
inline constexpr std::array<const char*, 3> kRegressionKindNames = {"linear", "gp", "sinusoid"};

enum class RegressionKind { Linear, GP, Sinusoid };  // same order as kRegressionKindNames

std::vector<std::string> regression_kind_names();
std::string regression_kind_name(RegressionKind kind);
// Parses one of kRegressionKindNames; anything else throws, listing the valid names.
RegressionKind parse_regression_kind(const std::string& name);

struct RegressionEpisodeOptions {
  /// Context points N per episode. Default: 16.
  TORCH_ARG(int64_t, num_context) = 16;
  /// Target points M per episode. Default: 16.
  TORCH_ARG(int64_t, num_targets) = 16;
  /// Standard deviation of the observation noise eps on context and target y. Default: 0.1.
  TORCH_ARG(double, noise_std) = 0.1;
  /// Dtype of the episode tensors, kFloat32 or kFloat64 (draws are made in float64, then cast).
  /// Default: kFloat32.
  TORCH_ARG(torch::ScalarType, dtype) = torch::kFloat32;
  /// linear: input dimension dx (gp and sinusoid inputs are 1-D). Default: 8.
  TORCH_ARG(int64_t, x_dim) = 8;
  /// linear: prior standard deviation sigma_w of each weight. Default: 1.
  TORCH_ARG(double, weight_std) = 1.0;
  /// gp: inputs are uniform in [gp_x_min, gp_x_max]. Default: -2.
  TORCH_ARG(double, gp_x_min) = -2.0;
  /// gp: see gp_x_min. Default: 2.
  TORCH_ARG(double, gp_x_max) = 2.0;
  /// gp: the length scale l is uniform in [length_scale_min, length_scale_max] per episode; equal
  /// bounds give a fixed l. Default: 0.1 (the range of Kim et al. 2019, Attentive NPs).
  TORCH_ARG(double, length_scale_min) = 0.1;
  /// gp: see length_scale_min. Default: 0.6.
  TORCH_ARG(double, length_scale_max) = 0.6;
  /// gp: kernel amplitude s (k(x, x) = s^2). Default: 1.
  TORCH_ARG(double, signal_std) = 1.0;
  /// gp: jitter added to the kernel diagonal before the Cholesky factorisation (it is part of the
  /// sampled f, i.e. f has covariance K + jitter I). Default: 1e-8.
  TORCH_ARG(double, jitter) = 1e-8;
  /// sinusoid: amplitude A uniform in [amplitude_min, amplitude_max]. Default: 0.1.
  TORCH_ARG(double, amplitude_min) = 0.1;
  /// sinusoid: see amplitude_min. Default: 5.
  TORCH_ARG(double, amplitude_max) = 5.0;
  /// sinusoid: phase phi uniform in [phase_min, phase_max]. Default: 0.
  TORCH_ARG(double, phase_min) = 0.0;
  /// sinusoid: see phase_min. Default: pi.
  TORCH_ARG(double, phase_max) = 3.14159265358979323846;
  /// sinusoid: inputs are uniform in [sinusoid_x_min, sinusoid_x_max]. Default: -5.
  TORCH_ARG(double, sinusoid_x_min) = -5.0;
  /// sinusoid: see sinusoid_x_min. Default: 5.
  TORCH_ARG(double, sinusoid_x_max) = 5.0;
};

// A batch of B episodes, in options.dtype(). dx = x_dim for linear, 1 otherwise.
struct RegressionEpisode {
  torch::Tensor context_x;  // (B, N, dx)
  torch::Tensor context_y;  // (B, N, 1), noisy
  torch::Tensor target_x;   // (B, M, dx)
  torch::Tensor target_y;   // (B, M, 1), noisy, as observed
  torch::Tensor target_f;   // (B, M, 1), the noiseless function values
  // The latent function of each episode; undefined for the other families.
  torch::Tensor weights;       // linear: w (B, dx)
  torch::Tensor length_scale;  // gp: l (B)
  torch::Tensor amplitude;     // sinusoid: A (B)
  torch::Tensor phase;         // sinusoid: phi (B)
};

// B episodes of `kind`, drawn from one at::detail::createCPUGenerator(seed) (the global RNG is not
// touched), so a seed gives the same episodes on every run. Context and target points are drawn
// jointly (N + M points) and split, first N = context. Draw order, all float64:
//   linear    weights (B, dx), x (B, N + M, dx), eps (B, N + M)
//   gp        l (B), x (B, N + M), z (B, N + M) with f = chol(K + jitter I) z, eps (B, N + M)
//   sinusoid  A (B), phi (B), x (B, N + M), eps (B, N + M)
RegressionEpisode make_regression_episode(RegressionKind kind, int64_t batch_size, uint64_t seed,
                                          const RegressionEpisodeOptions& options = {});

// RBF kernel k(x, x') = signal_var exp(-|x - x'|^2 / (2 l^2)) with one l per batch element.
// x1 (B, P, dx), x2 (B, Q, dx), length_scale (B) or () -> (B, P, Q), computed in float64 from
// explicit differences, returned in x1's dtype.
torch::Tensor rbf_kernel(const torch::Tensor& x1, const torch::Tensor& x2,
                         const torch::Tensor& length_scale, double signal_var);

// Joint draws of a zero-mean GP at given inputs: f = L z, L L^T = K(x, x) + jitter I (float64
// Cholesky), z ~ N(0, I) from `generator`. x (B, P, dx), length_scale (B) or () -> f (B, P, 1) in
// x's dtype. make_regression_episode draws its gp functions through this, on its own generator.
torch::Tensor sample_gp_prior(const torch::Tensor& x, const torch::Tensor& length_scale,
                              double signal_var, double jitter, at::Generator generator);

// Ridge regression of y on x, evaluated at the targets:
//   mean = x*^T (X^T X + alpha I)^{-1} X^T y
// the posterior mean of y* for y = w.x + eps, w ~ N(0, sigma_w^2 I), eps ~ N(0, sigma^2), when
// alpha = sigma^2 / sigma_w^2 (Bayes-optimal under squared error for the linear family).
// context_x (B, N, dx), context_y (B, N, dy), target_x (B, M, dx), alpha > 0 -> (B, M, dy).
// This is what one intention head computes with keys X, values y, queries x*.
torch::Tensor ridge_posterior_mean(const torch::Tensor& context_x, const torch::Tensor& context_y,
                                   const torch::Tensor& target_x, double alpha);

// Posterior predictive variance of the linear family, per target:
//   var = sigma^2 (1 + x*^T (X^T X + alpha I)^{-1} x*)      (noisy targets y*)
//   var = sigma^2 x*^T (X^T X + alpha I)^{-1} x*            (noiseless f*, noisy_targets = false)
// with sigma^2 = noise_var, alpha = noise_var / weight_var. It is the expected squared error of
// ridge_posterior_mean(.., alpha) given the context, so its mean over targets and episodes is the
// Bayes-optimal MSE ("Bayes-optimal MSE" = mean of it; against target_y when noisy_targets).
// context_x (B, N, dx), target_x (B, M, dx), noise_var > 0, weight_var > 0 -> (B, M, 1).
torch::Tensor ridge_predictive_variance(const torch::Tensor& context_x,
                                        const torch::Tensor& target_x, double noise_var,
                                        double weight_var, bool noisy_targets = true);

// GP posterior mean with the RBF kernel k of rbf_kernel():
//   mean = K(x*, X) (K(X, X) + noise_var I)^{-1} y
// context_x (B, N, dx), context_y (B, N, dy), target_x (B, M, dx), length_scale (B) or (),
// signal_var > 0, noise_var > 0 -> (B, M, dy). Bayes-optimal for the gp family when l is known;
// with l drawn per episode, passing the episode's l makes it the oracle-l predictor (a lower bound
// that no predictor which must infer l reaches in general). For episodes with noise_std = 0 pass
// noise_var = the jitter the samples were drawn with.
torch::Tensor gp_posterior_mean(const torch::Tensor& context_x, const torch::Tensor& context_y,
                                const torch::Tensor& target_x, const torch::Tensor& length_scale,
                                double signal_var, double noise_var);

// GP posterior variance per target:
//   var = k(x*, x*) - K(x*, X) (K(X, X) + noise_var I)^{-1} K(X, x*)  (+ noise_var if noisy_targets)
// The expected squared error of gp_posterior_mean given the context; its mean is the
// (oracle-l) Bayes-optimal MSE. Arguments as gp_posterior_mean -> (B, M, 1).
torch::Tensor gp_posterior_variance(const torch::Tensor& context_x, const torch::Tensor& target_x,
                                    const torch::Tensor& length_scale, double signal_var,
                                    double noise_var, bool noisy_targets = true);

// The y of the context point closest to each target in Euclidean distance (ties: lowest index).
// context_x (B, N, dx) with N >= 1, context_y (B, N, dy), target_x (B, M, dx) -> (B, M, dy).
torch::Tensor nearest_neighbour_predictor(const torch::Tensor& context_x,
                                          const torch::Tensor& context_y,
                                          const torch::Tensor& target_x);

// The prior mean of every family: zeros (B, M, dy) in context_y's dtype.
// context_y (B, N, dy), target_x (B, M, dx).
torch::Tensor zero_predictor(const torch::Tensor& context_y, const torch::Tensor& target_x);

// Mean and per-target variance (noisy targets) of a predictor.
struct RegressionPrediction {
  torch::Tensor mean;      // (B, M, 1)
  torch::Tensor variance;  // (B, M, 1)
};

// The Bayes-optimal prediction for episodes of `kind` drawn with `options`:
//   linear  ridge_posterior_mean / ridge_predictive_variance, alpha = noise^2 / weight_std^2
//   gp      gp_posterior_mean / gp_posterior_variance with the episode's own l (oracle l) and
//           noise_var = noise^2 + jitter (the jitter is part of every sampled f)
// sinusoid has no closed form and throws. linear needs noise_std > 0.
RegressionPrediction bayes_optimal_prediction(RegressionKind kind, const RegressionEpisode& episode,
                                              const RegressionEpisodeOptions& options);

}  // namespace data
}  // namespace kvq
