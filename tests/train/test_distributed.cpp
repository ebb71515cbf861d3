// Data-parallel training (train/distributed.h and the training loop's group path): two workers
// with one thread each end a run with the parameters one worker reaches with the same global
// batch, to float64 1e-12 and float32 1e-5; the environment parsing and --device errors. The
// workers are kvq_dist_worker processes (tests/tools/dist_worker.cpp) talking Gloo on 127.0.0.1.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "tools/dist_worker_model.h"
#include "kvq/train/checkpoint.h"
#include "kvq/train/distributed.h"
#include "kvq/train/metrics_log.h"
#include "test_files.h"

#include <nlohmann/json.hpp>

namespace {

namespace fs = std::filesystem;

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(addr);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length), 0);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// Starts kvq_dist_worker with `args` and these extra environment variables (on top of this
// process's, without any RANK / WORLD_SIZE of its own).
pid_t start_worker(const std::vector<std::string>& args, const std::vector<std::string>& env) {
  std::vector<std::string> env_text;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    if (entry.rfind("RANK=", 0) == 0 || entry.rfind("WORLD_SIZE=", 0) == 0) continue;
    env_text.push_back(entry);
  }
  env_text.insert(env_text.end(), env.begin(), env.end());
  std::vector<std::string> arg_text = {KVQ_DIST_WORKER};
  arg_text.insert(arg_text.end(), args.begin(), args.end());
  std::vector<char*> argv, envp;
  for (auto& a : arg_text) argv.push_back(a.data());
  for (auto& e : env_text) envp.push_back(e.data());
  argv.push_back(nullptr);
  envp.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  return pid;
}

int wait_status(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// The model of kvq_dist_worker, with the parameters of `checkpoint`.
kvq::models::SequenceTagger load_model(const std::string& checkpoint, torch::Dtype dtype) {
  auto model = kvq::test_tools::dist_worker_model(dtype);
  kvq::train::load_model_weights(checkpoint, *model);
  return model;
}

// Trains one worker and a group of two on the same global batch; returns the largest absolute
// difference of their final parameters and of their logged train losses.
std::pair<double, double> one_against_two(const std::string& dtype, const fs::path& root) {
  const std::string steps = "24";  // 1.5 epochs: validation, best.pt and checkpoints mid-run
  const auto one = root / "one", two = root / "two";
  const pid_t single = start_worker({one.string(), dtype, steps}, {});
  const std::string port = "MASTER_PORT=" + std::to_string(free_port());
  std::vector<pid_t> group;
  for (int rank = 0; rank < 2; ++rank) {
    group.push_back(start_worker(
        {two.string(), dtype, steps},
        {"RANK=" + std::to_string(rank), "LOCAL_RANK=" + std::to_string(rank), "WORLD_SIZE=2",
         "MASTER_ADDR=127.0.0.1", port}));
  }
  EXPECT_EQ(wait_status(single), 0);
  for (pid_t pid : group) EXPECT_EQ(wait_status(pid), 0);
  const auto type = dtype == "float64" ? torch::kFloat64 : torch::kFloat32;
  const auto a = load_model((one / "checkpoint.pt").string(), type);
  const auto b = load_model((two / "checkpoint.pt").string(), type);
  double params = 0;
  std::string worst;
  const auto pa = a->named_parameters(), pb = b->named_parameters();
  EXPECT_EQ(pa.size(), pb.size());
  for (const auto& item : pa) {
    const double d = (item.value() - pb[item.key()]).abs().max().item<double>();
    if (d > params) {
      params = d;
      worst = item.key();
    }
  }
  double losses = 0;
  const auto ra = kvq::train::read_metrics((one / "metrics.jsonl").string());
  const auto rb = kvq::train::read_metrics((two / "metrics.jsonl").string());
  EXPECT_EQ(ra.size(), rb.size());
  for (size_t i = 0; i < std::min(ra.size(), rb.size()); ++i) {
    EXPECT_EQ(ra[i].at("split"), rb[i].at("split"));
    if (ra[i].contains("loss")) {
      losses = std::max(losses, std::abs(ra[i].at("loss").get<double>() -
                                         rb[i].at("loss").get<double>()));
    }
  }
  std::cout << dtype << ": max |param difference| " << params << " (" << worst
            << "), max |loss difference| " << losses << std::endl;
  return {params, losses};
}

TEST(DataParallel, TwoWorkersMatchOneWorkerInFloat64) {
  kvq_test_files::TempDir dir;
  const auto [params, losses] = one_against_two("float64", dir.path);
  EXPECT_LE(params, 1e-12);
  EXPECT_LE(losses, 1e-12);
  // The group's results and checkpoint record its size; the single run's checkpoint says 1.
  std::ifstream results(dir.path / "two" / "results.json");
  EXPECT_EQ(nlohmann::json::parse(results).value("world_size", 0), 2);
  EXPECT_EQ(kvq::train::read_checkpoint_meta((dir.path / "two" / "checkpoint.pt").string())
                .at("extra")
                .value("world_size", 0),
            2);
  EXPECT_EQ(kvq::train::read_checkpoint_meta((dir.path / "one" / "checkpoint.pt").string())
                .at("extra")
                .value("world_size", 0),
            1);
}

TEST(DataParallel, TwoWorkersMatchOneWorkerInFloat32) {
  kvq_test_files::TempDir dir;
  const auto [params, losses] = one_against_two("float32", dir.path);
  EXPECT_LE(params, 1e-5);
  EXPECT_LE(losses, 1e-5);
}

// Sets environment variables for the life of the object, restoring them afterwards.
using Vars = std::vector<std::pair<std::string, std::string>>;
class ScopedEnv {
 public:
  explicit ScopedEnv(const Vars& values) {
    for (const char* name : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                             "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT"}) {
      const char* old = std::getenv(name);
      saved_.emplace_back(name, old != nullptr ? c10::optional<std::string>(old) : c10::nullopt);
      ::unsetenv(name);
    }
    for (const auto& [name, value] : values) ::setenv(name.c_str(), value.c_str(), 1);
  }
  ~ScopedEnv() {
    for (const auto& [name, value] : saved_) {
      if (value) {
        ::setenv(name.c_str(), value->c_str(), 1);
      } else {
        ::unsetenv(name.c_str());
      }
    }
  }

 private:
  std::vector<std::pair<std::string, c10::optional<std::string>>> saved_;
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

TEST(DataParallel, ReadsTorchrunsEnvironment) {
  {
    ScopedEnv env(Vars{});
    const auto e = kvq::train::dist_env_from_environment();
    EXPECT_EQ(e.world_size, 1);
    EXPECT_EQ(e.rank, 0);
  }
  {
    ScopedEnv env(Vars{{"RANK", "1"}, {"WORLD_SIZE", "3"}, {"LOCAL_RANK", "0"},
                   {"MASTER_ADDR", "node0"}, {"MASTER_PORT", "1234"},
                   {"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"TORCHELASTIC_RESTART_COUNT", "2"}});
    const auto e = kvq::train::dist_env_from_environment();
    EXPECT_EQ(e.rank, 1);
    EXPECT_EQ(e.world_size, 3);
    EXPECT_EQ(e.local_rank, 0);
    EXPECT_EQ(e.master_addr, "node0");
    EXPECT_EQ(e.master_port, 1234);
    EXPECT_TRUE(e.agent_store);
    EXPECT_EQ(e.restart_count, 2);
  }
}

TEST(DataParallel, BadEnvironmentIsNamed) {
  {
    ScopedEnv env(Vars{{"RANK", "0"}});
    EXPECT_NE(error_of([] { kvq::train::dist_env_from_environment(); })
                  .find("RANK is set but WORLD_SIZE is not"),
              std::string::npos);
  }
  {
    ScopedEnv env(Vars{{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"},
                   {"MASTER_PORT", "1"}});
    EXPECT_NE(error_of([] { kvq::train::dist_env_from_environment(); })
                  .find("RANK='2' is not an integer in [0, 1]"),
              std::string::npos);
  }
  {
    ScopedEnv env(Vars{{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}});
    EXPECT_NE(error_of([] { kvq::train::dist_env_from_environment(); }).find("MASTER_PORT"),
              std::string::npos);
  }
  {
    ScopedEnv env(Vars{{"RANK", "0"}, {"WORLD_SIZE", "two"}});
    EXPECT_NE(error_of([] { kvq::train::dist_env_from_environment(); }).find("WORLD_SIZE='two'"),
              std::string::npos);
  }
}

TEST(DataParallel, DeviceChoicesAndMissingCuda) {
  EXPECT_TRUE(kvq::train::parse_device("cpu").is_cpu());
  EXPECT_NE(error_of([] { kvq::train::parse_device("gpu"); }).find("valid: cpu, cuda, cuda:N"),
            std::string::npos);
  EXPECT_NE(error_of([] { kvq::train::parse_device("cuda:x"); }).find("valid: cpu, cuda, cuda:N"),
            std::string::npos);
  if (!torch::cuda::is_available()) {
    const auto message = error_of([] { kvq::train::parse_device("cuda"); });
    EXPECT_NE(message.find("--device cuda: this LibTorch has no CUDA"), std::string::npos);
    EXPECT_EQ(message.find('\n'), std::string::npos);  // one line
  } else {
    EXPECT_TRUE(kvq::train::parse_device("cuda").is_cuda());
  }
}

}  // namespace
