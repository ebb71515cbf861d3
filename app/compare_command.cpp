#include "compare_command.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "config_options.h"
#include "device_option.h"
#include "kvq/registry.h"
#include "kvq/tasks/task_registry.h"
#include "kvq/util/atomic_file.h"
#include "kvq/train/metrics_log.h"
#include "kvq/train/run_dir.h"
#include "launcher.h"

namespace kvq {
namespace app {
namespace {

namespace fs = std::filesystem;

struct CompareArgs {
  std::string task;
  std::vector<std::string> mechanisms;  // empty = the task's paper_mechanisms
  int64_t seeds = 1;
  int64_t first_seed = 0;
  train::ConfigSources sources;  // --preset, --config, --set
  std::string run_dir;
  std::string run_root = "runs";
  bool resume = false;
  bool quiet = false;
  double dist_timeout = 300;
  std::string device = "cpu";
};

// One finished (mechanism, seed) run.
struct RunResult {
  std::string mechanism;
  int64_t seed = 0;
  std::string run_dir;
  nlohmann::json summary;
  Curve curve;
};

std::string fixed(double value, int digits) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(digits) << value;
  return out.str();
}

std::string mean_sd_text(const std::vector<double>& values, int digits) {
  const auto m = mean_sd(values);
  if (values.size() < 2) return fixed(m.mean, digits);
  return fixed(m.mean, digits) + " ± " + fixed(m.sd, digits);
}

// '...' quoting for the shell and for gnuplot strings.
std::string single_quoted(const std::string& text, const std::string& escaped_quote) {
  std::string out = "'";
  for (const char c : text) out += c == '\'' ? escaped_quote : std::string(1, c);
  return out + "'";
}

// The numeric test metrics of the task: the ranked one first, "loss" last ("samples" is not a
// metric).
std::vector<std::string> metric_columns(const tasks::TaskInfo& task,
                                        const std::vector<RunResult>& runs) {
  std::vector<std::string> keys = {task.metrics.best};
  bool has_loss = false;
  for (const auto& r : runs) {
    for (const auto& [key, value] : r.summary.at("test").items()) {
      if (!value.is_number_float() || std::find(keys.begin(), keys.end(), key) != keys.end()) {
        continue;
      }
      if (key == "loss") {
        has_loss = true;
      } else {
        keys.push_back(key);
      }
    }
  }
  // Keys that differ only in a trailing number ("mse_n2", "mse_n16") in numeric order.
  // The number compares as (digit count, digits) after its leading zeros: no overflow.
  const auto split_number = [](const std::string& key) {
    size_t i = key.size();
    while (i > 0 && std::isdigit(static_cast<unsigned char>(key[i - 1]))) --i;
    size_t first = i;
    while (first + 1 < key.size() && key[first] == '0') ++first;
    const std::string digits = key.substr(first);
    return std::make_tuple(key.substr(0, i), i < key.size() ? digits.size() : 0, digits);
  };
  std::stable_sort(keys.begin() + 1, keys.end(), [&](const std::string& a, const std::string& b) {
    return split_number(a) < split_number(b);
  });
  if (has_loss && task.metrics.best != "loss") keys.push_back("loss");
  return keys;
}

struct Row {
  std::string mechanism, projection;
  size_t seeds = 0;
  std::map<std::string, std::vector<double>> metrics;
  std::vector<double> params, seconds;
  std::vector<double> mfu_percent;  // model FLOP utilisation of each run that reports one
};

std::vector<Row> aggregate(const std::vector<std::string>& mechanisms,
                           const std::vector<std::string>& columns,
                           const std::vector<RunResult>& runs) {
  std::vector<Row> rows;
  for (const auto& m : mechanisms) {
    Row row;
    row.mechanism = m;
    for (const auto& r : runs) {
      if (r.mechanism != m) continue;
      ++row.seeds;
      row.projection = r.summary.value("projection", "");
      for (const auto& key : columns) {
        const auto& test = r.summary.at("test");
        row.metrics[key].push_back(test.contains(key) && test[key].is_number()
                                       ? test[key].get<double>()
                                       : NAN);
      }
      row.params.push_back(r.summary.value("params", 0.0));
      row.seconds.push_back(r.summary.value("train_seconds", 0.0));
      if (r.summary.contains("mfu")) {
        row.mfu_percent.push_back(100.0 * r.summary.at("mfu").get<double>());
      }
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

std::string markdown_table(const tasks::TaskInfo& task, const std::vector<std::string>& columns,
                           const std::vector<Row>& rows, int64_t seeds) {
  const bool mfu = std::any_of(rows.begin(), rows.end(),
                               [](const Row& row) { return !row.mfu_percent.empty(); });
  std::ostringstream out;
  out << "| mechanism | projection | seeds |";
  for (const auto& c : columns) out << " test " << c << " |";
  out << " params | train time (s) |" << (mfu ? " MFU (%) |" : "") << "\n|---|---|---|";
  for (size_t i = 0; i < columns.size(); ++i) out << "---|";
  out << "---|---|" << (mfu ? "---|" : "") << "\n";
  for (const auto& row : rows) {
    out << "| " << row.mechanism << " | " << row.projection << " | " << row.seeds << " |";
    for (const auto& c : columns) out << " " << mean_sd_text(row.metrics.at(c), 4) << " |";
    out << " " << fixed(mean_sd(row.params).mean, 0) << " | " << mean_sd_text(row.seconds, 1)
        << " |";
    if (mfu) out << " " << mean_sd_text(row.mfu_percent, 1) << " |";
    out << "\n";
  }
  out << "\nTask " << task.name << "; " << seeds << (seeds == 1 ? " seed" : " seeds")
      << " per mechanism; mean ± sample standard deviation over seeds; test metrics of the "
         "final model."
      << (mfu ? " MFU: model FLOPs of the training updates per second (kvq/train/flops.h) over "
                "the float32 matmul rate measured at each run's start."
              : "")
      << "\n";
  return out.str();
}

std::string summary_csv(const std::vector<std::string>& columns, const std::vector<Row>& rows) {
  std::ostringstream out;
  out << "mechanism,projection,seeds";
  for (const auto& c : columns) out << "," << c << "_mean," << c << "_sd";
  out << ",params,train_seconds_mean,train_seconds_sd\n";
  out << std::setprecision(10);
  for (const auto& row : rows) {
    out << row.mechanism << "," << row.projection << "," << row.seeds;
    for (const auto& c : columns) {
      const auto m = mean_sd(row.metrics.at(c));
      out << "," << m.mean << "," << m.sd;
    }
    const auto t = mean_sd(row.seconds);
    out << "," << static_cast<int64_t>(mean_sd(row.params).mean) << "," << t.mean << "," << t.sd
        << "\n";
  }
  return out.str();
}

std::string runs_csv(const std::vector<std::string>& columns, const std::vector<RunResult>& runs) {
  std::ostringstream out;
  out << "mechanism,seed,projection";
  for (const auto& c : columns) out << "," << c;
  out << ",params,train_seconds,steps,run_dir\n";
  out << std::setprecision(10);
  for (const auto& r : runs) {
    const auto& s = r.summary;
    out << r.mechanism << "," << r.seed << "," << s.value("projection", "");
    for (const auto& c : columns) {
      const auto& test = s.at("test");
      out << "," << (test.contains(c) && test[c].is_number() ? test[c].get<double>() : NAN);
    }
    out << "," << s.value("params", int64_t{0}) << "," << s.value("train_seconds", 0.0) << ","
        << s.value("steps", int64_t{0}) << "," << r.run_dir << "\n";
  }
  return out.str();
}

// One line plot: named series written to <dir>/<stem>.dat (one block each, separated by two
// blank lines), a gnuplot script <dir>/<stem>.gp drawing <dir>/<png>, run when gnuplot is
// installed. Returns a line saying what happened.
struct PlotSpec {
  std::string stem, png, title, xlabel, ylabel, key = "bottom right";
  bool log_y = false;
  bool log_x = false;
  std::vector<std::pair<std::string, Curve>> series;
  // The series drawn as a dashed black reference line ("" = none).
  std::string reference;
};

std::string draw_plot(const PlotSpec& spec, const fs::path& dir) {
  std::ostringstream data;
  data << std::setprecision(10);
  std::vector<std::string> plotted;
  for (const auto& [name, curve] : spec.series) {
    if (curve.x.empty()) continue;
    if (!plotted.empty()) data << "\n\n";
    data << "# " << name << "\n";
    for (size_t i = 0; i < curve.x.size(); ++i) data << curve.x[i] << " " << curve.y[i] << "\n";
    plotted.push_back(name);
  }
  const fs::path dat = fs::absolute(dir / (spec.stem + ".dat")),
                 png = fs::absolute(dir / spec.png),
                 script = fs::absolute(dir / (spec.stem + ".gp"));
  util::write_file_atomic(dat.string(), data.str(), "compare");

  std::ostringstream gp;
  gp << "# kvq compare; run: gnuplot " << script.filename().string() << "\n"
     << "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
     << "  set terminal pngcairo size 960,600 noenhanced font ',11'\n"
     << "} else {\n"
     << "  set terminal png size 960,600 noenhanced\n"
     << "}\n"
     << "set output " << single_quoted(png.string(), "''") << "\n"
     << "set title " << single_quoted(spec.title, "''") << "\n"
     << "set xlabel " << single_quoted(spec.xlabel, "''") << "\nset ylabel "
     << single_quoted(spec.ylabel, "''") << "\nset key " << spec.key << "\nset grid\n"
     << (spec.log_y ? "set logscale y\n" : "") << (spec.log_x ? "set logscale x 2\n" : "");
  if (!plotted.empty()) {
    gp << "plot";
    for (size_t i = 0; i < plotted.size(); ++i) {
      gp << (i ? ", \\\n    " : " ") << single_quoted(dat.string(), "''") << " index " << i
         << (plotted[i] == spec.reference
                 ? " using 1:2 with lines dashtype 2 linewidth 2 linecolor rgb 'black' title "
                 : " using 1:2 with linespoints pointsize 0.6 linewidth 2 title ")
         << single_quoted(plotted[i], "''");
    }
    gp << "\n";
  }
  util::write_file_atomic(script.string(), gp.str(), "compare");

  if (plotted.empty()) return "nothing to plot in " + png.filename().string();
  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
    return "gnuplot is not installed: skipped the plot (" + script.string() +
           " draws it once gnuplot is there)";
  }
  const std::string command = "gnuplot " + single_quoted(script.string(), "'\\''");
  if (std::system(command.c_str()) != 0) {
    return "gnuplot failed on " + script.string() + ": no plot";
  }
  return "plot: " + png.string();
}

std::string seeds_phrase(int64_t seeds) {
  return "(mean over " + std::to_string(seeds) + (seeds == 1 ? " seed)" : " seeds)");
}

// The validation curves of every mechanism, averaged over seeds: curves.dat, plot.gp,
// val_curves.png.
std::string plot_curves(const tasks::TaskInfo& task, const std::vector<std::string>& mechanisms,
                        const std::vector<RunResult>& runs, int64_t seeds, const fs::path& dir) {
  PlotSpec spec;
  spec.stem = "curves";
  spec.png = "val_curves.png";
  spec.title = task.name + ": validation " + task.metrics.best + " " + seeds_phrase(seeds);
  spec.xlabel = "optimiser update";
  spec.ylabel = "val " + task.metrics.best;
  for (const auto& m : mechanisms) {
    std::vector<Curve> curves;
    for (const auto& r : runs) {
      if (r.mechanism == m) curves.push_back(r.curve);
    }
    spec.series.emplace_back(m, average_curves(curves));
  }
  // Falling curves (losses) leave the bottom right free, rising ones (accuracies) the top right.
  double first = 0, last = 0;
  for (const auto& [name, curve] : spec.series) {
    if (curve.y.empty()) continue;
    first += curve.y.front();
    last += curve.y.back();
  }
  spec.key = last < first ? "top right" : "bottom right";
  return draw_plot(spec, dir);
}

// The test metric against the number of context points N (keys "<prefix><N>" of the test
// metrics) for every mechanism, averaged over seeds, with the baseline (averaged over all runs:
// the evaluation episodes are the same): context.dat, context.gp, error_vs_context.png.
std::string plot_context_curve(const tasks::TaskInfo& task,
                               const std::vector<std::string>& mechanisms,
                               const std::vector<RunResult>& runs, int64_t seeds,
                               const fs::path& dir) {
  const auto& cc = task.context_curve;
  const auto curve_of = [](const nlohmann::json& test, const std::string& prefix) {
    Curve c;
    for (const auto& [key, value] : test.items()) {
      if (prefix.empty() || key.rfind(prefix, 0) != 0 || !value.is_number()) continue;
      const std::string n = key.substr(prefix.size());
      if (n.empty() || n.size() > 15 || n.find_first_not_of("0123456789") != std::string::npos) {
        continue;  // not "<prefix><N>"
      }
      c.x.push_back(std::stod(n));
      c.y.push_back(value.get<double>());
    }
    return average_curves({c});  // sorted by N
  };
  PlotSpec spec;
  spec.stem = "context";
  spec.png = "error_vs_context.png";
  spec.title = task.name + ": test " + cc.metric_prefix + "N against context size " +
               seeds_phrase(seeds);
  spec.xlabel = "context points N";
  spec.ylabel = "test " + cc.metric_prefix + "N";
  spec.key = "top right";
  spec.log_x = spec.log_y = true;
  for (const auto& m : mechanisms) {
    std::vector<Curve> curves;
    for (const auto& r : runs) {
      if (r.mechanism == m) curves.push_back(curve_of(r.summary.at("test"), cc.metric_prefix));
    }
    spec.series.emplace_back(m, average_curves(curves));
  }
  if (!cc.baseline_prefix.empty()) {
    std::vector<Curve> curves;
    for (const auto& r : runs) curves.push_back(curve_of(r.summary.at("test"), cc.baseline_prefix));
    spec.reference = "Bayes-optimal predictor";
    spec.series.emplace_back(spec.reference, average_curves(curves));
  }
  return draw_plot(spec, dir);
}

Curve read_curve(const std::string& metrics_path, const std::string& key) {
  const auto series = train::metric_series(train::read_metrics(metrics_path), key, "step",
                                           {{"split", "val"}});
  return {series.x, series.y};
}

}  // namespace

MeanSd mean_sd(const std::vector<double>& values) {
  TORCH_CHECK(!values.empty(), "mean_sd: no values");
  MeanSd out;
  for (const double v : values) out.mean += v;
  out.mean /= static_cast<double>(values.size());
  if (values.size() < 2) return out;
  double ss = 0;
  for (const double v : values) ss += (v - out.mean) * (v - out.mean);
  out.sd = std::sqrt(ss / static_cast<double>(values.size() - 1));
  return out;
}

Curve average_curves(const std::vector<Curve>& runs) {
  std::map<double, std::pair<double, int64_t>> sums;
  for (const auto& c : runs) {
    TORCH_CHECK(c.x.size() == c.y.size(), "average_curves: x and y differ in length");
    for (size_t i = 0; i < c.x.size(); ++i) {
      auto& s = sums[c.x[i]];
      s.first += c.y[i];
      s.second += 1;
    }
  }
  Curve out;
  for (const auto& [x, s] : sums) {
    out.x.push_back(x);
    out.y.push_back(s.first / static_cast<double>(s.second));
  }
  return out;
}

namespace {

// One (mechanism, seed) run of a comparison: its options for train_task.
struct PlannedRun {
  std::string mechanism;
  int64_t seed = 0;
  tasks::TrainOptions options;
};

// The mechanisms to compare: --mechanisms or the task's paper's, each registered, none twice.
std::vector<std::string> compared_mechanisms(const tasks::TaskInfo& task,
                                             const std::vector<std::string>& listed) {
  const auto mechanisms = listed.empty() ? task.paper_mechanisms : listed;
  for (const auto& m : mechanisms) find_mechanism(m);
  for (size_t i = 0; i < mechanisms.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      TORCH_CHECK(mechanisms[i] != mechanisms[j], "compare: --mechanisms lists '", mechanisms[i],
                  "' twice");
    }
  }
  return mechanisms;
}

// Every (mechanism, seed) run, its config resolved (so that a bad one fails before anything is
// trained).
std::vector<PlannedRun> plan_runs(const tasks::TaskInfo& task, const CompareArgs& args) {
  std::vector<PlannedRun> plans;
  for (const auto& m : args.mechanisms) {
    for (int64_t k = 0; k < args.seeds; ++k) {
      PlannedRun plan{m, args.first_seed + k, {}};
      auto& o = plan.options;
      o.sources = args.sources;
      o.sources.sets.push_back("mechanism=" + m);
      o.seed = plan.seed;
      auto check = o.sources;
      check.sets.push_back("seed=" + std::to_string(plan.seed));
      task.resolve(check);
      o.print_config = false;
      o.context.quiet = args.quiet;
      o.context.label = m + " seed " + std::to_string(plan.seed);
      plans.push_back(std::move(plan));
    }
  }
  return plans;
}

// The comparison directory: --run-dir (new or empty, or any with --resume), or a new one under
// <runs>/compare/<task>/.
fs::path comparison_dir(const tasks::TaskInfo& task, const CompareArgs& args) {
  if (args.run_dir.empty()) {
    TORCH_CHECK(!args.resume, "compare: --resume needs --run-dir (the comparison to continue)");
    return train::RunDir::create(train::RunDirOptions()
                                     .root((fs::path(args.run_root) / "compare").string())
                                     .task(task.name))
        .path();
  }
  const fs::path dir = args.run_dir;
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    TORCH_CHECK(fs::is_directory(dir, ec), "compare: --run-dir ", dir.string(),
                " is not a directory");
    TORCH_CHECK(args.resume || fs::directory_iterator(dir, ec) == fs::directory_iterator(),
                "compare: --run-dir ", dir.string(),
                " already exists and is not empty; add --resume to continue it");
  }
  fs::create_directories(dir, ec);
  TORCH_CHECK(!ec, "compare: --run-dir ", dir.string(), ": cannot create: ", ec.message());
  return dir;
}

// compare.json (what was asked) and the header with the first run's resolved config.
void record_comparison(const tasks::TaskInfo& task, const CompareArgs& args,
                       const std::vector<PlannedRun>& plans, const fs::path& dir) {
  nlohmann::json record = {{"task", task.name},         {"mechanisms", args.mechanisms},
                           {"seeds", args.seeds},      {"first_seed", args.first_seed},
                           {"preset", args.sources.preset},
                           {"config", args.sources.file},    {"sets", args.sources.sets}};
  util::write_file_atomic((dir / "compare.json").string(), record.dump(2) + "\n", "compare");
  std::cout << "comparison " << dir.string() << ": task " << task.name << ", "
            << train::join_names(args.mechanisms) << ", " << args.seeds
            << (args.seeds == 1 ? " seed" : " seeds") << "\n";
  auto first = plans.front().options.sources;
  first.sets.push_back("seed=" + std::to_string(plans.front().seed));
  std::cout << task.format(task.resolve(first)) << std::flush;
}

// Trains (or, with --resume, reuses or resumes) every planned run in <dir>/<mechanism>-seed<k>.
std::vector<RunResult> run_all(const tasks::TaskInfo& task, bool resume,
                               std::vector<PlannedRun>& plans, const fs::path& dir) {
  std::vector<RunResult> runs;
  for (auto& plan : plans) {
    const fs::path run_dir = dir / (plan.mechanism + "-seed" + std::to_string(plan.seed));
    std::error_code ec;
    plan.options.run_dir = run_dir.string();
    plan.options.resume = resume && fs::exists(run_dir / "config.json", ec);
    const auto outcome = tasks::train_task(task.name, plan.options);
    RunResult r;
    r.mechanism = plan.mechanism;
    r.seed = plan.seed;
    r.run_dir = outcome.run_dir;
    r.summary = outcome.summary;
    r.curve = read_curve((run_dir / "metrics.jsonl").string(), task.metrics.best);
    std::cout << std::fixed << std::setprecision(4) << plan.mechanism << " seed " << plan.seed
              << ": test " << task.metrics.best << " "
              << r.summary.at("test").value(task.metrics.best, NAN) << std::setprecision(1)
              << ", " << r.summary.value("train_seconds", 0.0) << " s" << std::endl;
    runs.push_back(std::move(r));
  }
  return runs;
}

// summary.md, summary.csv, runs.csv and the plots in `dir`, and the table on stdout.
void write_summary(const tasks::TaskInfo& task, const CompareArgs& args,
                   const std::vector<RunResult>& runs, const fs::path& dir) {
  const auto columns = metric_columns(task, runs);
  const auto rows = aggregate(args.mechanisms, columns, runs);
  const std::string table = markdown_table(task, columns, rows, args.seeds);
  util::write_file_atomic((dir / "summary.md").string(), table, "compare");
  util::write_file_atomic((dir / "summary.csv").string(), summary_csv(columns, rows), "compare");
  util::write_file_atomic((dir / "runs.csv").string(), runs_csv(columns, runs), "compare");
  std::string plot = plot_curves(task, args.mechanisms, runs, args.seeds, dir);
  if (!task.context_curve.metric_prefix.empty()) {
    plot += "\n" + plot_context_curve(task, args.mechanisms, runs, args.seeds, dir);
  }
  std::cout << "\n" << table << "\n" << plot << "\ntable: " << (dir / "summary.md").string()
            << ", csv: " << (dir / "summary.csv").string() << ", " << (dir / "runs.csv").string()
            << std::endl;
}

}  // namespace

void add_compare_command(CLI::App& app) {
  auto args = std::make_shared<CompareArgs>();
  auto* cmd = app.add_subcommand(
      "compare",
      "Train several mechanisms (and seeds) on one task and tabulate and plot the results");
  cmd->add_option("--task", args->task, "Task: " + train::join_names(tasks::task_names()))
      ->required();
  // The default, from the task registry: each paper's mechanisms, with the tasks that use them.
  std::vector<std::vector<std::string>> papers;
  for (const auto& task : tasks::tasks()) {
    if (std::find(papers.begin(), papers.end(), task.paper_mechanisms) == papers.end()) {
      papers.push_back(task.paper_mechanisms);
    }
  }
  std::vector<std::string> paper_defaults;
  for (const auto& paper : papers) {
    std::vector<std::string> users;
    for (const auto& task : tasks::tasks()) {
      if (task.paper_mechanisms == paper) users.push_back(task.name);
    }
    paper_defaults.push_back(train::join_names(paper, ",") + " (" + train::join_names(users) + ")");
  }
  cmd->add_option("--mechanisms", args->mechanisms,
                  "Mechanisms, comma-separated: any of " + train::join_names(mechanism_names()))
      ->delimiter(',')
      ->default_str("the task's paper: " + train::join_names(paper_defaults, " or "));
  cmd->add_option("--seeds", args->seeds, "Number of seeds per mechanism")
      ->check(CLI::Range(int64_t{1}, int64_t{1000}))
      ->capture_default_str();
  cmd->add_option("--first-seed", args->first_seed, "Seeds are first-seed, first-seed + 1, ...")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  add_config_options(cmd, args->sources);
  cmd->add_option("--run-dir", args->run_dir,
                  "Comparison directory (default: <runs>/compare/<task>/<start time>)");
  cmd->add_option("--runs", args->run_root, "Root of the default run directories")
      ->capture_default_str();
  cmd->add_flag("--resume", args->resume,
                "Continue an interrupted comparison in --run-dir: finished runs are reused, "
                "interrupted ones resumed");
  cmd->add_flag("--quiet", args->quiet, "No progress bars");
  cmd->add_option("--dist-timeout", args->dist_timeout,
                  "Under torchrun (RANK, WORLD_SIZE, ... set): seconds any worker waits for the "
                  "others before it fails")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  add_device_option(cmd, args->device);

  cmd->callback([args] {
    const auto& task = tasks::find_task(args->task);
    args->mechanisms = compared_mechanisms(task, args->mechanisms);
    auto plans = plan_runs(task, *args);
    // Under torchrun every run is data-parallel; rank 0 writes the runs and the summary, the
    // other workers train each run with it.
    const auto device = checked_device(args->device);
    const c10::DeviceGuard on_device(device);  // NCCL and new CUDA tensors use this GPU
    const auto dist = join_group_from_environment(args->dist_timeout, device);
    for (auto& plan : plans) {
      plan.options.context.dist = dist;
      plan.options.context.device = device;
    }
    if (dist && !dist->is_main()) {
      for (auto& plan : plans) tasks::train_task("", plan.options);
      return;
    }
    const fs::path dir = comparison_dir(task, *args);
    record_comparison(task, *args, plans, dir);
    const auto runs = run_all(task, args->resume, plans, dir);
    write_summary(task, *args, runs, dir);
  });
}

}  // namespace app
}  // namespace kvq
