#include "generate_command.h"

#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

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

}  // namespace

void add_generate_command(CLI::App& app) {
  struct Options {
    std::string run_dir, checkpoint = "best", prompt;
    models::GenerateOptions generate = models::GenerateOptions().max_new_tokens(500);
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
  cmd->callback([o] {
    const auto [task, config] = tasks::task_of_run(o->run_dir);
    const auto run = train::RunDir::open(o->run_dir);
    std::cout << tasks::generate_from_run(config, run, o->prompt, o->generate, o->checkpoint)
              << std::endl;
  });
}

void add_translate_command(CLI::App& app) {
  struct Options {
    std::string run_dir, checkpoint = "best";
    std::vector<std::string> texts;
  };
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand(
      "translate",
      "Translate sentences with a translation run (greedy); without --text, one per stdin line");
  add_run_options(cmd, o->run_dir, o->checkpoint);
  cmd->add_option("--text", o->texts, "Sentence to translate (repeatable)");
  cmd->callback([o] {
    const auto [task, config] = tasks::task_of_run(o->run_dir);
    const auto run = train::RunDir::open(o->run_dir);
    std::vector<std::string> sentences = o->texts;
    if (sentences.empty()) {
      for (std::string line; std::getline(std::cin, line);) {
        if (!line.empty()) sentences.push_back(line);
      }
    }
    if (sentences.empty()) throw CLI::ValidationError("translate", "no sentence given");
    for (const auto& line : tasks::translate_with_run(config, run, sentences, o->checkpoint)) {
      std::cout << line << "\n";
    }
    std::cout.flush();
  });
}

}  // namespace app
}  // namespace kvq
