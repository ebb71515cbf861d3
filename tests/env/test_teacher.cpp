// The distillation teacher: distances against a breadth-first search written here, the soft-max
// policy and its temperature, greedy rollouts of exactly the shortest length, the trajectory data
// set, and policy evaluation against the random baseline.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <deque>
#include <string>
#include <vector>

#include "kvq/env/teacher.h"
#include "test_files.h"

namespace {

namespace E = kvq::env;
using kvq_test_files::expect_error;

// Shortest path lengths to the goal over non-wall cells, row-major, -1 for walls and unreachable
// cells: breadth-first from the goal over the raw cells, independent of the library's search.
std::vector<int64_t> reference_distances(const E::Level& level) {
  const int64_t h = level.height, w = level.width;
  std::vector<int64_t> dist(h * w, -1);
  std::deque<int64_t> queue{level.goal.row * w + level.goal.col};
  dist[queue.front()] = 0;
  while (!queue.empty()) {
    const int64_t i = queue.front();
    queue.pop_front();
    const int64_t r = i / w, c = i % w;
    const int64_t nbr[4][2] = {{r, c + 1}, {r, c - 1}, {r + 1, c}, {r - 1, c}};
    for (const auto& n : nbr) {
      if (n[0] < 0 || n[0] >= h || n[1] < 0 || n[1] >= w) continue;
      const int64_t j = n[0] * w + n[1];
      if (level.cells[j] == E::Cell::Wall || dist[j] >= 0) continue;
      dist[j] = dist[i] + 1;
      queue.push_back(j);
    }
  }
  return dist;
}

// Distance after action a from (r, c) under the blocking rule, from the reference distances.
int64_t reference_next_distance(const E::Level& level, const std::vector<int64_t>& dist, int64_t r,
                                int64_t c, int64_t a) {
  const int64_t dr[] = {-1, 1, 0, 0}, dc[] = {0, 0, -1, 1};
  const int64_t nr = r + dr[a], nc = c + dc[a];
  if (nr < 0 || nr >= level.height || nc < 0 || nc >= level.width ||
      level.cells[nr * level.width + nc] == E::Cell::Wall) {
    return dist[r * level.width + c];
  }
  return dist[nr * level.width + nc];
}

std::vector<E::GridWorldOptions> option_sets() {
  return {E::GridWorldOptions(), E::GridWorldOptions().wall_density(0.4).height(7).width(10),
          E::GridWorldOptions().border_walls(true).wall_density(0.3)};
}

// (0, 0) start, walls shape a corridor; the pocket at (2, 0) is walled off.
const char* kMaze =
    "A..#\n"
    "##.#\n"
    ".#.G\n"
    "#...\n";

TEST(EnvTeacher, DistancesMatchAnIndependentSearch) {
  const auto maze = E::parse_level(kMaze);
  EXPECT_EQ(E::goal_distances(maze),
            (std::vector<int64_t>{5, 4, 3, -1, -1, -1, 2, -1, -1, -1, 1, 0, -1, 3, 2, 1}));
  int64_t levels = 0;
  for (const auto& options : option_sets()) {
    for (uint64_t seed = 100; seed < 200; ++seed, ++levels) {
      const auto level = E::generate_level(seed, options);
      ASSERT_EQ(E::goal_distances(level), reference_distances(level)) << E::render_level(level);
    }
  }
  EXPECT_EQ(levels, 300);
}

TEST(EnvTeacher, GreedyTeacherTakesExactlyTheShortestPath) {
  for (double temperature : {0.0, 1.0, 5.0}) {
    E::GridWorld env(E::GridWorldOptions().max_steps(1000));
    for (uint64_t seed = 0; seed < 60; ++seed) {
      const auto level = E::generate_level(seed);
      const int64_t shortest =
          reference_distances(level)[level.start.row * level.width + level.start.col];
      env.reset(level);
      while (!env.done()) {
        const auto pi = E::teacher_policy(level, env.agent(), temperature);
        env.step(pi.argmax().item<int64_t>());
      }
      EXPECT_EQ(env.level().at(env.agent()), E::Cell::Goal);
      EXPECT_EQ(env.steps(), shortest) << "seed " << seed << " T " << temperature;
    }
  }
}

TEST(EnvTeacher, ProbabilitiesSumToOneAndFavourOptimalActions) {
  for (uint64_t seed = 0; seed < 30; ++seed) {
    const auto level = E::generate_level(seed, E::GridWorldOptions().wall_density(0.3));
    const auto ref = reference_distances(level);
    const auto dist = E::goal_distances(level);
    for (int64_t r = 0; r < level.height; ++r) {
      for (int64_t c = 0; c < level.width; ++c) {
        const int64_t d = ref[r * level.width + c];
        if (d <= 0) continue;  // wall, unreachable, goal
        const auto pi = E::teacher_policy(level, dist, {r, c}, 1.0);
        const auto optimal = E::optimal_actions(level, dist, {r, c});
        ASSERT_EQ(pi.scalar_type(), torch::kFloat64);
        ASSERT_EQ(pi.sizes(), torch::IntArrayRef({E::kNumActions}));
        EXPECT_NEAR(pi.sum().item<double>(), 1.0, 1e-12);
        const double top = pi.max().item<double>();
        for (int64_t a = 0; a < E::kNumActions; ++a) {
          const bool is_optimal = reference_next_distance(level, ref, r, c, a) == d - 1;
          EXPECT_EQ(optimal[a].item<bool>(), is_optimal);
          if (is_optimal) {
            EXPECT_EQ(pi[a].item<double>(), top);
          } else {
            EXPECT_LT(pi[a].item<double>(), top);
          }
        }
      }
    }
  }
}

TEST(EnvTeacher, TemperatureShapesTheDistribution) {
  // Agent at (0, 1) in the maze, d = 4: up and down blocked (stay, 4), left 5, right 3.
  const auto maze = E::parse_level(kMaze);
  const auto dist = E::goal_distances(maze);
  const E::Position agent{0, 1};
  const double z = std::exp(-1.0) + std::exp(-1.0) + std::exp(-2.0) + 1.0;
  const auto pi = E::teacher_policy(maze, dist, agent, 1.0);
  EXPECT_NEAR(pi[0].item<double>(), std::exp(-1.0) / z, 1e-15);
  EXPECT_NEAR(pi[1].item<double>(), std::exp(-1.0) / z, 1e-15);
  EXPECT_NEAR(pi[2].item<double>(), std::exp(-2.0) / z, 1e-15);
  EXPECT_NEAR(pi[3].item<double>(), 1.0 / z, 1e-15);
  EXPECT_TRUE(E::teacher_policy(maze, dist, agent, 0.0)
                  .equal(torch::tensor({0.0, 0.0, 0.0, 1.0}, torch::kFloat64)));
  // Two optimal actions at (3, 2), d = 2 (up and right): T = 0 splits evenly between them.
  EXPECT_TRUE(E::teacher_policy(maze, dist, {3, 2}, 0.0)
                  .equal(torch::tensor({0.5, 0.0, 0.0, 0.5}, torch::kFloat64)));
  double previous = 1.0;
  for (double t : {0.0, 0.1, 0.5, 1.0, 2.0, 10.0, 1e6}) {
    const double p_best = E::teacher_policy(maze, dist, agent, t)[3].item<double>();
    EXPECT_LE(p_best, previous) << "T " << t;
    previous = p_best;
  }
  EXPECT_NEAR(previous, 0.25, 1e-5);
  expect_error([&] { E::teacher_policy(maze, dist, agent, -0.5); }, {"temperature", ">= 0"});
  expect_error([&] { E::teacher_policy(maze, dist, maze.goal, 1.0); }, {"on the goal"});
  expect_error([&] { E::teacher_policy(maze, dist, {2, 0}, 1.0); }, {"unreachable", "(2, 0)"});
  expect_error([&] { E::teacher_policy(maze, dist, {0, 3}, 1.0); }, {"on a wall"});
  expect_error([&] { E::teacher_policy(maze, dist, {4, 0}, 1.0); }, {"outside"});
  expect_error([&] { E::teacher_policy(maze, {1, 2}, agent, 1.0); }, {"distances", "16"});
}

TEST(EnvTeacher, DatasetShapesAndContents) {
  const auto world = E::GridWorldOptions().height(6).width(7);
  const auto data = E::make_teacher_dataset(40, 8, world, E::TeacherOptions().temperature(0.5));
  const int64_t s = data.actions.size(0), n = 6 * 7;
  ASSERT_GT(s, 8);
  EXPECT_EQ(data.height, 6);
  EXPECT_EQ(data.width, 7);
  for (const auto& t : {data.types, data.rows, data.cols}) {
    EXPECT_EQ(t.sizes(), torch::IntArrayRef({s, n}));
    EXPECT_EQ(t.scalar_type(), torch::kInt64);
  }
  EXPECT_EQ(data.teacher_probs.sizes(), torch::IntArrayRef({s, E::kNumActions}));
  EXPECT_EQ(data.teacher_probs.scalar_type(), torch::kFloat32);
  EXPECT_EQ(data.optimal.sizes(), torch::IntArrayRef({s, E::kNumActions}));
  EXPECT_EQ(data.optimal.scalar_type(), torch::kBool);
  EXPECT_EQ(data.level_index.sizes(), torch::IntArrayRef({s}));
  EXPECT_TRUE(torch::allclose(data.teacher_probs.sum(1), torch::ones({s}), 0, 1e-6));
  EXPECT_EQ((data.types == E::kAgentToken).sum(1).min().item<int64_t>(), 1);
  EXPECT_EQ((data.types == E::kAgentToken).sum(1).max().item<int64_t>(), 1);
  // level_index runs 0..7 in order; each level's first state is its start, and every recorded
  // distribution is the teacher's at the recorded agent position.
  const auto idx = data.level_index.contiguous();
  const int64_t* li = idx.data_ptr<int64_t>();
  EXPECT_EQ(li[0], 0);
  EXPECT_EQ(li[s - 1], 7);
  for (int64_t k = 0; k < s; ++k) {
    if (k > 0) {
      EXPECT_TRUE(li[k] == li[k - 1] || li[k] == li[k - 1] + 1);
    }
    const auto level = E::generate_level(40 + li[k], world);
    const int64_t cell = (data.types[k] == E::kAgentToken).nonzero().item<int64_t>();
    const E::Position agent{data.rows[k][cell].item<int64_t>(), data.cols[k][cell].item<int64_t>()};
    if (k == 0 || li[k] != li[k - 1]) {
      EXPECT_EQ(agent, level.start);
      EXPECT_TRUE(data.types[k].equal(E::observe(level, level.start).types));
      EXPECT_TRUE(data.rows[k].equal(E::observe(level, level.start).rows));
      EXPECT_TRUE(data.cols[k].equal(E::observe(level, level.start).cols));
    }
    EXPECT_TRUE(torch::allclose(data.teacher_probs[k],
                                E::teacher_policy(level, agent, 0.5).to(torch::kFloat32)));
    EXPECT_TRUE(data.optimal[k].equal(E::optimal_actions(level, E::goal_distances(level), agent)));
  }
}

TEST(EnvTeacher, DatasetIsDeterministic) {
  const auto a = E::make_teacher_dataset(7, 10);
  const auto b = E::make_teacher_dataset(7, 10);
  EXPECT_TRUE(a.types.equal(b.types));
  EXPECT_TRUE(a.teacher_probs.equal(b.teacher_probs));
  EXPECT_TRUE(a.actions.equal(b.actions));
  EXPECT_TRUE(a.level_index.equal(b.level_index));
  EXPECT_FALSE(E::make_teacher_dataset(8, 10).types.sizes() == a.types.sizes() &&
               E::make_teacher_dataset(8, 10).types.equal(a.types));
  // The first levels' states do not depend on how many levels follow.
  const auto more = E::make_teacher_dataset(7, 12);
  const int64_t s = a.actions.size(0);
  EXPECT_TRUE(more.types.narrow(0, 0, s).equal(a.types));
  EXPECT_TRUE(more.actions.narrow(0, 0, s).equal(a.actions));
  const auto empty = E::make_teacher_dataset(7, 0);
  EXPECT_EQ(empty.types.sizes(), torch::IntArrayRef({0, 81}));
}

// make_state_dataset: one record per cell with goal distance > 0 (the reference search), in
// row-major order per level, each with the teacher's distribution there and its first optimal
// action; every trajectory state of the same levels is among them.
TEST(EnvTeacher, StateDatasetCoversEveryReachableCell) {
  const auto world = E::GridWorldOptions().height(6).width(7);
  const auto data = E::make_state_dataset(40, 5, world, E::TeacherOptions().temperature(0.5));
  const int64_t n = 6 * 7;
  int64_t k = 0;
  for (int64_t i = 0; i < 5; ++i) {
    const auto level = E::generate_level(40 + i, world);
    const auto distances = reference_distances(level);
    for (int64_t cell = 0; cell < n; ++cell) {
      if (distances[cell] <= 0) continue;
      ASSERT_LT(k, data.actions.size(0));
      const E::Position agent{cell / 7, cell % 7};
      EXPECT_EQ(data.level_index[k].item<int64_t>(), i);
      EXPECT_TRUE(data.types[k].equal(E::observe(level, agent).types));
      EXPECT_TRUE(torch::allclose(data.teacher_probs[k],
                                  E::teacher_policy(level, agent, 0.5).to(torch::kFloat32)));
      const auto optimal = E::optimal_actions(level, E::goal_distances(level), agent);
      EXPECT_TRUE(data.optimal[k].equal(optimal));
      const int64_t a = data.actions[k].item<int64_t>();
      EXPECT_TRUE(optimal[a].item<bool>());
      EXPECT_FALSE(optimal.narrow(0, 0, a).any().item<bool>());
      ++k;
    }
  }
  EXPECT_EQ(k, data.actions.size(0));
  const auto rollouts = E::make_teacher_dataset(40, 5, world, E::TeacherOptions().temperature(0.5));
  for (int64_t r = 0; r < rollouts.actions.size(0); ++r) {
    const auto same = (data.types == rollouts.types[r]).all(1) &
                      (data.level_index == rollouts.level_index[r]);
    EXPECT_EQ(same.sum().item<int64_t>(), 1) << "trajectory state " << r;
  }
}

TEST(EnvTeacher, GreedyDatasetFollowsShortestPaths) {
  const auto data = E::make_teacher_dataset(300, 20, {}, E::TeacherOptions().greedy(true));
  const auto counts = torch::bincount(data.level_index, {}, 20);
  for (int64_t i = 0; i < 20; ++i) {
    const auto level = E::generate_level(300 + i);
    EXPECT_EQ(counts[i].item<int64_t>(),
              reference_distances(level)[level.start.row * level.width + level.start.col]);
  }
  // Every greedy action is optimal: the lowest-index one.
  for (int64_t k = 0; k < data.actions.size(0); ++k) {
    const int64_t a = data.actions[k].item<int64_t>();
    EXPECT_TRUE(data.optimal[k][a].item<bool>());
    EXPECT_FALSE(data.optimal[k].narrow(0, 0, a).any().item<bool>());
  }
}

TEST(EnvTeacher, TeacherBeatsTheRandomPolicy) {
  const auto levels = E::generate_levels(1000, 60);
  double mean_shortest = 0.0;
  for (const auto& level : levels) {
    mean_shortest += reference_distances(level)[level.start.row * level.width + level.start.col];
  }
  mean_shortest /= 60.0;
  const auto teacher = E::evaluate_teacher(levels, {}, E::TeacherOptions().greedy(true));
  EXPECT_EQ(teacher.episodes, 60);
  EXPECT_EQ(teacher.success_rate, 1.0);
  EXPECT_NEAR(teacher.mean_length, mean_shortest, 1e-12);
  EXPECT_NEAR(teacher.mean_return, 1.0 - 0.01 * mean_shortest, 1e-12);
  // At T = 0 the sampled teacher only takes optimal actions too.
  const auto sampled = E::evaluate_teacher(levels, {}, E::TeacherOptions().temperature(0.0), 3);
  EXPECT_EQ(sampled.success_rate, 1.0);
  EXPECT_NEAR(sampled.mean_length, mean_shortest, 1e-12);
  const auto random = E::evaluate_random_policy(levels, {}, 5);
  EXPECT_LT(random.success_rate, teacher.success_rate);
  EXPECT_GT(random.mean_length, teacher.mean_length);
  EXPECT_LT(random.mean_return, teacher.mean_return);
  const auto again = E::evaluate_random_policy(levels, {}, 5);
  EXPECT_EQ(again.mean_return, random.mean_return);
}

TEST(EnvTeacher, EvaluatePolicyTakesLogitsInBatches) {
  const auto levels = E::generate_levels(2000, 25);
  const auto teacher_probs = E::teacher_as_policy(0.0);
  int64_t calls = 0, widest = 0;
  const E::Policy student = [&](const E::Observation& batch) {
    ++calls;
    widest = std::max<int64_t>(widest, batch.types.size(0));
    EXPECT_EQ(batch.types.sizes(), batch.rows.sizes());
    return (teacher_probs(batch) + 1e-9).log().to(torch::kFloat32);
  };
  const auto result = E::evaluate_policy(student, levels, {}, E::EvalOptions().batch_size(10));
  EXPECT_EQ(result.success_rate, 1.0);
  EXPECT_EQ(widest, 10);
  EXPECT_GT(calls, 3);
  const auto bad_shape = [](const E::Observation& batch) {
    return torch::zeros({batch.types.size(0), 3});
  };
  expect_error([&] { E::evaluate_policy(bad_shape, levels); }, {"(B, A)", "4"});
  const auto negative = [](const E::Observation& batch) {
    return -torch::ones({batch.types.size(0), 4});
  };
  expect_error(
      [&] {
        E::evaluate_policy(negative, levels, {},
                           E::EvalOptions().output(E::PolicyOutput::Probabilities));
      },
      {"non-negative"});
  auto mixed = levels;
  mixed.push_back(E::generate_level(0, E::GridWorldOptions().height(5)));
  expect_error([&] { E::evaluate_policy(student, mixed); }, {"all levels must be 9 x 9", "5 x 9"});
}

TEST(EnvTeacher, ActionAgreement) {
  // Rows: argmax 3 (optimal), tie 1/2 -> 1 (not optimal), argmax 0 (optimal of two).
  const auto scores =
      torch::tensor({0.1, 0.2, 0.3, 0.9, 0.0, 2.0, 2.0, -1.0, 5.0, 1.0, 1.0, 1.0}).view({3, 4});
  const auto optimal = torch::tensor({false, false, false, true, false, false, true, false, true,
                                      true, false, false})
                           .view({3, 4});
  EXPECT_DOUBLE_EQ(E::action_agreement(scores, optimal), 2.0 / 3.0);
  const auto data = E::make_teacher_dataset(50, 10);
  EXPECT_EQ(E::action_agreement(data.teacher_probs, data.optimal), 1.0);
  // A constant student always picks action 0 (up).
  const auto constant = torch::zeros({data.actions.size(0), 4});
  EXPECT_DOUBLE_EQ(E::action_agreement(constant, data.optimal),
                   data.optimal.select(1, 0).to(torch::kFloat64).mean().item<double>());
  expect_error([&] { E::action_agreement(scores, optimal.to(torch::kInt64)); },
               {"optimal", "bool"});
  expect_error([&] { E::action_agreement(scores.view({4, 3}), optimal); }, {"student_scores"});
}

}  // namespace
