#pragma once
// The teacher of the policy-distillation experiment (Intention paper, Garnelo & Czarnecki 2023;
// kvq's setup, design/tasks.md, "Experiments of the Intention paper", item 3): an optimal policy
// from shortest-path distances to the goal (goal_distances in kvq/env/grid_world.h), soft-max over
// the negative distance of the successor cell; teacher trajectory data sets for a student trained
// with KL(teacher || student); and the evaluation of any policy acting in the grid world.
//
// Teacher policy at a non-goal state s with distance d(s) > 0 to the goal:
//   pi(a | s) = exp(-d(next(s, a)) / T) / sum_b exp(-d(next(s, b)) / T)
// where next(s, a) is the cell the move reaches, s itself when blocked (so a blocked move scores
// d(s)). Optimal actions are those with d(next(s, a)) = d(s) - 1, the minimum over a. T = 0 gives
// the uniform distribution over the optimal actions; T -> infinity the uniform one over all four.
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "kvq/env/grid_world.h"

namespace kvq {
namespace env {

// The teacher's distribution over the kNumActions actions at `agent`: float64 (kNumActions),
// summing to 1. `distances` is goal_distances(level). Throws for temperature < 0, an agent on the
// goal (terminal), on a wall, outside the grid or unable to reach the goal.
torch::Tensor teacher_policy(const Level& level, const std::vector<int64_t>& distances,
                             Position agent, double temperature);
torch::Tensor teacher_policy(const Level& level, Position agent, double temperature);

// Which actions are optimal at `agent` (d(next) = d(agent) - 1): bool (kNumActions), at least one
// true. Same preconditions as teacher_policy.
torch::Tensor optimal_actions(const Level& level, const std::vector<int64_t>& distances,
                              Position agent);

struct TeacherOptions {
  /// Soft-max temperature T of the teacher's targets (and of its sampled actions); 0 = uniform
  /// over the optimal actions. Default: 1.0.
  TORCH_ARG(double, temperature) = 1.0;
  /// Roll out greedily (the lowest-index optimal action) instead of sampling from the teacher's
  /// distribution. Default: false.
  TORCH_ARG(bool, greedy) = false;
};

// Teacher trajectories: one episode per level, every visited state before the episode ends (goal or
// max_steps) recorded once per visit. S states in all, N = H * W cells, A = kNumActions.
struct TrajectoryDataset {
  torch::Tensor types;          // int64 (S, N): observe(...).types, agent cell = kAgentToken
  torch::Tensor rows;           // int64 (S, N): row index of each cell
  torch::Tensor cols;           // int64 (S, N): column index of each cell
  torch::Tensor teacher_probs;  // float32 (S, A): teacher_policy at the options' temperature
  torch::Tensor optimal;        // bool (S, A): optimal_actions, for action_agreement
  torch::Tensor actions;        // int64 (S): the action the teacher took
  torch::Tensor level_index;    // int64 (S): i of the level generated from seed0 + i
  int64_t height = 0;
  int64_t width = 0;
};

// Rolls the teacher out on generate_level(seed0 + i, world) for i in [0, num_levels), under the
// world's rules. Sampled actions come from std::mt19937_64 seeded per level from seed0 + i (a
// stream apart from the level's own), so the data set is a function of its arguments alone and the
// states of level i do not depend on num_levels.
TrajectoryDataset make_teacher_dataset(uint64_t seed0, int64_t num_levels,
                                       const GridWorldOptions& world = {},
                                       const TeacherOptions& teacher = {});

// Every state of the levels instead of the teacher's trajectories: on generate_level(seed0 + i,
// world) for i in [0, num_levels), one record per cell from which the goal is reachable (goal
// distance > 0: not a wall, not the goal), in row-major order, with the agent on that cell and the
// teacher's distribution, optimal actions and first optimal action (`actions`) there. On the
// training levels it contains every state any policy can visit, so a student trained on it sees
// the states it reaches after its own mistakes, labelled by the teacher (the aggregated data set
// of DAgger, Ross et al. 2011, in the limit). Deterministic; teacher.greedy is not used.
TrajectoryDataset make_state_dataset(uint64_t seed0, int64_t num_levels,
                                     const GridWorldOptions& world = {},
                                     const TeacherOptions& teacher = {});

// A batched policy: observation tokens (B, N) of B states -> (B, kNumActions) scores, logits or
// probabilities (see EvalOptions::output), on any device and floating dtype.
using Policy = std::function<torch::Tensor(const Observation& batch)>;

enum class PolicyOutput { Logits, Probabilities };

struct EvalOptions {
  /// What the policy returns: logits (soft-maxed for sampling) or non-negative probabilities
  /// (normalised). Default: Logits.
  TORCH_ARG(PolicyOutput, output) = PolicyOutput::Logits;
  /// Act by argmax (the lowest index among ties) instead of sampling. Default: true.
  TORCH_ARG(bool, greedy) = true;
  /// Seed of the std::mt19937_64 that samples actions (greedy = false). Default: 0.
  TORCH_ARG(uint64_t, seed) = 0;
  /// Most episodes stepped together in one policy call. Default: 256.
  TORCH_ARG(int64_t, batch_size) = 256;
};

struct EvalResult {
  int64_t episodes = 0;
  double success_rate = 0.0;  // share of episodes that reached the goal within max_steps
  double mean_return = 0.0;   // undiscounted sum of rewards per episode
  double mean_length = 0.0;   // steps per episode (max_steps for truncated ones)
};

// Plays one episode per level (all levels of one size) with `policy`, episodes stepped in lockstep
// batches of at most batch_size, under `world`'s rules.
EvalResult evaluate_policy(const Policy& policy, const std::vector<Level>& levels,
                           const GridWorldOptions& world = {}, const EvalOptions& options = {});

// The teacher as a Policy returning probabilities (read from the observation alone: walls, goal and
// agent tokens). Evaluate it with PolicyOutput::Probabilities.
Policy teacher_as_policy(double temperature);

// Baselines: the uniform random policy (sampled with `seed`), and the teacher (greedy: always an
// optimal action, success rate 1 on levels solvable within max_steps; otherwise sampled at
// teacher.temperature with `seed`).
EvalResult evaluate_random_policy(const std::vector<Level>& levels,
                                  const GridWorldOptions& world = {}, uint64_t seed = 0);
EvalResult evaluate_teacher(const std::vector<Level>& levels, const GridWorldOptions& world = {},
                            const TeacherOptions& teacher = {}, uint64_t seed = 0);

// Action agreement: the share of the S states at which the student's argmax action (lowest index
// among ties) is one of the teacher's optimal actions. student_scores: (S, A) logits or
// probabilities (any floating dtype); optimal: bool (S, A) as in TrajectoryDataset. S >= 1.
double action_agreement(const torch::Tensor& student_scores, const torch::Tensor& optimal);

}  // namespace env
}  // namespace kvq
