#include "kvq/tasks/image_task.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <memory>

#include "kvq/data/cifar.h"
#include "kvq/data/idx.h"
#include "kvq/tasks/training_loop.h"
#include "kvq/train/checkpoint.h"

namespace kvq {
namespace tasks {

namespace {

using Config = ImageTaskConfig;
namespace F = torch::nn::functional;

const std::vector<std::string>& image_task_names() {
  static const std::vector<std::string> names = {"fashion-mnist", "mnist", "cifar10", "cifar100"};
  return names;
}

bool is_cifar(const std::string& task) { return task.rfind("cifar", 0) == 0; }

int64_t num_classes(const std::string& task) { return task == "cifar100" ? 100 : 10; }
int64_t image_size(const std::string& task) { return is_cifar(task) ? 32 : 28; }
int64_t channels(const std::string& task) { return is_cifar(task) ? 3 : 1; }

struct Split {
  torch::Tensor images;  // float (N, C, H, W), standardised
  torch::Tensor labels;  // int64 (N)
};
struct ImageSplits {
  Split train, val, test;
};

// uint8 images (N, H, W) or (N, C, H, W) and labels of one official split.
std::pair<torch::Tensor, torch::Tensor> read_split(const Config& c, const std::string& split) {
  if (c.task == "cifar10" || c.task == "cifar100") {
    const auto d = c.task == "cifar10" ? data::load_cifar10(c.data_dir, split)
                                       : data::load_cifar100(c.data_dir, split);
    return {d.images, d.labels};
  }
  const auto d = data::load_fashion_mnist(split, c.data_dir.empty() ? data::kFashionMnistDir
                                                                    : c.data_dir);
  return {d.images.unsqueeze(1), d.labels};
}

ImageSplits load_images(const Config& c) {
  auto [train_images, train_labels] = read_split(c, "train");
  auto [test_images, test_labels] = read_split(c, "test");
  const int64_t n = train_images.size(0);
  TORCH_CHECK(c.num_val < n, "config ", c.task, ": num_val = ", c.num_val,
              " leaves no training images (the train split has ", n, ")");
  const int64_t train_end = n - c.num_val;
  const int64_t num_train = c.num_train > 0 ? std::min(c.num_train, train_end) : train_end;
  const int64_t num_test = c.num_test > 0 ? std::min(c.num_test, test_images.size(0))
                                          : test_images.size(0);
  const auto to_float = [](const torch::Tensor& x) { return x.to(torch::kFloat32).div_(255.0); };
  ImageSplits s;
  s.train = {to_float(train_images.slice(0, 0, num_train)), train_labels.slice(0, 0, num_train)};
  s.val = {to_float(train_images.slice(0, train_end, n)), train_labels.slice(0, train_end, n)};
  s.test = {to_float(test_images.slice(0, 0, num_test)), test_labels.slice(0, 0, num_test)};
  const auto mean = s.train.images.mean({0, 2, 3}, /*keepdim=*/true);
  const auto std = s.train.images.std({0, 2, 3}, /*unbiased=*/true, /*keepdim=*/true);
  for (Split* split : {&s.train, &s.val, &s.test}) {
    split->images = (split->images - mean) / std;
  }
  return s;
}

// Random horizontal flip and RandomResizedCrop of each image of a (B, C, H, W) batch.
torch::Tensor augment_batch(const torch::Tensor& images) {
  const int64_t b = images.size(0), h = images.size(2), w = images.size(3);
  const auto flip = (torch::rand({b}) < 0.5).view({b, 1, 1, 1});
  const auto flipped = torch::where(flip, images.flip({3}), images);
  const auto draws = torch::rand({b, 4}, torch::kFloat64);
  const auto u = draws.accessor<double, 2>();
  std::vector<torch::Tensor> out;
  out.reserve(static_cast<size_t>(b));
  const double log_lo = std::log(3.0 / 4.0), log_hi = std::log(4.0 / 3.0);
  for (int64_t i = 0; i < b; ++i) {
    const double area = (0.5 + 0.5 * u[i][0]) * static_cast<double>(h * w);
    const double ratio = std::exp(log_lo + (log_hi - log_lo) * u[i][1]);
    const int64_t cw = std::clamp<int64_t>(std::llround(std::sqrt(area * ratio)), 1, w);
    const int64_t ch = std::clamp<int64_t>(std::llround(std::sqrt(area / ratio)), 1, h);
    const auto top = static_cast<int64_t>(u[i][2] * static_cast<double>(h - ch + 1));
    const auto left = static_cast<int64_t>(u[i][3] * static_cast<double>(w - cw + 1));
    const auto crop = flipped[i].slice(1, top, top + ch).slice(2, left, left + cw).unsqueeze(0);
    out.push_back(F::interpolate(crop, F::InterpolateFuncOptions()
                                           .size(std::vector<int64_t>{h, w})
                                           .mode(torch::kBilinear)
                                           .align_corners(false)));
  }
  return torch::cat(out, 0);
}

int64_t total_steps(const Config& c, int64_t num_train) {
  return c.epochs * (num_train / c.batch_size);
}

train::ConfigSchema<Config> build_schema(const std::string& task) {
  train::ConfigSchema<Config> schema(task);
  add_common_fields(schema)
      .field("data_dir", &Config::data_dir,
             "directory of the data files; \"\" = /usr/share/datasets/fashion-mnist "
             "(fashion-mnist only)")
      .field("patch_size", &Config::patch_size, "patch side p (divides the image side)")
      .field("num_val", &Config::num_val, "validation images held out from the end of train")
      .field("num_train", &Config::num_train, "training images from the start; 0 = all the rest")
      .field("num_test", &Config::num_test, "test images from the start; 0 = all")
      .field("epochs", &Config::epochs, "passes over the training images")
      .field("augment", &Config::augment, "random flip + resized crop of training images")
      .check("task must be one of: fashion-mnist, mnist, cifar10, cifar100",
             [](const Config& c) { return detail::contains_name(image_task_names(), c.task); })
      .check("data_dir must be given for mnist, cifar10 and cifar100 (the directory of the "
             "original files)",
             [](const Config& c) { return c.task == "fashion-mnist" || !c.data_dir.empty(); })
      .check("patch_size must divide the image side (28 for MNIST, 32 for CIFAR)",
             [](const Config& c) {
               return c.patch_size >= 1 && image_size(c.task) % c.patch_size == 0;
             })
      .check("num_val must be >= 1", [](const Config& c) { return c.num_val >= 1; })
      .check("num_train and num_test must be >= 0",
             [](const Config& c) { return c.num_train >= 0 && c.num_test >= 0; })
      .check("epochs must be >= 1", [](const Config& c) { return c.epochs >= 1; })
      .upgrade(detail::upgrade_zero_ffn_dim(1));
  if (is_cifar(task)) {
    schema.preset("paper",
                  {{"patch_size", 8}, {"d_model", 128}, {"num_layers", 4}, {"num_heads", 4},
                   {"ffn_dim", 128}, {"dropout", 0.0}, {"batch_size", 128},
                   {"epochs", task == "cifar10" ? 40 : 50},
                   {"optimizer", "adamw"}, {"lr", 1e-3}, {"augment", true}},
                  "tasks.md experiment 2: patch 8 (17 tokens), d 128, depth 4, heads 4, batch "
                  "128, AdamW 1e-3, flip + resized crop, 40 (CIFAR-10) / 50 (CIFAR-100) epochs");
    schema.preset("quick",
                  {{"patch_size", 8}, {"d_model", 64}, {"num_layers", 2}, {"num_heads", 4},
                   {"ffn_dim", 64}, {"dropout", 0.0}, {"batch_size", 128}, {"epochs", 3},
                   {"optimizer", "adamw"},
                   {"lr", 2e-3}, {"schedule", "cosine"}, {"warmup_steps", 100},
                   {"augment", true}},
                  "patch 8, d 64, depth 2, heads 4, batch 128, 3 epochs, AdamW 2e-3 cosine");
  } else {
    schema.preset("paper",
                  {{"patch_size", 7}, {"d_model", 128}, {"num_layers", 4}, {"num_heads", 4},
                   {"ffn_dim", 128}, {"dropout", 0.0}, {"batch_size", 200}, {"epochs", 20},
                   {"optimizer", "adamw"}, {"lr", 1e-3}},
                  "tasks.md experiment 2: patch 7 (17 tokens), d 128, depth 4, heads 4, batch "
                  "200, 20 epochs, AdamW 1e-3");
    schema.preset("quick",
                  {{"patch_size", 7}, {"d_model", 64}, {"num_layers", 2}, {"num_heads", 4},
                   {"ffn_dim", 64}, {"dropout", 0.0}, {"batch_size", 128}, {"epochs", 4},
                   {"optimizer", "adamw"},
                   {"lr", 2e-3}, {"schedule", "cosine"}, {"warmup_steps", 100},
                   {"eval_every", 200}, {"checkpoint_every", 200}},
                  "patch 7, d 64, depth 2, heads 4, batch 128, 4 epochs, AdamW 2e-3 with "
                  "warm-up + cosine");
  }
  return schema;
}

}  // namespace

const train::ConfigSchema<Config>& image_task_schema(const std::string& task) {
  return schema_of_task<Config>(image_task_names(), task, build_schema, "image task");
}

models::ViT make_image_model(const Config& c) {
  torch::manual_seed(static_cast<uint64_t>(c.seed));
  return models::ViT(
      models::ViTOptions(image_size(c.task), c.patch_size, num_classes(c.task))
          .in_channels(channels(c.task))
          .block(c.block)
          .num_layers(c.num_layers));
}

nlohmann::json evaluate_image_model(models::ViT& model, const torch::Tensor& images,
                                    const torch::Tensor& labels, int64_t batch_size) {
  TORCH_CHECK(images.dim() == 4 && labels.dim() == 1 && labels.size(0) == images.size(0),
              "evaluate_image_model: images must be (N, C, H, W) and labels (N), got ",
              images.sizes(), " and ", labels.sizes());
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  const int64_t n = images.size(0);
  const auto device = train::model_device(*model);
  double loss_sum = 0;
  int64_t correct = 0;
  for (int64_t start = 0; start < n; start += batch_size) {
    const int64_t end = std::min(n, start + batch_size);
    const auto logits = model->forward(images.slice(0, start, end).to(device));
    const auto y = labels.slice(0, start, end).to(device);
    loss_sum +=
        F::cross_entropy(logits, y, F::CrossEntropyFuncOptions().reduction(torch::kSum))
            .item<double>();
    correct += (logits.argmax(-1) == y).sum().item<int64_t>();
  }
  model->train(was_training);
  return {{"loss", loss_sum / static_cast<double>(n)},
          {"acc", static_cast<double>(correct) / static_cast<double>(n)},
          {"samples", n}};
}

TrainSummary train_image_task(const Config& c, const train::RunDir& run,
                              const TrainContext& context) {
  const auto splits = load_images(c);
  auto model = make_image_model(c);
  model->to(context.device);
  const auto optimizer = make_optimizer(model->parameters(), c);
  const int64_t num_train = splits.train.images.size(0);
  TORCH_CHECK(num_train >= c.batch_size, "config ", c.task, ": ", num_train,
              " training images are fewer than batch_size = ", c.batch_size);
  util::BatchSampler sampler(num_train, c.batch_size,
                             stream_seed(c.seed, SeedStream::kImageBatches));

  auto loop = training_loop_for(c, *model, *optimizer, total_steps(c, num_train), c.task);
  // The images stay on the CPU: they are augmented there, then moved.
  loop.batches = train::BatchSource::rows_of(
                     {{"images", splits.train.images}, {"labels", splits.train.labels}}, sampler)
                     .on_host({"images"});
  loop.steps_per_epoch = sampler.batches_per_epoch();
  loop.loss = [&](const train::Batch& batch, int64_t) {
    auto x = batch["images"];
    if (c.augment) x = augment_batch(x);
    const auto& y = batch["labels"];
    const auto logits = model->forward(x.to(context.device));
    BatchLoss out;
    out.loss = F::cross_entropy(logits, y);
    out.items = y.numel();
    out.correct = (logits.detach().argmax(-1) == y).sum().item<int64_t>();
    return out;
  };
  loop.evaluate = [&](const std::string& split) {
    const auto& s = split == "test" ? splits.test : splits.val;
    return evaluate_image_model(model, s.images, s.labels, c.eval_batch_size);
  };
  loop.evaluate_part = [&](const std::string& split, int64_t part, int64_t parts) {
    const auto& s = split == "test" ? splits.test : splits.val;
    const auto [begin, end] = part_range(s.images.size(0), part, parts);
    return evaluate_image_model(model, s.images.slice(0, begin, end),
                                s.labels.slice(0, begin, end), c.eval_batch_size);
  };
  auto summary = run_summary(c, *model);
  summary["epochs"] = c.epochs;
  summary["num_train"] = num_train;
  return run_training_loop(loop, run, context, summary);
}

nlohmann::json evaluate_image_task(const Config& c, const train::RunDir& run,
                                   const EvalOptions& options) {
  const std::string path = checkpoint_to_evaluate(run, options);
  auto model = make_image_model(c);
  model->to(options.device);
  train::load_model_weights(path, *model);
  const auto splits = load_images(c);
  const auto& s = options.split == "test" ? splits.test : splits.val;
  auto out = evaluate_image_model(model, s.images, s.labels, c.eval_batch_size);
  return with_checkpoint_info(out, path, options);
}

TaskInfo image_task_info(const std::string& name) {
  const std::string what = name == "fashion-mnist" ? "Fashion-MNIST"
                           : name == "mnist"       ? "MNIST"
                           : name == "cifar10"     ? "CIFAR-10"
                                                   : "CIFAR-100";
  return make_task_info<Config>(
      name, "vision", what + " image classification with a ViT (Borji 2023, experiment 2)",
      // No check before the data: the run's updates depend on the training set's size (the
      // schedule is checked when it trains).
      image_task_schema(name), nullptr, train_image_task, evaluate_image_task,
      {"acc", /*maximize=*/true, "acc", "img", "samples"});
}

}  // namespace tasks
}  // namespace kvq
