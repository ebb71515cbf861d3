// IDX files (MNIST, Fashion-MNIST), plain and gzip: kvq::data::read_idx_images and
// read_idx_labels on the input as a file (gzread passes plain files through and inflates gzip
// ones, so corrupt gzip streams come from the gzip seeds), and on the input gzip-compressed by
// the harness: both readers must give the same result for the same IDX bytes, compressed or not.
#include <zlib.h>

#include "fuzz_target.h"
#include "kvq/data/idx.h"

namespace {

// The outcome of one reader: the tensor, or that it refused.
struct Outcome {
  torch::Tensor value;
  bool ok = false;
};

template <class Reader>
Outcome run(Reader reader, const std::string& path) {
  try {
    return {reader(path), true};
  } catch (const c10::Error& e) {
    kvq::fuzz::expect_names(e, path);
    return {};
  }
}

std::string gzip_file(const uint8_t* data, size_t size) {
  const std::string path = kvq::fuzz::scratch_dir() + "/input.idx.gz";
  gzFile file = gzopen(path.c_str(), "wb");
  kvq::fuzz::expect(file != nullptr, "gzopen for writing failed");
  size_t done = 0;
  while (done < size) {
    const unsigned chunk = static_cast<unsigned>(std::min<size_t>(size - done, 1 << 20));
    kvq::fuzz::expect(gzwrite(file, data + done, chunk) == static_cast<int>(chunk),
                      "gzwrite failed");
    done += chunk;
  }
  kvq::fuzz::expect(gzclose(file) == Z_OK, "gzclose failed");
  return path;
}

void check_same(const Outcome& plain, const Outcome& gz, const char* what) {
  kvq::fuzz::expect(plain.ok == gz.ok, std::string(what) +
                                           ": the plain file and its gzip disagree on validity");
  if (plain.ok) {
    kvq::fuzz::expect(torch::equal(plain.value, gz.value),
                      std::string(what) + ": the plain file and its gzip give other tensors");
  }
}

}  // namespace

KVQ_FUZZ_TARGET(idx) {
  const std::string plain_path = kvq::fuzz::write_scratch("input.idx", data, size);
  const auto images = run(kvq::data::read_idx_images, plain_path);
  const auto labels = run(kvq::data::read_idx_labels, plain_path);
  if (images.ok) {
    kvq::fuzz::expect(images.value.dim() == 3 && images.value.scalar_type() == torch::kUInt8 &&
                          images.value.numel() > 0,
                      "read_idx_images returned a malformed tensor");
  }
  if (labels.ok) {
    kvq::fuzz::expect(labels.value.dim() == 1 && labels.value.scalar_type() == torch::kInt64 &&
                          labels.value.numel() > 0,
                      "read_idx_labels returned a malformed tensor");
  }
  // A gzip stream as input (from the .gz seeds) already went through gzread above; compressing
  // it again would only test zlib.
  if (size >= 2 && data[0] == 0x1f && data[1] == 0x8b) return 0;
  const std::string gz_path = gzip_file(data, size);
  check_same(images, run(kvq::data::read_idx_images, gz_path), "images");
  check_same(labels, run(kvq::data::read_idx_labels, gz_path), "labels");
  return 0;
}
