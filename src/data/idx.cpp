#include "kvq/data/idx.h"

#include <zlib.h>

#include <cstring>
#include <filesystem>

namespace kvq {
namespace data {
namespace {

constexpr uint32_t kImagesMagic = 0x00000803;
constexpr uint32_t kLabelsMagic = 0x00000801;
constexpr int kMnistSide = 28;
constexpr int64_t kMnistClasses = 10;

// The whole (decompressed) content of a gzip or plain file.
std::string read_gz_file(const std::string& who, const std::string& path) {
  TORCH_CHECK(std::filesystem::is_regular_file(path), who, ": ", path, ": no such file");
  gzFile file = gzopen(path.c_str(), "rb");
  TORCH_CHECK(file != nullptr, who, ": ", path, ": cannot open: ", std::strerror(errno));
  std::string bytes;
  std::vector<char> chunk(1 << 16);  // not more: each file zeroes it (a large one each time)
  while (true) {
    const int got = gzread(file, chunk.data(), static_cast<unsigned>(chunk.size()));
    if (got < 0) {
      int code = 0;
      const std::string message = gzerror(file, &code);
      gzclose_r(file);
      TORCH_CHECK(false, who, ": ", path, ": truncated or corrupt gzip stream (", message, ")");
    }
    if (got == 0) break;
    bytes.append(chunk.data(), static_cast<size_t>(got));
  }
  int code = 0;
  const std::string message = gzerror(file, &code);
  const int close_rc = gzclose_r(file);
  TORCH_CHECK(code == Z_OK && close_rc == Z_OK, who, ": ", path,
              ": truncated or corrupt gzip stream (", message.empty() ? "gzclose failed" : message,
              ")");
  return bytes;
}

uint32_t big_endian_u32(const std::string& bytes, size_t offset) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data()) + offset;
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

std::string hex32(uint32_t value) {
  char buffer[16];
  std::snprintf(buffer, sizeof(buffer), "0x%08x", value);
  return buffer;
}

// Header check shared by both readers: magic, dims, and exact payload size. Returns the dims.
std::vector<uint64_t> parse_header(const std::string& who, const std::string& path,
                                   const std::string& bytes, uint32_t magic, int ndims) {
  const size_t header = 4 * (1 + static_cast<size_t>(ndims));
  TORCH_CHECK(bytes.size() >= 4, who, ": ", path, ": truncated IDX file (", bytes.size(),
              " bytes, no magic number)");
  const uint32_t got_magic = big_endian_u32(bytes, 0);
  TORCH_CHECK(got_magic == magic, who, ": ", path, ": wrong IDX magic number ", hex32(got_magic),
              ", expected ", hex32(magic), (magic == kImagesMagic ? " (images)" : " (labels)"));
  TORCH_CHECK(bytes.size() >= header, who, ": ", path, ": truncated IDX header (", bytes.size(),
              " bytes, need ", header, ")");
  std::vector<uint64_t> dims;
  uint64_t item = 1;  // bytes per sample
  for (int d = 0; d < ndims; ++d) {
    dims.push_back(big_endian_u32(bytes, 4 + 4 * static_cast<size_t>(d)));
    TORCH_CHECK(dims.back() > 0, who, ": ", path, ": IDX dimension ", d, " is zero");
    if (d > 0) item *= dims.back();
  }
  const uint64_t payload = bytes.size() - header;
  TORCH_CHECK(payload / item >= dims[0], who, ": ", path, ": truncated IDX file: header says ",
              dims[0], " samples of ", item, " bytes, the file holds ", payload, " data bytes");
  TORCH_CHECK(payload == dims[0] * item, who, ": ", path, ": ", payload - dims[0] * item,
              " trailing bytes after ", dims[0], " samples of ", item, " bytes");
  return dims;
}

}  // namespace

torch::Tensor read_idx_images(const std::string& path) {
  const std::string who = "read_idx_images";
  const std::string bytes = read_gz_file(who, path);
  const auto dims = parse_header(who, path, bytes, kImagesMagic, 3);
  auto images = torch::empty({static_cast<int64_t>(dims[0]), static_cast<int64_t>(dims[1]),
                              static_cast<int64_t>(dims[2])},
                             torch::kUInt8);
  std::memcpy(images.data_ptr<uint8_t>(), bytes.data() + 16, bytes.size() - 16);
  return images;
}

torch::Tensor read_idx_labels(const std::string& path) {
  const std::string who = "read_idx_labels";
  const std::string bytes = read_gz_file(who, path);
  const auto dims = parse_header(who, path, bytes, kLabelsMagic, 1);
  auto labels = torch::empty({static_cast<int64_t>(dims[0])}, torch::kUInt8);
  std::memcpy(labels.data_ptr<uint8_t>(), bytes.data() + 8, bytes.size() - 8);
  return labels.to(torch::kInt64);
}

ImageClassificationData read_mnist(const std::string& images_path,
                                   const std::string& labels_path) {
  auto images = read_idx_images(images_path);
  auto labels = read_idx_labels(labels_path);
  TORCH_CHECK(images.size(0) == labels.size(0), "read_mnist: ", images_path, " holds ",
              images.size(0), " images but ", labels_path, " holds ", labels.size(0), " labels");
  TORCH_CHECK(images.size(1) == kMnistSide && images.size(2) == kMnistSide, "read_mnist: ",
              images_path, ": images are ", images.size(1), " x ", images.size(2), ", expected ",
              kMnistSide, " x ", kMnistSide);
  const int64_t max_label = labels.max().item<int64_t>();
  TORCH_CHECK(max_label < kMnistClasses, "read_mnist: ", labels_path, ": label ", max_label,
              " out of range [0, ", kMnistClasses, ")");
  return {images, labels};
}

ImageClassificationData load_fashion_mnist(const std::string& split, const std::string& dir) {
  TORCH_CHECK(split == "train" || split == "test", "load_fashion_mnist: split must be 'train' or ",
              "'test', got '", split, "'");
  const bool is_default = dir == kFashionMnistDir;
  TORCH_CHECK(std::filesystem::is_directory(dir), "load_fashion_mnist: directory ", dir,
              " does not exist",
              is_default ? " (install the Debian package dataset-fashion-mnist: "
                           "apt-get install dataset-fashion-mnist)"
                         : "");
  const std::string prefix = dir + "/" + (split == "train" ? "train" : "t10k");
  auto pick = [&](const std::string& stem) {
    const std::string gz = prefix + stem + ".gz";
    if (std::filesystem::is_regular_file(gz)) return gz;
    const std::string plain = prefix + stem;
    if (std::filesystem::is_regular_file(plain)) return plain;
    TORCH_CHECK(false, "load_fashion_mnist: neither ", gz, " nor ", plain, " exists",
                is_default ? " (reinstall the Debian package dataset-fashion-mnist)" : "");
  };
  return read_mnist(pick("-images-idx3-ubyte"), pick("-labels-idx1-ubyte"));
}

}  // namespace data
}  // namespace kvq
