#pragma once
// Data-parallel training on PyTorch's distributed engine (c10d): the environment torchrun sets,
// the process group (TCPStore + ProcessGroupGloo on CPU tensors, ProcessGroupNCCL for CUDA when
// this LibTorch has it), and the few collectives the training loop needs: parameters broadcast
// from rank 0, gradients summed in flat buckets, small vectors of statistics summed, and strings
// (configs, metrics, checkpoints) broadcast from rank 0. Every failure of a collective or of the
// store is a c10::Error naming this rank, the operation and the cause; the group's timeout
// (c10d's, --dist-timeout) bounds every wait, so a dead or unreachable worker never hangs the
// others.
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kvq {
namespace train {

// What torchrun (python3 -m torch.distributed.run) tells each worker through the environment.
struct DistEnv {
  int64_t rank = 0;        // RANK: this worker, in [0, world_size)
  int64_t world_size = 1;  // WORLD_SIZE: the workers of the group
  int64_t local_rank = 0;  // LOCAL_RANK: this worker on its machine (picks cuda:LOCAL_RANK)
  std::string master_addr = "127.0.0.1";  // MASTER_ADDR: host of the store
  int64_t master_port = 29500;            // MASTER_PORT: its port
  // TORCHELASTIC_USE_AGENT_STORE=True: torchrun's agent hosts the store (every worker is a
  // client, keys under /worker/attempt_<TORCHELASTIC_RESTART_COUNT>); else rank 0 hosts it.
  bool agent_store = false;
  int64_t restart_count = 0;
};

// Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (and torchrun's agent-store
// variables). None of RANK and WORLD_SIZE set: one worker (world_size 1). A value that is not a
// number or out of range, or WORLD_SIZE > 1 without MASTER_ADDR / MASTER_PORT, is an error naming
// the variable and the valid values.
DistEnv dist_env_from_environment();

struct DistOptions {
  /// Bound of every collective and store wait (c10d's process-group and store timeouts): a
  /// worker that is dead, hung or unreachable makes the others fail after at most this long.
  /// Default: 300 s.
  TORCH_ARG(std::chrono::milliseconds, timeout) = std::chrono::seconds(300);
  /// The device of the tensors the group reduces: CPU (Gloo) or CUDA (NCCL, when LibTorch has
  /// it). Default: CPU.
  TORCH_ARG(torch::Device, device) = torch::kCPU;
};

// One worker's membership of the group. Made by Distributed::join; shared by the pieces that
// communicate (train_task, the training loop).
class Distributed {
 public:
  // Connects to the store (rank 0 hosts it unless torchrun's agent does), waits for all
  // world_size workers, and creates the process group. A store that cannot be reached or
  // workers that do not all arrive within options.timeout fail naming the address and rank.
  static std::shared_ptr<Distributed> join(const DistEnv& env, const DistOptions& options = {});
  ~Distributed();

  int64_t rank() const { return env_.rank; }
  int64_t world_size() const { return env_.world_size; }
  bool is_main() const { return env_.rank == 0; }
  const DistEnv& env() const { return env_; }
  const DistOptions& options() const { return options_; }
  // "Gloo" or "NCCL".
  std::string backend() const;

  // Sums `tensor` (any shape, contiguous, float or integer, on the group's device) over all
  // workers, in place. `what` names the operation in errors ("gradients", "statistics").
  void all_reduce_sum(torch::Tensor& tensor, const std::string& what);

  // Sums the gradients of `parameters` over all workers, in place: they are packed into flat
  // buckets of at most `bucket_bytes` per dtype, one all-reduce each, and unpacked. Parameters
  // without a gradient are left out (every worker has the same ones, as they run the same model).
  void all_reduce_gradients(const std::vector<torch::Tensor>& parameters,
                            int64_t bucket_bytes = 25 << 20);

  // Copies rank 0's values of every parameter and buffer of `module` into the others' (in place,
  // so optimisers keep tracking them).
  void broadcast_module(torch::nn::Module& module);

  // Rank 0's `text` on every worker (the argument of the others is ignored).
  std::string broadcast_string(const std::string& text, const std::string& what);

  // Waits until every worker has arrived here.
  void barrier(const std::string& what);

  // "distributed: rank R of W: <what> failed: <cause>" with the cause made readable: a peer that
  // closed its connection (it exited or was killed), a timeout, an unreachable store.
  std::string describe_failure(const std::string& what, const std::string& cause) const;

 private:
  struct Impl;
  Distributed(DistEnv env, DistOptions options, std::unique_ptr<Impl> impl);
  DistEnv env_;
  DistOptions options_;
  std::unique_ptr<Impl> impl_;
};

// The device a --device value names: "cpu", "cuda" (cuda:<local_rank> under torchrun) or
// "cuda:N". Without CUDA in this LibTorch (or with no GPU visible, or N past the last GPU) the
// error is one line naming --device and the choices this build has.
torch::Device parse_device(const std::string& text, int64_t local_rank = 0);

}  // namespace train
}  // namespace kvq
