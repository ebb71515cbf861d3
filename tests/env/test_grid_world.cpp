// The policy-distillation grid world: every movement and reward rule on hand-written levels, level
// validation and the text format, and generated levels checked against a breadth-first search
// written here (not the library's).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <deque>
#include <set>
#include <string>
#include <vector>

#include "kvq/env/grid_world.h"
#include "test_files.h"

namespace {

namespace E = kvq::env;
using kvq_test_files::expect_error;

constexpr int64_t kUp = 0, kDown = 1, kLeft = 2, kRight = 3;

// Shortest path length from `from` to the goal cell over non-'#' cells, -1 if unreachable; on the
// rendered text, so it shares nothing with the library's search.
int64_t bfs_steps(const std::vector<std::string>& grid, int64_t from_r, int64_t from_c) {
  const auto h = static_cast<int64_t>(grid.size()), w = static_cast<int64_t>(grid[0].size());
  std::vector<std::vector<int64_t>> seen(h, std::vector<int64_t>(w, -1));
  std::deque<std::pair<int64_t, int64_t>> queue{{from_r, from_c}};
  seen[from_r][from_c] = 0;
  const int dr[] = {1, -1, 0, 0}, dc[] = {0, 0, 1, -1};
  while (!queue.empty()) {
    auto [r, c] = queue.front();
    queue.pop_front();
    if (grid[r][c] == 'G') return seen[r][c];
    for (int k = 0; k < 4; ++k) {
      const int64_t nr = r + dr[k], nc = c + dc[k];
      if (nr < 0 || nr >= h || nc < 0 || nc >= w || grid[nr][nc] == '#' || seen[nr][nc] >= 0)
        continue;
      seen[nr][nc] = seen[r][c] + 1;
      queue.push_back({nr, nc});
    }
  }
  return -1;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  size_t begin = 0;
  for (size_t end; (end = text.find('\n', begin)) != std::string::npos; begin = end + 1) {
    lines.push_back(text.substr(begin, end - begin));
  }
  return lines;
}

// Start at (1, 1), walls at (0, 1) and (1, 2), goal at (2, 3), distractor a at (2, 1).
const char* kSmall =
    ".#..\n"
    ".A#.\n"
    ".a.G\n";

E::GridWorld started(const std::string& text, E::GridWorldOptions options = {}) {
  E::GridWorld env(options);
  env.reset(E::parse_level(text));
  return env;
}

TEST(EnvGridWorld, WallsBlockAndTheStepStillCounts) {
  auto env = started(kSmall);
  const auto up = env.step(kUp);  // wall at (0, 1)
  EXPECT_FALSE(up.moved);
  EXPECT_EQ(up.agent, (E::Position{1, 1}));
  EXPECT_EQ(up.steps, 1);
  EXPECT_DOUBLE_EQ(up.reward, -0.01);
  const auto right = env.step(kRight);  // wall at (1, 2)
  EXPECT_FALSE(right.moved);
  EXPECT_EQ(env.agent(), (E::Position{1, 1}));
  EXPECT_EQ(env.steps(), 2);
  EXPECT_TRUE(env.step(kLeft).moved);
  EXPECT_EQ(env.agent(), (E::Position{1, 0}));
}

TEST(EnvGridWorld, GridEdgeBlocks) {
  auto env = started("A.\n.G\n");
  EXPECT_FALSE(env.step(kUp).moved);
  EXPECT_FALSE(env.step(kLeft).moved);
  EXPECT_EQ(env.agent(), (E::Position{0, 0}));
  EXPECT_TRUE(env.step(kRight).moved);
  EXPECT_FALSE(env.step(kRight).moved);
  EXPECT_FALSE(env.step(kUp).moved);
  EXPECT_EQ(env.agent(), (E::Position{0, 1}));
  auto bottom = started("G.\n.A\n");
  EXPECT_FALSE(bottom.step(kDown).moved);
  EXPECT_FALSE(bottom.step(kRight).moved);
  EXPECT_EQ(bottom.agent(), (E::Position{1, 1}));
}

TEST(EnvGridWorld, GoalTerminatesWithTheGoalReward) {
  auto env = started(kSmall);
  EXPECT_FALSE(env.step(kDown).done);  // onto the distractor, no penalty by default
  EXPECT_FALSE(env.step(kRight).done);
  const auto last = env.step(kRight);
  EXPECT_TRUE(last.done);
  EXPECT_TRUE(last.reached_goal);
  EXPECT_FALSE(last.truncated);
  EXPECT_DOUBLE_EQ(last.reward, 1.0 - 0.01);
  EXPECT_NEAR(env.episode_return(), 1.0 - 3 * 0.01, 1e-12);
  EXPECT_TRUE(env.done());
  expect_error([&] { env.step(kUp); }, {"episode is over", "reset"});
}

TEST(EnvGridWorld, StepCostAndDistractorPenaltyAreConfigurable) {
  auto env = started(
      kSmall, E::GridWorldOptions().step_cost(0.25).distractor_penalty(0.5).goal_reward(3.0));
  EXPECT_DOUBLE_EQ(env.step(kUp).reward, -0.25);          // blocked
  EXPECT_DOUBLE_EQ(env.step(kDown).reward, -0.75);        // enters distractor a
  EXPECT_DOUBLE_EQ(env.step(kDown).reward, -0.25);        // edge-blocked on the distractor
  EXPECT_DOUBLE_EQ(env.step(kRight).reward, -0.25);       // leaves it
  EXPECT_DOUBLE_EQ(env.step(kRight).reward, 3.0 - 0.25);  // goal
  EXPECT_NEAR(env.episode_return(), 3.0 - 5 * 0.25 - 0.5, 1e-12);
  // Distractors are walkable, never consumed and never terminate.
  auto free = started(kSmall, E::GridWorldOptions().step_cost(0.0));
  EXPECT_DOUBLE_EQ(free.step(kDown).reward, 0.0);
  EXPECT_EQ(free.level().at({2, 1}), E::Cell::DistractorA);
}

TEST(EnvGridWorld, MaxStepsTruncatesWithoutGoalReward) {
  auto env = started(kSmall, E::GridWorldOptions().max_steps(3));
  EXPECT_EQ(env.max_steps(), 3);
  EXPECT_FALSE(env.step(kUp).done);
  EXPECT_FALSE(env.step(kUp).done);
  const auto last = env.step(kUp);
  EXPECT_TRUE(last.done);
  EXPECT_TRUE(last.truncated);
  EXPECT_FALSE(last.reached_goal);
  EXPECT_DOUBLE_EQ(last.reward, -0.01);
  EXPECT_NEAR(env.episode_return(), -0.03, 1e-12);
  // The goal on the last allowed step is a success, not a truncation.
  auto exact = started(kSmall, E::GridWorldOptions().max_steps(3));
  exact.step(kDown);
  exact.step(kRight);
  const auto goal = exact.step(kRight);
  EXPECT_TRUE(goal.reached_goal);
  EXPECT_FALSE(goal.truncated);
  // 0 means 4 * (height + width).
  EXPECT_EQ(started(kSmall).max_steps(), 4 * (3 + 4));
}

TEST(EnvGridWorld, InvalidActionRejected) {
  auto env = started(kSmall);
  expect_error([&] { env.step(4); }, {"action", "[0, 4)", "got 4"});
  expect_error([&] { env.step(-1); }, {"action", "[0, 4)", "got -1"});
  EXPECT_EQ(env.steps(), 0);
  const auto level = E::parse_level(kSmall);
  expect_error([&] { E::next_position(level, level.start, 7); }, {"action", "[0, 4)", "got 7"});
  E::GridWorld fresh;
  expect_error([&] { fresh.step(0); }, {"reset"});
}

TEST(EnvGridWorld, MalformedLevelsRejected) {
  const auto good = E::parse_level(kSmall);
  EXPECT_NO_THROW(E::validate_level(good));
  auto bad = good;
  bad.height = 0;
  expect_error([&] { E::validate_level(bad); }, {"height and width must be >= 1", "0 x 4"});
  bad = good;
  bad.width = -2;
  expect_error([&] { E::validate_level(bad); }, {"height and width must be >= 1"});
  bad = good;
  bad.cells.pop_back();
  expect_error([&] { E::validate_level(bad); }, {"expected height * width = 12 cells, got 11"});
  bad = good;
  bad.cells[0] = static_cast<E::Cell>(9);
  expect_error([&] { E::validate_level(bad); }, {"unknown type 9"});
  bad = good;
  bad.cells[11] = E::Cell::Empty;
  expect_error([&] { E::validate_level(bad); }, {"exactly one goal cell, got 0"});
  bad = good;
  bad.cells[0] = E::Cell::Goal;
  expect_error([&] { E::validate_level(bad); }, {"exactly one goal cell, got 2"});
  bad = good;
  bad.goal = {0, 0};
  expect_error([&] { E::validate_level(bad); }, {"goal (0, 0) is not the goal cell"});
  bad = good;
  bad.start = {3, 0};
  expect_error([&] { E::validate_level(bad); }, {"start (3, 0) is outside"});
  bad = good;
  bad.start = {0, -1};
  expect_error([&] { E::validate_level(bad); }, {"start (0, -1) is outside"});
  bad = good;
  bad.start = {0, 1};
  expect_error([&] { E::validate_level(bad); }, {"start (0, 1) is on a wall"});
  bad = good;
  bad.start = bad.goal;
  expect_error([&] { E::validate_level(bad); }, {"is on the goal"});
  expect_error([] { E::parse_level("A#.\n##.\n..G\n"); }, {"unreachable", "start (0, 0)"});
  E::GridWorld env;
  expect_error([&] { env.reset(bad); }, {"invalid level"});
}

TEST(EnvGridWorld, TextRoundTrip) {
  const auto level = E::parse_level(kSmall);
  EXPECT_EQ(level.height, 3);
  EXPECT_EQ(level.width, 4);
  EXPECT_EQ(level.start, (E::Position{1, 1}));
  EXPECT_EQ(level.goal, (E::Position{2, 3}));
  EXPECT_EQ(level.at({1, 1}), E::Cell::Empty);
  EXPECT_EQ(level.at({0, 1}), E::Cell::Wall);
  EXPECT_EQ(level.at({2, 1}), E::Cell::DistractorA);
  EXPECT_EQ(E::render_level(level), kSmall);
  EXPECT_EQ(E::render_level(level, {2, 1}), ".#..\n..#.\n.A.G\n");
  const std::string all = "abc#\n.A.G\n";
  EXPECT_EQ(E::render_level(E::parse_level(all)), all);
  // CRLF and a missing final newline parse to the same level.
  EXPECT_EQ(E::parse_level(".#..\r\n.A#.\r\n.a.G"), level);
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const auto generated = E::generate_level(seed);
    EXPECT_EQ(E::parse_level(E::render_level(generated)), generated) << "seed " << seed;
  }
}

TEST(EnvGridWorld, ParseErrorsNameLineColumnAndCharacter) {
  expect_error([] { E::parse_level(".A.\n.xG\n"); }, {"line 2, column 2", "'x'"});
  expect_error([] { E::parse_level("A..\n..G.\n"); }, {"line 2 has 4 cells, expected 3"});
  expect_error([] { E::parse_level("AG\nG.\n"); }, {"line 2, column 1", "second goal"});
  expect_error([] { E::parse_level("AA\n.G\n"); }, {"line 1, column 2", "second agent"});
  expect_error([] { E::parse_level("A.\n..\n"); }, {"no goal"});
  expect_error([] { E::parse_level("G.\n..\n"); }, {"no agent"});
  expect_error([] { E::parse_level(""); }, {"line 1 is empty"});
}

TEST(EnvGridWorld, ObservationTokens) {
  const auto level = E::parse_level(kSmall);
  const auto obs = E::observe(level, level.start);
  EXPECT_EQ(obs.height, 3);
  EXPECT_EQ(obs.width, 4);
  for (const auto& t : {obs.types, obs.rows, obs.cols}) {
    EXPECT_EQ(t.scalar_type(), torch::kInt64);
    EXPECT_EQ(t.sizes(), torch::IntArrayRef({12}));
  }
  EXPECT_TRUE(obs.types.equal(torch::tensor({0, 1, 0, 0, 0, 6, 1, 0, 0, 3, 0, 2}, torch::kInt64)));
  EXPECT_TRUE(obs.rows.equal(torch::tensor({0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2}, torch::kInt64)));
  EXPECT_TRUE(obs.cols.equal(torch::tensor({0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3}, torch::kInt64)));
  // The agent token replaces the distractor under it.
  EXPECT_EQ(E::observe(level, {2, 1}).types[9].item<int64_t>(), E::kAgentToken);
  const auto batch = E::stack_observations({obs, E::observe(level, {2, 1})});
  EXPECT_EQ(batch.types.sizes(), torch::IntArrayRef({2, 12}));
  EXPECT_EQ(batch.rows.sizes(), torch::IntArrayRef({2, 12}));
  expect_error([&] { E::observe(level, {3, 0}); }, {"agent (3, 0)"});
}

TEST(EnvGridWorld, GeneratedLevelsAreDeterministicAndDiffer) {
  const auto options = E::GridWorldOptions().height(7).width(8);
  std::set<std::string> distinct;
  for (uint64_t seed = 0; seed < 30; ++seed) {
    const auto a = E::generate_level(seed, options);
    EXPECT_EQ(a, E::generate_level(seed, options));
    distinct.insert(E::render_level(a));
  }
  EXPECT_EQ(distinct.size(), 30u);
  const auto levels = E::generate_levels(5, 3, options);
  ASSERT_EQ(levels.size(), 3u);
  EXPECT_EQ(levels[2], E::generate_level(7, options));
}

TEST(EnvGridWorld, GeneratedLevelsAreSolvableWithTheRequestedContents) {
  for (const auto& options :
       {E::GridWorldOptions(), E::GridWorldOptions().wall_density(0.45).num_distractors(5),
        E::GridWorldOptions().height(6).width(11).border_walls(true).wall_density(0.3)}) {
    const int64_t h = options.height(), w = options.width();
    const int64_t candidates = options.border_walls() ? (h - 2) * (w - 2) : h * w;
    const auto walls_expected = std::llround(options.wall_density() * candidates);
    for (uint64_t seed = 0; seed < 200; ++seed) {
      const auto level = E::generate_level(seed, options);
      const auto grid = lines_of(E::render_level(level));
      ASSERT_EQ(static_cast<int64_t>(grid.size()), h);
      int64_t walls = 0, goals = 0, distractors = 0, agents = 0;
      for (int64_t r = 0; r < h; ++r) {
        for (int64_t c = 0; c < w; ++c) {
          const char ch = grid[r][c];
          walls += ch == '#';
          goals += ch == 'G';
          agents += ch == 'A';
          distractors += ch == 'a' || ch == 'b' || ch == 'c';
          const bool edge = r == 0 || c == 0 || r == h - 1 || c == w - 1;
          if (options.border_walls() && edge) {
            EXPECT_EQ(ch, '#') << "seed " << seed;
          }
        }
      }
      const int64_t border = options.border_walls() ? 2 * (h + w) - 4 : 0;
      EXPECT_EQ(goals, 1);
      EXPECT_EQ(agents, 1);
      EXPECT_EQ(distractors, options.num_distractors()) << "seed " << seed;
      EXPECT_LE(walls, border + walls_expected) << "seed " << seed;  // fewer only after repair
      EXPECT_NE(level.start, level.goal);
      const int64_t d = bfs_steps(grid, level.start.row, level.start.col);
      EXPECT_GE(d, 1) << "seed " << seed << "\n" << E::render_level(level);
      EXPECT_LE(d, 4 * (h + w)) << "seed " << seed;
    }
  }
}

TEST(EnvGridWorld, GenerationHonoursAShortEpisodeLimit) {
  const auto options = E::GridWorldOptions().max_steps(3).wall_density(0.3);
  for (uint64_t seed = 0; seed < 100; ++seed) {
    const auto level = E::generate_level(seed, options);
    const int64_t d = bfs_steps(lines_of(E::render_level(level)), level.start.row, level.start.col);
    EXPECT_GE(d, 1);
    EXPECT_LE(d, 3) << "seed " << seed;
  }
}

// Nearly all-wall corridors: a draw rarely connects start and goal, so 100 draws often fail and the
// level is repaired by clearing a corridor (fewer walls than drawn), inside the border walls.
TEST(EnvGridWorld, GenerationRepairsHopelessDraws) {
  for (const auto& options :
       {E::GridWorldOptions().height(1).width(200).wall_density(0.985).num_distractors(1),
        E::GridWorldOptions()
            .height(3)
            .width(150)
            .wall_density(0.985)
            .num_distractors(0)
            .border_walls(true)}) {
    const int64_t h = options.height(), w = options.width();
    const bool border = options.border_walls();
    const int64_t drawn =
        (border ? 2 * (h + w) - 4 : 0) +
        std::llround(options.wall_density() * (border ? (h - 2) * (w - 2) : h * w));
    int64_t repaired = 0;
    for (uint64_t seed = 0; seed < 40; ++seed) {
      const auto level = E::generate_level(seed, options);
      const auto text = E::render_level(level);
      const auto grid = lines_of(text);
      EXPECT_GE(bfs_steps(grid, level.start.row, level.start.col), 1) << text;
      EXPECT_EQ(static_cast<int64_t>(std::count_if(text.begin(), text.end(),
                                                   [](char ch) { return ch >= 'a' && ch <= 'c'; })),
                options.num_distractors());
      if (border) {
        EXPECT_EQ(grid.front(), std::string(w, '#'));
        EXPECT_EQ(grid.back(), std::string(w, '#'));
      }
      repaired += std::count(text.begin(), text.end(), '#') < drawn;
    }
    EXPECT_GT(repaired, 0);
  }
}

TEST(EnvGridWorld, BadOptionsRejected) {
  expect_error([] { E::generate_level(0, E::GridWorldOptions().height(0)); }, {"height", "got 0"});
  expect_error([] { E::generate_level(0, E::GridWorldOptions().wall_density(1.0)); },
               {"wall_density", "[0, 1)"});
  expect_error([] { E::generate_level(0, E::GridWorldOptions().num_distractors(-1)); },
               {"num_distractors"});
  expect_error([] { E::generate_level(0, E::GridWorldOptions().max_steps(-5)); }, {"max_steps"});
  expect_error(
      [] { E::generate_level(0, E::GridWorldOptions().height(3).width(3).num_distractors(8)); },
      {"cannot hold", "num_distractors"});
  expect_error([] { E::generate_level(0, E::GridWorldOptions().height(2).border_walls(true)); },
               {"border_walls", "height and width >= 3"});
  expect_error([] { E::GridWorld(E::GridWorldOptions().step_cost(NAN)); }, {"step_cost"});
}

}  // namespace
