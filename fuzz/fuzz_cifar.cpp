// CIFAR-10 and CIFAR-100 binary batches: kvq::data::read_cifar10_batch and read_cifar100_batch on
// the input as a file. Accepted batches must be whole records with labels in range.
#include "fuzz_target.h"
#include "kvq/data/cifar.h"

namespace {

void check(const kvq::data::CifarData& d, size_t size, int64_t record, int64_t classes,
           int64_t coarse_classes, const char* what) {
  const int64_t n = static_cast<int64_t>(size) / record;
  kvq::fuzz::expect(n >= 1 && static_cast<int64_t>(size) == n * record,
                    std::string(what) + " accepted a size that is not whole records");
  kvq::fuzz::expect(d.images.sizes() == torch::IntArrayRef({n, 3, 32, 32}) &&
                        d.labels.sizes() == torch::IntArrayRef({n}),
                    std::string(what) + " returned tensors of the wrong shape");
  kvq::fuzz::expect(d.labels.min().item<int64_t>() >= 0 &&
                        d.labels.max().item<int64_t>() < classes,
                    std::string(what) + " returned a label out of range");
  if (coarse_classes > 0) {
    kvq::fuzz::expect(d.coarse_labels.defined() && d.coarse_labels.sizes() == d.labels.sizes() &&
                          d.coarse_labels.max().item<int64_t>() < coarse_classes,
                      std::string(what) + " returned bad coarse labels");
  } else {
    kvq::fuzz::expect(!d.coarse_labels.defined(), "CIFAR-10 batch with coarse labels");
  }
}

}  // namespace

KVQ_FUZZ_TARGET(cifar) {
  const std::string path = kvq::fuzz::write_scratch("batch.bin", data, size);
  try {
    check(kvq::data::read_cifar10_batch(path), size, 3073, 10, 0, "read_cifar10_batch");
  } catch (const c10::Error& e) {
    kvq::fuzz::expect_names(e, path);
  }
  try {
    check(kvq::data::read_cifar100_batch(path), size, 3074, 100, 20, "read_cifar100_batch");
  } catch (const c10::Error& e) {
    kvq::fuzz::expect_names(e, path);
  }
  return 0;
}
