// Writes the seed corpora of the fuzz targets: small valid files of every format, a few KB at
// most each, deterministic (the same bytes on every run).
//   kvq_fuzz_seeds DIR   writes DIR/<target>/seed-*  (scripts/fuzz.sh --seeds: DIR = fuzz/corpus)
// Reproducers of findings live beside the seeds under other names and are not touched.
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "checkpoint_fixture.h"
#include "kvq/train/checkpoint.h"

namespace fs = std::filesystem;

namespace {

fs::path root;

void write(const std::string& target, const std::string& name, const std::string& bytes) {
  const fs::path dir = root / target;
  fs::create_directories(dir);
  std::ofstream(dir / ("seed-" + name), std::ios::binary) << bytes;
}

void write_gzip(const std::string& target, const std::string& name, const std::string& bytes) {
  const fs::path dir = root / target;
  fs::create_directories(dir);
  const std::string path = (dir / ("seed-" + name)).string();
  // Level 9, no file name or time stamp in the header (gzopen writes neither): reproducible.
  gzFile file = gzopen(path.c_str(), "wb9");
  gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(file);
}

std::string be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

std::string idx_images(uint32_t n, uint32_t rows, uint32_t cols) {
  std::string out = be32(0x803) + be32(n) + be32(rows) + be32(cols);
  for (uint32_t i = 0; i < n * rows * cols; ++i) out += static_cast<char>((i * 37) % 256);
  return out;
}

std::string idx_labels(uint32_t n) {
  std::string out = be32(0x801) + be32(n);
  for (uint32_t i = 0; i < n; ++i) out += static_cast<char>(i % 10);
  return out;
}

std::string cifar(int records, int label_bytes) {
  std::string out;
  for (int r = 0; r < records; ++r) {
    if (label_bytes == 2) out += static_cast<char>(r % 20);
    out += static_cast<char>(r % 10);
    for (int i = 0; i < 3072; ++i) out += static_cast<char>((i * 7 + r) % 256);
  }
  return out;
}

void idx_seeds() {
  write("idx", "images-3x4x5.idx", idx_images(3, 4, 5));
  write("idx", "labels-6.idx", idx_labels(6));
  write_gzip("idx", "images-2x28x28.idx.gz", idx_images(2, 28, 28));
  write_gzip("idx", "labels-10.idx.gz", idx_labels(10));
}

void cifar_seeds() {
  write("cifar", "cifar10-1.bin", cifar(1, 1));
  write("cifar", "cifar100-1.bin", cifar(1, 2));
  write("cifar", "cifar10-2.bin", cifar(2, 1));
}

void text_seeds() {
  write("text", "kjv.txt",
        "The First Book of Moses:  Called Genesis\n\nGenesis 1\n\n"
        "1:1 In the beginning God created the heaven and the earth.\n"
        "1:2 And the earth was without form, and void; and darkness was upon\n"
        "the face of the deep.\n");
  write("text", "utf8.txt",
        "Größe: 3 × 4 = 12 — ½ « naïve » ¿qué? €5\n"
        "Ελληνικά русский 日本語 🎻 \xF0\x9D\x84\x9E\n");
  write("text", "bom-crlf.txt", "\xEF\xBB\xBFline one\r\nline two\r\n");
}

void parallel_tsv_seeds() {
  write("parallel_tsv", "pairs.tsv",
        "cannot open file\tDatei kann nicht geöffnet werden\n"
        "Go.\tGeh.\n"
        "Don't worry, it's fine!\tKeine Sorge, es ist gut!\n\n"
        "«quoted» text\t„zitierter“ Text\n");
  write("parallel_tsv", "crlf-bom.tsv", "\xEF\xBB\xBFHi.\tHallo!\r\nRun!\tLauf!\r\n");
  write("parallel_tsv", "three-columns.tsv",
        "Go.\tGeh.\tCC-BY 2.0 (France) Attribution: tatoeba.org #2877272\n"
        "Hi.\tHallo!\tCC-BY 2.0 (France) Attribution: tatoeba.org #538123\n");
}

void po_seeds() {
  write("po", "catalog.po",
        "# German translation\n"
        "msgid \"\"\n"
        "msgstr \"\"\n"
        "\"Project-Id-Version: coreutils 9.1\\n\"\n"
        "\"Content-Type: text/plain; charset=UTF-8\\n\"\n"
        "\"Plural-Forms: nplurals=2; plural=(n != 1);\\n\"\n\n"
        "#: src/cat.c:123\n"
        "msgid \"cannot open %s for reading\"\n"
        "msgstr \"%s kann nicht zum Lesen geöffnet werden\"\n\n"
        "msgctxt \"menu\"\n"
        "msgid \"Open the file\"\n"
        "msgstr \"Die Datei öffnen\"\n\n"
        "msgid \"\"\n"
        "\"a long message that \"\n"
        "\"continues\\tover lines\\n\"\n"
        "msgstr \"\"\n"
        "\"eine lange Nachricht, die \"\n"
        "\"weitergeht\\x21 \\101\\n\"\n\n"
        "msgid \"%d file removed\"\n"
        "msgid_plural \"%d files removed\"\n"
        "msgstr[0] \"%d Datei entfernt\"\n"
        "msgstr[1] \"%d Dateien entfernt\"\n\n"
        "msgid \"%qs is not valid for %<-std=%s%>\"\n"
        "msgstr \"%qs ist für %<-std=%s%> nicht gültig\"\n\n"
        "msgid \"{name} has ${count} items, $1 left, %1$s of %-10.3lu\"\n"
        "msgstr \"{name} hat ${count} Elemente, $1 übrig, %1$s von %-10.3lu\"\n\n"
        "msgid \"untranslated\"\n"
        "msgstr \"\"\n");
}

void config_seeds() {
  write("config", "full.json",
        "{\"task\": \"fuzz\", \"steps\": 200, \"heads\": 8, \"lr\": 0.0003, \"causal\": true,\n"
        " \"seeds\": [0, 1, 2], \"mechanisms\": [\"softmax\", \"kv\", \"intention\"]}\n");
  write("config", "sets.txt",
        "{\"lr\": 1}\n%%\nsteps=50\nheads=-2\nlr=1e-4\ncausal=TRUE\nseeds=[3, 4]\n"
        "mechanisms=linear, kv-pos\n--task=x\n");
  write("config", "preset.txt", "preset quick\n{\"heads\": 2}\n%%\nseeds=\n");
  write("config", "sets-only.txt", "\n%%\nsteps=9223372036854775807\nlr=+2.5E-3\n");
}

void metrics_seeds() {
  write("metrics", "metrics.jsonl",
        "{\"step\":1,\"split\":\"train\",\"loss\":2.3,\"lr\":0.001,\"items_per_s\":51234.5}\n"
        "{\"step\":5,\"split\":\"val\",\"loss\":1.9,\"accuracy\":0.5}\n"
        "{\"step\":6,\"split\":\"train\",\"loss\":\"NaN\",\"skipped\":1}\n"
        "\n"
        "{\"step\":10,\"split\":\"val\",\"loss\":\"Infinity\",\"accuracy\":0.75,"
        "\"per_n\":{\"n2\":\"-Infinity\"}}\n"
        "{\"step\":10,\"split\":\"test\",\"loss\":1.7,\"accuracy\":0.8,\"samples\":64}\n"
        "{\"step\":11,\"split\":\"tr");
}

void results_seeds() {
  write("results", "results.json",
        "{\n  \"task\": \"sort\",\n  \"mechanism\": \"intention\",\n  \"projection\": \"qkv\",\n"
        "  \"seed\": 0,\n  \"params\": 52234,\n  \"epochs\": 3,\n  \"steps\": 600,\n"
        "  \"train_seconds\": 9.1,\n  \"threads\": 2,\n"
        "  \"test\": {\"loss\": 0.02, \"token_accuracy\": 0.99, \"sequence_accuracy\": 0.9,"
        " \"samples\": 512},\n"
        "  \"best_val\": {\"token_accuracy\": 0.98, \"step\": 500}\n}\n");
  write("results", "nan.json",
        "{\"task\": \"icl-linear\", \"params\": 100, \"test\": {\"loss\": null, \"mse_n2\": \"NaN\","
        " \"mse_n16\": \"Infinity\", \"bayes_n2\": 0.5}, \"best_val\": {\"mse\": null}}\n");
}

std::string checkpoint_bytes(kvq::fuzz::CheckpointFixture& fixture,
                             const kvq::train::TrainingState& state) {
  const std::string path = (root / "checkpoint.tmp").string();
  kvq::train::save_checkpoint(path, *fixture.model, *fixture.optimizer, state);
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  fs::remove(path);
  return bytes;
}

void checkpoint_seeds() {
  kvq::fuzz::CheckpointFixture fixture;
  torch::manual_seed(0);
  kvq::train::TrainingState bare;
  write("checkpoint", "bare.pt", checkpoint_bytes(fixture, bare));
  kvq::train::TrainingState full;
  full.step = 7;
  full.epoch = 1;
  fixture.sampler.next();
  full.data = fixture.sampler.state();
  full.schedule = {{"kind", "cosine"}, {"base_lr", 1e-3}, {"warmup_steps", 2}};
  full.extra = {{"best_val", 0.5}, {"best_step", 5}, {"train_seconds", 1.5}};
  write("checkpoint", "sampler.pt", checkpoint_bytes(fixture, full));
}

void run_dir_seeds() {
  write("run_dir", "sort.txt",
        "== config.json\n"
        "{\"task\": \"sort\", \"mechanism\": \"intention\", \"seed\": 1, \"length\": 8,\n"
        " \"lr\": 0.001}\n"
        "== metrics.jsonl\n"
        "{\"step\":5,\"split\":\"val\",\"loss\":1.9,\"token_accuracy\":0.5}\n"
        "== results.json\n"
        "{\"task\": \"sort\", \"test\": {\"loss\": 0.1, \"token_accuracy\": 0.9}, \"steps\": 5}\n");
  write("run_dir", "char-lm.txt",
        "== config.json\n"
        "{\"task\": \"char-lm\", \"mechanism\": \"kv\", \"seed\": 0, \"context\": 16,"
        " \"text_file\": \"x.txt\"}\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: kvq_fuzz_seeds DIR\n";
    return 2;
  }
  root = argv[1];
  idx_seeds();
  cifar_seeds();
  text_seeds();
  parallel_tsv_seeds();
  po_seeds();
  config_seeds();
  metrics_seeds();
  results_seeds();
  checkpoint_seeds();
  run_dir_seeds();
  std::cout << "seeds written under " << root.string() << "\n";
  return 0;
}
