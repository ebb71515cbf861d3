#pragma once
// Experiment 2 of the Key-Value Transformer paper (Borji 2023; docs: tasks.md): image
// classification with a ViT whose attention is any registered mechanism. Four registered tasks:
//   fashion-mnist  Debian's dataset-fashion-mnist by default (data_dir ""), or IDX files in
//                  data_dir
//   mnist          the same IDX file names (gzip or plain) in data_dir (required)
//   cifar10        CIFAR-10 binary batches in data_dir (.../cifar-10-batches-bin, required)
//   cifar100       CIFAR-100 binary files in data_dir (.../cifar-100-binary, required; fine labels)
// Validation holds out the last num_val images of the training split (no overlap with training);
// the test split is the official one. Pixels are scaled to [0, 1] and standardised per channel
// with the training images' mean and standard deviation. With `augment`, each training image is
// flipped horizontally with probability 1/2 and cropped at random (RandomResizedCrop: area scale
// in [0.5, 1], aspect ratio in [3/4, 4/3], bilinear back to full size), drawn from torch's default
// generator (saved in checkpoints, so resume stays exact).
// The run directory and its files are those of kvq::tasks::run_training_loop; metrics "loss"
// (mean cross-entropy) and "acc" (top-1 accuracy).
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "kvq/models/vit.h"
#include "kvq/tasks/common_config.h"
#include "kvq/tasks/task_registry.h"
#include "kvq/train/run_dir.h"

namespace kvq {
namespace tasks {

// Defaults are the paper's MNIST / Fashion-MNIST setting (preset "paper" for those tasks).
struct ImageTaskConfig : CommonTaskConfig {
  ImageTaskConfig() {
    task = "fashion-mnist";
    block = models::TransformerBlockOptions(128, 4)  // feed-forward d_model wide, the paper's
                .ffn_dim(128)
                .activation("gelu")
                .dropout(0.0)
                .norm_first(true);
    num_layers = 4;
    batch_size = 200;
    optimizer = "adamw";
    lr = 1e-3;
    weight_decay = 0.01;
    eval_batch_size = 1000;
  }
  std::string data_dir = "";  // "" = /usr/share/datasets/fashion-mnist (fashion-mnist only)
  int64_t patch_size = 7;     // patch side p; (image / p)^2 patches + cls token
  int64_t num_val = 5000;     // validation images held out from the end of the train split
  int64_t num_train = 0;      // training images (from the start); 0 = all the rest
  int64_t num_test = 0;       // test images (from the start); 0 = all
  int64_t epochs = 20;        // passes over the training images
  bool augment = false;       // random flip + resized crop of training images
};

// Schema: CommonTaskConfig's fields and the fields above; presets "paper" (tasks.md: MNIST /
// Fashion-MNIST d 128, depth 4, heads 4, patch 7, batch 200, 20 epochs, AdamW 1e-3; CIFAR patch 8,
// batch 128, 40 epochs, augmentation) and "quick" (Fashion-MNIST: a few minutes on 2 cores).
// The schema is per task because the presets differ.
const train::ConfigSchema<ImageTaskConfig>& image_task_schema(const std::string& task);

// The run's ViT, built after torch::manual_seed(config.seed).
models::ViT make_image_model(const ImageTaskConfig& config);

// Mean cross-entropy "loss", top-1 "acc" and "samples" of `model` on standardised float images
// (N, C, H, W) with labels (N), in batches, eval mode, no gradients; the model's mode is restored.
nlohmann::json evaluate_image_model(models::ViT& model, const torch::Tensor& images,
                                    const torch::Tensor& labels, int64_t batch_size);

TrainSummary train_image_task(const ImageTaskConfig& config, const train::RunDir& run,
                              const TrainContext& context = {});
nlohmann::json evaluate_image_task(const ImageTaskConfig& config, const train::RunDir& run,
                                   const EvalOptions& options = {});

// The registry entry of `name`: fashion-mnist, mnist, cifar10 or cifar100.
TaskInfo image_task_info(const std::string& name);

}  // namespace tasks
}  // namespace kvq
