#include "kvq/train/faults.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <vector>

namespace kvq {
namespace train {

namespace {

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

std::string position(int64_t step, int64_t total_steps, bool in_update) {
  return (in_update ? "step " : "evaluation after step ") + std::to_string(step) + "/" +
         std::to_string(total_steps);
}

}  // namespace

std::string Fault::describe() const {
  std::string out = quantity == "loss" ? "non-finite loss" : quantity;
  out += " (" + where + ")";
  if (!message.empty()) out += ": " + message;
  return out;
}

bool is_factorisation_error(const c10::Error& error) {
  if (dynamic_cast<const c10::LinAlgError*>(&error) != nullptr) return true;
  const std::string message = error.what_without_backtrace();
  return message.find("not numerically positive definite") != std::string::npos;
}

Fault factorisation_fault(const c10::Error& error, const std::string& where) {
  return {"factorisation", where, first_line(error.what_without_backtrace())};
}

// [loss, sum(grad_0), ...] is stacked on the device and copied once (a sum is non-finite when
// any entry is NaN or infinite); only then are the gradients scanned one by one.
c10::optional<Fault> check_update(const torch::Tensor& loss, const torch::nn::Module& model,
                                  double& loss_value) {
  const auto params = model.named_parameters(/*recurse=*/true);
  std::vector<torch::Tensor> sums = {loss.detach().reshape({}).to(torch::kFloat64)};
  for (const auto& item : params) {
    const auto& grad = item.value().grad();
    if (grad.defined()) sums.push_back(grad.sum().to(torch::kFloat64));
  }
  const auto host = torch::stack(sums).to(torch::kCPU);
  const double* values = host.data_ptr<double>();
  loss_value = values[0];
  if (!std::isfinite(loss_value)) return Fault{"loss", "forward", ""};
  if (std::all_of(values, values + host.numel(), [](double x) { return std::isfinite(x); })) {
    return c10::nullopt;
  }
  for (const auto& item : params) {  // a sum can also overflow: check the entries themselves
    const auto& grad = item.value().grad();
    if (grad.defined() && !grad.isfinite().all().item<bool>()) {
      return Fault{"gradient of " + item.key(), "backward", ""};
    }
  }
  return c10::nullopt;
}

FaultBudget::FaultBudget(int64_t max_skipped, int64_t skipped)
    : max_skipped_(max_skipped), skipped_(skipped) {
  TORCH_CHECK(max_skipped >= 0 && skipped >= 0,
              "FaultBudget: max_skipped and skipped must be >= 0, got ", max_skipped, " and ",
              skipped);
}

std::string FaultBudget::skip(const Fault& fault, int64_t step, int64_t total_steps) {
  ++skipped_;
  return position(step, total_steps, true) + ": " + fault.describe() + "; update skipped (" +
         std::to_string(skipped_) +
         " of at most max_skipped_steps = " + std::to_string(max_skipped_) + ")";
}

NumericalFault FaultBudget::stop(const Fault& fault, int64_t step, int64_t total_steps,
                                 bool in_update, const std::string& checkpoint_path,
                                 int64_t checkpoint_step) const {
  std::ostringstream out;
  out << "train: numerical fault at " << position(step, total_steps, in_update) << ": "
      << fault.describe() << "\n  ";
  if (in_update) {
    out << skipped_ << " update(s) skipped before, max_skipped_steps = " << max_skipped_
        << ": the run stops\n  ";
  }
  if (checkpoint_step >= 0) {
    out << "the last good checkpoint " << checkpoint_path << " (step " << checkpoint_step
        << ") is intact";
  } else {
    out << "no checkpoint was written yet: a resume starts again at step 0";
  }
  return NumericalFault(out.str(), step, checkpoint_step);
}

}  // namespace train
}  // namespace kvq
