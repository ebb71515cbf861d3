#include "kvq/tasks/training_loop.h"

#include <c10/util/Exception.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <limits>
#include <memory>
#include <sstream>

#include "kvq/train/checkpoint.h"
#include "kvq/train/flops.h"
#include "kvq/train/metrics_log.h"
#include "kvq/train/progress.h"
#include "kvq/train/reducer.h"

namespace kvq {
namespace tasks {

namespace {

using Clock = std::chrono::steady_clock;
using train::Fault;

constexpr const char* kBestFile = "best.pt";
constexpr const char* kResultsFile = "results.json";
// The product that measures the matmul rate the MFU is against: 1024 x 1024, best of 3 (about
// 0.1 s of a run's start on 2 cores).
constexpr int64_t kGemmSize = 1024;
constexpr int kGemmRepeats = 3;

double seconds_since(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// The updates between two train records: running sums kept in the checkpoint so that a resumed
// run writes the same records as an uninterrupted one.
struct Window {
  double loss_sum = 0;
  int64_t correct = 0, items = 0, steps = 0;
  Clock::time_point start = Clock::now();

  void add(const train::UpdateStats& update) {
    loss_sum += update.loss;
    correct += std::max<int64_t>(update.correct, 0);
    items += update.items;
    steps += 1;
  }
  // The train record at `step`; `last` is the window's last update (its accuracy reported or not);
  // `peak_flops` the rate the MFU is measured against (0: no MFU).
  nlohmann::json record(int64_t step, const TrainingLoop& loop, double lr,
                        const train::UpdateStats& last, int64_t skipped, double peak_flops) const {
    const double seconds = seconds_since(start);
    nlohmann::json r = {{"step", step}, {"split", "train"}};
    if (loop.steps_per_epoch > 0) {
      r["epoch"] = static_cast<double>(step) / static_cast<double>(loop.steps_per_epoch);
    }
    // A window whose updates were all skipped has no loss.
    if (steps > 0) r["loss"] = loss_sum / static_cast<double>(steps);
    if (last.correct >= 0 && items > 0) {
      r[loop.metrics.train_accuracy] = static_cast<double>(correct) / static_cast<double>(items);
    }
    r["lr"] = lr;
    r[loop.metrics.unit + "_per_s"] = seconds > 0 ? static_cast<double>(items) / seconds : 0.0;
    if (peak_flops > 0 && seconds > 0) {
      r["mfu"] = static_cast<double>(items) / seconds * loop.flops_per_item / peak_flops;
    }
    r["skipped"] = skipped;
    return r;
  }
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

// The counters a checkpoint carries besides the step (TrainingState::extra).
struct Counters {
  Window window;           // the train record in progress
  nlohmann::json best;     // the best validation score so far; null = none yet
  int64_t best_step = -1;
  double train_seconds = 0;
  int64_t skipped = 0;     // updates skipped for a numerical fault
  int64_t items = 0;       // items of the updates made (the run's MFU)

  nlohmann::json to_json(int64_t world_size) const {
    return {{"window", window.to_json()}, {"best_val", best},     {"best_step", best_step},
            {"train_seconds", train_seconds}, {"skipped", skipped}, {"world_size", world_size},
            {"items", items}};
  }
  // Those of a checkpoint's `extra`; a null `extra` (a new run) gives the initial ones.
  static Counters from_json(const nlohmann::json& extra) {
    Counters c;
    if (extra.is_null()) return c;
    c.window = Window::from_json(extra.at("window"));
    c.best = extra.at("best_val");
    c.best_step = extra.at("best_step").get<int64_t>();
    c.train_seconds = extra.at("train_seconds").get<double>();
    c.skipped = extra.value("skipped", int64_t{0});
    c.items = extra.value("items", int64_t{0});
    return c;
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

// A checkpoint to resume from must come from a group of the same size and have the loop's
// schedule; a resume that changes the learning rate (train_task allows it, see TrainContext)
// changes the schedule's rates, not its shape.
void check_resumable(const train::TrainingState& saved, const TrainingLoop& loop,
                     const TrainContext& context, int64_t world, const std::string& path) {
  const int64_t saved_world = saved.extra.value("world_size", int64_t{1});
  TORCH_CHECK(saved_world == world, "resume: ", path, " was written by ", saved_world,
              " worker(s), this run has ", world, "; resume with ", saved_world,
              " (each worker's share of a batch, hence the run, depends on it)");
  const auto wanted = train::to_json(loop.schedule);
  auto saved_shape = saved.schedule, wanted_shape = wanted;
  for (const char* rate : {"base_lr", "min_lr", "factor"}) {
    saved_shape.erase(rate);
    wanted_shape.erase(rate);
  }
  TORCH_CHECK(saved.schedule == wanted ||
                  (!context.resume_changes.empty() && saved_shape == wanted_shape),
              "resume: ", path, " was written with schedule ", saved.schedule.dump(),
              ", the config gives ", wanted.dump());
}

// Where a run's progress goes: the progress bar and notes on stderr, and the metrics log (rank 0
// only; neither on the other workers).
struct Output {
  std::unique_ptr<train::ProgressBar> bar;
  std::unique_ptr<train::MetricsWriter> metrics;
  bool notes = false;  // notes on stderr when there is no bar

  void write(const nlohmann::json& r) {
    if (metrics) metrics->write(r);
  }
  void note(const std::string& text) {
    if (bar) {
      bar->note(text);
    } else if (notes) {
      std::cerr << text << "\n";
    }
  }
  void fault(const Fault& fault, int64_t step, const char* action) {
    write({{"step", step},
           {"split", "fault"},
           {"quantity", fault.quantity},
           {"where", fault.where},
           {"action", action},
           {"message", fault.message}});
  }
  void close_bar() {
    if (bar) bar->finish();
  }
};

// Writes checkpoint `path`; a checkpoint that cannot be written stops the run naming the file,
// the reason and the checkpoint --resume would continue from (`checkpoint_step`, -1 = none); the
// file it would have replaced is intact.
void save_or_stop(const std::string& path, torch::nn::Module& model,
                  torch::optim::Optimizer& optimizer, const train::TrainingState& state,
                  int64_t checkpoint_step, Output& out) {
  try {
    train::save_checkpoint(path, model, optimizer, state);
  } catch (const c10::Error& e) {
    out.close_bar();
    TORCH_CHECK(false, "train: step ", state.step, ": cannot save ", path, ": ",
                first_line(e.what_without_backtrace()), "; the run stops here. ",
                checkpoint_step >= 0 ? "The checkpoint of step " + std::to_string(checkpoint_step)
                                     : std::string("No checkpoint"),
                " is what --resume continues from, once the directory is writable and has "
                "space again");
  }
}

// The results.json of a finished run (`finished`: its checkpoint is the last step), read by
// rank 0 and sent to every worker; nothing when there is none.
c10::optional<nlohmann::json> finished_results(train::Reducer& reducer, bool finished,
                                               const std::string& results_path) {
  nlohmann::json results;
  std::error_code ec;
  if (reducer.is_main() && finished && std::filesystem::exists(results_path, ec)) {
    results = train::read_results(results_path);
  }
  const auto text = reducer.broadcast_string(results.is_null() ? "" : results.dump(),
                                             "the finished run's results");
  if (!reducer.is_main() && !text.empty()) results = nlohmann::json::parse(text);
  if (results.is_null()) return c10::nullopt;
  return results;
}

// What one update leaves for the train record.
struct UpdateResult {
  double lr = 0;
  train::UpdateStats stats;  // the whole batch's (after the reduction)
  bool faulty = false;       // the update was skipped for a numerical fault
};

// One call of run_training_loop: restore (resume) and begin, then per update: update (learning
// rate, batch, forward and backward, fault check, reduction, clipping, optimiser step),
// log_train, validate, checkpoint; finish (test, results.json).
class LoopRun {
 public:
  LoopRun(const TrainingLoop& loop, const train::RunDir& run, const TrainContext& context)
      : loop_(loop),
        run_(run),
        context_(context),
        model_(*loop.model),
        optimizer_(*loop.optimizer),
        batches_(loop.batches),
        reducer_(train::make_reducer(context.dist)),
        main_(reducer_->is_main()),
        total_(loop.total_steps),
        results_path_(run.file(kResultsFile).string()),
        metrics_path_(run.metrics_path().string()),
        checkpoint_path_(run.checkpoint_path().string()),
        best_path_(run.file(kBestFile).string()) {
    state_.schedule = train::to_json(loop.schedule);
  }

  int64_t step() const { return state_.step; }

  // With context.resume and a checkpoint in the run: loads it into model, optimiser and sampler
  // and checks it. Returns results.json when that run had already finished.
  c10::optional<nlohmann::json> restore() {
    if (!context_.resume) return c10::nullopt;
    auto saved = reducer_->load_checkpoint(run_, model_, optimizer_);
    if (!saved) return c10::nullopt;
    state_ = std::move(*saved);
    checkpoint_step_ = state_.step;
    check_resumable(state_, loop_, context_, reducer_->world_size(), checkpoint_path_);
    state_.schedule = train::to_json(loop_.schedule);
    if (batches_.sampler() != nullptr) batches_.sampler()->load_state(state_.data);
    return finished_results(*reducer_, state_.step >= total_, results_path_);
  }

  // Drops the metrics records past the checkpoint (they belong to the interrupted
  // continuation; none for a new run), takes the counters out of the state, opens the progress
  // bar and the metrics log, and starts the clocks.
  void begin() {
    reducer_->broadcast_parameters(model_);
    if (main_) train::truncate_metrics(metrics_path_, state_.step);
    counters_ = Counters::from_json(state_.extra);
    faults_ = train::FaultBudget(loop_.max_skipped_steps, counters_.skipped);
    if (loop_.flops_per_item > 0 && state_.step < total_) {
      peak_flops_ = train::measure_gemm_flops(torch::kFloat32, context_.device, kGemmSize,
                                              kGemmRepeats) *
                    static_cast<double>(reducer_->world_size());
    }
    if (main_ && !context_.quiet && state_.step < total_) {
      out_.bar = std::make_unique<train::ProgressBar>(
          total_,
          train::ProgressOptions()
              .label(context_.label.empty() ? loop_.label : context_.label)
              .unit(loop_.metrics.unit)
              .flops_per_item(loop_.flops_per_item)
              .peak_flops(peak_flops_),
          state_.step);
    }
    if (main_) out_.metrics = std::make_unique<train::MetricsWriter>(metrics_path_);
    out_.notes = main_ && !context_.quiet;
    model_.train();
    segment_start_ = Clock::now();
    counters_.window.start = segment_start_;
  }

  // One update: learning rate, this worker's batch, forward and backward, the fault check, the
  // reduction over the workers, then clipping and the optimiser step, or, on a numerical fault,
  // a skipped update (or NumericalFault).
  UpdateResult update() {
    UpdateResult u;
    u.lr = train::learning_rate(loop_.schedule, state_.step);
    train::set_learning_rate(optimizer_, u.lr);
    const int64_t world = reducer_->world_size();
    if (world > 1) {
      torch::manual_seed(mix_seeds(mix_seeds(loop_.seed, static_cast<uint64_t>(state_.step)),
                                   static_cast<uint64_t>(reducer_->rank())));
    }
    const auto batch = batches_.next(state_.step, reducer_->rank(), world, context_.device);
    optimizer_.zero_grad();
    auto fault = forward_backward(batch, u.stats);
    fault = reducer_->reduce_update(model_, u.stats, fault);
    u.faulty = fault.has_value();
    if (fault) {
      handle_fault(*fault, state_.step + 1, /*in_update=*/true);
      optimizer_.zero_grad();
    } else {
      if (loop_.grad_clip > 0) {
        torch::nn::utils::clip_grad_norm_(model_.parameters(), loop_.grad_clip);
      }
      optimizer_.step();
      counters_.window.add(u.stats);
      counters_.items += u.stats.items;
    }
    ++state_.step;
    if (batches_.sampler() != nullptr) state_.epoch = batches_.sampler()->epoch();
    if (out_.bar) {
      out_.bar->update(state_.step, u.faulty ? std::nan("") : u.stats.loss,
                       u.faulty ? 0 : u.stats.items);
    }
    return u;
  }

  // The train record, every log_every updates and at the end.
  void log_train(const UpdateResult& u) {
    if (state_.step % loop_.log_every != 0 && !last()) return;
    out_.write(counters_.window.record(state_.step, loop_, u.lr, u.stats, faults_.skipped(),
                                       peak_flops_));
    counters_.window = Window{};
  }

  // Validation at epoch ends, every eval_every updates and at the end; best.pt when the score
  // improves.
  void validate() {
    if (!last() && !epoch_end() && !every(loop_.eval_every)) return;
    const auto val = evaluate("val");
    out_.write(record(state_.step, "val", val));
    out_.note("step " + std::to_string(state_.step) + "/" + std::to_string(total_) + " " +
         describe_metrics("val", val));
    const std::string& best = loop_.metrics.best;
    TORCH_CHECK(val.contains(best), "run_training_loop: the validation metrics ", val.dump(),
                " have no '", best, "'");
    const double score = val.at(best).get<double>();
    // A non-finite score is never best (nor would anything replace it).
    const auto& best_val = counters_.best;
    if (std::isfinite(score) &&
        (best_val.is_null() || (loop_.metrics.maximize ? score > best_val.get<double>()
                                                       : score < best_val.get<double>()))) {
      counters_.best = score;
      counters_.best_step = state_.step;
      save(best_path_);
    }
  }

  // checkpoint.pt at epoch ends, every checkpoint_every updates and at the end.
  void checkpoint() {
    if (!last() && !epoch_end() && !every(loop_.checkpoint_every)) return;
    counters_.train_seconds += seconds_since(segment_start_);
    segment_start_ = Clock::now();
    save(checkpoint_path_);
  }

  // Closes the progress bar; a run stopped early returns `summary` with "stopped_at", a finished
  // one evaluates the test split and writes results.json.
  TrainSummary finish(nlohmann::json summary) {
    out_.close_bar();
    if (state_.step < total_) {
      summary["stopped_at"] = state_.step;
      return summary;
    }
    const auto test = evaluate("test");
    if (main_ && !has_test_record(metrics_path_)) out_.write(record(state_.step, "test", test));
    if (main_ && !context_.quiet) std::cerr << describe_metrics("test", test) << "\n";
    summary["steps"] = state_.step;
    summary["train_seconds"] = counters_.train_seconds;
    summary["threads"] = at::get_num_threads();
    summary["device"] = context_.device.str();
    summary["test"] = test;
    summary["best_val"] = {{loop_.metrics.best, counters_.best}, {"step", counters_.best_step}};
    if (peak_flops_ > 0 && counters_.train_seconds > 0) {
      summary["model_flops_per_item"] = loop_.flops_per_item;
      summary["gemm_gflops"] = peak_flops_ / static_cast<double>(reducer_->world_size()) / 1e9;
      summary["mfu"] = static_cast<double>(counters_.items) * loop_.flops_per_item /
                       counters_.train_seconds / peak_flops_;
    }
    if (reducer_->world_size() > 1) {
      summary["world_size"] = reducer_->world_size();
      // Rank 0's wall time in the update's collectives (statistics and gradients, waits for
      // the slowest worker included) since this process started or resumed the run.
      summary["comm_seconds"] = reducer_->comm_seconds();
    }
    if (main_) train::write_results(results_path_, summary);  // rank 0 writes the results
    return summary;
  }

 private:
  // The loss of `batch` and its backward; a non-finite loss or gradient or a failed
  // factorisation is returned as the update's fault (context.nan_loss_at_step injects one).
  c10::optional<Fault> forward_backward(const train::Batch& batch, train::UpdateStats& stats) {
    const char* stage = "forward";
    try {
      BatchLoss out = loop_.loss(batch, state_.step);
      if (state_.step + 1 == context_.nan_loss_at_step) {
        out.loss = out.loss * std::numeric_limits<double>::quiet_NaN();
      }
      stats.items = out.items;
      stats.correct = out.correct;
      stage = "backward";
      out.loss.backward();
      return train::check_update(out.loss, model_, stats.loss);
    } catch (const c10::Error& e) {
      if (!train::is_factorisation_error(e)) throw;
      return train::factorisation_fault(e, stage);
    }
  }

  // The metrics of a split. A factorisation that fails stops the run (there are no metrics); a
  // non-finite loss is reported and kept (it is the model's score; best.pt never takes it).
  nlohmann::json evaluate(const std::string& split) {
    const bool sharded = reducer_->world_size() > 1 && loop_.evaluate_part;
    nlohmann::json metrics;
    c10::optional<Fault> fault;
    try {
      metrics = sharded ? loop_.evaluate_part(split, reducer_->rank(), reducer_->world_size())
                        : loop_.evaluate(split);
    } catch (const c10::Error& e) {
      if (!train::is_factorisation_error(e)) throw;
      fault = train::factorisation_fault(e, split);
    }
    fault = reducer_->reduce_evaluation(split, metrics, fault, sharded, loop_.metrics.eval_count);
    if (fault) handle_fault(*fault, state_.step, /*in_update=*/false);
    model_.train();
    const auto loss = metrics.find("loss");
    if (loss != metrics.end() && loss->is_number() && !std::isfinite(loss->get<double>())) {
      const Fault reported{"loss", split, ""};
      out_.fault(reported, state_.step, "reported");
      out_.note("evaluation after step " + std::to_string(state_.step) + ": " + reported.describe());
    }
    return metrics;
  }

  // Records the fault at `step` (updates counted from 1, as in the metrics), then either counts
  // a skipped update or stops with NumericalFault.
  void handle_fault(const Fault& fault, int64_t step, bool in_update) {
    const bool skip = faults_.would_skip(in_update);
    out_.fault(fault, step, skip ? "skipped" : "stopped");
    if (skip) {
      out_.note(faults_.skip(fault, step, total_));
      return;
    }
    out_.close_bar();
    throw faults_.stop(fault, step, total_, in_update, checkpoint_path_, checkpoint_step_);
  }

  // Rank 0 writes the group's checkpoints.
  void save(const std::string& path) {
    if (main_) {
      sync_state();
      save_or_stop(path, model_, optimizer_, state_, checkpoint_step_, out_);
    }
    if (path == checkpoint_path_) checkpoint_step_ = state_.step;
  }

  void sync_state() {
    state_.data = batches_.sampler() != nullptr ? batches_.sampler()->state() : nlohmann::json();
    counters_.skipped = faults_.skipped();
    state_.extra = counters_.to_json(reducer_->world_size());
  }

  bool last() const { return state_.step == total_; }
  bool epoch_end() const {
    return loop_.steps_per_epoch > 0 && state_.step % loop_.steps_per_epoch == 0;
  }
  bool every(int64_t updates) const { return updates > 0 && state_.step % updates == 0; }

  const TrainingLoop& loop_;
  const train::RunDir& run_;
  const TrainContext& context_;
  torch::nn::Module& model_;
  torch::optim::Optimizer& optimizer_;
  train::BatchSource batches_;
  std::unique_ptr<train::Reducer> reducer_;  // the other workers; LocalReducer for one process
  const bool main_;                          // rank 0 (or the only process): writes the files
  const int64_t total_;
  const std::string results_path_, metrics_path_, checkpoint_path_, best_path_;

  train::TrainingState state_;
  int64_t checkpoint_step_ = -1;  // the step of the checkpoint on disk; -1 = none
  Counters counters_;
  double peak_flops_ = 0;  // FLOP/s the MFU is against (all workers); 0 = no MFU
  train::FaultBudget faults_{0, 0};
  Output out_;
  Clock::time_point segment_start_;
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
  loop.seed = static_cast<uint64_t>(c.seed);
  loop.metrics = find_task(c.task).metrics;
  loop.label = c.task + "/" + c.block.mechanism();
  return loop;
}

nlohmann::json run_summary(const CommonTaskConfig& c, const torch::nn::Module& model) {
  return {{"task", c.task},
          {"mechanism", c.block.mechanism()},
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
