#pragma once
// Language modelling with the decoder-only kvq::models::LanguageModel (any mechanism, causal):
//   char-lm        experiment 3 of the Key-Value Transformer paper (Borji 2023; docs: tasks.md):
//                  characters of a UTF-8 text file, the King James Bible (Debian bible-kjv) by
//                  default; train = the first (1 - val_fraction) of the text, validation the rest.
//   human-numbers  experiment 5: the fast.ai "human numbers" words (1..8000 train, 8001..9999
//                  validation), 30-word vocabulary.
// Training batches are windows of context + 1 tokens starting at positions drawn without
// replacement (a BatchSampler over every start position of the training stream). The corpora have
// no test split: "val" metrics during training use eval_windows windows spread evenly over the
// validation stream; "test" metrics (end of training, kvq eval) use every non-overlapping window
// of it. Metrics: "loss" (nats per token), "bits" (bits per token = loss / ln 2: bits per
// character for char-lm), "acc" (next-token top-1), and the baseline "unigram_loss": the
// cross-entropy of the training stream's token frequencies (add-one smoothed) on the same
// targets.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "kvq/models/language_model.h"
#include "kvq/tasks/common_config.h"
#include "kvq/tasks/task_registry.h"
#include "kvq/train/run_dir.h"

namespace kvq {
namespace tasks {

// Defaults are the paper's char-lm setting (the nanoGPT-style gpt.py of the paper's code).
struct LmTaskConfig : CommonTaskConfig {
  LmTaskConfig() {
    task = "char-lm";
    block = models::TransformerBlockOptions(192, 3)
                .ffn_dim(768).dropout(0.2).norm_first(true);  // 4 * d_model
    num_layers = 6;
    batch_size = 64;
    optimizer = "adamw";
    lr = 5e-4;
    eval_every = 500;
    checkpoint_every = 500;
    eval_batch_size = 64;
  }
  std::string text_file = "";   // char-lm: a UTF-8 text file; "" = the King James Bible
  double val_fraction = 0.1;    // char-lm: the share at the end of the text that validates
  int64_t context = 64;         // tokens a prediction sees (the model's context length)
  int64_t steps = 10000;        // optimiser updates
  int64_t eval_windows = 200;   // validation windows during training
};

// Schema per task (presets differ): "paper" (tasks.md: char-lm context 64, batch 64, 10k updates,
// AdamW 5e-4, d 192, 3 heads, 6 layers, dropout 0.2; human-numbers d 64, 4 layers, 8 heads) and
// "quick" (minutes on 2 cores).
const train::ConfigSchema<LmTaskConfig>& lm_task_schema(const std::string& task);

// The token streams and decoding of a config's corpus.
struct LmCorpus {
  torch::Tensor train, val;   // int64 (T_train), (T_val)
  int64_t vocab_size = 0;
  // ids -> text: characters for char-lm, words joined by spaces for human-numbers.
  std::function<std::string(const torch::Tensor&)> decode;
  // text -> ids; throws naming the first unknown character or word.
  std::function<torch::Tensor(const std::string&)> encode;
};
LmCorpus load_lm_corpus(const LmTaskConfig& config);

models::LanguageModel make_lm_model(const LmTaskConfig& config, int64_t vocab_size);

// Metrics (see above) of `model` on the windows of `stream` starting at `starts`: each window is
// stream[s .. s + context], inputs its first context tokens and targets the next ones.
nlohmann::json evaluate_lm_model(models::LanguageModel& model, const torch::Tensor& stream,
                                 const std::vector<int64_t>& starts, int64_t context,
                                 int64_t batch_size, const torch::Tensor& unigram_log_probs);

TrainSummary train_lm_task(const LmTaskConfig& config, const train::RunDir& run,
                           const TrainContext& context = {});
nlohmann::json evaluate_lm_task(const LmTaskConfig& config, const train::RunDir& run,
                                const EvalOptions& options = {});

// `kvq generate`: samples `options.max_new_tokens` tokens after `prompt` (text; "" = the first
// token of the validation stream) from a run's checkpoint ("best" | "last"); the model runs on
// `device`, the sampling on the CPU (the same tokens for the same logits on any device).
struct Generation {
  std::string text;        // the decoded prompt + continuation
  int64_t new_tokens = 0;  // tokens generated
  double seconds = 0.0;    // wall-clock time of LanguageModel::generate alone
};
Generation generate_from_run(const nlohmann::json& config, const train::RunDir& run,
                             const std::string& prompt, const models::GenerateOptions& options,
                             const std::string& checkpoint = "best",
                             torch::Device device = torch::kCPU);

// The checks a run makes of the config beyond the schema's (TaskInfo::check): the learning-rate
// schedule over its `steps` updates.
void check_lm_task(const LmTaskConfig& config);

// The registry entry of `name`: char-lm or human-numbers.
TaskInfo lm_task_info(const std::string& name);

}  // namespace tasks
}  // namespace kvq
