// Checkpoints. The key property: N steps in one go equal k steps, a checkpoint, and N - k steps in
// a fresh model and optimiser that loaded it, bit for bit, with dropout active (torch's RNG
// matters) and a shuffled data order (the sampler's mt19937_64 matters). Also: a stale temporary
// file or a failed save never damages the last good checkpoint, and a model of another
// architecture is refused with the parameter named.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>

#include "kvq/util/atomic_file.h"
#include "kvq/train/checkpoint.h"
#include "kvq/util/sampler.h"
#include "kvq/train/schedules.h"

#include "test_files.h"

namespace {

namespace T = kvq::train;
namespace fs = std::filesystem;

using kvq_test_files::error_of;

using kvq_test_files::TempDir;

std::string bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A small classifier with dropout (consumes torch's RNG) and batch norm (buffers that change
// during training, an int64 one included).
struct NetImpl : torch::nn::Module {
  explicit NetImpl(int64_t hidden = 16) {
    fc1 = register_module("fc1", torch::nn::Linear(6, hidden));
    norm = register_module("norm", torch::nn::BatchNorm1d(hidden));
    drop = register_module("drop", torch::nn::Dropout(0.3));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, 3));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return fc2->forward(drop->forward(torch::relu(norm->forward(fc1->forward(x)))));
  }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::BatchNorm1d norm{nullptr};
  torch::nn::Dropout drop{nullptr};
};
TORCH_MODULE(Net);

constexpr int64_t kItems = 60, kBatch = 8;  // 7 batches per epoch, 4 items dropped
constexpr int64_t kTotalSteps = 20;         // ~2.9 epochs

struct Data {
  torch::Tensor x, y;
};

Data make_data() {
  torch::manual_seed(1234);
  Data d{torch::randn({kItems, 6}), torch::randint(0, 3, {kItems}, torch::kInt64)};
  return d;
}

T::LrSchedule schedule() {
  T::LrSchedule s;
  s.kind = "cosine-product";
  s.base_lr = 1e-2;
  s.warmup_steps = 5;
  s.total_steps = kTotalSteps;
  return s;
}

// Everything a run owns. `init_seed` seeds torch before the model is built.
struct Trainer {
  Net net;
  torch::optim::Adam opt;
  kvq::util::BatchSampler sampler;
  T::TrainingState state;
  explicit Trainer(uint64_t init_seed, uint64_t data_seed = 99, int64_t hidden = 16)
      : net((torch::manual_seed(init_seed), Net(hidden))),
        opt(net->parameters(), torch::optim::AdamOptions(1e-2)),
        sampler(kItems, kBatch, data_seed) {
    state.schedule = T::to_json(schedule());
  }

  // The training loop of a trainer: the schedule per update, the sampler's order, dropout on.
  void train_until(int64_t last_step, const Data& d) {
    net->train();
    while (state.step < last_step) {
      T::set_learning_rate(opt, T::learning_rate(schedule(), state.step));
      const auto idx = sampler.next();
      opt.zero_grad();
      const auto loss = torch::nn::functional::cross_entropy(net->forward(d.x.index_select(0, idx)),
                                                  d.y.index_select(0, idx));
      loss.backward();
      torch::nn::utils::clip_grad_norm_(net->parameters(), 5.0);
      opt.step();
      ++state.step;
      state.epoch = sampler.epoch();
    }
    state.data = sampler.state();
  }

  void save(const std::string& path) {
    state.data = sampler.state();
    T::save_checkpoint(path, *net, opt, state);
  }
  void load(const std::string& path, const T::CheckpointLoadOptions& options = {}) {
    state = T::load_checkpoint(path, *net, opt, options);
    sampler.load_state(state.data);
  }
};

// Names of the tensors that are not bit-identical ("" when all are).
std::string differing(const Net& a, const Net& b) {
  std::string out;
  const auto pa = a->named_parameters(), pb = b->named_parameters();
  for (const auto& item : pa) {
    if (!torch::equal(item.value(), pb[item.key()])) out += item.key() + " ";
  }
  const auto ba = a->named_buffers(), bb = b->named_buffers();
  for (const auto& item : ba) {
    if (!torch::equal(item.value(), bb[item.key()])) out += item.key() + " ";
  }
  return out;
}

Trainer uninterrupted(const Data& d) {
  Trainer run(7);
  run.train_until(kTotalSteps, d);
  return run;
}

// k steps, checkpoint, then a fresh model (other init), fresh optimiser, fresh sampler (other
// seed), RNG disturbed; load; the remaining steps.
Trainer resumed(const Data& d, int64_t k, const std::string& path,
            const T::CheckpointLoadOptions& options = {}) {
  {
    Trainer first(7);
    first.train_until(k, d);
    first.save(path);
    torch::rand({1000});  // draws after the save must not matter
  }
  Trainer second(/*init_seed=*/555, /*data_seed=*/777);
  torch::manual_seed(31337);
  second.load(path, options);
  second.train_until(kTotalSteps, d);
  return second;
}

class TrainCheckpointResume : public ::testing::TestWithParam<int64_t> {};

TEST_P(TrainCheckpointResume, ResumedRunIsBitIdenticalToUninterruptedRun) {
  const auto d = make_data();
  TempDir dir;
  const int64_t k = GetParam();
  const auto whole = uninterrupted(d);
  const auto parts = resumed(d, k, dir.file("ckpt.pt"));
  EXPECT_EQ(parts.state.step, kTotalSteps);
  EXPECT_EQ(parts.sampler.epoch(), whole.sampler.epoch());
  EXPECT_EQ(parts.sampler.state(), whole.sampler.state());
  EXPECT_EQ(differing(whole.net, parts.net), "") << "k = " << k;
  // The runs did train: the parameters moved away from the initialisation.
  Trainer fresh(7);
  EXPECT_NE(differing(whole.net, fresh.net), "");
}

// Mid-epoch, the first step, an epoch boundary (7 batches per epoch), and in the third epoch.
INSTANTIATE_TEST_SUITE_P(SplitPoints, TrainCheckpointResume, ::testing::Values(3, 1, 7, 16));

// The controls that show the test above can fail: without the torch RNG the dropout masks differ,
// and with another data order the batches differ.
TEST(TrainCheckpoint, ResumeWithoutRngStateOrDataStateDiverges) {
  const auto d = make_data();
  TempDir dir;
  const auto whole = uninterrupted(d);
  const auto no_rng = resumed(d, 5, dir.file("a.pt"), T::CheckpointLoadOptions().restore_rng(false));
  EXPECT_NE(differing(whole.net, no_rng.net), "");

  Trainer first(7);
  first.train_until(5, d);
  first.save(dir.file("b.pt"));
  Trainer second(555, 777);
  second.state = T::load_checkpoint(dir.file("b.pt"), *second.net, second.opt);  // sampler not restored
  second.train_until(kTotalSteps, d);
  EXPECT_NE(differing(whole.net, second.net), "");
}

TEST(TrainCheckpoint, StateAndMetaRoundTrip) {
  const auto d = make_data();
  TempDir dir;
  Trainer run(7);
  run.train_until(9, d);
  run.state.extra = {{"best_val_loss", 0.75}, {"note", "x"}};
  run.save(dir.file("c.pt"));

  Trainer other(8);
  other.load(dir.file("c.pt"));
  EXPECT_EQ(other.state.step, 9);
  EXPECT_EQ(other.state.epoch, 1);
  EXPECT_EQ(other.state.extra.at("best_val_loss"), 0.75);
  EXPECT_EQ(T::lr_schedule_from_json(other.state.schedule).kind, "cosine-product");
  EXPECT_EQ(other.sampler.epoch(), 1);
  EXPECT_EQ(other.sampler.batch_in_epoch(), 2);
  EXPECT_EQ(differing(run.net, other.net), "");

  const auto meta = T::read_checkpoint_meta(dir.file("c.pt"));
  EXPECT_EQ(meta.at("format"), "kvq-checkpoint");
  EXPECT_EQ(meta.at("optimizer"), "Adam");
  EXPECT_EQ(meta.at("step"), 9);
  EXPECT_EQ(meta.at("parameters").size(), 6u);  // fc1, norm, fc2: weight and bias each
  EXPECT_EQ(meta.at("buffers").size(), 3u);     // running mean, var, num_batches_tracked

  // Weights only, for evaluation.
  Net eval_net(16);
  T::load_model_weights(dir.file("c.pt"), *eval_net);
  EXPECT_EQ(differing(run.net, eval_net), "");
}

TEST(TrainCheckpoint, StaleTempFileNeverCorruptsTheLastGoodCheckpoint) {
  const auto d = make_data();
  TempDir dir;
  const auto path = dir.file("ckpt.pt");
  Trainer run(7);
  run.train_until(3, d);
  run.save(path);
  const auto good = bytes_of(path);

  // A save interrupted half-way left its temporary file behind (here: half a checkpoint, under
  // the name this process writes and under another process's name).
  for (const auto& stale : {kvq::util::temp_path_for(path), path + ".tmp-1"}) {
    std::ofstream(stale, std::ios::binary) << good.substr(0, good.size() / 2);
  }
  Trainer reader(8);
  reader.load(path);
  EXPECT_EQ(reader.state.step, 3);
  EXPECT_EQ(differing(run.net, reader.net), "");

  // The next save replaces the stale temporary file and the checkpoint, and loads fine.
  run.train_until(5, d);
  run.save(path);
  EXPECT_FALSE(fs::exists(kvq::util::temp_path_for(path)));
  Trainer reader2(9);
  reader2.load(path);
  EXPECT_EQ(reader2.state.step, 5);
  EXPECT_EQ(differing(run.net, reader2.net), "");
}

TEST(TrainCheckpoint, FailedSaveLeavesThePreviousCheckpointIntact) {
  const auto d = make_data();
  TempDir dir;
  const auto path = dir.file("ckpt.pt");
  Trainer run(7);
  run.train_until(3, d);
  run.save(path);
  const auto good = bytes_of(path);

  // Make the temporary file impossible to create: a directory holds its name.
  fs::create_directories(kvq::util::temp_path_for(path));
  run.train_until(5, d);
  const auto message = error_of([&] { run.save(path); });
  EXPECT_HAS(message, "save_checkpoint: cannot write " + kvq::util::temp_path_for(path));
  EXPECT_EQ(bytes_of(path), good);
  kvq::util::remove_tree(kvq::util::temp_path_for(path));

  Trainer reader(8);
  reader.load(path);
  EXPECT_EQ(reader.state.step, 3);
}

TEST(TrainCheckpoint, OtherArchitectureIsRefusedWithTheParameterNamed) {
  const auto d = make_data();
  TempDir dir;
  const auto path = dir.file("ckpt.pt");
  Trainer run(7);
  run.train_until(2, d);
  run.save(path);

  // Wider hidden layer: the first mismatching parameter in the model's order is fc1.weight.
  Trainer wide(8, 99, /*hidden=*/32);
  const auto before = wide.net->fc1->weight.detach().clone();
  const auto message = error_of([&] { wide.load(path); });
  EXPECT_HAS(message, "load_checkpoint: " + path);
  EXPECT_HAS(message, "parameter 'fc1.weight' has shape [16, 6] in the checkpoint but [32, 6] in the model");
  EXPECT_TRUE(torch::equal(before, wide.net->fc1->weight));  // untouched

  // A model with a parameter the checkpoint lacks, and one lacking a checkpoint parameter.
  struct Extra : torch::nn::Module {
    Extra() {
      fc1 = register_module("fc1", torch::nn::Linear(6, 16));
      norm = register_module("norm", torch::nn::BatchNorm1d(16));
      fc2 = register_module("fc2", torch::nn::Linear(16, 3));
      gate = register_parameter("gate", torch::ones({3}));
    }
    torch::nn::Linear fc1{nullptr}, fc2{nullptr};
    torch::nn::BatchNorm1d norm{nullptr};
    torch::Tensor gate;
  } extra;
  torch::optim::Adam extra_opt(extra.parameters());
  EXPECT_HAS(error_of([&] { T::load_checkpoint(path, extra, extra_opt); }),
             "the model's parameter 'gate' is not in the checkpoint");
  EXPECT_HAS(error_of([&] { T::load_model_weights(path, extra); }),
             "the model's parameter 'gate' is not in the checkpoint");
  struct Fewer : torch::nn::Module {
    Fewer() {
      fc1 = register_module("fc1", torch::nn::Linear(6, 16));
      norm = register_module("norm", torch::nn::BatchNorm1d(16));
    }
    torch::nn::Linear fc1{nullptr};
    torch::nn::BatchNorm1d norm{nullptr};
  } fewer;
  EXPECT_HAS(error_of([&] { T::load_model_weights(path, fewer); }),
             "the checkpoint's parameter 'fc2.bias' [3] is not in the model");

  // Float64 model: the dtype is named.
  Net dbl(16);
  dbl->to(torch::kFloat64);
  EXPECT_HAS(error_of([&] { T::load_model_weights(path, *dbl); }),
             "parameter 'fc1.weight' has dtype Float in the checkpoint but Double in the model");

  // Another optimiser kind.
  Net same(16);
  torch::optim::AdamW adamw(same->parameters(), torch::optim::AdamWOptions(1e-3));
  EXPECT_HAS(error_of([&] { T::load_checkpoint(path, *same, adamw); }),
             "the checkpoint's optimiser is Adam, this one is AdamW");
}

TEST(TrainCheckpoint, MissingOrForeignFilesAreRefusedWithTheirName) {
  TempDir dir;
  Net net(16);
  torch::optim::Adam opt(net->parameters());
  const auto missing = dir.file("none.pt");
  EXPECT_HAS(error_of([&] { T::load_checkpoint(missing, *net, opt); }), missing + ": no such file");

  const auto garbage = dir.file("garbage.pt");
  std::ofstream(garbage) << "not a zip archive";
  EXPECT_HAS(error_of([&] { T::load_checkpoint(garbage, *net, opt); }),
             garbage + ": not a readable checkpoint");

  // A LibTorch archive, but not a kvq checkpoint (torch::save of a module).
  const auto foreign = dir.file("module.pt");
  torch::save(net, foreign);
  EXPECT_HAS(error_of([&] { T::load_checkpoint(foreign, *net, opt); }),
             foreign + ": not a kvq checkpoint");
}

// Sets the CRC-32 of zip entry `name` in `zip` (central directory and local header) to that of
// its stored bytes, as a deliberate edit would: the archive is then damaged only inside.
void fix_stored_entry_crc(std::string& zip, const std::string& name) {
  const auto le32 = [&](size_t at) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(zip[at + i]);
    return v;
  };
  const auto put32 = [&](size_t at, uint32_t v) {
    for (int i = 0; i < 4; ++i) zip[at + i] = static_cast<char>((v >> (8 * i)) & 0xFF);
  };
  const std::string central = std::string("PK\x01\x02", 4);
  for (size_t at = zip.find(central); at != std::string::npos; at = zip.find(central, at + 1)) {
    const size_t name_length = le32(at + 28) & 0xFFFF;
    if (zip.compare(at + 46, name_length, name) != 0) continue;
    ASSERT_EQ(le32(at + 10) & 0xFFFF, 0u) << name << " is not stored";
    const size_t local = le32(at + 42);
    const size_t data = local + 30 + (le32(local + 26) & 0xFFFF) + (le32(local + 28) & 0xFFFF);
    const uint32_t crc = static_cast<uint32_t>(
        crc32(0, reinterpret_cast<const Bytef*>(zip.data() + data), le32(at + 20)));
    put32(at + 16, crc);
    put32(local + 14, crc);
    return;
  }
  FAIL() << "no zip entry " << name;
}

// Found by fuzzing (fuzz/corpus/checkpoint/libtorch-segv-damaged-source.pt): LibTorch reads
// archives without checking the entries' CRC-32, and a damaged TorchScript source inside made
// its importer segfault. Damaged entries are now refused, named, before LibTorch reads the file.
TEST(TrainCheckpoint, DamagedEntryIsRefusedBeforeLibTorchReadsIt) {
  TempDir dir;
  Net net(16);
  torch::optim::Adam opt(net->parameters());
  const auto path = dir.file("damaged.pt");
  T::save_checkpoint(path, *net, opt, T::TrainingState{});
  std::string bytes = bytes_of(path);
  const size_t at = bytes.find("class Module(Module):");
  ASSERT_NE(at, std::string::npos);
  bytes[at + 6] = '=';  // "class =odule(Module):"
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  for (const auto& message :
       {error_of([&] { T::load_checkpoint(path, *net, opt); }),
        error_of([&] { T::load_model_weights(path, *net); }),
        error_of([&] { T::read_checkpoint_meta(path); })}) {
    EXPECT_HAS(message, path + ": not a readable checkpoint (damaged archive: CRC-32 mismatch in ");
    EXPECT_HAS(message, "code/__torch__");
  }
  // Found by fuzzing (fuzz/corpus/checkpoint/zip-size-ffffffff.pt): a size field of 0xFFFFFFFF
  // without the zip64 field it announces made LibTorch allocate 4 GiB.
  T::save_checkpoint(path, *net, opt, T::TrainingState{});
  std::string sized = bytes_of(path);
  const size_t central = sized.find(std::string("PK\x01\x02", 4));
  ASSERT_NE(central, std::string::npos);
  sized.replace(central + 24, 4, std::string(4, '\xFF'));  // uncompressed size of the entry
  std::ofstream(path, std::ios::binary | std::ios::trunc) << sized;
  EXPECT_HAS(error_of([&] { T::read_checkpoint_meta(path); }),
             path + ": not a readable checkpoint (damaged archive: bad sizes of archive/");
  // Cut short: the zip's directory is gone.
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() / 2);
  EXPECT_HAS(error_of([&] { T::read_checkpoint_meta(path); }),
             path + ": not a readable checkpoint (damaged archive: no end of central directory)");
}

// Found by fuzzing (fuzz/corpus/checkpoint/torchscript-parser-error.pt): on a damaged archive
// LibTorch's loader throws std::runtime_error (from its TorchScript parser), not c10::Error,
// which escaped the checkpoint readers without naming the file. Here a class name in the pickle
// is edited and its CRC made to match, so the archive passes the CRC check and reaches LibTorch.
TEST(TrainCheckpoint, LibTorchErrorsOfAnyTypeAreRefusedWithTheFileNamed) {
  TempDir dir;
  Net net(16);
  torch::optim::Adam opt(net->parameters());
  const auto path = dir.file("edited.pt");
  T::save_checkpoint(path, *net, opt, T::TrainingState{});
  std::string bytes = bytes_of(path);
  const std::string name = "__torch__\nModule";
  const size_t at = bytes.find(name);
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, name.size(), "__torch__\nMod)le");
  fix_stored_entry_crc(bytes, "archive/data.pkl");
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  for (const auto& message :
       {error_of([&] { T::load_checkpoint(path, *net, opt); }),
        error_of([&] { T::load_model_weights(path, *net); }),
        error_of([&] { T::read_checkpoint_meta(path); })}) {
    EXPECT_HAS(message, path + ": not a readable checkpoint (");
    EXPECT_EQ(message.find("damaged archive"), std::string::npos) << message;
    EXPECT_EQ(message.find("()"), std::string::npos) << "no reason given: " << message;
  }
}

}  // namespace
