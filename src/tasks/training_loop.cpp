#include "kvq/tasks/training_loop.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <filesystem>
#include <unistd.h>
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
// singular) and kvq's Cholesky check (functional/least_squares/least_squares.h).
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
        best_path_(run.file(kBestFile).string()),
        dist_(context.dist),
        main_(dist_ == nullptr || dist_->is_main()),
        rank_(dist_ != nullptr ? dist_->rank() : 0),
        world_(dist_ != nullptr ? dist_->world_size() : 1) {
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
    if (!context_.resume || !load_checkpoint()) return c10::nullopt;
    checkpoint_step_ = state_.step;
    const int64_t saved_world = state_.extra.value("world_size", int64_t{1});
    TORCH_CHECK(saved_world == world_, "resume: ", checkpoint_path_, " was written by ",
                saved_world, " worker(s), this run has ", world_, "; resume with ", saved_world,
                " (each worker's share of a batch, hence the run, depends on it)");
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
    nlohmann::json results;
    std::error_code ec;
    if (main_ && state_.step >= total_ && std::filesystem::exists(results_path_, ec)) {
      results = train::read_results(results_path_);
    }
    if (dist_) {
      const auto text = dist_->broadcast_string(results.is_null() ? "" : results.dump(),
                                                "the finished run's results");
      if (!main_ && !text.empty()) results = nlohmann::json::parse(text);
    }
    if (!results.is_null()) return results;
    return c10::nullopt;
  }

  // Drops the metrics records past the checkpoint (they belong to the interrupted
  // continuation; none for a new run), takes the counters out of the state, opens the progress
  // bar and the metrics log, and starts the clocks.
  void begin() {
    if (dist_) dist_->broadcast_module(model_);
    if (main_) train::truncate_metrics(metrics_path_, state_.step);
    window_ = Window::from_json(state_.extra.at("window"));
    best_ = state_.extra.at("best_val");
    best_step_ = state_.extra.at("best_step").get<int64_t>();
    train_seconds_ = state_.extra.at("train_seconds").get<double>();
    skipped_ = state_.extra.value("skipped", int64_t{0});
    if (main_ && !context_.quiet && state_.step < total_) {
      bar_ = std::make_unique<train::ProgressBar>(
          total_,
          train::ProgressOptions()
              .label(context_.label.empty() ? loop_.label : context_.label)
              .unit(loop_.unit),
          state_.step);
    }
    if (main_) metrics_ = std::make_unique<train::MetricsWriter>(metrics_path_);
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
    const torch::Tensor index = next_index();
    if (world_ > 1) {
      torch::manual_seed(mix_seeds(mix_seeds(loop_.seed, static_cast<uint64_t>(state_.step)),
                                   static_cast<uint64_t>(rank_)));
    }
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
    if (dist_) {
      const auto began = Clock::now();
      fault = combine_update(u, fault);
      comm_seconds_ += elapsed(began);
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
    if (metrics_) metrics_->write(r);
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
    if (metrics_) metrics_->write(record(state_.step, "val", val));
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
    if (main_ && !has_test_record(metrics_path_)) {
      metrics_->write(record(state_.step, "test", test));
    }
    if (main_ && !context_.quiet) std::cerr << describe_metrics("test", test) << "\n";

    summary["steps"] = state_.step;
    summary["train_seconds"] = train_seconds_;
    summary["threads"] = at::get_num_threads();
    summary["device"] = context_.device.str();
    summary["test"] = test;
    summary["best_val"] = {{loop_.best_metric, best_}, {"step", best_step_}};
    if (world_ > 1) {
      summary["world_size"] = world_;
      // Rank 0's wall time in the update's collectives (statistics and gradients, waits for
      // the slowest worker included) since this process started or resumed the run.
      summary["comm_seconds"] = comm_seconds_;
    }
    if (!main_) return summary;  // rank 0 writes the results
    train::write_results(results_path_, summary);
    return summary;
  }

 private:
  // Loads checkpoint.pt into model, optimiser and state_ and returns true, or returns false when
  // the run has none. With several workers rank 0 reads the file and broadcasts its bytes, so
  // the others need not see the run directory (another machine).
  bool load_checkpoint() {
    if (!dist_) {
      if (!run_.has_checkpoint()) return false;
      state_ = train::load_checkpoint(checkpoint_path_, model_, optimizer_);
      return true;
    }
    std::string bytes;
    if (main_ && run_.has_checkpoint()) bytes = util::read_file(checkpoint_path_, "resume");
    bytes = dist_->broadcast_string(bytes, "the checkpoint");
    if (bytes.empty()) return false;
    if (main_) {
      state_ = train::load_checkpoint(checkpoint_path_, model_, optimizer_);
      return true;
    }
    const auto copy = std::filesystem::temp_directory_path() /
                      ("kvq-resume-" + std::to_string(::getpid()) + ".pt");
    {
      std::ofstream out(copy, std::ios::binary | std::ios::trunc);
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      TORCH_CHECK(out.good(), "resume: cannot write the broadcast checkpoint to ", copy.string());
    }
    try {
      state_ = train::load_checkpoint(copy.string(), model_, optimizer_);
    } catch (...) {
      std::remove(copy.c_str());
      throw;
    }
    std::remove(copy.c_str());
    return true;
  }

  // The batch of this update: the sampler's (this worker's share of it with several workers);
  // without a sampler undefined, or the share's positions in the batch with several workers.
  torch::Tensor next_index() {
    torch::Tensor index = loop_.sampler != nullptr ? loop_.sampler->next() : torch::Tensor();
    if (world_ == 1) return index;
    const int64_t batch = index.defined() ? index.size(0) : loop_.batch_size;
    TORCH_CHECK(batch > 0 && batch % world_ == 0, "train: the batch of ", batch,
                " items is not divisible by the ", world_,
                " workers; batch_size must be a multiple of the world size");
    const int64_t share = batch / world_;
    if (!index.defined()) return torch::arange(rank_ * share, (rank_ + 1) * share, torch::kInt64);
    return index.slice(0, rank_ * share, (rank_ + 1) * share);
  }

  // Combines this worker's update with the others': one all-reduce of [loss * items, items,
  // correct, fault code per rank] gives every worker the same view; then, unless some worker had
  // a fault, the gradients scaled by items / total items are summed (the mean over the batch).
  // Returns the fault of the first faulty rank (this worker's own, or one naming that rank).
  c10::optional<Fault> combine_update(UpdateResult& u, const c10::optional<Fault>& own) {
    enum Code { kNone = 0, kLoss, kGradient, kForward, kBackward };
    int64_t code = kNone;
    if (own) {
      code = own->quantity == "loss"            ? kLoss
             : own->quantity == "factorisation" ? (own->where == "forward" ? kForward : kBackward)
                                                : kGradient;
    }
    auto stats = torch::zeros({3 + world_}, torch::kFloat64);
    const double items = static_cast<double>(u.batch.items);
    auto* v = stats.data_ptr<double>();
    v[0] = own ? 0.0 : u.loss_value * items;
    v[1] = items;
    v[2] = static_cast<double>(std::max<int64_t>(u.batch.correct, 0));
    v[3 + rank_] = static_cast<double>(code);
    stats = stats.to(dist_->options().device());
    dist_->all_reduce_sum(stats, "update statistics");
    stats = stats.to(torch::kCPU);
    v = stats.data_ptr<double>();
    for (int64_t r = 0; r < world_; ++r) {
      const auto c = static_cast<int64_t>(v[3 + r]);
      if (c == kNone) continue;
      const std::string on = " on rank " + std::to_string(r);
      if (r == rank_) return Fault{own->quantity, own->where + on, own->message};
      const char* quantity = c == kLoss ? "loss" : c == kGradient ? "gradient" : "factorisation";
      const char* where = c == kForward || c == kLoss ? "forward" : "backward";
      return Fault{quantity, where + on, "see that worker's error output"};
    }
    const double total = v[1];
    u.loss_value = total > 0 ? v[0] / total : 0.0;
    u.batch.items = static_cast<int64_t>(v[1]);
    if (u.batch.correct >= 0) u.batch.correct = static_cast<int64_t>(v[2]);
    const auto params = model_.parameters(/*recurse=*/true);
    if (total > 0 && items != total) {
      torch::NoGradGuard no_grad;
      for (const auto& p : params) {
        if (p.grad().defined()) p.grad().mul_(items / total);
      }
    }
    dist_->all_reduce_gradients(params);
    return c10::nullopt;
  }

  // Rank 0's metrics (each worker evaluated the whole split) on every worker.
  nlohmann::json from_main(nlohmann::json result) {
    const std::string text = dist_->broadcast_string(main_ ? result.dump() : "", "the metrics");
    return main_ ? result : nlohmann::json::parse(text);
  }

  // The metrics of the whole split from every worker's part (evaluate_part): a failed part is
  // a fault of all; otherwise each number is the mean over the parts weighted by their counts.
  nlohmann::json combine_parts(const std::string& split, nlohmann::json part) {
    const bool failed = part.contains("__fault");
    auto flags = torch::zeros({world_}, torch::kFloat64);
    flags[rank_] = failed ? 1.0 : 0.0;
    flags = flags.to(dist_->options().device());
    dist_->all_reduce_sum(flags, "evaluation flags");
    flags = flags.to(torch::kCPU);
    for (int64_t r = 0; r < world_; ++r) {
      if (flags[r].item<double>() == 0) continue;
      if (r == rank_) return part;
      return {{"__fault", "on rank " + std::to_string(r) + " (see that worker's error output)"}};
    }
    const std::string& count_key = loop_.eval_count_key;
    TORCH_CHECK(part.contains(count_key) && part.at(count_key).is_number(),
                "run_training_loop: the metrics of a part of ", split, " ", part.dump(),
                " have no count '", count_key, "' (TrainingLoop::eval_count_key)");
    const double count = part.at(count_key).get<double>();
    std::vector<std::string> keys;
    std::vector<double> values;
    for (const auto& [key, value] : part.items()) {
      if (!value.is_number()) continue;
      keys.push_back(key);
      // An empty part adds nothing (its means are 0/0).
      values.push_back(key == count_key ? count : count > 0 ? value.get<double>() * count : 0.0);
    }
    auto sums = torch::tensor(values, torch::kFloat64).to(dist_->options().device());
    dist_->all_reduce_sum(sums, "evaluation metrics");
    sums = sums.to(torch::kCPU);
    const double* total = sums.data_ptr<double>();
    const auto count_at = std::find(keys.begin(), keys.end(), count_key) - keys.begin();
    const double all = total[count_at];
    for (size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] == count_key) {
        part[keys[i]] = static_cast<int64_t>(all);
      } else {
        part[keys[i]] = total[i] / all;
      }
    }
    return part;
  }

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
                    {"skipped", skipped_},
                    {"world_size", world_}};
  }

  void note(const std::string& text) {
    if (bar_) {
      bar_->note(text);
    } else if (!context_.quiet && main_) {
      std::cerr << text << "\n";
    }
  }

  // A checkpoint that cannot be written stops the run; the file it would have replaced is intact.
  void save(const std::string& path) {
    if (!main_) {  // rank 0 writes the group's checkpoints
      if (path == checkpoint_path_) checkpoint_step_ = state_.step;
      return;
    }
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
    if (!metrics_) return;
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
      result = dist_ && loop_.evaluate_part ? loop_.evaluate_part(split, rank_, world_)
                                            : loop_.evaluate(split);
    } catch (const c10::Error& e) {
      if (!is_factorisation_error(e)) throw;
      if (!dist_) {
        handle_fault({"factorisation", split, first_line(e.what_without_backtrace())},
                     state_.step, false);
      }
      result = {{"__fault", first_line(e.what_without_backtrace())}};
    }
    if (dist_) {
      result = loop_.evaluate_part ? combine_parts(split, std::move(result))
                                   : from_main(std::move(result));
      if (result.contains("__fault")) {
        handle_fault({"factorisation", split, result.at("__fault").get<std::string>()},
                     state_.step, false);
      }
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
  std::shared_ptr<train::Distributed> dist_;  // null: one process
  const bool main_;                           // rank 0 (or the only process): writes the files
  const int64_t rank_, world_;
  double comm_seconds_ = 0;
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
  loop.batch_size = c.batch_size;
  loop.seed = static_cast<uint64_t>(c.seed);
  loop.label = c.task + "/" + c.attention.mechanism();
  return loop;
}

nlohmann::json run_summary(const CommonTaskConfig& c, const torch::nn::Module& model) {
  return {{"task", c.task},
          {"mechanism", c.attention.mechanism()},
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
