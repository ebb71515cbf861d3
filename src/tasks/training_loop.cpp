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
  const std::string results_path = run.file(kResultsFile).string();
  const std::string metrics_path = run.metrics_path().string();
  const std::string checkpoint_path = run.checkpoint_path().string();
  const std::string best_path = run.file(kBestFile).string();
  torch::nn::Module& model = *loop.model;
  torch::optim::Optimizer& optimizer = *loop.optimizer;
  const int64_t total = loop.total_steps;

  train::TrainingState state;
  state.schedule = train::to_json(loop.schedule);
  state.extra = {{"window", Window{}.to_json()},
                 {"best_val", nullptr},
                 {"best_step", -1},
                 {"train_seconds", 0.0},
                 {"skipped", 0}};
  int64_t checkpoint_step = -1;  // the step of the checkpoint on disk; -1 = none
  if (context.resume && run.has_checkpoint()) {
    state = train::load_checkpoint(checkpoint_path, model, optimizer);
    checkpoint_step = state.step;
    // A resume that changes the learning rate (train_task allows it, see TrainContext) changes
    // the schedule's rates, not its shape.
    const auto wanted = train::to_json(loop.schedule);
    auto saved_shape = state.schedule, wanted_shape = wanted;
    for (const char* rate : {"base_lr", "min_lr", "factor"}) {
      saved_shape.erase(rate);
      wanted_shape.erase(rate);
    }
    TORCH_CHECK(state.schedule == wanted ||
                    (!context.resume_changes.empty() && saved_shape == wanted_shape),
                "resume: ", checkpoint_path, " was written with schedule ",
                state.schedule.dump(), ", the config gives ", wanted.dump());
    state.schedule = wanted;
    if (loop.sampler != nullptr) loop.sampler->load_state(state.data);
    std::error_code ec;
    if (state.step >= total && std::filesystem::exists(results_path, ec)) {
      return train::read_results(results_path);
    }
  }
  // Records past the checkpoint belong to the interrupted continuation (none for a new run).
  train::truncate_metrics(metrics_path, state.step);
  const int64_t start_step = state.step;

  Window window = Window::from_json(state.extra.at("window"));
  nlohmann::json best = state.extra.at("best_val");
  int64_t best_step = state.extra.at("best_step").get<int64_t>();
  double train_seconds = state.extra.at("train_seconds").get<double>();
  int64_t skipped = state.extra.value("skipped", int64_t{0});
  const auto sync_state = [&] {
    state.data = loop.sampler != nullptr ? loop.sampler->state() : nlohmann::json();
    state.extra = {{"window", window.to_json()},
                   {"best_val", best},
                   {"best_step", best_step},
                   {"train_seconds", train_seconds},
                   {"skipped", skipped}};
  };

  std::unique_ptr<train::ProgressBar> bar;
  if (!context.quiet && start_step < total) {
    bar = std::make_unique<train::ProgressBar>(
        total,
        train::ProgressOptions()
            .label(context.label.empty() ? loop.label : context.label)
            .unit(loop.unit),
        start_step);
  }
  const auto note = [&](const std::string& text) {
    if (bar) {
      bar->note(text);
    } else if (!context.quiet) {
      std::cerr << text << "\n";
    }
  };
  train::MetricsWriter metrics(metrics_path);
  // A checkpoint that cannot be written stops the run; the file it would have replaced is intact.
  const auto save = [&](const std::string& path) {
    sync_state();
    try {
      train::save_checkpoint(path, model, optimizer, state);
    } catch (const c10::Error& e) {
      if (bar) bar->finish();
      TORCH_CHECK(false, "train: step ", state.step, ": cannot save ", path, ": ",
                  first_line(e.what_without_backtrace()), "; the run stops here. ",
                  checkpoint_step >= 0 ? "The checkpoint of step " + std::to_string(checkpoint_step)
                                       : std::string("No checkpoint"),
                  " is what --resume continues from, once the directory is writable and has "
                  "space again");
    }
    if (path == checkpoint_path) checkpoint_step = state.step;
  };
  // Records the fault at `step` (updates counted from 1, as in the metrics), then either counts
  // a skipped update or stops with NumericalFault. Faults outside an update always stop.
  const auto record_fault = [&](const Fault& fault, int64_t step, const char* action) {
    metrics.write({{"step", step},
                   {"split", "fault"},
                   {"quantity", fault.quantity},
                   {"where", fault.where},
                   {"action", action},
                   {"message", fault.message}});
  };
  const auto handle_fault = [&](const Fault& fault, int64_t step, bool in_update) {
    const bool skip = in_update && skipped < loop.max_skipped_steps;
    record_fault(fault, step, skip ? "skipped" : "stopped");
    const std::string at = (in_update ? "step " : "evaluation after step ") +
                           std::to_string(step) + "/" + std::to_string(total);
    if (skip) {
      ++skipped;
      note(at + ": " + fault.describe() + "; update skipped (" + std::to_string(skipped) +
           " of at most max_skipped_steps = " + std::to_string(loop.max_skipped_steps) + ")");
      return;
    }
    if (bar) bar->finish();
    std::ostringstream out;
    out << "train: numerical fault at " << at << ": " << fault.describe() << "\n  ";
    if (in_update) {
      out << skipped << " update(s) skipped before, max_skipped_steps = "
          << loop.max_skipped_steps << ": the run stops\n  ";
    }
    if (checkpoint_step >= 0) {
      out << "the last good checkpoint " << checkpoint_path << " (step " << checkpoint_step
          << ") is intact";
    } else {
      out << "no checkpoint was written yet: a resume starts again at step 0";
    }
    throw NumericalFault(out.str(), step, checkpoint_step);
  };
  // The metrics of a split. A factorisation that fails stops the run (there are no metrics); a
  // non-finite loss is reported and kept (it is the model's score; best.pt never takes it).
  const auto evaluate = [&](const std::string& split) {
    nlohmann::json result;
    try {
      result = loop.evaluate(split);
    } catch (const c10::Error& e) {
      if (!is_factorisation_error(e)) throw;
      handle_fault({"factorisation", split, first_line(e.what_without_backtrace())}, state.step,
                   false);
    }
    model.train();
    const auto loss = result.find("loss");
    if (loss != result.end() && loss->is_number() && !std::isfinite(loss->get<double>())) {
      const Fault fault{"loss", split, ""};
      record_fault(fault, state.step, "reported");
      note("evaluation after step " + std::to_string(state.step) + ": " + fault.describe());
    }
    return result;
  };
  model.train();
  auto segment_start = Clock::now();
  auto window_start = segment_start;
  const auto elapsed = [](Clock::time_point since) {
    return std::chrono::duration<double>(Clock::now() - since).count();
  };

  while (state.step < total) {
    if (context.stop_after_step >= 0 && state.step >= context.stop_after_step) break;
    const double lr = train::learning_rate(loop.schedule, state.step);
    train::set_learning_rate(optimizer, lr);
    const torch::Tensor index = loop.sampler != nullptr ? loop.sampler->next() : torch::Tensor();
    optimizer.zero_grad();
    BatchLoss batch;
    c10::optional<Fault> fault;
    double loss_value = 0;
    const char* stage = "forward";
    try {
      batch = loop.loss(index, state.step);
      if (state.step + 1 == context.nan_loss_at_step) {
        batch.loss = batch.loss * std::numeric_limits<double>::quiet_NaN();
      }
      stage = "backward";
      batch.loss.backward();
      fault = check_update(batch.loss, model, loss_value);
    } catch (const c10::Error& e) {
      if (!is_factorisation_error(e)) throw;
      fault = Fault{"factorisation", stage, first_line(e.what_without_backtrace())};
    }
    if (fault) {
      handle_fault(*fault, state.step + 1, true);
      optimizer.zero_grad();
    } else {
      if (loop.grad_clip > 0) {
        torch::nn::utils::clip_grad_norm_(model.parameters(), loop.grad_clip);
      }
      optimizer.step();
      window.loss_sum += loss_value;
      window.correct += std::max<int64_t>(batch.correct, 0);
      window.items += batch.items;
      window.steps += 1;
    }
    ++state.step;
    if (loop.sampler != nullptr) state.epoch = loop.sampler->epoch();
    if (bar) bar->update(state.step, fault ? std::nan("") : loss_value, fault ? 0 : batch.items);

    const bool last = state.step == total;
    const bool epoch_end = loop.steps_per_epoch > 0 && state.step % loop.steps_per_epoch == 0;
    if (state.step % loop.log_every == 0 || last) {
      const double seconds = elapsed(window_start);
      nlohmann::json r = {{"step", state.step}, {"split", "train"}};
      if (loop.steps_per_epoch > 0) {
        r["epoch"] = static_cast<double>(state.step) / static_cast<double>(loop.steps_per_epoch);
      }
      // A window whose updates were all skipped has no loss.
      if (window.steps > 0) r["loss"] = window.loss_sum / static_cast<double>(window.steps);
      if (batch.correct >= 0 && window.items > 0) {
        r[loop.accuracy_key] =
            static_cast<double>(window.correct) / static_cast<double>(window.items);
      }
      r["lr"] = lr;
      r[loop.unit + "_per_s"] = seconds > 0 ? static_cast<double>(window.items) / seconds : 0.0;
      r["skipped"] = skipped;
      metrics.write(r);
      window = Window{};
      window_start = Clock::now();
    }
    if (last || epoch_end || (loop.eval_every > 0 && state.step % loop.eval_every == 0)) {
      const auto val = evaluate("val");
      metrics.write(record(state.step, "val", val));
      note("step " + std::to_string(state.step) + "/" + std::to_string(total) + " " +
           describe_metrics("val", val));
      TORCH_CHECK(val.contains(loop.best_metric), "run_training_loop: the validation metrics ",
                  val.dump(), " have no '", loop.best_metric, "'");
      const double score = val.at(loop.best_metric).get<double>();
      // A non-finite score is never best (nor would anything replace it).
      if (std::isfinite(score) &&
          (best.is_null() ||
           (loop.maximize ? score > best.get<double>() : score < best.get<double>()))) {
        best = score;
        best_step = state.step;
        save(best_path);
      }
    }
    if (last || epoch_end ||
        (loop.checkpoint_every > 0 && state.step % loop.checkpoint_every == 0)) {
      train_seconds += elapsed(segment_start);
      segment_start = Clock::now();
      save(checkpoint_path);
    }
  }
  if (bar) bar->finish();
  if (state.step < total) {
    summary["stopped_at"] = state.step;
    return summary;
  }

  const auto test = evaluate("test");
  if (!has_test_record(metrics_path)) metrics.write(record(state.step, "test", test));
  if (!context.quiet) std::cerr << describe_metrics("test", test) << "\n";

  summary["steps"] = state.step;
  summary["train_seconds"] = train_seconds;
  summary["threads"] = at::get_num_threads();
  summary["test"] = test;
  summary["best_val"] = {{loop.best_metric, best}, {"step", best_step}};
  train::write_results(results_path, summary);
  return summary;
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
