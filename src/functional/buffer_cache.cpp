#include "kvq/functional/buffer_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

namespace kvq {
namespace functional {
namespace {

// Below this, glibc's malloc keeps freed blocks mapped itself.
constexpr size_t kMinCachedBytes = size_t(1) << 20;
constexpr size_t kPageBytes = 4096;
constexpr int64_t kDefaultLimitMiB = 2048;

int64_t limit_from_environment() {
  const char* value = std::getenv("KVQ_BUFFER_CACHE_MIB");
  if (value == nullptr || *value == '\0') return kDefaultLimitMiB << 20;
  char* end = nullptr;
  const long long mib = std::strtoll(value, &end, 10);
  TORCH_CHECK(end != value && *end == '\0' && mib >= 0,
              "KVQ_BUFFER_CACHE_MIB must be a whole number of MiB >= 0 (0 turns kvq's buffer "
              "cache off), got '", value, "'");
  return static_cast<int64_t>(mib) << 20;
}

// The buffer handed out: what goes back to the cache when its tensor frees it.
struct Block {
  void* ptr;
  size_t bytes;
};

class BufferCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < kMinCachedBytes) return c10::GetCPUAllocator()->allocate(n);
    const size_t bytes = (n + kPageBytes - 1) / kPageBytes * kPageBytes;
    Block block = take_idle(bytes);
    if (block.ptr != nullptr) {
      if (poison_) std::memset(block.ptr, 0xFF, block.bytes);
    } else {
      block = {c10::alloc_cpu(bytes), bytes};
    }
    return {block.ptr, new Block(block), &BufferCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  int64_t idle_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(idle_bytes_);
  }
  int64_t limit() {
    std::lock_guard<std::mutex> lock(mutex_);
    return limit_;
  }
  void set_limit(int64_t bytes) {
    TORCH_CHECK(bytes >= 0, "set_buffer_cache_limit: bytes must be >= 0 (0 turns the cache off), "
                            "got ", bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    limit_ = bytes;
    trim(static_cast<size_t>(limit_));
  }
  void empty() {
    std::lock_guard<std::mutex> lock(mutex_);
    trim(0);
  }
  void set_poison(bool on) { poison_ = on; }

  static BufferCache& instance() {
    static BufferCache* cache = new BufferCache();  // never destroyed: tensors may outlive exit
    return *cache;
  }

 private:
  BufferCache() : limit_(limit_from_environment()) {}

  // An idle buffer of at least `bytes` and at most an eighth more ({nullptr, 0} when none).
  Block take_idle(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = idle_.lower_bound(bytes);
    if (it == idle_.end() || it->first > bytes + bytes / 8) return {nullptr, 0};
    const Block block{it->second, it->first};
    idle_bytes_ -= it->first;
    idle_.erase(it);
    return block;
  }

  static void release(void* context) {
    auto* block = static_cast<Block*>(context);
    instance().give_back(*block);
    delete block;
  }

  void give_back(const Block& block) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (idle_bytes_ + block.bytes <= static_cast<size_t>(limit_)) {
        idle_.emplace(block.bytes, block.ptr);
        idle_bytes_ += block.bytes;
        return;
      }
    }
    c10::free_cpu(block.ptr);
  }

  // Frees the largest idle buffers until at most `keep` bytes stay idle. Called with the lock.
  void trim(size_t keep) {
    while (idle_bytes_ > keep) {
      auto last = std::prev(idle_.end());
      idle_bytes_ -= last->first;
      c10::free_cpu(last->second);
      idle_.erase(last);
    }
  }

  std::mutex mutex_;
  std::multimap<size_t, void*> idle_;  // idle buffers by size
  size_t idle_bytes_ = 0;
  int64_t limit_;
  std::atomic<bool> poison_{false};
};

}  // namespace

int64_t buffer_cache_bytes() { return BufferCache::instance().idle_bytes(); }
int64_t buffer_cache_limit() { return BufferCache::instance().limit(); }
void set_buffer_cache_limit(int64_t bytes) { BufferCache::instance().set_limit(bytes); }
void empty_buffer_cache() { BufferCache::instance().empty(); }

namespace detail {

torch::Tensor cached_empty(at::IntArrayRef sizes, const torch::TensorOptions& options) {
  TORCH_INTERNAL_ASSERT(options.device().is_cpu(), "cached_empty: CPU tensors only");
  return at::Tensor(at::detail::empty_generic(sizes, &BufferCache::instance(),
                                              c10::DispatchKeySet(c10::DispatchKey::CPU),
                                              c10::typeMetaToScalarType(options.dtype()),
                                              c10::nullopt));
}

void set_buffer_cache_poison(bool on) { BufferCache::instance().set_poison(on); }

}  // namespace detail
}  // namespace functional
}  // namespace kvq
