#pragma once
// `kvq train --nproc N`: starts N local workers of a data-parallel run, as torchrun would on one
// machine, and waits for them.
#include <memory>
#include <string>
#include <vector>

#include "kvq/train/distributed.h"

namespace kvq {
namespace app {

// The command line of this process (main() records it before parsing).
void set_program_arguments(int argc, char** argv);
const std::vector<std::string>& program_arguments();

// Runs this program again `nproc` times with the recorded arguments minus `--nproc N`, each
// with RANK, LOCAL_RANK, WORLD_SIZE (= nproc), LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1 and
// MASTER_PORT (a free port) set, and OMP_NUM_THREADS = cores / nproc (at least 1) unless it or
// --threads is given. The workers write to this process's stdout and stderr (only rank 0 shows
// progress). Returns 0 when every worker succeeds; otherwise, once a worker fails (exit status
// or signal, reported on stderr naming its rank and pid), the others get a few seconds to stop
// by themselves (they fail within their --dist-timeout) and are then killed, and the status of
// the first failure is returned (3 when it was a numerical fault, else 1). Workers die with
// this process (PR_SET_PDEATHSIG), so a killed launcher leaves none behind.
int launch_local_workers(int nproc);

// The group of torchrun's environment (train::dist_env_from_environment) when it has more than
// one worker, joined with `timeout_seconds` (--dist-timeout) on `device`; null otherwise.
std::shared_ptr<train::Distributed> join_group_from_environment(double timeout_seconds,
                                                                const torch::Device& device);

}  // namespace app
}  // namespace kvq
