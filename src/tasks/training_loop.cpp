#include "kvq/tasks/training_loop.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>

#include "kvq/util/atomic_file.h"
#include "kvq/train/checkpoint.h"
#include "kvq/train/metrics_log.h"
#include "kvq/train/progress.h"

namespace kvq {
namespace tasks {

namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kBestFile = "best.pt";
constexpr const char* kResultsFile = "results.json";

// Running sums of the train records between two log lines; kept in the checkpoint so that a
// resumed run writes the same records as an uninterrupted one.
struct Window {
  double loss_sum = 0;
  int64_t correct = 0, items = 0, steps = 0;
  nlohmann::json to_json() const {
    return {{"loss_sum", loss_sum}, {"correct", correct}, {"items", items}, {"steps", steps}};
  }
  static Window from_json(const nlohmann::json& j) {
    Window w;
    w.loss_sum = j.at("loss_sum").get<double>();
    w.correct = j.at("correct").get<int64_t>();
    w.items = j.at("items").get<int64_t>();
    w.steps = j.at("steps").get<int64_t>();
    return w;
  }
};

bool has_test_record(const std::string& metrics_path) {
  std::error_code ec;
  if (!std::filesystem::exists(metrics_path, ec)) return false;
  for (const auto& r : train::read_metrics(metrics_path)) {
    if (r.value("split", "") == "test") return true;
  }
  return false;
}

nlohmann::json record(int64_t step, const std::string& split, const nlohmann::json& metrics) {
  nlohmann::json r = {{"step", step}, {"split", split}};
  for (const auto& [key, value] : metrics.items()) {
    if (value.is_number()) r[key] = value;
  }
  return r;
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// Whether `e` is a numerical failure of a factorisation or solve (the inputs were fine, the
// numbers were not): LibTorch's linalg errors (c10::LinAlgError: not positive-definite,
// singular) and kvq's Cholesky check (functional/least_squares.h).
bool is_factorisation_error(const c10::Error& e) {
  if (dynamic_cast<const c10::LinAlgError*>(&e) != nullptr) return true;
  const std::string message = e.what_without_backtrace();
  return message.find("not numerically positive definite") != std::string::npos;
}

// One numerical fault of an update or an evaluation.
struct Fault {
  std::string quantity;  // "loss", "gradient of <parameter>", "factorisation"
  std::string where;     // "forward", "backward", "validation", "test"
  std::string message;   // the op's message (factorisation), else empty
  std::string describe() const {
    std::string out = quantity == "loss" ? "non-finite loss" : quantity;
    out += " (" + where + ")";
    if (!message.empty()) out += ": " + message;
    return out;
  }
};

// The loss value of a finished backward and whether it and every gradient are finite, with one
// host synchronisation: [loss, sum(grad_0), ...] is stacked on the device and copied once (a sum
// is non-finite when any entry is NaN or infinite). Only then are the gradients scanned one by
// one, to name the first parameter, by module path, whose gradient holds a NaN or an infinity;
// parameters without a gradient are skipped.
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

void check_loop(const TrainingLoop& loop) {
  TORCH_CHECK(loop.model != nullptr && loop.optimizer != nullptr,
              "run_training_loop: model and optimizer must be set");
  TORCH_CHECK(loop.loss && loop.evaluate,
              "run_training_loop: the loss and evaluate callbacks must be set");
  TORCH_CHECK(loop.total_steps >= 1, "run_training_loop: total_steps must be >= 1, got ",
              loop.total_steps);
  TORCH_CHECK(loop.steps_per_epoch >= 0 && loop.log_every >= 1 && loop.eval_every >= 0 &&
                  loop.checkpoint_every >= 0 && loop.max_skipped_steps >= 0,
              "run_training_loop: steps_per_epoch, eval_every, checkpoint_every and "
              "max_skipped_steps must be >= 0 and log_every >= 1");
}

// What one update leaves for the train record.
struct UpdateResult {
  double lr = 0;
  BatchLoss batch;
  double loss_value = 0;  // the loss as a number (NaN-free unless faulty)
  bool faulty = false;    // the update was skipped for a numerical fault
};

// One call of run_training_loop, as named steps: restore (resume), begin, then per update
// update / log_train / validate / checkpoint, and finish (test, results.json). The step
// functions share the run's state below.
class LoopRun {
 public:
  LoopRun(const TrainingLoop& loop, const train::RunDir& run, const TrainContext& context)
      : loop_(loop),
        run_(run),
        context_(context),
        model_(*loop.model),
        optimizer_(*loop.optimizer),
        total_(loop.total_steps),
        results_path_(run.file(kResultsFile).string()),
        metrics_path_(run.metrics_path().string()),
        checkpoint_path_(run.checkpoint_path().string()),
        best_path_(run.file(kBestFile).string()) {
    state_.schedule = train::to_json(loop.schedule);
    state_.extra = {{"window", Window{}.to_json()},
                    {"best_val", nullptr},
                    {"best_step", -1},
                    {"train_seconds", 0.0},
                    {"skipped", 0}};
  }

  int64_t step() const { return state_.step; }

  // With context.resume and a checkpoint in the run: loads it into model, optimiser and sampler
  // and checks its schedule. Returns results.json when that run had already finished.
  c10::optional<nlohmann::json> restore() {
    if (!context_.resume || !run_.has_checkpoint()) return c10::nullopt;
    state_ = train::load_checkpoint(checkpoint_path_, model_, optimizer_);
    checkpoint_step_ = state_.step;
    // A resume that changes the learning rate (train_task allows it, see TrainContext) changes
    // the schedule's rates, not its shape.
    const auto wanted = train::to_json(loop_.schedule);
    auto saved_shape = state_.schedule, wanted_shape = wanted;
    for (const char* rate : {"base_lr", "min_lr", "factor"}) {
      saved_shape.erase(rate);
      wanted_shape.erase(rate);
    }
    TORCH_CHECK(state_.schedule == wanted ||
                    (!context_.resume_changes.empty() && saved_shape == wanted_shape),
                "resume: ", checkpoint_path_, " was written with schedule ",
                state_.schedule.dump(), ", the config gives ", wanted.dump());
    state_.schedule = wanted;
    if (loop_.sampler != nullptr) loop_.sampler->load_state(state_.data);
    std::error_code ec;
    if (state_.step >= total_ && std::filesystem::exists(results_path_, ec)) {
      return nlohmann::json::parse(util::read_file(results_path_, "resume"));
    }
    return c10::nullopt;
  }

  // Drops the metrics records past the checkpoint (they belong to the interrupted
  // continuation; none for a new run), takes the counters out of the state, opens the progress
  // bar and the metrics log, and starts the clocks.
  void begin() {
    train::truncate_metrics(metrics_path_, state_.step);
    window_ = Window::from_json(state_.extra.at("window"));
    best_ = state_.extra.at("best_val");
    best_step_ = state_.extra.at("best_step").get<int64_t>();
    train_seconds_ = state_.extra.at("train_seconds").get<double>();
    skipped_ = state_.extra.value("skipped", int64_t{0});
    if (!context_.quiet && state_.step < total_) {
      bar_ = std::make_unique<train::ProgressBar>(
          total_,
          train::ProgressOptions()
              .label(context_.label.empty() ? loop_.label : context_.label)
              .unit(loop_.unit),
          state_.step);
    }
    metrics_ = std::make_unique<train::MetricsWriter>(metrics_path_);
    model_.train();
    segment_start_ = Clock::now();
    window_start_ = segment_start_;
  }

  // One update: learning rate, batch, forward, backward, the finiteness check and the
  // optimiser step, or, on a numerical fault, a skipped update (or NumericalFault).
  UpdateResult update() {
    UpdateResult u;
    u.lr = train::learning_rate(loop_.schedule, state_.step);
    train::set_learning_rate(optimizer_, u.lr);
    const torch::Tensor index =
        loop_.sampler != nullptr ? loop_.sampler->next() : torch::Tensor();
    optimizer_.zero_grad();
    c10::optional<Fault> fault;
    const char* stage = "forward";
    try {
      u.batch = loop_.loss(index, state_.step);
      if (state_.step + 1 == context_.nan_loss_at_step) {
        u.batch.loss = u.batch.loss * std::numeric_limits<double>::quiet_NaN();
      }
      stage = "backward";
      u.batch.loss.backward();
      fault = check_update(u.batch.loss, model_, u.loss_value);
    } catch (const c10::Error& e) {
      if (!is_factorisation_error(e)) throw;
      fault = Fault{"factorisation", stage, first_line(e.what_without_backtrace())};
    }
    u.faulty = fault.has_value();
    if (fault) {
      handle_fault(*fault, state_.step + 1, true);
      optimizer_.zero_grad();
    } else {
      if (loop_.grad_clip > 0) {
        torch::nn::utils::clip_grad_norm_(model_.parameters(), loop_.grad_clip);
      }
      optimizer_.step();
      window_.loss_sum += u.loss_value;
      window_.correct += std::max<int64_t>(u.batch.correct, 0);
      window_.items += u.batch.items;
      window_.steps += 1;
    }
    ++state_.step;
    if (loop_.sampler != nullptr) state_.epoch = loop_.sampler->epoch();
    if (bar_) {
      bar_->update(state_.step, u.faulty ? std::nan("") : u.loss_value,
                   u.faulty ? 0 : u.batch.items);
    }
    return u;
  }

  // The train record, every log_every updates and at the end.
  void log_train(const UpdateResult& u) {
    if (state_.step % loop_.log_every != 0 && !last()) return;
    const double seconds = elapsed(window_start_);
    nlohmann::json r = {{"step", state_.step}, {"split", "train"}};
    if (loop_.steps_per_epoch > 0) {
      r["epoch"] = static_cast<double>(state_.step) / static_cast<double>(loop_.steps_per_epoch);
    }
    // A window whose updates were all skipped has no loss.
    if (window_.steps > 0) r["loss"] = window_.loss_sum / static_cast<double>(window_.steps);
    if (u.batch.correct >= 0 && window_.items > 0) {
      r[loop_.accuracy_key] =
          static_cast<double>(window_.correct) / static_cast<double>(window_.items);
    }
    r["lr"] = u.lr;
    r[loop_.unit + "_per_s"] = seconds > 0 ? static_cast<double>(window_.items) / seconds : 0.0;
    r["skipped"] = skipped_;
    metrics_->write(r);
    window_ = Window{};
    window_start_ = Clock::now();
  }

  // Validation at epoch ends, every eval_every updates and at the end; best.pt when the score
  // improves.
  void validate() {
    if (!last() && !epoch_end() &&
        !(loop_.eval_every > 0 && state_.step % loop_.eval_every == 0)) {
      return;
    }
    const auto val = evaluate("val");
    metrics_->write(record(state_.step, "val", val));
    note("step " + std::to_string(state_.step) + "/" + std::to_string(total_) + " " +
         describe_metrics("val", val));
    TORCH_CHECK(val.contains(loop_.best_metric), "run_training_loop: the validation metrics ",
                val.dump(), " have no '", loop_.best_metric, "'");
    const double score = val.at(loop_.best_metric).get<double>();
    // A non-finite score is never best (nor would anything replace it).
    if (std::isfinite(score) &&
        (best_.is_null() ||
         (loop_.maximize ? score > best_.get<double>() : score < best_.get<double>()))) {
      best_ = score;
      best_step_ = state_.step;
      save(best_path_);
    }
  }

  // checkpoint.pt at epoch ends, every checkpoint_every updates and at the end.
  void checkpoint() {
    if (!last() && !epoch_end() &&
        !(loop_.checkpoint_every > 0 && state_.step % loop_.checkpoint_every == 0)) {
      return;
    }
    train_seconds_ += elapsed(segment_start_);
    segment_start_ = Clock::now();
    save(checkpoint_path_);
  }

  // Closes the progress bar; a run stopped early returns `summary` with "stopped_at", a finished
  // one evaluates the test split and writes results.json.
  TrainSummary finish(nlohmann::json summary) {
    if (bar_) bar_->finish();
    if (state_.step < total_) {
      summary["stopped_at"] = state_.step;
      return summary;
    }
    const auto test = evaluate("test");
    if (!has_test_record(metrics_path_)) metrics_->write(record(state_.step, "test", test));
    if (!context_.quiet) std::cerr << describe_metrics("test", test) << "\n";

    summary["steps"] = state_.step;
    summary["train_seconds"] = train_seconds_;
    summary["threads"] = at::get_num_threads();
    summary["test"] = test;
    summary["best_val"] = {{loop_.best_metric, best_}, {"step", best_step_}};
    util::write_file_atomic(results_path_, summary.dump(2) + "\n", "results");
    return summary;
  }

 private:
  bool last() const { return state_.step == total_; }
  bool epoch_end() const {
    return loop_.steps_per_epoch > 0 && state_.step % loop_.steps_per_epoch == 0;
  }
  static double elapsed(Clock::time_point since) {
    return std::chrono::duration<double>(Clock::now() - since).count();
  }

  void sync_state() {
    state_.data = loop_.sampler != nullptr ? loop_.sampler->state() : nlohmann::json();
    state_.extra = {{"window", window_.to_json()},
                    {"best_val", best_},
                    {"best_step", best_step_},
                    {"train_seconds", train_seconds_},
                    {"skipped", skipped_}};
  }

  void note(const std::string& text) {
    if (bar_) {
      bar_->note(text);
    } else if (!context_.quiet) {
      std::cerr << text << "\n";
    }
  }

  // A checkpoint that cannot be written stops the run; the file it would have replaced is intact.
  void save(const std::string& path) {
    sync_state();
    try {
      train::save_checkpoint(path, model_, optimizer_, state_);
    } catch (const c10::Error& e) {
      if (bar_) bar_->finish();
      TORCH_CHECK(false, "train: step ", state_.step, ": cannot save ", path, ": ",
                  first_line(e.what_without_backtrace()), "; the run stops here. ",
                  checkpoint_step_ >= 0
                      ? "The checkpoint of step " + std::to_string(checkpoint_step_)
                      : std::string("No checkpoint"),
                  " is what --resume continues from, once the directory is writable and has "
                  "space again");
    }
    if (path == checkpoint_path_) checkpoint_step_ = state_.step;
  }

  void record_fault(const Fault& fault, int64_t step, const char* action) {
    metrics_->write({{"step", step},
                     {"split", "fault"},
                     {"quantity", fault.quantity},
                     {"where", fault.where},
                     {"action", action},
                     {"message", fault.message}});
  }

  // Records the fault at `step` (updates counted from 1, as in the metrics), then either counts
  // a skipped update or stops with NumericalFault. Faults outside an update always stop.
  void handle_fault(const Fault& fault, int64_t step, bool in_update) {
    const bool skip = in_update && skipped_ < loop_.max_skipped_steps;
    record_fault(fault, step, skip ? "skipped" : "stopped");
    const std::string at = (in_update ? "step " : "evaluation after step ") +
                           std::to_string(step) + "/" + std::to_string(total_);
    if (skip) {
      ++skipped_;
      note(at + ": " + fault.describe() + "; update skipped (" + std::to_string(skipped_) +
           " of at most max_skipped_steps = " + std::to_string(loop_.max_skipped_steps) + ")");
      return;
    }
    if (bar_) bar_->finish();
    std::ostringstream out;
    out << "train: numerical fault at " << at << ": " << fault.describe() << "\n  ";
    if (in_update) {
      out << skipped_ << " update(s) skipped before, max_skipped_steps = "
          << loop_.max_skipped_steps << ": the run stops\n  ";
    }
    if (checkpoint_step_ >= 0) {
      out << "the last good checkpoint " << checkpoint_path_ << " (step " << checkpoint_step_
          << ") is intact";
    } else {
      out << "no checkpoint was written yet: a resume starts again at step 0";
    }
    throw NumericalFault(out.str(), step, checkpoint_step_);
  }

  // The metrics of a split. A factorisation that fails stops the run (there are no metrics); a
  // non-finite loss is reported and kept (it is the model's score; best.pt never takes it).
  nlohmann::json evaluate(const std::string& split) {
    nlohmann::json result;
    try {
      result = loop_.evaluate(split);
    } catch (const c10::Error& e) {
      if (!is_factorisation_error(e)) throw;
      handle_fault({"factorisation", split, first_line(e.what_without_backtrace())}, state_.step,
                   false);
    }
    model_.train();
    const auto loss = result.find("loss");
    if (loss != result.end() && loss->is_number() && !std::isfinite(loss->get<double>())) {
      const Fault fault{"loss", split, ""};
      record_fault(fault, state_.step, "reported");
      note("evaluation after step " + std::to_string(state_.step) + ": " + fault.describe());
    }
    return result;
  }

  const TrainingLoop& loop_;
  const train::RunDir& run_;
  const TrainContext& context_;
  torch::nn::Module& model_;
  torch::optim::Optimizer& optimizer_;
  const int64_t total_;
  const std::string results_path_, metrics_path_, checkpoint_path_, best_path_;

  train::TrainingState state_;
  int64_t checkpoint_step_ = -1;  // the step of the checkpoint on disk; -1 = none
  Window window_;
  nlohmann::json best_;
  int64_t best_step_ = -1;
  double train_seconds_ = 0;
  int64_t skipped_ = 0;
  std::unique_ptr<train::ProgressBar> bar_;
  std::unique_ptr<train::MetricsWriter> metrics_;
  Clock::time_point segment_start_, window_start_;
};

}  // namespace

std::string describe_metrics(const std::string& split, const nlohmann::json& metrics) {
  std::ostringstream out;
  out << split;
  for (const auto& [key, value] : metrics.items()) {
    if (key == "samples" || !value.is_number()) continue;
    out << " " << key << " ";
    if (value.is_number_integer()) {
      out << value.get<int64_t>();
    } else {
      out << std::fixed << std::setprecision(4) << value.get<double>();
    }
  }
  return out.str();
}

TrainSummary run_training_loop(const TrainingLoop& loop, const train::RunDir& run,
                               const TrainContext& context, nlohmann::json summary) {
  check_loop(loop);
  LoopRun r(loop, run, context);
  if (auto results = r.restore()) return *results;
  r.begin();
  while (r.step() < loop.total_steps) {
    if (context.stop_after_step >= 0 && r.step() >= context.stop_after_step) break;
    const UpdateResult update = r.update();
    r.log_train(update);
    r.validate();
    r.checkpoint();
  }
  return r.finish(std::move(summary));
}

TrainingLoop training_loop_for(const CommonTaskConfig& c, torch::nn::Module& model,
                               torch::optim::Optimizer& optimizer, int64_t total_steps,
                               const std::string& schema_name) {
  TrainingLoop loop;
  loop.model = &model;
  loop.optimizer = &optimizer;
  loop.schedule = make_schedule(c, total_steps, schema_name);
  loop.total_steps = total_steps;
  loop.log_every = c.log_every;
  loop.eval_every = c.eval_every;
  loop.checkpoint_every = c.checkpoint_every;
  loop.grad_clip = c.grad_clip;
  loop.max_skipped_steps = c.max_skipped_steps;
  loop.label = c.task + "/" + c.mechanism;
  return loop;
}

nlohmann::json run_summary(const CommonTaskConfig& c, const torch::nn::Module& model) {
  return {{"task", c.task},
          {"mechanism", c.mechanism},
          {"projection", resolved_projection(c)},
          {"seed", c.seed},
          {"params", parameter_count(model)}};
}

nlohmann::json with_checkpoint_info(nlohmann::json metrics, const std::string& checkpoint,
                                    const EvalOptions& options) {
  metrics["checkpoint"] = checkpoint;
  metrics["step"] = train::read_checkpoint_meta(checkpoint).at("step");
  metrics["split"] = options.split;
  return metrics;
}

std::string checkpoint_to_evaluate(const train::RunDir& run, const EvalOptions& options) {
  TORCH_CHECK(options.checkpoint == "best" || options.checkpoint == "last",
              "eval: --checkpoint must be best or last, got '", options.checkpoint, "'");
  TORCH_CHECK(options.split == "test" || options.split == "val",
              "eval: --split must be test or val, got '", options.split, "'");
  std::string path = run.checkpoint_path().string();
  std::error_code ec;
  if (options.checkpoint == "best" && std::filesystem::exists(run.file(kBestFile), ec)) {
    path = run.file(kBestFile).string();
  }
  TORCH_CHECK(std::filesystem::exists(path, ec), "eval: ", path,
              ": no such checkpoint (the run has not saved one yet)");
  return path;
}

}  // namespace tasks
}  // namespace kvq
