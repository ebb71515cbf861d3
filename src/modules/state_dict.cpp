#include "kvq/modules/state_dict.h"

#include <fstream>
#include <iterator>
#include <set>
#include <sstream>

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/pickler.h>

namespace kvq {
namespace nn {

c10::Dict<std::string, torch::Tensor> state_dict(const torch::nn::Module& module) {
  c10::Dict<std::string, torch::Tensor> out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    out.insert(item.key(), item.value().detach());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    out.insert(item.key(), item.value().detach());
  }
  return out;
}

void load_state_dict(torch::nn::Module& module,
                     const c10::Dict<std::string, torch::Tensor>& state) {
  auto targets = module.named_parameters(/*recurse=*/true);
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    targets.insert(item.key(), item.value());
  }
  std::set<std::string> unused;
  for (const auto& entry : state) unused.insert(entry.key());
  torch::NoGradGuard no_grad;
  for (auto& item : targets) {
    const auto found = state.find(item.key());
    TORCH_CHECK(found != state.end(), "load_state_dict: missing key '", item.key(),
                "' (expected shape ", item.value().sizes(), ")");
    const auto& value = found->value();
    TORCH_CHECK(value.sizes() == item.value().sizes(), "load_state_dict: '", item.key(),
                "' has shape ", value.sizes(), ", the module expects ", item.value().sizes());
    item.value().copy_(value);
    unused.erase(item.key());
  }
  if (!unused.empty()) {
    std::ostringstream names;
    for (const auto& name : unused) names << (names.tellp() > 0 ? ", " : "") << "'" << name << "'";
    TORCH_CHECK(false, "load_state_dict: unexpected key(s) ", names.str(),
                " (the module was built with another mechanism or projection?)");
  }
}

namespace {

// torch::pickle_save's archive (torch.save's zip format) without the type tags it adds to typed
// dicts: their torch.jit._pickle.restore_type_tag is not among the globals torch.load admits with
// weights_only=True, its default since PyTorch 2.6, so a tagged file needs weights_only=False.
std::vector<char> pickle_untagged(const c10::IValue& value) {
  std::vector<char> pickled;
  torch::jit::Pickler pickler(
      [&](const char* bytes, size_t size) { pickled.insert(pickled.end(), bytes, bytes + size); },
      nullptr, nullptr, nullptr, nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(value);
  pickler.stop();
  std::vector<char> archive;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* bytes, size_t size) {
    const char* begin = static_cast<const char*>(bytes);
    archive.insert(archive.end(), begin, begin + size);
    return size;
  });
  torch::jit::writeArchiveAndTensors("data", pickled.data(), pickled.size(), pickler.tensorData(),
                                     writer);
  writer.writeEndOfFile();
  return archive;
}

}  // namespace

void save_state_dict(const torch::nn::Module& module, const std::string& path) {
  const auto bytes = pickle_untagged(state_dict(module));
  std::ofstream out(path, std::ios::binary);
  TORCH_CHECK(out.write(bytes.data(), static_cast<std::streamsize>(bytes.size())) && out.flush(),
              "save_state_dict: cannot write '", path, "'");
}

c10::Dict<std::string, torch::Tensor> read_state_dict(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in, "read_state_dict: cannot open '", path, "'");
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                                std::istreambuf_iterator<char>());
  const auto value = torch::pickle_load(bytes);
  TORCH_CHECK(value.isGenericDict(), "read_state_dict: '", path,
              "' does not hold a dict of tensors (got ", value.tagKind(), ")");
  c10::Dict<std::string, torch::Tensor> out;
  for (const auto& entry : value.toGenericDict()) {
    TORCH_CHECK(entry.key().isString() && entry.value().isTensor(), "read_state_dict: '", path,
                "' holds a non-tensor entry");
    out.insert(entry.key().toStringRef(), entry.value().toTensor());
  }
  return out;
}

}  // namespace nn
}  // namespace kvq
