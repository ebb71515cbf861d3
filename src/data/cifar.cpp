#include "kvq/data/cifar.h"

#include <cstring>
#include <filesystem>

#include "kvq/data/io.h"
#include "kvq/util/atomic_file.h"

namespace kvq {
namespace data {
namespace {

constexpr int64_t kPixels = 3 * 32 * 32;

// label_bytes = 1 (CIFAR-10: fine) or 2 (CIFAR-100: coarse, fine).
CifarData read_batch(const std::string& who, const std::string& path, int64_t label_bytes,
                     int64_t num_fine, int64_t num_coarse) {
  const std::string bytes = util::read_file(path, who);
  const int64_t record = label_bytes + kPixels;
  const int64_t size = static_cast<int64_t>(bytes.size());
  TORCH_CHECK(size > 0, who, ": ", path, ": empty file");
  TORCH_CHECK(size % record == 0, who, ": ", path, ": size ", size,
              " bytes is not a whole number of ", record, "-byte records (", size / record,
              " records and ", size % record, " bytes left over)");
  const int64_t n = size / record;
  auto images = torch::empty({n, 3, 32, 32}, torch::kUInt8);
  auto fine = torch::empty({n}, torch::kInt64);
  auto coarse = label_bytes == 2 ? torch::empty({n}, torch::kInt64) : torch::Tensor();
  const auto* src = reinterpret_cast<const uint8_t*>(bytes.data());
  uint8_t* dst = images.data_ptr<uint8_t>();
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* rec = src + i * record;
    const int64_t fine_label = rec[label_bytes - 1];
    TORCH_CHECK(fine_label < num_fine, who, ": ", path, ": record ", i, ": label ", fine_label,
                " out of range [0, ", num_fine, ")");
    fine.data_ptr<int64_t>()[i] = fine_label;
    if (label_bytes == 2) {
      const int64_t coarse_label = rec[0];
      TORCH_CHECK(coarse_label < num_coarse, who, ": ", path, ": record ", i, ": coarse label ",
                  coarse_label, " out of range [0, ", num_coarse, ")");
      coarse.data_ptr<int64_t>()[i] = coarse_label;
    }
    std::memcpy(dst + i * kPixels, rec + label_bytes, kPixels);
  }
  return {images, fine, coarse};
}

void check_split(const std::string& who, const std::string& dir, const std::string& split) {
  TORCH_CHECK(split == "train" || split == "test", who, ": split must be 'train' or 'test', got '",
              split, "'");
  TORCH_CHECK(std::filesystem::is_directory(dir), who, ": directory ", dir, " does not exist");
}

}  // namespace

CifarData read_cifar10_batch(const std::string& path) {
  return read_batch("read_cifar10_batch", path, 1, 10, 0);
}

CifarData read_cifar100_batch(const std::string& path) {
  return read_batch("read_cifar100_batch", path, 2, 100, 20);
}

CifarData concat_cifar(const std::vector<CifarData>& batches) {
  TORCH_CHECK(!batches.empty(), "concat_cifar: no batches");
  const bool has_coarse = batches[0].coarse_labels.defined();
  std::vector<torch::Tensor> images, labels, coarse;
  for (const auto& b : batches) {
    TORCH_CHECK(b.coarse_labels.defined() == has_coarse,
                "concat_cifar: cannot mix CIFAR-10 and CIFAR-100 batches");
    images.push_back(b.images);
    labels.push_back(b.labels);
    if (has_coarse) coarse.push_back(b.coarse_labels);
  }
  return {torch::cat(images), torch::cat(labels),
          has_coarse ? torch::cat(coarse) : torch::Tensor()};
}

CifarData load_cifar10(const std::string& dir, const std::string& split) {
  check_split("load_cifar10", dir, split);
  if (split == "test") return read_cifar10_batch(dir + "/test_batch.bin");
  std::vector<CifarData> batches;
  for (int b = 1; b <= 5; ++b) {
    batches.push_back(read_cifar10_batch(dir + "/data_batch_" + std::to_string(b) + ".bin"));
  }
  return concat_cifar(batches);
}

CifarData load_cifar100(const std::string& dir, const std::string& split) {
  check_split("load_cifar100", dir, split);
  return read_cifar100_batch(dir + "/" + split + ".bin");
}

}  // namespace data
}  // namespace kvq
