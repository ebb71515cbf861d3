#include "launcher.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <stdexcept>
#include <thread>

namespace kvq {
namespace app {

namespace {

std::vector<std::string>& arguments() {
  static std::vector<std::string> args;
  return args;
}

// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error(std::string("--nproc: socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t length = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    throw std::runtime_error("--nproc: cannot find a free port on 127.0.0.1: " + why);
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::vector<pid_t>* children = nullptr;

// SIGINT / SIGTERM to the launcher reach every worker.
void forward_signal(int signal) {
  if (children != nullptr) {
    for (pid_t pid : *children) {
      if (pid > 0) ::kill(pid, signal);
    }
  }
  ::signal(signal, SIG_DFL);
  ::raise(signal);
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return "was killed by signal " + std::to_string(WTERMSIG(status)) + " (" +
           strsignal(WTERMSIG(status)) + ")";
  }
  return "ended with wait status " + std::to_string(status);
}

}  // namespace

void set_program_arguments(int argc, char** argv) {
  arguments().assign(argv, argv + argc);
}

const std::vector<std::string>& program_arguments() { return arguments(); }

int launch_local_workers(int nproc) {
  if (nproc < 1) throw std::runtime_error("--nproc must be >= 1");
  // This command line without --nproc N (or --nproc=N).
  std::vector<std::string> args;
  bool threads_given = false;
  const auto& all = program_arguments();
  for (size_t i = 0; i < all.size(); ++i) {
    if (all[i] == "--nproc") {
      ++i;
      continue;
    }
    if (all[i].rfind("--nproc=", 0) == 0) continue;
    if (all[i] == "--threads" || all[i].rfind("--threads=", 0) == 0) threads_given = true;
    args.push_back(all[i]);
  }
  const int port = free_port();
  const unsigned cores = std::thread::hardware_concurrency();
  const bool omp_given = std::getenv("OMP_NUM_THREADS") != nullptr;
  const std::string threads =
      std::to_string(std::max(1, static_cast<int>(cores) / std::max(1, nproc)));
  const pid_t launcher = ::getpid();

  std::vector<pid_t> pids(static_cast<size_t>(nproc), -1);
  children = &pids;
  ::signal(SIGINT, forward_signal);
  ::signal(SIGTERM, forward_signal);
  std::cout << std::flush;
  std::cerr << std::flush;
  for (int rank = 0; rank < nproc; ++rank) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      std::cerr << "kvq: --nproc: cannot start worker " << rank << ": " << std::strerror(errno)
                << std::endl;
      for (pid_t p : pids) {
        if (p > 0) ::kill(p, SIGKILL);
      }
      return 1;
    }
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != launcher) ::_exit(1);  // the launcher died before prctl
      ::signal(SIGINT, SIG_DFL);
      ::signal(SIGTERM, SIG_DFL);
      ::setenv("RANK", std::to_string(rank).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      if (!omp_given && !threads_given) ::setenv("OMP_NUM_THREADS", threads.c_str(), 1);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv("/proc/self/exe", argv.data());
      std::cerr << "kvq: --nproc: cannot run /proc/self/exe: " << std::strerror(errno)
                << std::endl;
      ::_exit(127);
    }
    pids[static_cast<size_t>(rank)] = pid;
  }

  int result = 0;
  int running = nproc;
  bool killed = false;
  std::chrono::steady_clock::time_point failed_at;
  while (running > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, result == 0 ? 0 : WNOHANG);
    if (pid < 0 && errno == EINTR) continue;
    if (pid < 0) break;
    if (pid == 0) {  // a worker failed: the others get 5 s to stop by themselves
      if (!killed && std::chrono::steady_clock::now() - failed_at > std::chrono::seconds(5)) {
        for (size_t r = 0; r < pids.size(); ++r) {
          if (pids[r] > 0) {
            std::cerr << "kvq: --nproc: stopping worker rank " << r << " (pid " << pids[r] << ")"
                      << std::endl;
            ::kill(pids[r], SIGKILL);
          }
        }
        killed = true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    size_t rank = 0;
    while (rank < pids.size() && pids[rank] != pid) ++rank;
    if (rank == pids.size()) continue;
    pids[rank] = -1;
    --running;
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok && result == 0 && !killed) {
      std::cerr << "kvq: --nproc: worker rank " << rank << " (pid " << pid << ") "
                << describe_status(status) << "; the run failed" << std::endl;
      result = WIFEXITED(status) && WEXITSTATUS(status) == 3 ? 3 : 1;
      failed_at = std::chrono::steady_clock::now();
    }
  }
  children = nullptr;
  ::signal(SIGINT, SIG_DFL);
  ::signal(SIGTERM, SIG_DFL);
  return result;
}

std::shared_ptr<train::Distributed> join_group_from_environment(double timeout_seconds,
                                                                const torch::Device& device) {
  const auto env = train::dist_env_from_environment();
  if (env.world_size == 1) return nullptr;
  const auto timeout =
      std::chrono::milliseconds(static_cast<int64_t>(timeout_seconds * 1000.0));
  return train::Distributed::join(env, train::DistOptions().timeout(timeout).device(device));
}

}  // namespace app
}  // namespace kvq
