#include "bench_command.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <malloc.h>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#ifdef KVQ_HAVE_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "device_option.h"
#include "kvq/functional/buffer_cache.h"
#include "kvq/functional/positional_encoding_2d.h"
#include "kvq/registry.h"
#include "kvq/train/flops.h"

namespace kvq {
namespace app {
namespace {

using functional::NaiveForm;
using functional::NaiveInputs;
using functional::NaiveShape;

using torch::Tensor;
using Clock = std::chrono::steady_clock;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int64_t kPosChannels = 10;  // p of the kv-pos table (the paper's synthetic tasks)
constexpr int64_t kGemmSize = 2048;
constexpr int kGemmRepeats = 5;
constexpr size_t kMaxRepeats = 1000;
// The gradients of alpha and of the kv-pos map are sums over every batch element, head row and
// token with heavy cancellation: in float32 both ours and the naive form are ~1e-4 off a float64
// result there (causal softmax-intention, T = 256), so they get a looser tolerance.
constexpr double kParamToleranceFactor = 10.0;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A field of /proc/self/status ("VmRSS:", "VmHWM:") in bytes; NaN where there is none.
double status_bytes(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field, 0) == 0) return std::stod(line.substr(field.size())) * 1024.0;
  }
  return kNaN;
}

// Waits for the work queued on `device` (a GPU); nothing on the CPU.
void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

// Peak memory while fn runs, above the memory in use before it, in bytes. On the CPU: free heap
// memory is returned to the system first (kvq's idle kernel buffers, kvq/functional/buffer_cache.h,
// then malloc_trim), then Linux's peak counter VmHWM is reset
// (/proc/self/clear_refs) and read afterwards. On a GPU: the CUDA caching allocator's peak of
// allocated bytes, reset before fn. Counts everything fn allocates: outputs, gradients, saved
// activations and workspaces. NaN where /proc is unavailable, or on a GPU without CUDA headers.
double peak_extra_bytes(const std::function<void()>& fn, const torch::Device& device) {
  if (device.is_cuda()) {
#ifdef KVQ_HAVE_CUDA
    namespace allocator = c10::cuda::CUDACachingAllocator;
    synchronize(device);
    const auto before = allocator::getDeviceStats(device.index()).allocated_bytes[0].current;
    allocator::resetPeakStats(device.index());
    fn();
    synchronize(device);
    return static_cast<double>(allocator::getDeviceStats(device.index()).allocated_bytes[0].peak -
                               before);
#else
    fn();
    return kNaN;
#endif
  }
  kvq::functional::empty_buffer_cache();
  malloc_trim(0);
  {
    std::ofstream reset("/proc/self/clear_refs");
    if (!reset || !(reset << "5")) return kNaN;
  }
  const double before = status_bytes("VmRSS:");
  fn();
  return status_bytes("VmHWM:") - before;
}

// Inputs of one configuration. `leaves` are the tensors the gradients are taken with respect to;
// with the kv projections q is the same tensor as k (tied projection), so dk collects both paths.
struct Problem {
  Tensor q, k, v, alpha, pos_weight, pos_bias, grad_out;
  std::vector<Tensor> leaves;
  std::vector<std::string> leaf_names;
};

Problem make_leaves(const MechanismInfo& info, const Tensor& q, const Tensor& k, const Tensor& v,
                    const Tensor& alpha, const Tensor& pos_weight, const Tensor& pos_bias,
                    const Tensor& grad_out) {
  Problem p;
  auto leaf = [&p](const Tensor& t, const char* name) {
    auto out = t.detach().clone().requires_grad_(true);
    p.leaves.push_back(out);
    p.leaf_names.push_back(name);
    return out;
  };
  const bool tied = info.projection != Projection::QKV;
  if (!tied) p.q = leaf(q, "q");
  p.k = leaf(k, "k");
  if (tied) p.q = p.k;
  p.v = leaf(v, "v");
  if (info.traits.uses_alpha) p.alpha = leaf(alpha, "alpha");
  if (info.projection == Projection::KVPos) {
    p.pos_weight = leaf(pos_weight, "pos_weight");
    p.pos_bias = leaf(pos_bias, "pos_bias");
  }
  p.grad_out = grad_out;
  return p;
}

// Random inputs with unit-scale entries; alpha = 1 per head; kv-pos weight (H, p) with unit-scale
// gain sum_c w_c, bias (H). Drawn on the CPU (the same inputs on every device), then moved.
Problem make_problem(const MechanismInfo& info, const ProblemSize& s, torch::ScalarType dtype,
                     uint64_t seed, const torch::Device& device) {
  torch::manual_seed(seed);
  auto opts = torch::TensorOptions().dtype(dtype);
  auto draw = [&](at::IntArrayRef sizes) { return torch::randn(sizes, opts).to(device); };
  auto q = draw({s.batch, s.heads, s.length, s.dim});
  auto k = draw({s.batch, s.heads, s.length, s.dim});
  auto v = draw({s.batch, s.heads, s.length, s.value_dim});
  auto grad_out = draw({s.batch, s.heads, s.length, s.value_dim});
  auto pos_weight = draw({s.heads, kPosChannels}) / std::sqrt(double(kPosChannels));
  auto pos_bias = draw({s.heads});
  return make_leaves(info, q, k, v, torch::ones({s.heads}, opts.device(device)), pos_weight,
                     pos_bias, grad_out);
}

// Batch element 0 and head 0 of `p`, as fresh leaves: the check of configurations whose full
// naive form does not fit in memory.
Problem slice_problem(const MechanismInfo& info, const Problem& p) {
  auto first = [](const Tensor& t) { return t.defined() ? t.slice(0, 0, 1).slice(1, 0, 1) : t; };
  auto head = [](const Tensor& t) { return t.defined() ? t.slice(0, 0, 1) : t; };
  return make_leaves(info, first(p.q), first(p.k), first(p.v), head(p.alpha), head(p.pos_weight),
                     head(p.pos_bias), first(p.grad_out));
}

// dropout > 0: attention dropout in training mode, for the mechanisms with a softmax.
Tensor run_ours(const MechanismInfo& info, const Problem& p, bool causal, double dropout = 0.0) {
  auto options = functional::AttentionFuncOptions().causal(causal);
  if (dropout > 0 && info.traits.has_softmax) options.dropout(dropout).training(true);
  return info.call({p.q, p.k, p.v, p.alpha, p.pos_weight, p.pos_bias}, options);
}

NaiveInputs naive_inputs(const Problem& p, const NaiveForm& form, bool causal) {
  NaiveInputs in;
  in.q = p.q;
  in.k = p.k;
  in.v = p.v;
  in.alpha = p.alpha;
  in.pos_weight = p.pos_weight;
  in.pos_bias = p.pos_bias;
  in.causal = causal;
  in.scale = 1.0 / std::sqrt(double(p.k.size(-1)));
  in.eps = functional::AttentionFuncOptions{}.eps();
  if (form.needs_pos_table) {
    const int64_t length = p.k.size(-2);
    in.pos_table = functional::positional_encoding_2d(length, length, p.pos_weight.size(-1),
                                                      p.k.options().requires_grad(false));
  }
  return in;
}

struct ForwardBackward {
  Tensor out;
  std::vector<Tensor> grads;
};

// One forward and the gradients of <out, grad_out> with respect to every leaf.
ForwardBackward forward_backward(const std::function<Tensor()>& forward, const Problem& p) {
  auto out = forward();
  auto grads = torch::autograd::grad({out}, p.leaves, {p.grad_out});
  return {out.detach(), grads};
}

// Normalised RMSE ||a - ref|| / ||ref||, computed in float64.
double nrmse(const Tensor& a, const Tensor& ref) {
  auto r = ref.detach().to(torch::kFloat64);
  const double diff = (a.detach().to(torch::kFloat64) - r).pow(2).sum().sqrt().item<double>();
  const double norm = r.pow(2).sum().sqrt().item<double>();
  return norm > 0 ? diff / norm : diff;
}

struct Agreement {
  double out_err = kNaN;
  double input_grad_err = kNaN;  // worst of dq, dk, dv
  double param_grad_err = kNaN;  // worst of dalpha, dpos_weight, dpos_bias (NaN when none)
  std::string worst_input, worst_param;
};

bool is_input(const std::string& leaf) { return leaf == "q" || leaf == "k" || leaf == "v"; }

// Output and gradient agreement, as normalised RMSE per tensor. Gradients that are zero in exact
// arithmetic and only rounding noise numerically (the kv-pos bias b0 cancels under the row
// softmax) would make that ratio meaningless: a gradient whose RMS is below 1e-4 of the largest
// one is measured on the scale of the largest instead.
Agreement agreement(const ForwardBackward& ours, const ForwardBackward& naive,
                    const std::vector<std::string>& names) {
  Agreement a;
  a.out_err = nrmse(ours.out, naive.out);
  auto rms = [](const Tensor& t) {
    return t.to(torch::kFloat64).pow(2).mean().sqrt().item<double>();
  };
  double largest = 0;
  for (const auto& g : naive.grads) largest = std::max(largest, rms(g));
  for (size_t i = 0; i < naive.grads.size(); ++i) {
    const double own = rms(naive.grads[i]);
    const double scale = own >= 1e-4 * largest ? own : largest;
    const double diff = rms(ours.grads[i].to(torch::kFloat64) - naive.grads[i].to(torch::kFloat64));
    const double err = scale > 0 ? diff / scale : diff;
    double& worst = is_input(names[i]) ? a.input_grad_err : a.param_grad_err;
    if (std::isnan(worst) || err > worst) {
      worst = err;
      (is_input(names[i]) ? a.worst_input : a.worst_param) = names[i];
    }
  }
  return a;
}

struct Timing {
  double min_ms = kNaN, median_ms = kNaN;
  int reps = 0;
};

// Times fn over repetitions until min_time seconds have passed (at least one). The caller has run
// fn once before (the verification run is the warm-up). The table reports the minimum: on a
// shared machine interference only ever adds time. On a GPU each repetition ends with a device
// synchronisation, so it counts the kernels fn queued.
Timing time_repeated(const std::function<void()>& fn, double min_time,
                     const torch::Device& device) {
  std::vector<double> ms;
  synchronize(device);
  const auto start = Clock::now();
  do {
    const auto t0 = Clock::now();
    fn();
    synchronize(device);
    ms.push_back(seconds_since(t0) * 1e3);
  } while (seconds_since(start) < min_time && ms.size() < kMaxRepeats);
  std::sort(ms.begin(), ms.end());
  const size_t mid = ms.size() / 2;
  Timing t;
  t.min_ms = ms.front();
  t.median_ms = ms.size() % 2 ? ms[mid] : 0.5 * (ms[mid - 1] + ms[mid]);
  t.reps = static_cast<int>(ms.size());
  return t;
}

struct Row {
  std::string mechanism;
  bool causal = false;
  int64_t length = 0;
  bool ran = false;     // ours was run (not skipped by a length limit)
  bool failed = false;  // disagreement or error
  Timing ours, naive;
  Timing ours_forward;  // the forward alone (with autograd recording, as in training)
  double ours_peak_bytes = kNaN, naive_peak_bytes = kNaN;  // peak_extra_bytes of one fwd+bwd
  double result_bytes = kNaN;  // the output and the input gradients, included in the peaks
  std::string naive_form;  // the naive form that was timed or checked; empty = none
  bool checked_on_slice = false;
  Agreement agree;
  Timing sdpa, sdpa_forward;   // at::scaled_dot_product_attention on the same q, k, v
  double sdpa_peak_bytes = kNaN;
  double flops = kNaN;  // 3 x analytic forward FLOPs of one forward+backward
  double gflops = kNaN, gemm_fraction = kNaN, tokens_per_s = kNaN;
  std::string note;
};

std::string format_num(double x, const char* fmt) {
  if (std::isnan(x)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof(buf), fmt, x);
  return buf;
}

double gib(double bytes) { return bytes / double(1ull << 30); }
constexpr double kMiB = double(1ull << 20);

// PyTorch's attention on one (causal, length) cell: measured once, shown beside every row.
struct SdpaCell {
  Timing both, forward;
  double peak_bytes = kNaN;
  Agreement agree;  // against kvq's softmax on the same inputs
};

struct Context {
  BenchOptions options;
  torch::ScalarType dtype;
  int64_t value_dim, chunk;
  double tolerance, param_tolerance, gemm_gflops;
  std::map<std::pair<bool, int64_t>, SdpaCell> sdpa;
};

// at::scaled_dot_product_attention (its CPU flash kernel in float32 and float64: tiled, causal
// blocks skipped) forward+backward on the softmax inputs of the cell, checked against kvq's
// softmax on the same inputs first.
SdpaCell measure_sdpa(const Context& ctx, bool causal, int64_t length) {
  const auto& o = ctx.options;
  const auto& softmax = find_mechanism("softmax");
  const ProblemSize dims{o.batch, o.heads, length, o.dim, ctx.value_dim};
  const auto p = make_problem(softmax, dims, ctx.dtype, o.seed + uint64_t(length), o.device);
  auto sdpa = [&] {
    return at::scaled_dot_product_attention(p.q, p.k, p.v, {}, 0.0, causal);
  };
  auto step = [&] { return forward_backward(sdpa, p); };
  SdpaCell cell;
  const auto ours = forward_backward([&] { return run_ours(softmax, p, causal); }, p);
  cell.agree = agreement(step(), ours, p.leaf_names);  // also the warm-up
  cell.peak_bytes = peak_extra_bytes([&] { step(); }, o.device);
  cell.both = time_repeated([&] { step(); }, o.min_time, o.device);
  cell.forward = time_repeated([&] { sdpa(); }, o.min_time, o.device);
  return cell;
}

// One (mechanism, causal, length) cell: check ours against the naive form (full size, or batch 0 /
// head 0 when the full naive form exceeds the memory budget), then time ours and the naive form.
Row bench_one(const Context& ctx, const MechanismInfo& info, bool causal, int64_t length) {
  const auto& o = ctx.options;
  Row row;
  row.mechanism = info.name;
  row.causal = causal;
  row.length = length;
  if (info.name == "kernel-intention" && length > o.kernel_max_len) {
    row.note = "skipped (O(T^3); --kernel-max-len " + std::to_string(o.kernel_max_len) + ")";
    return row;
  }
  row.ran = true;
  const ProblemSize dims{o.batch, o.heads, length, o.dim, ctx.value_dim};
  const int64_t element_size = c10::elementSize(ctx.dtype);
  const NaiveShape full{o.batch, o.heads, length, o.dim, ctx.value_dim, kPosChannels, element_size};
  const NaiveShape slice{1, 1, length, o.dim, ctx.value_dim, kPosChannels, element_size};
  const double budget = o.max_naive_gib * double(1ull << 30);

  // The first naive form that fits at full size; else the first that fits on the slice. A
  // mechanism without one is not timed: the bench only times what it can verify.
  const auto& forms = info.naive;
  const NaiveForm* chosen = nullptr;
  bool on_slice = false;
  std::string why_not;
  for (bool try_slice : {false, true}) {
    for (const auto& form : forms) {
      if (causal && form.max_causal_length > 0 && length > form.max_causal_length) {
        why_not = "naive skipped (time: causal T > " + std::to_string(form.max_causal_length) + ")";
        continue;
      }
      const double need = form.peak_bytes(try_slice ? slice : full, causal);
      if (need > budget) {
        if (!try_slice) {
          why_not = "naive skipped (memory: ~" + format_num(gib(need), "%.1f") + " GiB)";
        }
        continue;
      }
      chosen = &form;
      on_slice = try_slice;
      break;
    }
    if (chosen) break;
  }
  const auto problem = make_problem(info, dims, ctx.dtype, o.seed + uint64_t(length), o.device);
  auto ours_step = [&](const Problem& p) {
    return forward_backward([&] { return run_ours(info, p, causal); }, p);
  };
  // The verification run doubles as the warm-up of ours.
  auto ours_full = ours_step(problem);

  if (chosen) {
    row.naive_form = chosen->label;
    row.checked_on_slice = on_slice;
    const auto checked = on_slice ? slice_problem(info, problem) : problem;
    const auto ours_checked = on_slice ? ours_step(checked) : ours_full;
    const auto inputs = naive_inputs(checked, *chosen, causal);
    const auto naive_checked = forward_backward([&] { return chosen->fn(inputs); }, checked);
    row.agree = agreement(ours_checked, naive_checked, checked.leaf_names);
    row.failed =
        !(row.agree.out_err <= ctx.tolerance && row.agree.input_grad_err <= ctx.tolerance &&
          !(row.agree.param_grad_err > ctx.param_tolerance));
  }
  ours_full = {};

  // The check above ran without dropout (the naive form draws other masks); the timings use it.
  auto timed_step = [&] {
    forward_backward([&] { return run_ours(info, problem, causal, o.dropout); }, problem);
  };
  row.ours_peak_bytes = peak_extra_bytes(timed_step, o.device);
  row.result_bytes = double(problem.grad_out.numel()) * element_size;
  for (const auto& leaf : problem.leaves) row.result_bytes += double(leaf.numel()) * element_size;
  row.ours = time_repeated(timed_step, o.min_time, o.device);
  row.ours_forward = time_repeated([&] { run_ours(info, problem, causal, o.dropout); },
                                   o.min_time, o.device);
  if (chosen && !on_slice) {
    const auto inputs = naive_inputs(problem, *chosen, causal);
    auto naive_step = [&] { forward_backward([&] { return chosen->fn(inputs); }, problem); };
    row.naive_peak_bytes = peak_extra_bytes(naive_step, o.device);
    row.naive = time_repeated(naive_step, o.min_time, o.device);
  }

  if (o.sdpa) {
    const auto& cell = ctx.sdpa.at({causal, length});
    row.sdpa = cell.both;
    row.sdpa_forward = cell.forward;
    row.sdpa_peak_bytes = cell.peak_bytes;
  }

  const double flops = 3 * info.forward_flops(dims, causal, ctx.chunk);
  if (flops > 0) {
    row.gflops = flops / (row.ours.min_ms * 1e-3) / 1e9;
    row.gemm_fraction = row.gflops / ctx.gemm_gflops;
  }
  row.tokens_per_s = double(o.batch) * length / (row.ours.min_ms * 1e-3);
  row.flops = flops;

  std::vector<std::string> notes;
  if (row.failed) notes.push_back("FAILED: error above tolerance");
  if (!chosen || on_slice) notes.push_back(why_not);
  if (on_slice) notes.push_back("checked on batch 0, head 0");
  if (chosen && chosen != &forms.front()) notes.push_back("naive: " + chosen->label + " form");
  for (size_t i = 0; i < notes.size(); ++i) row.note += (i ? "; " : "") + notes[i];
  return row;
}

std::string progress_line(const Row& row, size_t index, size_t total, double elapsed) {
  std::ostringstream out;
  char head[96];
  std::snprintf(head, sizeof(head), "[%2zu/%zu] %-18s %-6s T=%-5lld", index, total,
                row.mechanism.c_str(), row.causal ? "causal" : "full",
                static_cast<long long>(row.length));
  out << head;
  if (row.ran) {
    out << " ours " << format_num(row.ours.min_ms, "%.1f") << " ms";
    if (!std::isnan(row.naive.min_ms)) {
      out << ", naive " << format_num(row.naive.min_ms, "%.1f") << " ms (x"
          << format_num(row.naive.min_ms / row.ours.min_ms, "%.2f") << ")";
    }
    if (!std::isnan(row.sdpa.min_ms)) {
      out << ", sdpa " << format_num(row.sdpa.min_ms, "%.1f") << " ms (x"
          << format_num(row.sdpa.min_ms / row.ours.min_ms, "%.2f") << ")";
    }
    if (!row.naive_form.empty()) {
      out << ", err " << format_num(row.agree.out_err, "%.1e") << "/"
          << format_num(row.agree.input_grad_err, "%.1e") << "/"
          << format_num(row.agree.param_grad_err, "%.1e");
    }
  }
  if (!row.note.empty()) out << "  " << row.note;
  out << "  [" << format_num(elapsed, "%.0f") << " s]";
  return out.str();
}

void print_table(std::ostream& out, const std::vector<Row>& rows, const Context& ctx,
                 double total_seconds) {
  const auto& o = ctx.options;
  out << "kvq bench: B=" << o.batch << " H=" << o.heads << " d=" << o.dim << " dv=" << ctx.value_dim
      << " " << o.dtype << " on " << o.device << ", " << at::get_num_threads()
      << " threads, LibTorch " << TORCH_VERSION
      << "; gemm (torch::mm " << kGemmSize << "^2 " << o.dtype << ", best of " << kGemmRepeats
      << "): " << format_num(ctx.gemm_gflops, "%.1f") << " GFLOP/s\n\n";
  char line[320];
  const char* columns_fmt =
      "%-18s %-6s %5s %10s %8s %10s %7s %9s %8s %7s %8s %6s %8s %9s %9s %8s %8s %8s %8s";
  std::snprintf(line, sizeof(line), columns_fmt, "mechanism", "causal", "T", "ours ms", "fwd ms",
                "naive ms", "speedup", "sdpa ms", "sdpa fwd", "vs sdpa", "GFLOP/s", "%gemm",
                "Ktok/s", "ours MiB", "sdpa MiB", "naive MiB", "out err", "grad err", "par err");
  out << line << "  notes\n";
  for (const auto& r : rows) {
    const double speedup = r.naive.min_ms / r.ours.min_ms;
    std::snprintf(line, sizeof(line), columns_fmt, r.mechanism.c_str(), r.causal ? "yes" : "no",
                  std::to_string(r.length).c_str(), format_num(r.ours.min_ms, "%.2f").c_str(),
                  format_num(r.ours_forward.min_ms, "%.2f").c_str(),
                  format_num(r.naive.min_ms, "%.2f").c_str(), format_num(speedup, "%.2f").c_str(),
                  format_num(r.sdpa.min_ms, "%.2f").c_str(),
                  format_num(r.sdpa_forward.min_ms, "%.2f").c_str(),
                  format_num(r.sdpa.min_ms / r.ours.min_ms, "%.2f").c_str(),
                  format_num(r.gflops, "%.1f").c_str(),
                  format_num(100 * r.gemm_fraction, "%.1f").c_str(),
                  format_num(r.tokens_per_s / 1e3, "%.1f").c_str(),
                  format_num(r.ours_peak_bytes / kMiB, "%.0f").c_str(),
                  format_num(r.sdpa_peak_bytes / kMiB, "%.0f").c_str(),
                  format_num(r.naive_peak_bytes / kMiB, "%.0f").c_str(),
                  format_num(r.agree.out_err, "%.1e").c_str(),
                  format_num(r.agree.input_grad_err, "%.1e").c_str(),
                  format_num(r.agree.param_grad_err, "%.1e").c_str());
    out << line << (r.note.empty() ? "" : "  ") << r.note << "\n";
  }
  out << "\n"
      << "times: minimum of forward+backward (autograd grad of a fixed random dO w.r.t. every "
         "input)"
         " over repetitions until --min-time "
      << o.min_time << " s (at least one), after one warm-up run (the verification run).\n"
      << (o.dropout > 0 ? "ours ms, fwd ms and ours MiB: with attention dropout " +
                              format_num(o.dropout, "%.2f") +
                              " in training mode (mechanisms with a softmax); the check against"
                              " the naive form, and the naive and sdpa columns, are without.\n"
                        : std::string())
      << "fwd ms: the forward alone, timed the same way (autograd recording on, as in training);"
         " the backward is ours ms - fwd ms.\n"
      << "sdpa: at::scaled_dot_product_attention (PyTorch's fused attention: on the CPU its flash "
         "kernel) on the softmax inputs of the same B, H, T, d and causal mode, timed the same way;"
         " vs sdpa = sdpa ms / ours ms (above 1: ours is faster).\n"
      << "speedup = naive ms / ours ms. GFLOP/s = 3 x analytic forward FLOPs (fwd+bwd taken as 3x"
         " forward; formulas in src/registry.cpp) / ours time; %gemm = that / the gemm rate.\n"
      << "MiB: peak memory of one forward+backward above the level before it (Linux VmHWM on"
         " the CPU, the CUDA caching allocator's peak on a GPU), including the output and the"
         " input gradients (the 'result' MiB in --json).\n"
      << "err: normalised RMSE ||ours - naive|| / ||naive|| of the output, the worst of dq/dk/dv"
         " (grad) and the worst of dalpha/dpos_weight/dpos_bias (par); tolerance "
      << format_num(ctx.tolerance, "%.0e") << " (par " << format_num(ctx.param_tolerance, "%.0e")
      << ": sums over all tokens with cancellation).\n"
      << (o.device.is_cpu()
              ? "ours: the softmax family runs the tiled kernels (src/kernels/cpu); kv-pos with"
                " kv_pos_key_terms.\n"
              : "ours: on a GPU the mechanisms run their composite ATen forms (softmax through"
                " PyTorch's fused attention where it applies); kv-pos with kv_pos_key_terms.\n")
      << "naive forms (src/functional/<family>/naive_forms.cpp): softmax/kv dense matmul-masked_fill-softmax-matmul;"
         " kv-pos broadcast (B,H,T,T,p) + Linear(p,1), or 'bias' = kv_pos_score_terms + dense;\n"
         "  linear causal cumsum of (B,H,T,d,dv) outer products; intention/softmax-intention"
         " causal (B,H,T,d,d) cumulative Grams + batched Cholesky; kernel-intention dense LU solve,"
         " causal one prefix solve per query.\n"
      << "skipped naive forms (memory over --max-naive-gib " << o.max_naive_gib
      << ", or O(T^4) time) are checked on batch 0, head 0 instead and not timed.\n"
      << "total " << format_num(total_seconds, "%.1f") << " s\n";
}

nlohmann::json to_json(const std::vector<Row>& rows, const Context& ctx, double total_seconds) {
  const auto& o = ctx.options;
  nlohmann::json j;
  j["machine"] = {
      {"threads", at::get_num_threads()},
      {"device", o.device.str()},
      {"hardware_concurrency", std::thread::hardware_concurrency()},
      {"torch_version", TORCH_VERSION},
      {"gemm_gflops", ctx.gemm_gflops},
      {"gemm", "torch::mm " + std::to_string(kGemmSize) + "x" + std::to_string(kGemmSize) + " " +
                   o.dtype + ", best of " + std::to_string(kGemmRepeats)}};
  j["config"] = {{"batch", o.batch},
                 {"heads", o.heads},
                 {"dim", o.dim},
                 {"value_dim", ctx.value_dim},
                 {"lengths", o.lengths},
                 {"causal", o.causal},
                 {"dtype", o.dtype},
                 {"min_time_s", o.min_time},
                 {"max_naive_gib", o.max_naive_gib},
                 {"kernel_max_len", o.kernel_max_len},
                 {"tolerance", ctx.tolerance},
                 {"parameter_tolerance", ctx.param_tolerance},
                 {"seed", o.seed},
                 {"dropout", o.dropout},
                 {"chunk_size", ctx.chunk}};
  j["notes"] = {{"time",
                 "ms of forward+backward, repeated until min_time_s (>= 1 repetition) "
                 "after one warm-up; *_ms is the minimum, *_median_ms the median"},
                {"gflops", "3 x analytic forward FLOPs / ours time"},
                {"error", "normalised RMSE vs the naive form; gradients: worst tensor"}};
  auto rows_json = nlohmann::json::array();
  for (const auto& r : rows) {
    rows_json.push_back({{"mechanism", r.mechanism},
                         {"causal", r.causal},
                         {"length", r.length},
                         {"ran", r.ran},
                         {"failed", r.failed},
                         {"ours_ms", r.ours.min_ms},
                         {"ours_median_ms", r.ours.median_ms},
                         {"ours_reps", r.ours.reps},
                         {"ours_forward_ms", r.ours_forward.min_ms},
                         {"naive_ms", r.naive.min_ms},
                         {"naive_median_ms", r.naive.median_ms},
                         {"naive_reps", r.naive.reps},
                         {"naive_form", r.naive_form},
                         {"ours_peak_extra_bytes", r.ours_peak_bytes},
                         {"naive_peak_extra_bytes", r.naive_peak_bytes},
                         {"result_bytes", r.result_bytes},
                         {"speedup", r.naive.min_ms / r.ours.min_ms},
                         {"flops", r.flops},
                         {"gflops", r.gflops},
                         {"gemm_fraction", r.gemm_fraction},
                         {"tokens_per_s", r.tokens_per_s},
                         {"output_error", r.agree.out_err},
                         {"input_gradient_error", r.agree.input_grad_err},
                         {"input_gradient_worst", r.agree.worst_input},
                         {"parameter_gradient_error", r.agree.param_grad_err},
                         {"parameter_gradient_worst", r.agree.worst_param},
                         {"checked_on_slice", r.checked_on_slice},
                         {"sdpa_ms", r.sdpa.min_ms},
                         {"sdpa_median_ms", r.sdpa.median_ms},
                         {"sdpa_forward_ms", r.sdpa_forward.min_ms},
                         {"sdpa_peak_extra_bytes", r.sdpa_peak_bytes},
                         {"sdpa_over_ours", r.sdpa.min_ms / r.ours.min_ms},
                         {"note", r.note}});
  }
  j["rows"] = rows_json;
  auto sdpa_json = nlohmann::json::array();
  for (const auto& [key, cell] : ctx.sdpa) {
    sdpa_json.push_back({{"causal", key.first},
                         {"length", key.second},
                         {"ms", cell.both.min_ms},
                         {"forward_ms", cell.forward.min_ms},
                         {"peak_extra_bytes", cell.peak_bytes},
                         {"output_error_vs_kvq_softmax", cell.agree.out_err},
                         {"input_gradient_error_vs_kvq_softmax", cell.agree.input_grad_err}});
  }
  j["sdpa"] = sdpa_json;
  j["total_seconds"] = total_seconds;
  return j;
}

}  // namespace

bool run_bench(const BenchOptions& options) {
  const auto start = Clock::now();
  std::ofstream json_file;
  if (!options.json_path.empty()) {
    json_file.open(options.json_path);
    if (!json_file)
      throw std::runtime_error("cannot write --json file '" + options.json_path + "'");
  }
  Context ctx;
  ctx.options = options;
  ctx.dtype = options.dtype == "float64" ? torch::kFloat64 : torch::kFloat32;
  ctx.value_dim = options.value_dim > 0 ? options.value_dim : options.dim;
  const int64_t chunk_option = functional::AttentionFuncOptions{}.chunk_size();
  ctx.chunk = chunk_option > 0 ? chunk_option : options.dim;  // 0 = the head width
  ctx.tolerance =
      options.tolerance > 0 ? options.tolerance : (ctx.dtype == torch::kFloat64 ? 1e-9 : 1e-4);
  ctx.param_tolerance = kParamToleranceFactor * ctx.tolerance;

  std::vector<const MechanismInfo*> selected;
  if (options.mechanisms.empty()) {
    for (const auto& info : mechanisms()) selected.push_back(&info);
  } else {
    for (const auto& name : options.mechanisms) selected.push_back(&find_mechanism(name));
  }
  for (const auto* info : selected) {
    TORCH_CHECK(!info->naive.empty(), "kvq bench: mechanism '", info->name,
                "' has no naive form in its registry row (MechanismInfo::naive), so its results "
                "cannot be checked; the bench times only what it checks");
  }
  std::vector<bool> causal_modes;
  if (options.causal != "on") causal_modes.push_back(false);
  if (options.causal != "off") causal_modes.push_back(true);

  // The machine's dense-product ceiling that the mechanisms' GFLOP/s are compared with.
  ctx.gemm_gflops =
      train::measure_gemm_flops(ctx.dtype, options.device, kGemmSize, kGemmRepeats) / 1e9;
  std::cerr << "kvq bench: gemm " << format_num(ctx.gemm_gflops, "%.1f") << " GFLOP/s on "
            << options.device << ", " << at::get_num_threads() << " threads\n";

  if (options.sdpa) {
    for (bool causal : causal_modes) {
      for (int64_t length : options.lengths) {
        const auto cell = measure_sdpa(ctx, causal, length);
        ctx.sdpa[{causal, length}] = cell;
        std::cerr << "[sdpa] " << (causal ? "causal" : "full  ") << " T=" << length << " "
                  << format_num(cell.both.min_ms, "%.1f") << " ms (fwd "
                  << format_num(cell.forward.min_ms, "%.1f") << "), "
                  << format_num(cell.peak_bytes / kMiB, "%.0f") << " MiB; vs kvq softmax err "
                  << format_num(cell.agree.out_err, "%.1e") << "/"
                  << format_num(cell.agree.input_grad_err, "%.1e") << std::endl;
      }
    }
  }

  const size_t total = selected.size() * causal_modes.size() * options.lengths.size();
  std::vector<Row> rows;
  for (const auto* info : selected) {
    for (bool causal : causal_modes) {
      for (int64_t length : options.lengths) {
        Row row;
        try {
          row = bench_one(ctx, *info, causal, length);
        } catch (const c10::Error& e) {
          row.mechanism = info->name;
          row.causal = causal;
          row.length = length;
          row.failed = true;
          const std::string what = e.what_without_backtrace();
          row.note = "FAILED: " + what.substr(0, what.find('\n'));
        }
        rows.push_back(row);
        std::cerr << progress_line(row, rows.size(), total, seconds_since(start)) << std::endl;
      }
    }
  }

  const double total_seconds = seconds_since(start);
  print_table(std::cout, rows, ctx, total_seconds);
  if (json_file.is_open()) json_file << to_json(rows, ctx, total_seconds).dump(2) << "\n";

  size_t failures = 0;
  for (const auto& r : rows) failures += r.failed;
  if (failures > 0) {
    std::cerr << "kvq bench: " << failures << " configuration(s) FAILED (ours and naive disagree"
              << " beyond " << format_num(ctx.tolerance, "%.0e") << ", or an error); see notes\n";
  }
  return failures == 0;
}

// CLI11's PositiveNumber prints its range as 0 to 1.8e308; this says what it wants.
CLI::Validator positive_integer() {
  return CLI::Validator(
      [](std::string& input) -> std::string {
        std::istringstream in(input);
        long long value = 0;
        if (!(in >> value) || !in.eof() || value < 1)
          return "expected a positive integer, got " + input;
        return {};
      },
      "POSITIVE");
}

void add_bench_command(CLI::App& app) {
  auto options = std::make_shared<BenchOptions>();
  auto* cmd = app.add_subcommand(
      "bench",
      "Time forward+backward of each mechanism against its naive LibTorch form, after checking "
      "that outputs and gradients agree, and beside PyTorch's scaled_dot_product_attention");
  cmd->add_option("--batch", options->batch, "Batch size B")
      ->check(positive_integer())
      ->capture_default_str()
      ->group("Problem");
  cmd->add_option("--heads", options->heads, "Heads H")
      ->check(positive_integer())
      ->capture_default_str()
      ->group("Problem");
  cmd->add_option("--dim", options->dim, "Query/key width d")
      ->check(positive_integer())
      ->capture_default_str()
      ->group("Problem");
  cmd->add_option("--value-dim", options->value_dim, "Value width dv (0 = --dim)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str()
      ->group("Problem");
  cmd->add_option("--lengths", options->lengths, "Sequence lengths, comma-separated")
      ->delimiter(',')
      ->check(positive_integer())
      ->default_str("256,512,1024,2048,4096")
      ->group("Problem");
  cmd->add_option("--dtype", options->dtype, "Element type")
      ->check(CLI::IsMember({"float32", "float64"}))
      ->capture_default_str()
      ->group("Problem");
  std::string names;
  for (const auto& name : mechanism_names()) names += (names.empty() ? "" : ",") + name;
  cmd->add_option("--mechanisms", options->mechanisms,
                  "Mechanisms, comma-separated (default: all registered: " + names + ")")
      ->delimiter(',')
      ->group("Selection");
  cmd->add_option("--causal", options->causal, "Causal mode: both, on or off")
      ->check(CLI::IsMember({"both", "on", "off"}))
      ->capture_default_str()
      ->group("Selection");
  cmd->add_option(
         "--min-time", options->min_time,
         "Repeat each timing until this many seconds (at least once); the minimum is reported")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str()
      ->group("Timing");
  cmd->add_option("--max-naive-gib", options->max_naive_gib,
                  "Skip timing naive forms estimated above this peak memory (checked on one "
                  "batch element and head instead)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str()
      ->group("Limits");
  cmd->add_option("--kernel-max-len", options->kernel_max_len,
                  "Run kernel-intention (O(T^3)) only up to this length")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str()
      ->group("Limits");
  cmd->add_option("--tolerance", options->tolerance,
                  "Normalised RMSE above which ours and naive disagree (0 = 1e-4 float32, "
                  "1e-9 float64)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str()
      ->group("Limits");
  cmd->add_option("--seed", options->seed, "Seed of the random inputs")
      ->capture_default_str()
      ->group("Problem");
  cmd->add_option("--dropout", options->dropout,
                  "Attention dropout in training mode in the timings of ours (softmax mechanisms; "
                  "the check against the naive form runs without it)")
      ->check(CLI::Range(0.0, 0.999999))
      ->capture_default_str()
      ->group("Problem");
  cmd->add_flag("--sdpa,!--no-sdpa", options->sdpa,
               "Time PyTorch's scaled_dot_product_attention on the same inputs beside every row")
      ->capture_default_str()
      ->group("Selection");
  cmd->add_option("--json", options->json_path, "Also write the table and machine info as JSON")
      ->group("Output");
  auto device = std::make_shared<std::string>("cpu");
  add_device_option(cmd, *device);
  cmd->callback([options, device] {
    options->device = checked_device(*device);
    for (const auto& name : options->mechanisms) find_mechanism(name);  // fail before any work
    if (!run_bench(*options)) throw CLI::RuntimeError(2);
  });
}

}  // namespace app
}  // namespace kvq
