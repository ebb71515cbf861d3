#include "kvq/train/reducer.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>
#include <vector>

#include "kvq/util/atomic_file.h"

namespace kvq {
namespace train {

namespace {

// A fault's kind as a number an all-reduce can carry.
enum FaultCode : int64_t { kNone = 0, kLoss, kGradient, kForward, kBackward };

int64_t fault_code(const c10::optional<Fault>& fault) {
  if (!fault) return kNone;
  if (fault->quantity == "loss") return kLoss;
  if (fault->quantity == "factorisation") return fault->where == "forward" ? kForward : kBackward;
  return kGradient;
}

}  // namespace

c10::optional<TrainingState> LocalReducer::load_checkpoint(const RunDir& run,
                                                           torch::nn::Module& model,
                                                           torch::optim::Optimizer& optimizer) {
  if (!run.has_checkpoint()) return c10::nullopt;
  return train::load_checkpoint(run.checkpoint_path().string(), model, optimizer);
}

DataParallelReducer::DataParallelReducer(std::shared_ptr<Distributed> dist)
    : dist_(std::move(dist)) {
  TORCH_CHECK(dist_ != nullptr, "DataParallelReducer: the group (dist) must be set");
}

void DataParallelReducer::broadcast_parameters(torch::nn::Module& model) {
  dist_->broadcast_module(model);
}

std::string DataParallelReducer::broadcast_string(const std::string& text,
                                                  const std::string& what) {
  return dist_->broadcast_string(text, what);
}

c10::optional<TrainingState> DataParallelReducer::load_checkpoint(
    const RunDir& run, torch::nn::Module& model, torch::optim::Optimizer& optimizer) {
  const std::string path = run.checkpoint_path().string();
  std::string bytes;
  if (is_main() && run.has_checkpoint()) bytes = util::read_file(path, "resume");
  bytes = dist_->broadcast_string(bytes, "the checkpoint");
  if (bytes.empty()) return c10::nullopt;
  if (is_main()) return train::load_checkpoint(path, model, optimizer);
  const auto copy = std::filesystem::temp_directory_path() /
                    ("kvq-resume-" + std::to_string(::getpid()) + ".pt");
  {
    std::ofstream out(copy, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    TORCH_CHECK(out.good(), "resume: cannot write the broadcast checkpoint to ", copy.string());
  }
  try {
    auto state = train::load_checkpoint(copy.string(), model, optimizer);
    std::remove(copy.c_str());
    return state;
  } catch (...) {
    std::remove(copy.c_str());
    throw;
  }
}

torch::Tensor DataParallelReducer::sum_over_workers(torch::Tensor values, const std::string& what) {
  values = values.to(dist_->options().device());
  dist_->all_reduce_sum(values, what);
  return values.to(torch::kCPU);
}

// One all-reduce of [loss * items, items, correct, fault code per rank] gives every worker the
// same view; then, unless some worker had a fault, the gradients scaled by items / total items
// are summed.
c10::optional<Fault> DataParallelReducer::reduce_update(torch::nn::Module& model,
                                                        UpdateStats& stats,
                                                        c10::optional<Fault> fault) {
  const auto began = std::chrono::steady_clock::now();
  const int64_t world = world_size(), me = rank();
  auto values = torch::zeros({3 + world}, torch::kFloat64);
  const double items = static_cast<double>(stats.items);
  auto* v = values.data_ptr<double>();
  v[0] = fault ? 0.0 : stats.loss * items;
  v[1] = items;
  v[2] = static_cast<double>(std::max<int64_t>(stats.correct, 0));
  v[3 + me] = static_cast<double>(fault_code(fault));
  values = sum_over_workers(values, "update statistics");
  v = values.data_ptr<double>();
  c10::optional<Fault> group_fault;
  for (int64_t r = 0; r < world && !group_fault; ++r) {
    const auto code = static_cast<int64_t>(v[3 + r]);
    if (code == kNone) continue;
    const std::string on = " on rank " + std::to_string(r);
    if (r == me) {
      group_fault = Fault{fault->quantity, fault->where + on, fault->message};
    } else {
      const char* quantity = code == kLoss       ? "loss"
                             : code == kGradient ? "gradient"
                                                 : "factorisation";
      const char* where = code == kForward || code == kLoss ? "forward" : "backward";
      group_fault = Fault{quantity, where + on, "see that worker's error output"};
    }
  }
  if (!group_fault) {
    const double total = v[1];
    stats.loss = total > 0 ? v[0] / total : 0.0;
    stats.items = static_cast<int64_t>(v[1]);
    if (stats.correct >= 0) stats.correct = static_cast<int64_t>(v[2]);
    const auto params = model.parameters(/*recurse=*/true);
    if (total > 0 && items != total) {
      torch::NoGradGuard no_grad;
      for (const auto& p : params) {
        if (p.grad().defined()) p.grad().mul_(items / total);
      }
    }
    dist_->all_reduce_gradients(params);
  }
  comm_seconds_ +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  return group_fault;
}

c10::optional<Fault> DataParallelReducer::reduce_evaluation(const std::string& split,
                                                            nlohmann::json& metrics,
                                                            c10::optional<Fault> fault,
                                                            bool sharded,
                                                            const std::string& count_key) {
  if (sharded) return combine_parts(split, metrics, fault, count_key);
  // Rank 0's metrics, or its fault, on every worker.
  const nlohmann::json mine =
      fault ? nlohmann::json{{"fault", fault->message}} : nlohmann::json{{"metrics", metrics}};
  const std::string text = dist_->broadcast_string(is_main() ? mine.dump() : "", "the metrics");
  const nlohmann::json main = is_main() ? mine : nlohmann::json::parse(text);
  if (main.contains("fault")) {
    return Fault{"factorisation", split, main.at("fault").get<std::string>()};
  }
  metrics = main.at("metrics");
  return c10::nullopt;
}

// Each number of the whole split is the mean over the parts weighted by their counts; a failed
// part is a fault of all.
c10::optional<Fault> DataParallelReducer::combine_parts(const std::string& split,
                                                        nlohmann::json& part,
                                                        const c10::optional<Fault>& fault,
                                                        const std::string& count_key) {
  const int64_t world = world_size(), me = rank();
  auto flags = torch::zeros({world}, torch::kFloat64);
  flags[me] = fault ? 1.0 : 0.0;
  flags = sum_over_workers(flags, "evaluation flags");
  for (int64_t r = 0; r < world; ++r) {
    if (flags[r].item<double>() == 0) continue;
    if (r == me) return fault;
    return Fault{"factorisation", split,
                 "on rank " + std::to_string(r) + " (see that worker's error output)"};
  }
  TORCH_CHECK(part.contains(count_key) && part.at(count_key).is_number(),
              "run_training_loop: the metrics of a part of ", split, " ", part.dump(),
              " have no count '", count_key, "' (TaskMetrics::eval_count)");
  const double count = part.at(count_key).get<double>();
  std::vector<std::string> keys;
  std::vector<double> values;
  for (const auto& [key, value] : part.items()) {
    if (!value.is_number()) continue;
    keys.push_back(key);
    // An empty part adds nothing (its means are 0/0).
    values.push_back(key == count_key ? count : count > 0 ? value.get<double>() * count : 0.0);
  }
  const auto sums = sum_over_workers(torch::tensor(values, torch::kFloat64), "evaluation metrics");
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
  return c10::nullopt;
}

std::unique_ptr<Reducer> make_reducer(std::shared_ptr<Distributed> dist) {
  if (dist == nullptr) return std::make_unique<LocalReducer>();
  return std::make_unique<DataParallelReducer>(std::move(dist));
}

}  // namespace train
}  // namespace kvq
