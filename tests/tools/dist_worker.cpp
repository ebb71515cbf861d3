// kvq_dist_worker: one worker of the data-parallel tests (tests/train/test_distributed.cpp).
// Trains a small SequenceTagger on the sort task (SGD with momentum) in float32 or float64 with
// run_training_loop and one intra-op thread, in the group of the environment (RANK, WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT; one process when they are unset). Rank 0 writes checkpoint.pt, metrics.jsonl and
// results.json in RUN_DIR.
//   kvq_dist_worker RUN_DIR float32|float64 STEPS
// Exit status 0, or 1 with the error on stderr.
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>

#include "kvq/data/synthetic_tasks.h"
#include "kvq/tasks/sequence_task.h"
#include "kvq/tasks/training_loop.h"
#include "kvq/train/distributed.h"
#include "kvq/train/run_dir.h"
#include "kvq/util/sampler.h"
#include "dist_worker_model.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: kvq_dist_worker RUN_DIR float32|float64 STEPS\n";
    return 2;
  }
  try {
    using namespace kvq;
    at::set_num_threads(1);
    const std::string dir = argv[1];
    const auto dtype = std::string(argv[2]) == "float64" ? torch::kFloat64 : torch::kFloat32;
    const int64_t steps = std::stoll(argv[3]);
    const auto env = train::dist_env_from_environment();
    std::shared_ptr<train::Distributed> dist;
    if (env.world_size > 1) {
      dist = train::Distributed::join(env, train::DistOptions().timeout(std::chrono::seconds(60)));
    }
    const bool main_rank = dist == nullptr || dist->is_main();
    if (main_rank) std::filesystem::create_directories(dir);
    const auto run = main_rank ? train::RunDir::open(dir) : train::RunDir::remote(dir);

    const int64_t batch = 16, vocab = 8, length = 8;
    const auto splits = data::make_synthetic_splits(
        data::SyntheticTask::Sort, 7, data::SyntheticTaskOptions().vocab_size(vocab).length(length),
        256, 40, 40);
    torch::manual_seed(3);
    auto model = test_tools::dist_worker_model(dtype);
    // SGD, not Adam: Adam turns the rounding noise of gradients that are zero in exact
    // arithmetic (the key bias under softmax) into steps of +-lr, which would differ between any
    // two summation orders and hide what this test checks.
    torch::optim::SGD optimizer(model->parameters(),
                                torch::optim::SGDOptions(0.05).momentum(0.9));
    util::BatchSampler sampler(256, batch, 11);

    tasks::TrainingLoop loop;
    loop.model = model.get();
    loop.optimizer = &optimizer;
    loop.schedule.base_lr = 0.05;
    loop.schedule.total_steps = steps;
    loop.batches = train::BatchSource::rows_of(
        {{"inputs", splits.train.inputs}, {"targets", splits.train.targets}}, sampler);
    loop.total_steps = steps;
    loop.steps_per_epoch = sampler.batches_per_epoch();
    loop.log_every = 4;
    loop.seed = 3;
    loop.loss = [&](const train::Batch& b, int64_t) {
      const auto& y = b["targets"];
      const auto logits = model->forward(b["inputs"]);
      tasks::BatchLoss out;
      out.loss = torch::nn::functional::cross_entropy(logits.reshape({-1, vocab}), y.reshape({-1}));
      out.items = y.numel();
      out.correct = (logits.detach().argmax(-1) == y).sum().item<int64_t>();
      return out;
    };
    loop.evaluate = [&](const std::string& split) {
      const auto& d = split == "test" ? splits.test : splits.val;
      return tasks::evaluate_sequence_model(model, d.inputs, d.targets, 16);
    };
    loop.evaluate_part = [&](const std::string& split, int64_t part, int64_t parts) {
      const auto& d = split == "test" ? splits.test : splits.val;
      const auto [begin, end] = tasks::part_range(d.inputs.size(0), part, parts);
      return tasks::evaluate_sequence_model(model, d.inputs.slice(0, begin, end),
                                            d.targets.slice(0, begin, end), 16);
    };
    loop.metrics = {"token_acc", /*maximize=*/true, "token_acc", "items", "samples"};
    tasks::TrainContext context;
    context.quiet = true;
    context.dist = dist;
    tasks::run_training_loop(loop, run, context, {{"dtype", argv[2]}});
  } catch (const c10::Error& e) {
    std::cerr << "kvq_dist_worker: " << e.what_without_backtrace() << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "kvq_dist_worker: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
