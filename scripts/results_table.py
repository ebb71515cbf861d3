"""Writes the Markdown table of scripts/reproduce.sh from the comparisons' summary.csv files.
Usage: results_table.py kv|intention quick|paper SEEDS RUN_ROOT COMMAND [--grid]  (table on stdout)
--grid: the runs are cells of a grid (RUN_ROOT/<task>/grid/<cell>); the table gives the mean over
the cells run beside the paper's mean over its cells, then every cell."""
import csv
import datetime
import json
import os
import subprocess
import sys

paper, preset, seeds, root, command = sys.argv[1:6]
grid = sys.argv[6:] == ["--grid"]
if sys.argv[6:] not in ([], ["--grid"]):
    sys.exit(__doc__)

# task -> (metrics shown, {mechanism: paper figure}, note on the setups)
GRID = ("the paper prints the mean over a grid (L in {64, 128}, d in {64, 256}, depth in {2, 4}, "
        "heads in {2, 4}, 3 seeds); kvq's `paper` preset is one cell of it (`quick`: a smaller one)")
KV = {
    "reverse": (["token_acc"], {"softmax": ".698", "kv-pos": ".718", "kv": ".705"}, GRID),
    "sort": (["token_acc"], {"softmax": ".971", "kv-pos": ".963", "kv": ".966"}, GRID),
    "swap": (["token_acc"], {"softmax": ".588", "kv-pos": ".671", "kv": ".597"}, GRID),
    "copy": (["token_acc"], {"softmax": "1.0", "kv-pos": "1.0", "kv": "1.0"}, GRID),
    "sub": (["token_acc"], {"softmax": "1.0", "kv-pos": "1.0", "kv": "1.0"}, GRID),
    "human-numbers": (["loss", "acc"], {}, "no figure printed in the paper; held-out stream 8001-9999"),
    "char-lm": (["loss"], {"softmax": "1.524 / 1.505", "kv-pos": "1.519 / 1.524",
                           "kv": "1.539 / 1.557"},
                "paper: Tiny Shakespeare, validation loss (nats/char) of 2 runs; kvq: the King "
                "James Bible by default, test loss"),
    "translation": (["bleu"], {"softmax": "37-38", "kv": "35.4-37.7", "kv-pos": "31-35"},
                    "paper: Multi30k en-de; kvq: gettext en-de catalogs by default (another corpus)"),
    "fashion-mnist": (["acc"], {}, "paper's ViT figures are plots only"),
}
INTENTION = {
    "icl-linear": (["mse", "bayes"], {}, "the paper prints no figures; bayes: the Bayes-optimal "
                   "ridge predictor on the same episodes"),
    "icl-gp": (["mse", "bayes"], {}, "the paper prints no figures; bayes: the GP posterior mean "
               "given the episode's true length scale (an oracle bound)"),
    "icl-sinusoid": (["mse"], {}, "the paper prints no figures"),
    "few-shot": (["acc", "proto_acc", "norm_proto_acc", "bayes_acc", "input_proto_acc"], {},
                 "the paper prints no figures; proto_acc: the prototype baseline on the same "
                 "encoder (norm_: on its normalised features); bayes_acc, input_proto_acc "
                 "(Gaussian episodes): the Bayes-optimal and the prototype rule on the points"),
    "distill": (["agreement", "success", "success_sampled", "teacher_success", "random_success"], {},
                "the paper prints no figures"),
}
spec = KV if paper == "kv" else INTENTION

commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                        text=True).stdout.strip()
# The tables themselves (written while this runs) are not local changes of the code.
dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                        ":!docs/results"],
                       capture_output=True, text=True).stdout.strip()
title = "Key-Value Transformer (Borji 2023)" if paper == "kv" else "Intention (Garnelo & Czarnecki 2023)"
print(f"# {title}: kvq at the `{preset}` preset{' over cells of a grid' if grid else ''} "
      "beside the paper\n")
print(f"Command: `{command}`; commit {commit}{' (with local changes)' if dirty else ''}; "
      f"{datetime.date.today().isoformat()}; {seeds} seed(s) per mechanism asked for (the `seeds` "
      "column: the runs each row averages); mean ± sample standard "
      "deviation over seeds (± 0 with one seed); test metrics of the final model.\n")
if preset == "quick":
    print("The `quick` preset is far smaller than the papers' setups: its figures show that "
          "everything runs and how the mechanisms rank, not the papers' numbers.\n")


def read_summary(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def mean_sd(row, metric):
    mean, sd = float(row[f"{metric}_mean"]), float(row[f"{metric}_sd"] or 0)
    return mean, "0" if sd != sd else f"{sd:.4f}"


if not grid:
    print("| task | metric | mechanism | seeds | kvq | paper | note |")
    print("|---|---|---|---|---|---|---|")
    for task, (metrics, figures, note) in spec.items():
        path = os.path.join(root, task, "summary.csv")
        if not os.path.exists(path):
            print(f"| {task} | | | | not run | | |")
            continue
        row_note = note
        compare_json = os.path.join(root, task, "compare.json")
        if os.path.exists(compare_json):
            with open(compare_json) as f:
                sets = json.load(f).get("sets", [])
            if sets:  # the preset was changed: say how
                row_note += "; run with " + ", ".join(f"`--set {s}`" for s in sets)
        for row in read_summary(path):
            for metric in metrics:
                if f"{metric}_mean" not in row:
                    continue
                mean, sd_text = mean_sd(row, metric)
                print(f"| {task} | {metric} | {row['mechanism']} | {row['seeds']} | "
                      f"{mean:.4f} ± {sd_text} | "
                      f"{figures.get(row['mechanism'], '-') if metric == metrics[0] else '-'} "
                      f"| {row_note} |")
    sys.exit(0)

# Grid: per task and mechanism, the mean over the cells run of each cell's mean over seeds.
cells_of = {}
for task in spec:
    base = os.path.join(root, task, "grid")
    if os.path.isdir(base):
        cells_of[task] = sorted(c for c in os.listdir(base)
                                if os.path.exists(os.path.join(base, c, "summary.csv")))
print("Mean over the cells run (each cell: mean over its seeds) ± sample standard deviation over "
      "those cells, beside the paper's printed mean over its cells (the grid's 16; 19 for reverse "
      "and sort, docs/tasks.md).\n")
print("| task | metric | mechanism | cells run | kvq, mean over cells | paper, mean over cells |")
print("|---|---|---|---|---|---|")
for task, cells in cells_of.items():
    metric, figures = spec[task][0][0], spec[task][1]
    by_mechanism = {}
    for cell in cells:
        for row in read_summary(os.path.join(root, task, "grid", cell, "summary.csv")):
            if f"{metric}_mean" in row:
                by_mechanism.setdefault(row["mechanism"], []).append(float(row[f"{metric}_mean"]))
    for mechanism, values in by_mechanism.items():
        mean = sum(values) / len(values)
        sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 \
            if len(values) > 1 else 0.0
        print(f"| {task} | {metric} | {mechanism} | {len(values)} | {mean:.4f} ± {sd:.4f} | "
              f"{figures.get(mechanism, '-')} |")
print("\nEvery cell (mean ± sample standard deviation over its seeds):\n")
print("| task | cell | mechanism | seeds | kvq |")
print("|---|---|---|---|---|")
for task, cells in cells_of.items():
    metric = spec[task][0][0]
    for cell in cells:
        for row in read_summary(os.path.join(root, task, "grid", cell, "summary.csv")):
            if f"{metric}_mean" in row:
                mean, sd_text = mean_sd(row, metric)
                print(f"| {task} | {cell} | {row['mechanism']} | {row['seeds']} | "
                      f"{mean:.4f} ± {sd_text} |")
