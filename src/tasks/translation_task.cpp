#include "kvq/tasks/translation_task.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <iostream>

#include "kvq/data/bleu.h"
#include "kvq/data/io.h"
#include "kvq/data/parallel_text.h"
#include "kvq/tasks/training_loop.h"
#include "kvq/train/checkpoint.h"

namespace kvq {
namespace tasks {

namespace {

using Config = TranslationTaskConfig;
using data::WordVocab;
namespace F = torch::nn::functional;

struct Split {
  std::vector<data::TextPair> pairs;
  data::EncodedParallel encoded;
};

struct TranslationData {
  WordVocab source_vocab, target_vocab;
  Split train, val, test;
  data::ParallelCorpusStats stats;
};

std::vector<std::vector<std::string>> tokenized(const std::vector<data::TextPair>& pairs,
                                                bool source) {
  std::vector<std::vector<std::string>> out;
  out.reserve(pairs.size());
  for (const auto& p : pairs) out.push_back(data::tokenize_words(source ? p.source : p.target));
  return out;
}

TranslationData load_translation_data(const Config& c) {
  const auto pairs = c.tsv_file.empty()
                         ? data::load_gettext_en_de(data::data_cache_dir() + "/gettext-en-de.tsv")
                         : data::read_parallel_tsv(c.tsv_file, /*ignore_extra_columns=*/true);
  const auto splits = data::split_parallel(pairs, static_cast<uint64_t>(c.split_seed),
                                           c.val_fraction, c.test_fraction);
  TORCH_CHECK(!splits.train.empty() && !splits.val.empty() && !splits.test.empty(),
              "translation: ", pairs.size(), " pairs leave an empty split with val_fraction ",
              c.val_fraction, " and test_fraction ", c.test_fraction);
  TranslationData d;
  d.stats = data::parallel_corpus_stats(pairs);
  d.source_vocab = WordVocab::build(tokenized(splits.train, true), c.min_freq);
  d.target_vocab = WordVocab::build(tokenized(splits.train, false), c.min_freq);
  const auto encode = [&](const std::vector<data::TextPair>& p) {
    return Split{p, data::encode_parallel(p, d.source_vocab, d.target_vocab, c.max_tokens)};
  };
  d.train = encode(splits.train);
  d.val = encode(splits.val);
  d.test = encode(splits.test);
  return d;
}

// Rows of a padded (N, L) tensor cut to the longest non-pad row among them.
torch::Tensor trimmed(const torch::Tensor& rows) {
  const int64_t length = (rows != WordVocab::kPad).sum(1).max().item<int64_t>();
  return rows.slice(1, 0, length);
}

models::Seq2Seq make_model(const Config& c, const TranslationData& d) {
  torch::manual_seed(static_cast<uint64_t>(c.seed));
  return models::Seq2Seq(models::Seq2SeqOptions(d.source_vocab.size(), d.target_vocab.size())
                             .block(c.block)
                             .num_encoder_layers(c.num_layers)
                             .num_decoder_layers(c.num_layers));
}

// Teacher-forced logits and targets of a batch of padded rows, on `device` (the model's).
struct Forced {
  torch::Tensor logits, targets;
};
Forced teacher_forced(models::Seq2Seq& model, const torch::Tensor& source,
                      const torch::Tensor& target, const torch::Device& device) {
  const auto src = trimmed(source).to(device), tgt = trimmed(target).to(device);
  const auto tgt_in = tgt.slice(1, 0, tgt.size(1) - 1);
  return {model->forward(src, tgt_in, src == WordVocab::kPad, tgt_in == WordVocab::kPad),
          tgt.slice(1, 1, tgt.size(1))};
}

// Greedy translations of encoded source rows, as token lists (stopping at <eos>).
std::vector<std::vector<std::string>> greedy_tokens(models::Seq2Seq& model,
                                                    const torch::Tensor& source,
                                                    const WordVocab& target_vocab, int64_t max_len,
                                                    int64_t batch_size, bool use_cache = true) {
  torch::NoGradGuard no_grad;
  std::vector<std::vector<std::string>> out;
  const auto device = train::model_device(*model);
  for (int64_t start = 0; start < source.size(0); start += batch_size) {
    const auto src = trimmed(source.slice(0, start, std::min(source.size(0), start + batch_size)))
                         .to(device);
    const auto decoded =
        model->greedy_decode(src, src == WordVocab::kPad, WordVocab::kBos, WordVocab::kEos,
                             max_len, use_cache)
            .to(torch::kCPU)
            .contiguous();
    for (int64_t i = 0; i < decoded.size(0); ++i) {
      const auto row = decoded[i];
      std::vector<int64_t> ids(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
      out.push_back(target_vocab.decode(ids));
    }
  }
  return out;
}

nlohmann::json evaluate_split(models::Seq2Seq& model, const Config& c, const TranslationData& d,
                              const Split& split, int64_t bleu_sentences,
                              const torch::Tensor& unigram) {
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  const int64_t n = split.encoded.source.size(0);
  const auto device = train::model_device(*model);
  const auto unigram_here = unigram.to(device);
  double loss_sum = 0, unigram_sum = 0;
  int64_t correct = 0, tokens = 0;
  for (int64_t start = 0; start < n; start += c.eval_batch_size) {
    const int64_t end = std::min(n, start + c.eval_batch_size);
    const auto forced = teacher_forced(model, split.encoded.source.slice(0, start, end),
                                       split.encoded.target.slice(0, start, end), device);
    const auto y = forced.targets.reshape({-1});
    const auto keep = y != WordVocab::kPad;
    const auto logits = forced.logits.reshape({y.size(0), -1});
    loss_sum += F::cross_entropy(logits, y,
                                 F::CrossEntropyFuncOptions()
                                     .ignore_index(WordVocab::kPad)
                                     .reduction(torch::kSum))
                    .item<double>();
    correct += ((logits.argmax(-1) == y) & keep).sum().item<int64_t>();
    unigram_sum -= unigram_here.index({y.masked_select(keep)}).sum().item<double>();
    tokens += keep.sum().item<int64_t>();
  }
  const int64_t decoded = bleu_sentences > 0 ? std::min(bleu_sentences, n) : n;
  const auto hypotheses = greedy_tokens(model, split.encoded.source.slice(0, 0, decoded),
                                        d.target_vocab, c.max_tokens + 2, c.eval_batch_size);
  std::vector<std::vector<std::string>> references;
  for (int64_t i = 0; i < decoded; ++i) {
    auto ref = data::tokenize_words(split.pairs[static_cast<size_t>(i)].target);
    if (c.max_tokens > 0 && static_cast<int64_t>(ref.size()) > c.max_tokens) {
      ref.resize(static_cast<size_t>(c.max_tokens));
    }
    references.push_back(std::move(ref));
  }
  model->train(was_training);
  const double t = static_cast<double>(tokens);
  return {{"loss", loss_sum / t},
          {"acc", static_cast<double>(correct) / t},
          {"bleu", 100.0 * data::corpus_bleu(hypotheses, references).bleu},
          {"unigram_loss", unigram_sum / t},
          {"bleu_sentences", decoded}};
}

torch::Tensor target_unigram(const TranslationData& d) {
  const auto y = d.train.encoded.target.slice(1, 1);
  const auto counts =
      torch::bincount(y.masked_select(y != WordVocab::kPad), {}, d.target_vocab.size())
          .to(torch::kFloat64) +
      1.0;
  return (counts / counts.sum()).log();
}

int64_t total_steps(const Config& c, int64_t num_train) {
  return c.epochs * (num_train / c.batch_size);
}

}  // namespace

const train::ConfigSchema<Config>& translation_task_schema() {
  static const auto schema = [] {
    train::ConfigSchema<Config> schema("translation");
    add_common_fields(schema)
        .field("tsv_file", &Config::tsv_file,
               "source<TAB>target pairs; \"\" = the gettext en-de corpus")
        .field("split_seed", &Config::split_seed, "seed of the train/val/test split")
        .field("val_fraction", &Config::val_fraction, "share of pairs for validation")
        .field("test_fraction", &Config::test_fraction, "share of pairs for test")
        .field("min_freq", &Config::min_freq, "rarer training words become <unk>")
        .field("max_tokens", &Config::max_tokens, "words kept per sentence")
        .field("label_smoothing", &Config::label_smoothing, "label smoothing of the loss")
        .field("epochs", &Config::epochs, "passes over the training pairs")
        .field("val_bleu_sentences", &Config::val_bleu_sentences,
               "validation pairs decoded for BLEU during training; 0 = all")
        .preset("paper",
                {{"d_model", 128}, {"num_heads", 4}, {"num_layers", 2}, {"ffn_dim", 512},
                 {"dropout", 0.1},
                 {"label_smoothing", 0.1}, {"optimizer", "adam"}, {"lr", 1.0}, {"beta1", 0.9},
                 {"beta2", 0.98}, {"adam_eps", 1e-9}, {"schedule", "noam"},
                 {"warmup_steps", 4000}, {"batch_size", 50}, {"epochs", 20}},
                "tasks.md experiment 4: Pre-LN, 2 layers, d 128, 4 heads, dropout 0.1, label "
                "smoothing 0.1, Adam(0.9, 0.98, 1e-9), Noam (warm-up 4000), batch 50, 20 epochs")
        .preset("quick",
                {{"d_model", 128}, {"num_heads", 4}, {"num_layers", 2}, {"ffn_dim", 512},
                 {"dropout", 0.1},
                 {"label_smoothing", 0.1}, {"optimizer", "adam"}, {"lr", 1.0}, {"beta1", 0.9},
                 {"beta2", 0.98}, {"adam_eps", 1e-9}, {"schedule", "noam"},
                 {"warmup_steps", 400}, {"batch_size", 64}, {"epochs", 2},
                 {"max_tokens", 25}, {"eval_every", 400}, {"checkpoint_every", 200},
                 {"val_bleu_sentences", 200}},
                "d 128, 4 heads, 2 layers, batch 64, 2 epochs, Noam (warm-up 400), "
                "sentences cut to 25 words")
        .check("val_fraction and test_fraction must be in (0, 0.5)",
               [](const Config& c) {
                 return c.val_fraction > 0 && c.val_fraction < 0.5 && c.test_fraction > 0 &&
                        c.test_fraction < 0.5;
               })
        .check("split_seed must be >= 0", [](const Config& c) { return c.split_seed >= 0; })
        .check("min_freq must be >= 1", [](const Config& c) { return c.min_freq >= 1; })
        .check("max_tokens must be >= 1", [](const Config& c) { return c.max_tokens >= 1; })
        .check("label_smoothing must be in [0, 1)",
               [](const Config& c) { return c.label_smoothing >= 0 && c.label_smoothing < 1; })
        .check("epochs must be >= 1", [](const Config& c) { return c.epochs >= 1; })
        .check("val_bleu_sentences must be >= 0",
               [](const Config& c) { return c.val_bleu_sentences >= 0; })
        .upgrade(detail::upgrade_zero_ffn_dim(4));
    return schema;
  }();
  return schema;
}

TrainSummary train_translation_task(const Config& c, const train::RunDir& run,
                                    const TrainContext& context) {
  const auto d = load_translation_data(c);
  if (!context.quiet) {
    std::cerr << "corpus: " << data::to_string(d.stats) << "\nsplit: " << d.train.pairs.size()
              << " train / " << d.val.pairs.size() << " val / " << d.test.pairs.size()
              << " test pairs; vocabulary " << d.source_vocab.size() << " source / "
              << d.target_vocab.size() << " target tokens (min_freq " << c.min_freq << ")\n";
  }
  const int64_t num_train = static_cast<int64_t>(d.train.pairs.size());
  TORCH_CHECK(num_train >= c.batch_size, "config translation: ", num_train,
              " training pairs are fewer than batch_size = ", c.batch_size);
  auto model = make_model(c, d);
  model->to(context.device);
  const auto optimizer = make_optimizer(model->parameters(), c);
  util::BatchSampler sampler(num_train, c.batch_size,
                             stream_seed(c.seed, SeedStream::kTranslationBatches));
  const auto unigram = target_unigram(d);

  auto loop =
      training_loop_for(c, *model, *optimizer, total_steps(c, num_train), "translation");
  // The rows stay on the CPU: teacher_forced trims their padding there, then moves them.
  loop.batches = train::BatchSource::rows_of({{"source", d.train.encoded.source},
                                              {"target", d.train.encoded.target}},
                                             sampler)
                     .on_host({"source", "target"});
  loop.steps_per_epoch = sampler.batches_per_epoch();
  loop.loss = [&](const train::Batch& batch, int64_t) {
    const auto forced = teacher_forced(model, batch["source"], batch["target"], context.device);
    const auto y = forced.targets.reshape({-1});
    const auto logits = forced.logits.reshape({y.size(0), -1});
    BatchLoss out;
    out.loss = F::cross_entropy(logits, y,
                                F::CrossEntropyFuncOptions()
                                    .ignore_index(WordVocab::kPad)
                                    .label_smoothing(c.label_smoothing));
    const auto keep = y != WordVocab::kPad;
    out.items = keep.sum().item<int64_t>();
    out.correct = ((logits.detach().argmax(-1) == y) & keep).sum().item<int64_t>();
    return out;
  };
  loop.evaluate = [&](const std::string& split) {
    return split == "test" ? evaluate_split(model, c, d, d.test, 0, unigram)
                           : evaluate_split(model, c, d, d.val, c.val_bleu_sentences, unigram);
  };
  auto summary = run_summary(c, *model);
  summary["epochs"] = c.epochs;
  summary["train_pairs"] = num_train;
  summary["source_vocab"] = d.source_vocab.size();
  summary["target_vocab"] = d.target_vocab.size();
  return run_training_loop(loop, run, context, summary);
}

nlohmann::json evaluate_translation_task(const Config& c, const train::RunDir& run,
                                         const EvalOptions& options) {
  const std::string path = checkpoint_to_evaluate(run, options);
  const auto d = load_translation_data(c);
  auto model = make_model(c, d);
  model->to(options.device);
  train::load_model_weights(path, *model);
  auto out = evaluate_split(model, c, d, options.split == "test" ? d.test : d.val, 0,
                            target_unigram(d));
  return with_checkpoint_info(out, path, options);
}

Translations translate_with_run(const nlohmann::json& config_json, const train::RunDir& run,
                                const std::vector<std::string>& sentences,
                                const std::string& checkpoint, bool use_cache,
                                torch::Device device) {
  TORCH_CHECK(config_json.value("task", "") == "translation", "translate: ",
              run.config_path().string(), " is a run of task '", config_json.value("task", ""),
              "'; translate needs a translation run");
  const Config c = translation_task_schema().from_json(config_json, run.config_path().string());
  EvalOptions eval;
  eval.checkpoint = checkpoint;
  const std::string path = checkpoint_to_evaluate(run, eval);
  const auto d = load_translation_data(c);
  auto model = make_model(c, d);
  model->to(device);
  train::load_model_weights(path, *model);
  model->eval();
  std::vector<data::TextPair> pairs;
  for (const auto& s : sentences) pairs.push_back({s, "-"});
  const auto encoded = data::encode_parallel(pairs, d.source_vocab, d.target_vocab, c.max_tokens);
  const auto start = std::chrono::steady_clock::now();
  const auto decoded = greedy_tokens(model, encoded.source, d.target_vocab, c.max_tokens + 2,
                                     c.eval_batch_size, use_cache);
  Translations out;
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (const auto& tokens : decoded) {
    std::string line;
    for (const auto& t : tokens) line += (line.empty() ? "" : " ") + t;
    out.lines.push_back(line);
    out.tokens += static_cast<int64_t>(tokens.size()) + 1;  // the words and <eos>
  }
  return out;
}

TaskInfo translation_task_info() {
  return make_task_info<Config>(
      "translation", "translation",
      "translation with an encoder-decoder, gettext en-de by default (Borji 2023, experiment 4)",
      // No check before the data: the run's updates depend on the corpus (the schedule is
      // checked when it trains).
      translation_task_schema(), nullptr, train_translation_task, evaluate_translation_task,
      {"bleu", /*maximize=*/true, "acc", "tok", ""});
}

}  // namespace tasks
}  // namespace kvq
