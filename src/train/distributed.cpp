// c10d's Gloo process group is declared only when USE_C10D_GLOO is defined (as PyTorch's own
// build does); Debian's libtorch_cpu.so exports it.
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif

#include "kvq/train/distributed.h"

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/version.h>
#ifdef KVQ_HAVE_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <sstream>

namespace kvq {
namespace train {

namespace {

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// The message of any exception c10d or gloo throws, without a backtrace.
std::string message_of(const std::exception& e) {
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) {
    return first_line(c10->what_without_backtrace());
  }
  return first_line(e.what());
}

const char* env_or_null(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] != '\0' ? value : nullptr;
}

// The integer in environment variable `name`, in [low, high]; `fallback` when it is unset.
int64_t env_integer(const char* name, int64_t fallback, int64_t low, int64_t high) {
  const char* value = env_or_null(name);
  if (value == nullptr) return fallback;
  char* end = nullptr;
  errno = 0;
  const long long parsed = std::strtoll(value, &end, 10);
  TORCH_CHECK(errno == 0 && end != value && *end == '\0' && parsed >= low && parsed <= high,
              "distributed: environment variable ", name, "='", value,
              "' is not an integer in [", low, ", ", high, "]");
  return static_cast<int64_t>(parsed);
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

std::string timeout_text(std::chrono::milliseconds timeout) {
  std::ostringstream out;
  out << static_cast<double>(timeout.count()) / 1000.0 << " s";
  return out.str();
}

}  // namespace

DistEnv dist_env_from_environment() {
  DistEnv env;
  const bool has_rank = env_or_null("RANK") != nullptr;
  const bool has_world = env_or_null("WORLD_SIZE") != nullptr;
  if (!has_rank && !has_world) return env;
  TORCH_CHECK(has_rank && has_world, "distributed: ", has_rank ? "RANK" : "WORLD_SIZE",
              " is set but ", has_rank ? "WORLD_SIZE" : "RANK",
              " is not; set both (torchrun does) or neither (one worker)");
  env.world_size = env_integer("WORLD_SIZE", 1, 1, std::numeric_limits<int>::max());
  env.rank = env_integer("RANK", 0, 0, env.world_size - 1);
  env.local_rank = env_integer("LOCAL_RANK", env.rank, 0, std::numeric_limits<int>::max());
  if (env.world_size > 1) {
    const char* addr = env_or_null("MASTER_ADDR");
    TORCH_CHECK(addr != nullptr, "distributed: WORLD_SIZE=", env.world_size,
                " needs MASTER_ADDR (the host of rank 0, or of torchrun's agent) and "
                "MASTER_PORT");
    env.master_addr = addr;
    TORCH_CHECK(env_or_null("MASTER_PORT") != nullptr, "distributed: WORLD_SIZE=",
                env.world_size, " needs MASTER_PORT (a free TCP port on MASTER_ADDR)");
    env.master_port = env_integer("MASTER_PORT", 29500, 1, 65535);
  }
  const char* agent = env_or_null("TORCHELASTIC_USE_AGENT_STORE");
  env.agent_store = agent != nullptr && std::string(agent) == "True";
  env.restart_count = env_integer("TORCHELASTIC_RESTART_COUNT", 0, 0,
                                  std::numeric_limits<int>::max());
  return env;
}

struct Distributed::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
#ifdef KVQ_HAVE_NCCL
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;
#endif

  // f(process_group) -> the Work of a collective, on whichever group this is.
  template <class F>
  auto launch(F&& f) {
#ifdef KVQ_HAVE_NCCL
    if (nccl) return f(*nccl);
#endif
    return f(*gloo);
  }
};

Distributed::Distributed(DistEnv env, DistOptions options, std::unique_ptr<Impl> impl)
    : env_(std::move(env)), options_(std::move(options)), impl_(std::move(impl)) {}

Distributed::~Distributed() = default;

std::shared_ptr<Distributed> Distributed::join(const DistEnv& env, const DistOptions& options) {
  TORCH_CHECK(env.world_size >= 1 && env.rank >= 0 && env.rank < env.world_size,
              "distributed: rank ", env.rank, " is outside [0, WORLD_SIZE = ", env.world_size,
              ")");
  TORCH_CHECK(options.timeout().count() > 0, "distributed: the timeout must be > 0");
  const std::string where = "rank " + std::to_string(env.rank) + " of " +
                            std::to_string(env.world_size);
  auto impl = std::make_unique<Impl>();
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<std::uint16_t>(env.master_port);
  store_options.isServer = !env.agent_store && env.rank == 0;
  store_options.numWorkers = static_cast<std::size_t>(env.world_size);
  store_options.waitWorkers = true;
  store_options.timeout = options.timeout();
  const std::string address = env.master_addr + ":" + std::to_string(env.master_port);
  try {
    c10::intrusive_ptr<c10d::Store> tcp =
        c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options);
    const std::string prefix = env.agent_store
                                   ? "/worker/attempt_" + std::to_string(env.restart_count) + "/kvq"
                                   : "kvq";
    impl->store = c10::make_intrusive<c10d::PrefixStore>(prefix, tcp);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "distributed: ", where, ": cannot ",
                store_options.isServer ? "host" : "reach", " the store at ", address,
                " with all ", env.world_size, " workers within ", timeout_text(options.timeout()),
                " (--dist-timeout): ", message_of(e));
  }
  const bool cuda = options.device().is_cuda();
  try {
    if (cuda) {
#ifdef KVQ_HAVE_NCCL
      auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
      nccl_options->timeout = options.timeout();
      impl->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(
          impl->store, static_cast<int>(env.rank), static_cast<int>(env.world_size),
          nccl_options);
#else
      TORCH_CHECK(false, "--device ", options.device().str(),
                  " with several workers needs NCCL, and this LibTorch was built without it; "
                  "use --device cpu (Gloo)");
#endif
    } else {
      auto gloo_options = c10d::ProcessGroupGloo::Options::create(options.timeout());
      const char* interface = env_or_null("GLOO_SOCKET_IFNAME");
      if (interface != nullptr) {
        gloo_options->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForInterface(interface));
      } else if (is_loopback(env.master_addr)) {
        gloo_options->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      impl->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(
          impl->store, static_cast<int>(env.rank), static_cast<int>(env.world_size),
          gloo_options);
    }
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "distributed: ", where, ": cannot create the ", cuda ? "NCCL" : "Gloo",
                " process group (store ", address, ", timeout ",
                timeout_text(options.timeout()), "): ", message_of(e));
  }
  return std::shared_ptr<Distributed>(new Distributed(env, options, std::move(impl)));
}

std::string Distributed::backend() const {
#ifdef KVQ_HAVE_NCCL
  if (impl_->nccl) return "NCCL";
#endif
  return "Gloo";
}

std::string Distributed::describe_failure(const std::string& what,
                                          const std::string& cause) const {
  std::string why;
  const auto has = [&cause](const char* text) { return cause.find(text) != std::string::npos; };
  if (has("closed by peer") || has("Connection reset") || has("Broken pipe") ||
      has("Connection refused") || has("EOF")) {
    why = "another worker closed its connection: it exited, failed or was killed (see its own "
          "error; rank 0 also hosts the store unless torchrun's agent does)";
  } else if (has("imed out") || has("imeout")) {
    why = "no answer from the other workers within " + timeout_text(options_.timeout()) +
          " (--dist-timeout): a worker is hung, dead or unreachable";
  } else {
    why = "the collective failed";
  }
  return "distributed: rank " + std::to_string(rank()) + " of " + std::to_string(world_size()) +
         ": " + what + " failed: " + why + " [" + cause + "]";
}

namespace {

// Runs one collective to completion; any failure becomes one c10::Error naming rank and cause.
template <class F>
void complete(const Distributed& dist, const std::string& what, F&& start) {
  try {
    auto work = start();
    work->wait();
  } catch (const std::exception& e) {
    TORCH_CHECK(false, dist.describe_failure(what, message_of(e)));
  }
}

// Packs `tensors` into flat buckets (one dtype each, at most `bucket_bytes` unless a single
// tensor is larger), calls `reduce(flat)` on each, and copies the result back.
template <class F>
void for_each_bucket(const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes, F&& reduce) {
  std::map<c10::ScalarType, std::vector<torch::Tensor>> by_type;
  for (const auto& t : tensors) by_type[t.scalar_type()].push_back(t);
  torch::NoGradGuard no_grad;
  for (auto& [type, list] : by_type) {
    size_t begin = 0;
    while (begin < list.size()) {
      size_t end = begin;
      int64_t bytes = 0;
      while (end < list.size() &&
             (end == begin || bytes + list[end].numel() * list[end].element_size() <= bucket_bytes)) {
        bytes += list[end].numel() * list[end].element_size();
        ++end;
      }
      std::vector<torch::Tensor> flat_parts;
      for (size_t i = begin; i < end; ++i) flat_parts.push_back(list[i].reshape({-1}));
      torch::Tensor flat = torch::cat(flat_parts).contiguous();
      reduce(flat);
      int64_t offset = 0;
      for (size_t i = begin; i < end; ++i) {
        const int64_t n = list[i].numel();
        list[i].copy_(flat.slice(0, offset, offset + n).view_as(list[i]));
        offset += n;
      }
      begin = end;
    }
  }
}

}  // namespace

void Distributed::all_reduce_sum(torch::Tensor& tensor, const std::string& what) {
  TORCH_CHECK(tensor.is_contiguous(), "Distributed::all_reduce_sum: ", what,
              ": the tensor must be contiguous");
  std::vector<at::Tensor> tensors = {tensor};
  complete(*this, "all-reduce of the " + what,
           [&] { return impl_->launch([&](auto& pg) { return pg.allreduce(tensors); }); });
}

void Distributed::all_reduce_gradients(const std::vector<torch::Tensor>& parameters,
                                       int64_t bucket_bytes) {
  std::vector<torch::Tensor> grads;
  for (const auto& p : parameters) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  for_each_bucket(grads, bucket_bytes, [&](torch::Tensor& flat) {
    all_reduce_sum(flat, "gradients");
  });
}

void Distributed::broadcast_module(torch::nn::Module& module) {
  std::vector<torch::Tensor> tensors;
  for (const auto& p : module.parameters(/*recurse=*/true)) tensors.push_back(p);
  for (const auto& b : module.buffers(/*recurse=*/true)) {
    if (b.defined()) tensors.push_back(b);
  }
  for_each_bucket(tensors, 25 << 20, [&](torch::Tensor& flat) {
    std::vector<at::Tensor> list = {flat};
    complete(*this, "broadcast of the parameters from rank 0", [&] {
      return impl_->launch([&](auto& pg) { return pg.broadcast(list); });
    });
  });
}

std::string Distributed::broadcast_string(const std::string& text, const std::string& what) {
  const auto device = options_.device();
  std::vector<at::Tensor> size = {
      torch::full({1}, static_cast<int64_t>(is_main() ? text.size() : 0),
                  torch::TensorOptions().dtype(torch::kInt64).device(device))};
  complete(*this, "broadcast of " + what + " from rank 0",
           [&] { return impl_->launch([&](auto& pg) { return pg.broadcast(size); }); });
  const int64_t n = size[0].to(torch::kCPU).item<int64_t>();
  if (n == 0) return std::string();
  torch::Tensor bytes = torch::empty({n}, torch::kUInt8);
  if (is_main()) std::memcpy(bytes.data_ptr<uint8_t>(), text.data(), static_cast<size_t>(n));
  std::vector<at::Tensor> list = {bytes.to(device)};
  complete(*this, "broadcast of " + what + " from rank 0",
           [&] { return impl_->launch([&](auto& pg) { return pg.broadcast(list); }); });
  const torch::Tensor host = list[0].to(torch::kCPU).contiguous();
  return std::string(reinterpret_cast<const char*>(host.data_ptr<uint8_t>()),
                     static_cast<size_t>(n));
}

void Distributed::barrier(const std::string& what) {
  complete(*this, "barrier (" + what + ")",
           [&] { return impl_->launch([&](auto& pg) { return pg.barrier(); }); });
}

torch::Device parse_device(const std::string& text, int64_t local_rank) {
  if (text == "cpu") return torch::Device(torch::kCPU);
  const bool cuda = text == "cuda" || text.rfind("cuda:", 0) == 0;
  TORCH_CHECK(cuda, "--device: '", text, "' is not a device; valid: cpu, cuda, cuda:N");
  int64_t index = local_rank;
  if (text != "cuda") {
    const std::string number = text.substr(5);
    char* end = nullptr;
    const long parsed = std::strtol(number.c_str(), &end, 10);
    TORCH_CHECK(!number.empty() && *end == '\0' && parsed >= 0, "--device: '", text,
                "' is not a device; valid: cpu, cuda, cuda:N (N >= 0)");
    index = parsed;
  }
  TORCH_CHECK(torch::cuda::is_available(), "--device ", text,
              ": this LibTorch has no CUDA (or no GPU is visible); valid here: cpu");
  const auto count = static_cast<int64_t>(torch::cuda::device_count());
  TORCH_CHECK(index < count, "--device ", text, ": there is no GPU ", index, " (", count,
              " visible; valid: cpu, cuda, cuda:0..cuda:", count - 1, ")");
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
}

}  // namespace train
}  // namespace kvq
