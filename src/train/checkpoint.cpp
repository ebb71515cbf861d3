#include "kvq/train/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <c10/util/Exception.h>
#include <torch/version.h>
#include <zlib.h>

#include <filesystem>
#include <map>
#include <mutex>
#include <functional>
#include <sstream>
#include <vector>

#include "kvq/util/atomic_file.h"

namespace kvq {
namespace train {

namespace {

constexpr const char* kFormat = "kvq-checkpoint";
constexpr int64_t kVersion = 1;

std::string shape_text(at::IntArrayRef shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

std::string dtype_text(const torch::Tensor& t) { return std::string(c10::toString(t.scalar_type())); }

struct NamedTensor {
  std::string name;
  torch::Tensor tensor;
};

// Defined parameters (kind "parameter") or buffers (kind "buffer") of `model`, in its order.
std::vector<NamedTensor> named_tensors(const torch::nn::Module& model, bool buffers) {
  std::vector<NamedTensor> out;
  const auto dict = buffers ? model.named_buffers(true) : model.named_parameters(true);
  for (const auto& item : dict) {
    if (item.value().defined()) out.push_back({item.key(), item.value()});
  }
  return out;
}

nlohmann::json describe(const std::vector<NamedTensor>& tensors) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& t : tensors) {
    out.push_back({{"name", t.name},
                   {"shape", std::vector<int64_t>(t.tensor.sizes().begin(), t.tensor.sizes().end())},
                   {"dtype", dtype_text(t.tensor)}});
  }
  return out;
}

std::vector<int64_t> group_sizes(const torch::optim::Optimizer& optimizer) {
  std::vector<int64_t> sizes;
  for (const auto& group : optimizer.param_groups()) {
    sizes.push_back(static_cast<int64_t>(group.params().size()));
  }
  return sizes;
}

int64_t cuda_generator_count() {
  return torch::cuda::is_available() ? static_cast<int64_t>(torch::cuda::device_count()) : 0;
}

at::Generator cuda_generator(int64_t index) {
  return at::globalContext().defaultGenerator(
      at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index)));
}

// A generator's state, taken under its lock (generators are shared by all threads).
torch::Tensor generator_state(at::Generator generator) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get_state();
}

void set_generator_state(at::Generator generator, const torch::Tensor& state) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state.to(torch::kCPU));
}

// Runs `read`, a call into LibTorch's archive reader, and turns whatever it throws into one line
// naming the file: on a damaged archive LibTorch throws c10::Error, but also std::runtime_error
// (from its TorchScript parser) and other standard exceptions, none of which name the file.
template <class Read>
void read_archive(const std::string& who, const std::string& path, const std::string& what,
                  Read read) {
  std::string reason;
  try {
    read();
    return;
  } catch (const c10::Error& e) {
    reason = e.what_without_backtrace();
  } catch (const std::exception& e) {
    reason = e.what();
  }
  // The first line with text (TorchScript's error reports start with a blank one).
  const size_t start = std::min(reason.find_first_not_of(" \n"), reason.size());
  TORCH_CHECK(false, who, ": ", path, ": ", what, " (",
              reason.substr(start, reason.find('\n', start) - start), ")");
}

// Little-endian integers of a zip structure; 0 past the end (the callers check sizes first).
uint64_t le(const std::string& bytes, size_t at, int width) {
  uint64_t v = 0;
  for (int i = width - 1; i >= 0; --i) {
    v = (v << 8) | (at + i < bytes.size() ? static_cast<unsigned char>(bytes[at + i]) : 0);
  }
  return v;
}

// The data of one zip entry, stored (method 0) or deflated (8), inflated with zlib.
bool entry_data(const std::string& bytes, size_t offset, uint64_t method, uint64_t compressed,
                uint64_t size, std::string& out) {
  if (method == 0) {
    if (compressed != size) return false;
    out = bytes.substr(offset, compressed);
    return true;
  }
  // Deflate expands at most ~1032 times: a larger claimed size is a damaged header.
  if (method != 8 || compressed > 0xFFFFFFFF || size > compressed * 1040 + 1024) return false;
  out.assign(size, '\0');
  z_stream z{};
  if (inflateInit2(&z, -MAX_WBITS) != Z_OK) return false;
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data() + offset));
  z.avail_in = static_cast<uInt>(compressed);
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(size);
  const int rc = inflate(&z, Z_FINISH);
  const bool ok = rc == Z_STREAM_END && z.total_out == size;
  inflateEnd(&z);
  return ok;
}

// LibTorch reads checkpoint archives (zip files) without checking the CRC-32 of their entries
// (its miniz is built with MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS), and parses the TorchScript
// source and pickles inside as they are: fuzzing found damaged entries that crash it (a segfault
// in its TorchScript importer) or make it allocate what a damaged size field says (4 GiB). So the
// archive's directory (zip64 records included: LibTorch writes them) and every entry's size and
// CRC-32 are checked here first, and a damaged file is refused before LibTorch sees it. (A file
// made to crash LibTorch, with consistent CRCs, is beyond this check: like torch.load, load
// checkpoints you trust.)
void verify_zip_checksums(const std::string& who, const std::string& path) {
  const std::string bytes = util::read_file(path, who);
  const auto damaged = [&](const std::string& why) {
    TORCH_CHECK(false, who, ": ", path, ": not a readable checkpoint (damaged archive: ", why, ")");
  };
  constexpr uint32_t kEnd = 0x06054b50, kCentral = 0x02014b50, kLocal = 0x04034b50;
  constexpr uint32_t kEnd64 = 0x06064b50, kLocator64 = 0x07064b50;
  constexpr uint64_t k32 = 0xFFFFFFFF;
  // End of central directory: 22 bytes plus a comment of up to 65535.
  if (bytes.size() < 22) damaged("too short for a zip file");
  size_t end = std::string::npos;
  const size_t lowest = bytes.size() > 22 + 65535 ? bytes.size() - 22 - 65535 : 0;
  for (size_t at = bytes.size() - 22 + 1; at-- > lowest;) {
    if (le(bytes, at, 4) == kEnd) {
      end = at;
      break;
    }
  }
  if (end == std::string::npos) damaged("no end of central directory");
  uint64_t entries = le(bytes, end + 10, 2);
  uint64_t directory_size = le(bytes, end + 12, 4);
  uint64_t directory = le(bytes, end + 16, 4);
  uint64_t directory_end = end;
  if (end >= 20 && le(bytes, end - 20, 4) == kLocator64) {  // zip64 end record, located
    const uint64_t end64 = le(bytes, end - 20 + 8, 8);
    if (end64 > end - 20 || end - 20 - end64 < 56 || le(bytes, end64, 4) != kEnd64) {
      damaged("bad zip64 end of central directory");
    }
    entries = le(bytes, end64 + 32, 8);
    directory_size = le(bytes, end64 + 40, 8);
    directory = le(bytes, end64 + 48, 8);
    directory_end = end64;
  }
  if (directory > directory_end || directory_size > directory_end - directory) {
    damaged("central directory out of range");
  }
  size_t at = directory;
  for (uint64_t i = 0; i < entries; ++i) {
    if (at + 46 > directory_end || le(bytes, at, 4) != kCentral) {
      damaged("bad central directory entry");
    }
    const uint64_t method = le(bytes, at + 10, 2);
    const uint64_t crc = le(bytes, at + 16, 4);
    uint64_t compressed = le(bytes, at + 20, 4);
    uint64_t size = le(bytes, at + 24, 4);
    const uint64_t name_length = le(bytes, at + 28, 2);
    const uint64_t extra_length = le(bytes, at + 30, 2);
    const uint64_t comment_length = le(bytes, at + 32, 2);
    uint64_t local = le(bytes, at + 42, 4);
    if (at + 46 + name_length + extra_length > directory_end) damaged("bad central directory entry");
    const std::string name = bytes.substr(at + 46, name_length);
    if (size == k32 || compressed == k32 || local == k32) {
      // The 64-bit values are in the zip64 extra field (id 1), in this order, only those whose
      // 32-bit field is 0xFFFFFFFF.
      size_t field = at + 46 + name_length;
      const size_t fields_end = field + extra_length;
      bool found = false;
      while (field + 4 <= fields_end) {
        const uint64_t id = le(bytes, field, 2), length = le(bytes, field + 2, 2);
        if (field + 4 + length > fields_end) break;
        if (id == 1) {
          size_t value = field + 4;
          const size_t values_end = value + length;
          for (uint64_t* v : {&size, &compressed, &local}) {
            if (*v != k32) continue;
            if (value + 8 > values_end) damaged("bad zip64 sizes of " + name);
            *v = le(bytes, value, 8);
            value += 8;
          }
          found = true;
          break;
        }
        field += 4 + length;
      }
      if (!found) damaged("bad sizes of " + name);
    }
    if (local > bytes.size() || bytes.size() - local < 30 || le(bytes, local, 4) != kLocal) {
      damaged("bad local header of " + name);
    }
    const uint64_t data = local + 30 + le(bytes, local + 26, 2) + le(bytes, local + 28, 2);
    std::string content;
    if (data > bytes.size() || compressed > bytes.size() - data ||
        !entry_data(bytes, static_cast<size_t>(data), method, compressed, size, content)) {
      damaged("cannot read entry " + name);
    }
    const auto actual = crc32_z(crc32_z(0L, Z_NULL, 0),
                                reinterpret_cast<const Bytef*>(content.data()), content.size());
    if (actual != crc) damaged("CRC-32 mismatch in " + name);
    at += 46 + name_length + extra_length + comment_length;
  }
}

// The archive and its meta, or an error naming the file.
struct OpenedCheckpoint {
  torch::serialize::InputArchive archive;
  nlohmann::json meta;
};

void open_checkpoint(const std::string& path, const std::string& who,
                     torch::Device device, OpenedCheckpoint& out) {
  std::error_code ec;
  TORCH_CHECK(std::filesystem::is_regular_file(path, ec), who, ": ", path, ": no such file");
  verify_zip_checksums(who, path);
  read_archive(who, path, "not a readable checkpoint",
               [&] { out.archive.load_from(path, device); });
  c10::IValue meta_text;
  bool has_meta = false;
  read_archive(who, path, "not a readable checkpoint",
               [&] { has_meta = out.archive.try_read("meta", meta_text); });
  TORCH_CHECK(has_meta && meta_text.isString(), who, ": ", path,
              ": not a kvq checkpoint (no meta record)");
  try {
    out.meta = nlohmann::json::parse(meta_text.toStringRef());
  } catch (const nlohmann::json::exception& e) {  // also out_of_range: 1e999
    TORCH_CHECK(false, who, ": ", path, ": corrupt meta record: ", e.what());
  }
  TORCH_CHECK(out.meta.is_object() && out.meta.value("format", "") == kFormat, who, ": ", path,
              ": not a kvq checkpoint (format is not '", kFormat, "')");
  TORCH_CHECK(out.meta.value("version", int64_t{-1}) == kVersion, who, ": ", path,
              ": checkpoint format version ", out.meta.value("version", int64_t{-1}),
              ", this build reads version ", kVersion);
  // Every field the loaders read, with its type, so that they cannot fail half-way.
  try {
    for (const char* list : {"parameters", "buffers"}) {
      for (const auto& entry : out.meta.at(list)) {
        (void)entry.at("name").get<std::string>();
        (void)entry.at("shape").get<std::vector<int64_t>>();
        (void)entry.at("dtype").get<std::string>();
      }
    }
    (void)out.meta.at("step").get<int64_t>();
    (void)out.meta.at("epoch").get<int64_t>();
    (void)out.meta.at("optimizer").get<std::string>();
    (void)out.meta.at("optimizer_groups").get<std::vector<int64_t>>();
    (void)out.meta.at("cuda_rng_count").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, who, ": ", path, ": corrupt meta record (", e.what(), ")");
  }
}

// Checks one kind of tensor ("parameter"/"buffer") of the model against the meta description
// and reads the saved tensors, in the model's order. Nothing is modified.
std::vector<torch::Tensor> read_model_tensors(const std::string& path, const std::string& who,
                                              const OpenedCheckpoint& ckpt,
                                              torch::serialize::InputArchive& model_archive,
                                              const std::vector<NamedTensor>& mine,
                                              const std::string& kind) {
  const auto& saved = ckpt.meta.at(kind == "parameter" ? "parameters" : "buffers");
  std::map<std::string, size_t> saved_index;
  for (size_t i = 0; i < saved.size(); ++i) saved_index[saved[i].at("name").get<std::string>()] = i;
  std::map<std::string, size_t> my_index;
  for (size_t i = 0; i < mine.size(); ++i) my_index[mine[i].name] = i;

  for (const auto& t : mine) {
    TORCH_CHECK(saved_index.count(t.name), who, ": ", path, ": the model's ", kind, " '", t.name,
                "' is not in the checkpoint (a different architecture?)");
  }
  for (const auto& [name, i] : saved_index) {
    TORCH_CHECK(my_index.count(name), who, ": ", path, ": the checkpoint's ", kind, " '", name,
                "' ", shape_text(saved[i].at("shape").get<std::vector<int64_t>>()),
                " is not in the model (a different architecture?)");
  }
  std::vector<torch::Tensor> out;
  for (const auto& t : mine) {
    const auto& entry = saved[saved_index.at(t.name)];
    const auto shape = entry.at("shape").get<std::vector<int64_t>>();
    TORCH_CHECK(t.tensor.sizes() == at::IntArrayRef(shape), who, ": ", path, ": ", kind, " '",
                t.name, "' has shape ", shape_text(shape), " in the checkpoint but ",
                shape_text(t.tensor.sizes()), " in the model");
    TORCH_CHECK(entry.at("dtype").get<std::string>() == dtype_text(t.tensor), who, ": ", path,
                ": ", kind, " '", t.name, "' has dtype ", entry.at("dtype").get<std::string>(),
                " in the checkpoint but ", dtype_text(t.tensor), " in the model");
    torch::Tensor value;
    const std::string key = (kind == "parameter" ? "p" : "b") +
                            std::to_string(saved_index.at(t.name));
    read_archive(who, path, "corrupt checkpoint: cannot read " + kind + " '" + t.name + "'",
                 [&] { model_archive.read(key, value, /*is_buffer=*/true); });
    TORCH_CHECK(value.defined() && value.sizes() == t.tensor.sizes(), who, ": ", path,
                ": corrupt checkpoint: ", kind, " '", t.name, "' does not match its description");
    out.push_back(value);
  }
  return out;
}

// Checks and loads the model part; `commit` runs between the checks and the copy, so a caller
// can load other parts (the optimiser) after everything is known to fit and before the model
// changes.
void load_model_part(const std::string& path, const std::string& who, OpenedCheckpoint& ckpt,
                     torch::nn::Module& model, const std::function<void()>& commit) {
  torch::serialize::InputArchive model_archive;
  read_archive(who, path, "corrupt checkpoint: cannot read the model record",
               [&] { ckpt.archive.read("model", model_archive); });
  const auto params = named_tensors(model, false);
  const auto buffers = named_tensors(model, true);
  const auto param_values = read_model_tensors(path, who, ckpt, model_archive, params, "parameter");
  const auto buffer_values = read_model_tensors(path, who, ckpt, model_archive, buffers, "buffer");
  if (commit) commit();
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) params[i].tensor.copy_(param_values[i]);
  for (size_t i = 0; i < buffers.size(); ++i) buffers[i].tensor.copy_(buffer_values[i]);
}

}  // namespace

torch::Device model_device(const torch::nn::Module& model) {
  for (const auto& p : model.parameters(true)) {
    if (p.defined()) return p.device();
  }
  return torch::Device(torch::kCPU);
}

std::string optimizer_kind(const torch::optim::Optimizer& optimizer) {
  if (dynamic_cast<const torch::optim::AdamW*>(&optimizer)) return "AdamW";
  if (dynamic_cast<const torch::optim::Adam*>(&optimizer)) return "Adam";
  if (dynamic_cast<const torch::optim::SGD*>(&optimizer)) return "SGD";
  if (dynamic_cast<const torch::optim::RMSprop*>(&optimizer)) return "RMSprop";
  if (dynamic_cast<const torch::optim::Adagrad*>(&optimizer)) return "Adagrad";
  if (dynamic_cast<const torch::optim::LBFGS*>(&optimizer)) return "LBFGS";
  return "unknown";
}

void save_checkpoint(const std::string& path, const torch::nn::Module& model,
                     const torch::optim::Optimizer& optimizer, const TrainingState& state) {
  const std::string who = "save_checkpoint";
  const auto params = named_tensors(model, false);
  const auto buffers = named_tensors(model, true);

  const int64_t cuda_count = cuda_generator_count();
  nlohmann::json meta = {{"format", kFormat},
                         {"version", kVersion},
                         {"torch_version", TORCH_VERSION},
                         {"step", state.step},
                         {"epoch", state.epoch},
                         {"data", state.data},
                         {"schedule", state.schedule},
                         {"extra", state.extra},
                         {"optimizer", optimizer_kind(optimizer)},
                         {"optimizer_groups", group_sizes(optimizer)},
                         {"parameters", describe(params)},
                         {"buffers", describe(buffers)},
                         {"cuda_rng_count", cuda_count}};

  std::string bytes;
  try {
    torch::serialize::OutputArchive archive;
    archive.write("meta", c10::IValue(meta.dump()));
    torch::serialize::OutputArchive model_archive(archive.compilation_unit());
    for (size_t i = 0; i < params.size(); ++i) {
      model_archive.write("p" + std::to_string(i), params[i].tensor.detach(), /*is_buffer=*/true);
    }
    for (size_t i = 0; i < buffers.size(); ++i) {
      model_archive.write("b" + std::to_string(i), buffers[i].tensor.detach(), /*is_buffer=*/true);
    }
    archive.write("model", model_archive);
    torch::serialize::OutputArchive optimizer_archive(archive.compilation_unit());
    optimizer.save(optimizer_archive);
    archive.write("optimizer", optimizer_archive);
    archive.write("rng_cpu", generator_state(at::detail::getDefaultCPUGenerator()),
                  /*is_buffer=*/true);
    for (int64_t i = 0; i < cuda_count; ++i) {
      archive.write("rng_cuda" + std::to_string(i), generator_state(cuda_generator(i)),
                    /*is_buffer=*/true);
    }
    archive.save_to([&bytes](const void* data, size_t size) {
      bytes.append(static_cast<const char*>(data), size);
      return size;
    });
  } catch (const c10::Error& e) {
    const std::string reason = e.what_without_backtrace();
    TORCH_CHECK(false, who, ": ", path, ": cannot serialise the training state (",
                reason.substr(0, reason.find('\n')), ")");
  }
  util::write_file_atomic(path, bytes, who);
}

TrainingState load_checkpoint(const std::string& path, torch::nn::Module& model,
                              torch::optim::Optimizer& optimizer,
                              const CheckpointLoadOptions& options) {
  const std::string who = "load_checkpoint";
  OpenedCheckpoint ckpt;
  open_checkpoint(path, who, model_device(model), ckpt);
  const auto& meta = ckpt.meta;

  std::vector<torch::Tensor> cuda_states;
  torch::Tensor cpu_state;
  // Runs once the model is known to fit, before it is changed.
  load_model_part(path, who, ckpt, model, [&] {
    const std::string saved_kind = meta.at("optimizer").get<std::string>();
    TORCH_CHECK(saved_kind == optimizer_kind(optimizer), who, ": ", path,
                ": the checkpoint's optimiser is ", saved_kind, ", this one is ",
                optimizer_kind(optimizer));
    const auto saved_groups = meta.at("optimizer_groups").get<std::vector<int64_t>>();
    TORCH_CHECK(saved_groups == group_sizes(optimizer), who, ": ", path,
                ": the checkpoint's optimiser has parameter groups of sizes ",
                nlohmann::json(saved_groups).dump(), ", this optimiser ",
                nlohmann::json(group_sizes(optimizer)).dump());
    if (options.restore_rng()) {
      read_archive(who, path, "corrupt checkpoint: cannot restore the CPU generator", [&] {
        ckpt.archive.read("rng_cpu", cpu_state, /*is_buffer=*/true);
        // On a scratch generator first: a bad state must fail before anything is changed.
        auto scratch = at::make_generator<at::CPUGeneratorImpl>();
        scratch.set_state(cpu_state);
      });
      const int64_t n =
          std::min(meta.at("cuda_rng_count").get<int64_t>(), cuda_generator_count());
      for (int64_t i = 0; i < n; ++i) {
        torch::Tensor s;
        read_archive(who, path, "corrupt checkpoint: cannot read CUDA generator " +
                                    std::to_string(i),
                     [&] { ckpt.archive.read("rng_cuda" + std::to_string(i), s, true); });
        cuda_states.push_back(s);
      }
    }
    torch::serialize::InputArchive optimizer_archive;
    read_archive(who, path, "corrupt checkpoint: cannot read the optimiser record",
                 [&] { ckpt.archive.read("optimizer", optimizer_archive); });
    read_archive(who, path, "cannot restore the optimiser state",
                 [&] { optimizer.load(optimizer_archive); });
  });

  if (options.restore_rng()) {
    set_generator_state(at::detail::getDefaultCPUGenerator(), cpu_state);
    for (size_t i = 0; i < cuda_states.size(); ++i) {
      read_archive(who, path, "corrupt checkpoint: cannot restore CUDA generator " +
                                  std::to_string(i),
                   [&] { set_generator_state(cuda_generator(static_cast<int64_t>(i)),
                                             cuda_states[i]); });
    }
  }

  TrainingState state;
  state.step = meta.at("step").get<int64_t>();
  state.epoch = meta.at("epoch").get<int64_t>();
  state.data = meta.value("data", nlohmann::json());
  state.schedule = meta.value("schedule", nlohmann::json());
  state.extra = meta.value("extra", nlohmann::json());
  return state;
}

void load_model_weights(const std::string& path, torch::nn::Module& model) {
  const std::string who = "load_model_weights";
  OpenedCheckpoint ckpt;
  open_checkpoint(path, who, model_device(model), ckpt);
  load_model_part(path, who, ckpt, model, nullptr);
}

nlohmann::json read_checkpoint_meta(const std::string& path) {
  OpenedCheckpoint ckpt;
  open_checkpoint(path, "read_checkpoint_meta", torch::Device(torch::kCPU), ckpt);
  return ckpt.meta;
}

}  // namespace train
}  // namespace kvq
