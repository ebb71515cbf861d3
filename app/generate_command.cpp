#include "generate_command.h"

#include <CLI/CLI.hpp>
#include <iomanip>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "device_option.h"
#include "kvq/tasks/lm_task.h"
#include "kvq/tasks/task_registry.h"
#include "kvq/tasks/translation_task.h"
#include "kvq/train/run_dir.h"

namespace kvq {
namespace app {

namespace {

void add_run_options(CLI::App* cmd, std::string& run_dir, std::string& checkpoint) {
  cmd->add_option("--run-dir,--run", run_dir,
                  "Run directory (holds config.json and checkpoints); --run is an alias")
      ->required();
  cmd->add_option("--checkpoint", checkpoint,
                  "best (best validation score; the last checkpoint when there is none) or last")
      ->check(CLI::IsMember({"best", "last"}))
      ->capture_default_str();
}

void add_cache_flag(CLI::App* cmd, bool& no_cache) {
  cmd->add_flag("--no-cache", no_cache,
                "Decode without the attention caches: run the whole prefix again for every token "
                "(the reference path, for comparison; same output)");
}

// The speed line on stderr, so that stdout holds the text alone.
void report_speed(const char* what, int64_t tokens, double seconds, bool no_cache) {
  std::cerr << std::fixed << std::setprecision(2) << what << " " << tokens << " tokens in "
            << seconds << " s: " << std::setprecision(1)
            << (seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0) << " tokens/s ("
            << (no_cache ? "--no-cache" : "cached") << ")" << std::endl;
}

}  // namespace

void add_generate_command(CLI::App& app) {
  struct Options {
    std::string run_dir, checkpoint = "best", prompt;
    models::GenerateOptions generate = models::GenerateOptions().max_new_tokens(500);
    bool no_cache = false;
    std::string device = "cpu";
  };
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand(
      "generate", "Sample text from a char-lm or human-numbers run (seeded, reproducible)");
  add_run_options(cmd, o->run_dir, o->checkpoint);
  cmd->add_option("--prompt", o->prompt,
                  "Text to continue; empty = the first token of the validation text");
  cmd->add_option("--tokens", o->generate.max_new_tokens(), "Tokens to generate")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--temperature", o->generate.temperature(), "Softmax temperature (> 0)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--top-k", o->generate.top_k(), "Sample among the k likeliest; 0 = all")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--seed", o->generate.seed(), "Seed of the sampling")->capture_default_str();
  add_cache_flag(cmd, o->no_cache);
  add_device_option(cmd, o->device);
  cmd->callback([o] {
    const auto device = checked_device(o->device);
    const auto [task, config] = tasks::task_of_run(o->run_dir);
    const auto run = train::RunDir::open(o->run_dir);
    o->generate.use_cache(!o->no_cache);
    const auto out =
        tasks::generate_from_run(config, run, o->prompt, o->generate, o->checkpoint, device);
    std::cout << out.text << std::endl;
    report_speed("generated", out.new_tokens, out.seconds, o->no_cache);
  });
}

void add_translate_command(CLI::App& app) {
  struct Options {
    std::string run_dir, checkpoint = "best";
    std::vector<std::string> texts;
    bool no_cache = false;
    std::string device = "cpu";
  };
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand(
      "translate",
      "Translate sentences with a translation run (greedy); without --text, one per stdin line");
  add_run_options(cmd, o->run_dir, o->checkpoint);
  cmd->add_option("--text", o->texts, "Sentence to translate (repeatable)");
  add_cache_flag(cmd, o->no_cache);
  add_device_option(cmd, o->device);
  cmd->callback([o] {
    const auto device = checked_device(o->device);
    const auto [task, config] = tasks::task_of_run(o->run_dir);
    const auto run = train::RunDir::open(o->run_dir);
    std::vector<std::string> sentences = o->texts;
    if (sentences.empty()) {
      for (std::string line; std::getline(std::cin, line);) {
        if (!line.empty()) sentences.push_back(line);
      }
    }
    if (sentences.empty()) throw CLI::ValidationError("translate", "no sentence given");
    const auto out = tasks::translate_with_run(config, run, sentences, o->checkpoint,
                                               !o->no_cache, device);
    for (const auto& line : out.lines) std::cout << line << "\n";
    std::cout.flush();
    report_speed("decoded", out.tokens, out.seconds, o->no_cache);
  });
}

}  // namespace app
}  // namespace kvq
