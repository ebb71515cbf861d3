#pragma once
// Experiment 4 of the Key-Value Transformer paper (Borji 2023; docs: tasks.md): translation with
// the encoder-decoder kvq::models::Seq2Seq, any mechanism in every attention (encoder self,
// decoder causal self, cross). Registered as `translation`.
//
// Data: a TSV of "source<TAB>target" pairs (tsv_file), or by default the English -> German corpus
// built from the German gettext catalogs of a pinned list of Debian packages (cached under
// kvq::data::data_cache_dir()). Pairs are split by split_seed (kvq::data::split_parallel, the same
// split for every run seed), tokenised by kvq::data::tokenize_words (lower-cased words, each
// punctuation mark a token), vocabularies built on the training pairs (min_freq; rarer words are
// <unk>), sentences cut to max_tokens. The corpus statistics are printed at the start of a run.
// Training: teacher forcing, cross-entropy with label smoothing over non-pad target tokens.
// Metrics of a split: "loss" (token cross-entropy without smoothing, nats), "acc" (token
// accuracy), "bleu" (corpus BLEU-4 x 100 of greedy decoding against the tokenised references;
// <unk> in a hypothesis never matches), "unigram_loss" (cross-entropy of the training target
// tokens' add-one smoothed frequencies, the baseline). During training "bleu" uses the first
// val_bleu_sentences validation pairs.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "kvq/models/seq2seq.h"
#include "kvq/tasks/common_config.h"
#include "kvq/tasks/task_registry.h"
#include "kvq/train/run_dir.h"

namespace kvq {
namespace tasks {

// Defaults are the paper's (d 128, 4 heads of its grid).
struct TranslationTaskConfig : CommonTaskConfig {
  TranslationTaskConfig() {
    task = "translation";
    block = models::TransformerBlockOptions(128, 4)
                .ffn_dim(512).dropout(0.1).norm_first(true);  // 4 * d_model
    num_layers = 2;
    batch_size = 50;
    optimizer = "adam";
    lr = 1.0;  // the Noam factor
    beta1 = 0.9;
    beta2 = 0.98;
    adam_eps = 1e-9;
    schedule = "noam";
    warmup_steps = 4000;
    eval_batch_size = 200;
  }
  std::string tsv_file = "";        // "" = the gettext en-de corpus
  int64_t split_seed = 0;           // seed of the train/val/test split
  double val_fraction = 0.05;       // share of pairs for validation
  double test_fraction = 0.05;      // share of pairs for test
  int64_t min_freq = 2;             // rarer training words become <unk>
  int64_t max_tokens = 40;          // words kept per sentence (before <bos>/<eos>)
  double label_smoothing = 0.1;     // of the training loss
  int64_t epochs = 20;              // passes over the training pairs
  int64_t val_bleu_sentences = 300; // validation pairs decoded for BLEU during training
};

const train::ConfigSchema<TranslationTaskConfig>& translation_task_schema();

// `kvq translate`: greedy translations of `sentences` by a run's checkpoint ("best" | "last"),
// one output string (tokens joined by spaces) per input sentence. use_cache = false decodes
// without the decoder caches (the whole prefix again at every token; same output). The model
// runs on `device`.
struct Translations {
  std::vector<std::string> lines;
  int64_t tokens = 0;    // target tokens produced: the words plus each row's closing <eos>
  double seconds = 0.0;  // wall-clock time of the decoding alone
};
Translations translate_with_run(const nlohmann::json& config, const train::RunDir& run,
                                const std::vector<std::string>& sentences,
                                const std::string& checkpoint = "best", bool use_cache = true,
                                torch::Device device = torch::kCPU);

TrainSummary train_translation_task(const TranslationTaskConfig& config, const train::RunDir& run,
                                    const TrainContext& context = {});
nlohmann::json evaluate_translation_task(const TranslationTaskConfig& config,
                                         const train::RunDir& run,
                                         const EvalOptions& options = {});

TaskInfo translation_task_info();

}  // namespace tasks
}  // namespace kvq
