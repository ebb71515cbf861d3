// kvq: the command-line tool. Each subcommand lives in app/<name>_command.{h,cpp} and registers
// itself with add_<name>_command(CLI::App&); its callback does the work and throws on failure.
// Exit status: 0 success, 1 error (one line on stderr), 3 a training run stopped on a numerical
// fault (the message says how to resume it), CLI11's own codes for usage errors.
#include <malloc.h>
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <limits>
#include <string>
#include <thread>

#include "bench_command.h"
#include "kvq/functional/buffer_cache.h"
#include "bleu_command.h"
#include "compare_command.h"
#include "eval_command.h"
#include "generate_command.h"
#include "kvq/tasks/training_loop.h"
#include "launcher.h"
#include "train_command.h"

namespace {

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// "kvq bench --help" when a subcommand was given, else "kvq --help".
std::string help_hint(const CLI::App& app) {
  std::string command = app.get_name();
  for (const auto* sub : app.get_subcommands()) command += " " + sub->get_name();
  return "Run '" + command + " --help' for usage.";
}

// LibTorch's CPU allocator hands every tensor to malloc, and glibc returns blocks above its mmap
// threshold to the OS on free, so each large temporary is page-faulted in again on the next step:
// half the time of a causal intention forward+backward at T = 4096 (2.36 s -> 1.10 s). The CLI
// keeps freed memory in the process instead, for every tensor, in place of the library's buffer
// cache of the kernels' buffers (kvq/functional/buffer_cache.h). Set KVQ_KEEP_OS_MALLOC=1 to
// leave glibc's defaults (and the buffer cache on).
void keep_freed_memory() {
  const char* keep = std::getenv("KVQ_KEEP_OS_MALLOC");
  if (keep != nullptr && std::string(keep) == "1") return;
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
  // malloc now keeps the kernels' buffers too: a second cache of them would only raise the peak
  // (a char-lm paper run at context 1024 with intention: 2.73 -> 3.30 GB, no faster;
  // docs/results/benchmarks.md). KVQ_BUFFER_CACHE_MIB still sets it.
  if (std::getenv("KVQ_BUFFER_CACHE_MIB") == nullptr) kvq::functional::set_buffer_cache_limit(0);
}

}  // namespace

int main(int argc, char** argv) {
  keep_freed_memory();
  kvq::app::set_program_arguments(argc, argv);
  CLI::App app{"kvq: key-value-query attention mechanisms (softmax, kv, linear, intention, ...)",
               "kvq"};
  app.require_subcommand(1);

  int threads = 0;
  app.add_option("--threads", threads,
                 "Intra-op CPU threads (0 = $OMP_NUM_THREADS when it is set, else all cores)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  // Runs after parsing, before any subcommand callback.
  app.parse_complete_callback([&threads] {
    int n = threads;
    if (n == 0) {
      const char* omp = std::getenv("OMP_NUM_THREADS");
      n = omp != nullptr ? std::atoi(omp) : 0;
    }
    if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
    if (n > 0) at::set_num_threads(n);
  });

  kvq::app::add_bench_command(app);
  kvq::app::add_train_command(app);
  kvq::app::add_eval_command(app);
  kvq::app::add_compare_command(app);
  kvq::app::add_generate_command(app);
  kvq::app::add_translate_command(app);
  kvq::app::add_bleu_command(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const kvq::tasks::NumericalFault& e) {
    // Several lines: the fault, the checkpoint that survives, the commands that resume.
    std::cerr << "kvq: " << e.what_without_backtrace() << std::endl;
    return 3;
  } catch (const c10::Error& e) {
    std::cerr << "kvq: error: " << first_line(e.what_without_backtrace()) << "\n"
              << help_hint(app) << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "kvq: error: " << first_line(e.what()) << "\n" << help_hint(app) << std::endl;
    return 1;
  }
  return 0;
}
