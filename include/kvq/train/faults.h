#pragma once
// Numerical faults of training: what one is (a non-finite loss or gradient, a failed
// factorisation), the check of an update for one, and the skip-or-stop rule of a run: a faulty
// update is skipped while the run's budget of skipped updates lasts, otherwise the run stops with
// NumericalFault naming the last good checkpoint.
#include <torch/torch.h>

#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <string>
#include <utility>

namespace kvq {
namespace train {

// One numerical fault of an update or an evaluation.
struct Fault {
  std::string quantity;  // "loss", "gradient of <parameter>", "factorisation"
  std::string where;     // "forward", "backward", "val", "test" (+ " on rank R" in a group)
  std::string message;   // the op's message (factorisation), else empty
  // "non-finite loss (forward)", "gradient of head.weight (backward)",
  // "factorisation (val): <message>".
  std::string describe() const;
};

// What a run throws when it stops on a numerical fault: a c10::Error whose message is several
// lines: what happened, at which step, where; the last good checkpoint; and how to resume
// (train_task adds the command lines).
class NumericalFault : public c10::Error {
 public:
  NumericalFault(std::string message, int64_t step, int64_t checkpoint_step)
      : c10::Error(c10::SourceLocation{__func__, __FILE__, static_cast<uint32_t>(__LINE__)},
                   std::move(message)),
        step_(step),
        checkpoint_step_(checkpoint_step) {}
  // The step of the fault (updates counted from 1, as in the metrics) and of the last
  // checkpoint on disk (-1: none yet, the run restarts from step 0).
  int64_t step() const { return step_; }
  int64_t checkpoint_step() const { return checkpoint_step_; }

 private:
  int64_t step_, checkpoint_step_;
};

// Whether `error` is a numerical failure of a factorisation or solve (the inputs were fine, the
// numbers were not): LibTorch's linalg errors (c10::LinAlgError: not positive-definite,
// singular) and kvq's Cholesky check ("not numerically positive definite").
bool is_factorisation_error(const c10::Error& error);

// The fault "factorisation" at `where` with the first line of `error`'s message.
Fault factorisation_fault(const c10::Error& error, const std::string& where);

// Checks a finished backward with one host synchronisation: sets `loss_value` to the loss and
// returns the fault when the loss or a gradient is not finite (the first parameter, by module
// path, whose gradient holds a NaN or an infinity; parameters without a gradient are skipped).
c10::optional<Fault> check_update(const torch::Tensor& loss, const torch::nn::Module& model,
                                  double& loss_value);

// The skip-or-stop rule: a run may skip `max_skipped` faulty updates in all (counted over the
// whole run, across resumes); a fault outside an update (an evaluation) always stops.
class FaultBudget {
 public:
  // `skipped`: updates the run has skipped already (a resumed run's count).
  FaultBudget(int64_t max_skipped, int64_t skipped);

  int64_t skipped() const { return skipped_; }
  // Whether a fault now would be skipped: in an update, with budget left.
  bool would_skip(bool in_update) const { return in_update && skipped_ < max_skipped_; }
  // Counts a skipped update; returns the note for the log, "step S/T: <fault>; update skipped
  // (k of at most max_skipped_steps = M)".
  std::string skip(const Fault& fault, int64_t step, int64_t total_steps);
  // The NumericalFault that stops the run at `step` (updates counted from 1) of `total_steps`,
  // naming `checkpoint_path` and its step (`checkpoint_step` -1: none written yet).
  NumericalFault stop(const Fault& fault, int64_t step, int64_t total_steps, bool in_update,
                      const std::string& checkpoint_path, int64_t checkpoint_step) const;

 private:
  int64_t max_skipped_, skipped_;
};

}  // namespace train
}  // namespace kvq
