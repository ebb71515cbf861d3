#include "kvq/env/teacher.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <random>

namespace kvq {
namespace env {
namespace {

// The successor distances d(next(s, a)) for a = 0..A-1, after checking teacher_policy's
// preconditions.
std::array<int64_t, kNumActions> successor_distances(const char* fn, const Level& level,
                                                     const std::vector<int64_t>& distances,
                                                     Position agent) {
  TORCH_CHECK(level.height >= 1 && level.width >= 1 &&
                  static_cast<int64_t>(level.cells.size()) == level.height * level.width,
              fn, ": malformed level (", level.height, " x ", level.width, ", ", level.cells.size(),
              " cells); see validate_level");
  TORCH_CHECK(static_cast<int64_t>(distances.size()) == level.height * level.width, fn,
              ": distances must hold height * width = ", level.height * level.width,
              " entries (goal_distances(level)), got ", distances.size());
  TORCH_CHECK(level.inside(agent), fn, ": agent (", agent.row, ", ", agent.col, ") is outside the ",
              level.height, " x ", level.width, " grid");
  TORCH_CHECK(level.at(agent) != Cell::Wall, fn, ": agent (", agent.row, ", ", agent.col,
              ") is on a wall");
  const int64_t d = distances[static_cast<size_t>(agent.row * level.width + agent.col)];
  TORCH_CHECK(d != 0, fn, ": agent (", agent.row, ", ", agent.col,
              ") is on the goal, a terminal state with no action");
  TORCH_CHECK(d > 0, fn, ": the goal is unreachable from agent (", agent.row, ", ", agent.col, ")");
  std::array<int64_t, kNumActions> next{};
  for (int64_t a = 0; a < kNumActions; ++a) {
    const Position q = next_position(level, agent, a);
    next[a] = distances[static_cast<size_t>(q.row * level.width + q.col)];
  }
  return next;
}

// Uniform in [0, 1) with 53 random bits.
double uniform01(std::mt19937_64& engine) {
  return static_cast<double>(engine() >> 11) * (1.0 / 9007199254740992.0);
}

// An index drawn from non-negative weights p[0..n) with a positive sum.
int64_t sample_index(const double* p, int64_t n, std::mt19937_64& engine) {
  double total = 0.0;
  for (int64_t a = 0; a < n; ++a) total += p[a];
  const double u = uniform01(engine) * total;
  double cum = 0.0;
  int64_t last = 0;
  for (int64_t a = 0; a < n; ++a) {
    if (p[a] <= 0.0) continue;
    cum += p[a];
    last = a;
    if (u < cum) return a;
  }
  return last;
}

int64_t argmax_lowest(const double* p, int64_t n) {
  int64_t best = 0;
  for (int64_t a = 1; a < n; ++a) {
    if (p[a] > p[best]) best = a;
  }
  return best;
}

// SplitMix64 finaliser: decorrelates the rollout stream of a level from the level's own stream.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The level a single observation shows (walls, goal, distractors) and the agent's position.
Level decode_observation(const Observation& batch, int64_t b, Position* agent) {
  Level level;
  level.height = batch.height;
  level.width = batch.width;
  const int64_t n = batch.height * batch.width;
  level.cells.assign(static_cast<size_t>(n), Cell::Empty);
  const auto types = batch.types[b].to(torch::kCPU, torch::kInt64).contiguous();
  const auto rows = batch.rows[b].to(torch::kCPU, torch::kInt64).contiguous();
  const auto cols = batch.cols[b].to(torch::kCPU, torch::kInt64).contiguous();
  const int64_t *t = types.data_ptr<int64_t>(), *r = rows.data_ptr<int64_t>(),
                *c = cols.data_ptr<int64_t>();
  int64_t goals = 0, agents = 0;
  for (int64_t i = 0; i < n; ++i) {
    const Position p{r[i], c[i]};
    TORCH_CHECK(level.inside(p), "teacher_as_policy: token ", i, " of batch element ", b,
                " has position (", p.row, ", ", p.col, ") outside the ", level.height, " x ",
                level.width, " grid");
    TORCH_CHECK(t[i] >= 0 && t[i] < kNumTokenTypes, "teacher_as_policy: token type must be in [0, ",
                kNumTokenTypes, "), got ", t[i]);
    if (t[i] == kAgentToken) {
      *agent = p;
      ++agents;
      continue;
    }
    level.cells[static_cast<size_t>(p.row * level.width + p.col)] = static_cast<Cell>(t[i]);
    if (t[i] == static_cast<int64_t>(Cell::Goal)) {
      level.goal = p;
      ++goals;
    }
  }
  TORCH_CHECK(goals == 1 && agents == 1, "teacher_as_policy: batch element ", b,
              " must show one goal and one agent token, got ", goals, " and ", agents);
  level.start = *agent;
  return level;
}

}  // namespace

torch::Tensor teacher_policy(const Level& level, const std::vector<int64_t>& distances,
                             Position agent, double temperature) {
  TORCH_CHECK(temperature >= 0.0, "teacher_policy: temperature must be >= 0 (0 = uniform over the ",
              "optimal actions), got ", temperature);
  const auto next = successor_distances("teacher_policy", level, distances, agent);
  int64_t best = next[0];
  for (int64_t a = 1; a < kNumActions; ++a) best = std::min(best, next[a]);
  auto probs = torch::empty({kNumActions}, torch::kFloat64);
  double* p = probs.data_ptr<double>();
  double total = 0.0;
  for (int64_t a = 0; a < kNumActions; ++a) {
    const double excess = static_cast<double>(next[a] - best);
    p[a] = temperature == 0.0 ? (excess == 0.0 ? 1.0 : 0.0) : std::exp(-excess / temperature);
    total += p[a];
  }
  for (int64_t a = 0; a < kNumActions; ++a) p[a] /= total;
  return probs;
}

torch::Tensor teacher_policy(const Level& level, Position agent, double temperature) {
  return teacher_policy(level, goal_distances(level), agent, temperature);
}

torch::Tensor optimal_actions(const Level& level, const std::vector<int64_t>& distances,
                              Position agent) {
  const auto next = successor_distances("optimal_actions", level, distances, agent);
  const int64_t d = distances[static_cast<size_t>(agent.row * level.width + agent.col)];
  auto optimal = torch::empty({kNumActions}, torch::kBool);
  bool* o = optimal.data_ptr<bool>();
  for (int64_t a = 0; a < kNumActions; ++a) o[a] = next[a] == d - 1;
  return optimal;
}

namespace {

// Collects (observation, teacher distribution, optimal actions) records of one world size and packs
// them into a TrajectoryDataset.
class StateRecorder {
 public:
  explicit StateRecorder(const GridWorldOptions& world)
      : world_(world), cells_(world.height() * world.width()) {}

  // Records the agent at `agent` of `level` (level index `index`) and returns the teacher's
  // probabilities; the recorded action is the lowest optimal one until set_last_action.
  const double* record(const Level& level, const std::vector<int64_t>& distances, Position agent,
                       double temperature, int64_t index) {
    const auto obs = observe(level, agent);
    const int64_t* t = obs.types.data_ptr<int64_t>();
    types_.insert(types_.end(), t, t + cells_);
    pi_ = teacher_policy(level, distances, agent, temperature);
    const auto opt = optimal_actions(level, distances, agent);
    const double* p = pi_.data_ptr<double>();
    const bool* o = opt.data_ptr<bool>();
    int64_t action = -1;
    for (int64_t a = 0; a < kNumActions; ++a) {
      probs_.push_back(static_cast<float>(p[a]));
      optimal_.push_back(o[a]);
      if (action < 0 && o[a]) action = a;
    }
    actions_.push_back(action);
    level_index_.push_back(index);
    return p;
  }

  // Replaces the action of the last record.
  void set_last_action(int64_t action) { actions_.back() = action; }
  int64_t last_action() const { return actions_.back(); }

  TrajectoryDataset pack() {
    const auto s = static_cast<int64_t>(actions_.size());
    const auto cell = torch::arange(cells_, torch::kInt64);
    TrajectoryDataset out;
    out.height = world_.height();
    out.width = world_.width();
    out.types = torch::from_blob(types_.data(), {s, cells_}, torch::kInt64).clone();
    out.rows = cell.div(world_.width(), "floor").expand({s, cells_}).contiguous();
    out.cols = cell.remainder(world_.width()).expand({s, cells_}).contiguous();
    out.teacher_probs =
        torch::from_blob(probs_.data(), {s, kNumActions}, torch::kFloat32).clone();
    out.optimal =
        torch::from_blob(optimal_.data(), {s, kNumActions}, torch::kUInt8).to(torch::kBool);
    out.actions = torch::from_blob(actions_.data(), {s}, torch::kInt64).clone();
    out.level_index = torch::from_blob(level_index_.data(), {s}, torch::kInt64).clone();
    return out;
  }

 private:
  GridWorldOptions world_;
  int64_t cells_;
  torch::Tensor pi_;
  std::vector<int64_t> types_, actions_, level_index_;
  std::vector<float> probs_;
  std::vector<uint8_t> optimal_;
};

void check_dataset_args(const char* fn, int64_t num_levels, const GridWorldOptions& world,
                        const TeacherOptions& teacher) {
  TORCH_CHECK(num_levels >= 0, fn, ": num_levels must be >= 0, got ", num_levels);
  TORCH_CHECK(teacher.temperature() >= 0.0, fn, ": temperature must be >= 0, got ",
              teacher.temperature());
  check_options(world);
}

}  // namespace

TrajectoryDataset make_teacher_dataset(uint64_t seed0, int64_t num_levels,
                                       const GridWorldOptions& world,
                                       const TeacherOptions& teacher) {
  check_dataset_args("make_teacher_dataset", num_levels, world, teacher);
  StateRecorder recorder(world);
  GridWorld env(world);
  for (int64_t i = 0; i < num_levels; ++i) {
    const uint64_t seed = seed0 + static_cast<uint64_t>(i);
    const Level level = generate_level(seed, world);
    const auto distances = goal_distances(level);
    std::mt19937_64 engine(mix(seed));
    env.reset(level);
    while (!env.done()) {
      const double* p = recorder.record(level, distances, env.agent(), teacher.temperature(), i);
      if (!teacher.greedy()) recorder.set_last_action(sample_index(p, kNumActions, engine));
      env.step(recorder.last_action());
    }
  }
  return recorder.pack();
}

TrajectoryDataset make_state_dataset(uint64_t seed0, int64_t num_levels,
                                     const GridWorldOptions& world,
                                     const TeacherOptions& teacher) {
  check_dataset_args("make_state_dataset", num_levels, world, teacher);
  StateRecorder recorder(world);
  const int64_t n = world.height() * world.width();
  for (int64_t i = 0; i < num_levels; ++i) {
    const Level level = generate_level(seed0 + static_cast<uint64_t>(i), world);
    const auto distances = goal_distances(level);
    for (int64_t cell = 0; cell < n; ++cell) {
      if (distances[static_cast<size_t>(cell)] <= 0) continue;
      recorder.record(level, distances, Position{cell / world.width(), cell % world.width()},
                      teacher.temperature(), i);
    }
  }
  return recorder.pack();
}

EvalResult evaluate_policy(const Policy& policy, const std::vector<Level>& levels,
                           const GridWorldOptions& world, const EvalOptions& options) {
  TORCH_CHECK(policy, "evaluate_policy: policy is empty");
  TORCH_CHECK(!levels.empty(), "evaluate_policy: levels must not be empty");
  TORCH_CHECK(options.batch_size() >= 1, "evaluate_policy: batch_size must be >= 1, got ",
              options.batch_size());
  for (const auto& level : levels) {
    TORCH_CHECK(level.height == levels[0].height && level.width == levels[0].width,
                "evaluate_policy: all levels must be ", levels[0].height, " x ", levels[0].width,
                ", got one of ", level.height, " x ", level.width);
  }
  const bool logits = options.output() == PolicyOutput::Logits;
  std::mt19937_64 engine(options.seed());
  std::vector<GridWorld> envs(levels.size(), GridWorld(world));
  const auto num = static_cast<int64_t>(levels.size());
  for (int64_t lo = 0; lo < num; lo += options.batch_size()) {
    const int64_t hi = std::min(num, lo + options.batch_size());
    std::vector<int64_t> active;
    for (int64_t i = lo; i < hi; ++i) {
      envs[i].reset(levels[i]);
      active.push_back(i);
    }
    while (!active.empty()) {
      std::vector<Observation> batch;
      for (int64_t i : active) batch.push_back(envs[i].observation());
      const auto raw = policy(stack_observations(batch));
      const auto b = static_cast<int64_t>(active.size());
      TORCH_CHECK(raw.defined() && raw.dim() == 2 && raw.size(0) == b && raw.size(1) == kNumActions,
                  "evaluate_policy: the policy must return (B, A) = (", b, ", ", kNumActions,
                  ") scores, got ", raw.defined() ? raw.sizes() : torch::IntArrayRef{});
      TORCH_CHECK(raw.is_floating_point(),
                  "evaluate_policy: the policy must return floating scores, got ",
                  raw.scalar_type());
      auto scores = raw.detach().to(torch::kCPU, torch::kFloat64).contiguous();
      if (logits) {
        TORCH_CHECK(!scores.isnan().any().item<bool>(),
                    "evaluate_policy: the policy returned NaN logits");
        if (!options.greedy()) scores = torch::softmax(scores, 1);
      } else {
        TORCH_CHECK(
            scores.isfinite().all().item<bool>() && (scores >= 0).all().item<bool>() &&
                (scores.sum(1) > 0).all().item<bool>(),
            "evaluate_policy: PolicyOutput::Probabilities needs finite non-negative rows with a "
            "positive sum");
      }
      const double* p = scores.data_ptr<double>();
      std::vector<int64_t> still;
      for (int64_t k = 0; k < b; ++k) {
        const double* row = p + k * kNumActions;
        const int64_t action = options.greedy() ? argmax_lowest(row, kNumActions)
                                                : sample_index(row, kNumActions, engine);
        if (!envs[active[k]].step(action).done) still.push_back(active[k]);
      }
      active.swap(still);
    }
  }
  EvalResult result;
  result.episodes = num;
  for (const auto& env : envs) {
    result.success_rate += env.level().at(env.agent()) == Cell::Goal;
    result.mean_return += env.episode_return();
    result.mean_length += static_cast<double>(env.steps());
  }
  result.success_rate /= static_cast<double>(num);
  result.mean_return /= static_cast<double>(num);
  result.mean_length /= static_cast<double>(num);
  return result;
}

Policy teacher_as_policy(double temperature) {
  TORCH_CHECK(temperature >= 0.0, "teacher_as_policy: temperature must be >= 0, got ", temperature);
  return [temperature](const Observation& batch) {
    TORCH_CHECK(batch.types.dim() == 2, "teacher_as_policy: observation types must be (B, N), got ",
                batch.types.sizes());
    const int64_t b = batch.types.size(0);
    auto out = torch::empty({b, kNumActions}, torch::kFloat64);
    for (int64_t k = 0; k < b; ++k) {
      Position agent;
      const Level level = decode_observation(batch, k, &agent);
      out[k].copy_(teacher_policy(level, agent, temperature));
    }
    return out;
  };
}

EvalResult evaluate_random_policy(const std::vector<Level>& levels, const GridWorldOptions& world,
                                  uint64_t seed) {
  const Policy uniform = [](const Observation& batch) {
    return torch::ones({batch.types.size(0), kNumActions}, torch::kFloat64);
  };
  return evaluate_policy(
      uniform, levels, world,
      EvalOptions().output(PolicyOutput::Probabilities).greedy(false).seed(seed));
}

EvalResult evaluate_teacher(const std::vector<Level>& levels, const GridWorldOptions& world,
                            const TeacherOptions& teacher, uint64_t seed) {
  return evaluate_policy(
      teacher_as_policy(teacher.temperature()), levels, world,
      EvalOptions().output(PolicyOutput::Probabilities).greedy(teacher.greedy()).seed(seed));
}

double action_agreement(const torch::Tensor& student_scores, const torch::Tensor& optimal) {
  TORCH_CHECK(
      student_scores.defined() && student_scores.dim() == 2 && student_scores.size(0) >= 1 &&
          student_scores.size(1) == kNumActions && student_scores.is_floating_point(),
      "action_agreement: student_scores must be floating (S, ", kNumActions, ") with S >= 1, got ",
      student_scores.defined() ? student_scores.sizes() : torch::IntArrayRef{});
  TORCH_CHECK(optimal.defined() && optimal.scalar_type() == torch::kBool &&
                  optimal.sizes() == student_scores.sizes(),
              "action_agreement: optimal must be bool with the shape of student_scores ",
              student_scores.sizes(), ", got ",
              optimal.defined() ? optimal.sizes() : torch::IntArrayRef{});
  const auto scores = student_scores.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  const auto opt = optimal.to(torch::kCPU).contiguous();
  const double* p = scores.data_ptr<double>();
  const bool* o = opt.data_ptr<bool>();
  const int64_t s = scores.size(0);
  int64_t agree = 0;
  for (int64_t i = 0; i < s; ++i)
    agree += o[i * kNumActions + argmax_lowest(p + i * kNumActions, kNumActions)];
  return static_cast<double>(agree) / static_cast<double>(s);
}

}  // namespace env
}  // namespace kvq
