#include "kvq/env/grid_world.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <random>
#include <sstream>

#include "kvq/util/sampler.h"

namespace kvq {
namespace env {
namespace {

constexpr int kMaxDraws = 100;
constexpr int64_t kRowStep[kNumActions] = {-1, 1, 0, 0};
constexpr int64_t kColStep[kNumActions] = {0, 0, -1, 1};

using util::uniform_below;

char cell_char(Cell cell) {
  switch (cell) {
    case Cell::Empty:
      return '.';
    case Cell::Wall:
      return '#';
    case Cell::Goal:
      return 'G';
    case Cell::DistractorA:
      return 'a';
    case Cell::DistractorB:
      return 'b';
    case Cell::DistractorC:
      return 'c';
  }
  return '?';
}

void check_action(int64_t action) {
  TORCH_CHECK(action >= 0 && action < kNumActions, "grid world: action must be in [0, ",
              kNumActions, ") (0 up, 1 down, 2 left, 3 right), got ", action);
}

bool is_distractor(Cell cell) {
  return cell == Cell::DistractorA || cell == Cell::DistractorB || cell == Cell::DistractorC;
}

int64_t index_of(const Level& level, Position p) { return p.row * level.width + p.col; }

// Redraws the start uniformly among the empty cells at distance [1, max_steps] from the goal.
bool redraw_start(Level& level, const std::vector<int64_t>& dist, int64_t max_steps,
                  std::mt19937_64& engine) {
  std::vector<int64_t> candidates;
  for (int64_t i = 0; i < level.height * level.width; ++i) {
    if (level.cells[i] == Cell::Empty && dist[i] >= 1 && dist[i] <= max_steps)
      candidates.push_back(i);
  }
  if (candidates.empty()) return false;
  const int64_t pick = candidates[uniform_below(engine, candidates.size())];
  level.start = {pick / level.width, pick % level.width};
  return true;
}

// One draw of the layout: walls, goal, start, distractors on distinct cells of `candidates`.
Level draw_layout(const GridWorldOptions& options, std::vector<int64_t> candidates,
                  int64_t num_walls, std::mt19937_64& engine) {
  Level level;
  level.height = options.height();
  level.width = options.width();
  level.cells.assign(static_cast<size_t>(level.height * level.width), Cell::Wall);
  for (int64_t i : candidates) level.cells[i] = Cell::Empty;
  const int64_t needed = num_walls + 2 + options.num_distractors();
  for (int64_t i = 0; i < needed; ++i) {  // partial Fisher-Yates
    const int64_t j = i + static_cast<int64_t>(uniform_below(engine, candidates.size() - i));
    std::swap(candidates[i], candidates[j]);
  }
  int64_t next = 0;
  for (; next < num_walls; ++next) level.cells[candidates[next]] = Cell::Wall;
  const int64_t goal = candidates[next++];
  const int64_t start = candidates[next++];
  level.cells[goal] = Cell::Goal;
  level.goal = {goal / level.width, goal % level.width};
  level.start = {start / level.width, start % level.width};
  for (int64_t k = 0; k < options.num_distractors(); ++k) {
    const auto kind = static_cast<int64_t>(uniform_below(engine, kNumDistractorKinds));
    level.cells[candidates[next++]] =
        static_cast<Cell>(static_cast<int64_t>(Cell::DistractorA) + kind);
  }
  return level;
}

}  // namespace

bool operator==(const Position& a, const Position& b) { return a.row == b.row && a.col == b.col; }
bool operator!=(const Position& a, const Position& b) { return !(a == b); }

bool operator==(const Level& a, const Level& b) {
  return a.height == b.height && a.width == b.width && a.cells == b.cells && a.start == b.start &&
         a.goal == b.goal;
}
bool operator!=(const Level& a, const Level& b) { return !(a == b); }

void check_options(const GridWorldOptions& options) {
  TORCH_CHECK(options.height() >= 1, "grid world: height must be >= 1, got ", options.height());
  TORCH_CHECK(options.width() >= 1, "grid world: width must be >= 1, got ", options.width());
  TORCH_CHECK(options.wall_density() >= 0.0 && options.wall_density() < 1.0,
              "grid world: wall_density must be in [0, 1), got ", options.wall_density());
  TORCH_CHECK(options.num_distractors() >= 0, "grid world: num_distractors must be >= 0, got ",
              options.num_distractors());
  TORCH_CHECK(options.max_steps() >= 0,
              "grid world: max_steps must be >= 0 (0 = 4 * (height + width)), got ",
              options.max_steps());
  TORCH_CHECK(std::isfinite(options.step_cost()) && std::isfinite(options.goal_reward()) &&
                  std::isfinite(options.distractor_penalty()),
              "grid world: step_cost, goal_reward and distractor_penalty must be finite, got ",
              options.step_cost(), ", ", options.goal_reward(), ", ", options.distractor_penalty());
}

int64_t resolved_max_steps(const GridWorldOptions& options, const Level& level) {
  return options.max_steps() > 0 ? options.max_steps() : 4 * (level.height + level.width);
}

std::vector<int64_t> goal_distances(const Level& level) {
  const int64_t n = level.height * level.width;
  TORCH_CHECK(level.height >= 1 && level.width >= 1 &&
                  static_cast<int64_t>(level.cells.size()) == n && level.inside(level.goal),
              "goal_distances: malformed level (", level.height, " x ", level.width, ", ",
              level.cells.size(), " cells, goal at (", level.goal.row, ", ", level.goal.col,
              ")); see validate_level");
  std::vector<int64_t> dist(static_cast<size_t>(n), -1);
  std::deque<Position> queue;
  dist[index_of(level, level.goal)] = 0;
  queue.push_back(level.goal);
  while (!queue.empty()) {
    const Position p = queue.front();
    queue.pop_front();
    for (int64_t a = 0; a < kNumActions; ++a) {
      const Position q{p.row + kRowStep[a], p.col + kColStep[a]};
      if (!level.inside(q) || level.at(q) == Cell::Wall || dist[index_of(level, q)] >= 0) continue;
      dist[index_of(level, q)] = dist[index_of(level, p)] + 1;
      queue.push_back(q);
    }
  }
  return dist;
}

void validate_level(const Level& level) {
  TORCH_CHECK(level.height >= 1 && level.width >= 1,
              "invalid level: height and width must be >= 1, got ", level.height, " x ",
              level.width);
  const int64_t n = level.height * level.width;
  TORCH_CHECK(static_cast<int64_t>(level.cells.size()) == n,
              "invalid level: expected height * width = ", n, " cells, got ", level.cells.size());
  int64_t goals = 0;
  for (int64_t i = 0; i < n; ++i) {
    const auto value = static_cast<int64_t>(level.cells[i]);
    TORCH_CHECK(value >= 0 && value < kNumCellTypes, "invalid level: cell (", i / level.width, ", ",
                i % level.width, ") has unknown type ", value, "; valid types are 0..",
                kNumCellTypes - 1);
    goals += level.cells[i] == Cell::Goal;
  }
  TORCH_CHECK(goals == 1, "invalid level: expected exactly one goal cell, got ", goals);
  TORCH_CHECK(level.inside(level.goal) && level.at(level.goal) == Cell::Goal,
              "invalid level: goal (", level.goal.row, ", ", level.goal.col,
              ") is not the goal cell");
  TORCH_CHECK(level.inside(level.start), "invalid level: start (", level.start.row, ", ",
              level.start.col, ") is outside the ", level.height, " x ", level.width, " grid");
  TORCH_CHECK(level.at(level.start) != Cell::Wall, "invalid level: start (", level.start.row, ", ",
              level.start.col, ") is on a wall");
  TORCH_CHECK(level.start != level.goal, "invalid level: start (", level.start.row, ", ",
              level.start.col, ") is on the goal");
  TORCH_CHECK(goal_distances(level)[index_of(level, level.start)] >= 0, "invalid level: goal (",
              level.goal.row, ", ", level.goal.col, ") is unreachable from start (",
              level.start.row, ", ", level.start.col, ")");
}

Position next_position(const Level& level, Position p, int64_t action) {
  check_action(action);
  const Position q{p.row + kRowStep[action], p.col + kColStep[action]};
  if (!level.inside(q) || level.at(q) == Cell::Wall) return p;
  return q;
}

Level generate_level(uint64_t seed, const GridWorldOptions& options) {
  check_options(options);
  const int64_t h = options.height(), w = options.width();
  const bool border = options.border_walls();
  TORCH_CHECK(!border || (h >= 3 && w >= 3),
              "generate_level: border_walls needs height and width >= 3, got ", h, " x ", w);
  std::vector<int64_t> candidates;
  for (int64_t r = 0; r < h; ++r) {
    for (int64_t c = 0; c < w; ++c) {
      if (!border || (r > 0 && r < h - 1 && c > 0 && c < w - 1)) candidates.push_back(r * w + c);
    }
  }
  const auto num_candidates = static_cast<int64_t>(candidates.size());
  const auto num_walls = static_cast<int64_t>(
      std::llround(options.wall_density() * static_cast<double>(num_candidates)));
  TORCH_CHECK(num_walls + 2 + options.num_distractors() <= num_candidates,
              "generate_level: ", num_candidates, " free cells cannot hold ", num_walls,
              " walls (wall_density ", options.wall_density(), "), the goal, the start and ",
              options.num_distractors(),
              " distractors (num_distractors); lower them or enlarge the grid");
  std::mt19937_64 engine(seed);
  Level level;
  for (int draw = 0; draw < kMaxDraws; ++draw) {
    level = draw_layout(options, candidates, num_walls, engine);
    const int64_t max_steps = resolved_max_steps(options, level);
    const auto dist = goal_distances(level);
    const int64_t d = dist[index_of(level, level.start)];
    if ((d >= 1 && d <= max_steps) || redraw_start(level, dist, max_steps, engine)) return level;
  }
  // Repair the last draw: clear the walls on the L-shaped corridor goal -> (start.row, goal.col)
  // -> start; the corridor lies inside the border, so border walls stay.
  Position p = level.goal;
  while (p != level.start) {
    if (p.row != level.start.row) {
      p.row += p.row < level.start.row ? 1 : -1;
    } else {
      p.col += p.col < level.start.col ? 1 : -1;
    }
    if (level.at(p) == Cell::Wall) level.cells[index_of(level, p)] = Cell::Empty;
  }
  const int64_t max_steps = resolved_max_steps(options, level);
  const auto dist = goal_distances(level);
  const int64_t d = dist[index_of(level, level.start)];
  TORCH_CHECK((d >= 1 && d <= max_steps) || redraw_start(level, dist, max_steps, engine),
              "generate_level: no empty cell within max_steps = ", max_steps,
              " of the goal for seed ", seed, "; raise max_steps or lower num_distractors");
  return level;
}

std::vector<Level> generate_levels(uint64_t seed0, int64_t n, const GridWorldOptions& options) {
  TORCH_CHECK(n >= 0, "generate_levels: n must be >= 0, got ", n);
  std::vector<Level> levels;
  levels.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    levels.push_back(generate_level(seed0 + static_cast<uint64_t>(i), options));
  return levels;
}

Level parse_level(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  TORCH_CHECK(!lines.empty() && !lines[0].empty(),
              "parse_level: line 1 is empty; expected a row of cells");
  Level level;
  level.height = static_cast<int64_t>(lines.size());
  level.width = static_cast<int64_t>(lines[0].size());
  bool have_agent = false, have_goal = false;
  for (int64_t r = 0; r < level.height; ++r) {
    const auto& line = lines[r];
    TORCH_CHECK(static_cast<int64_t>(line.size()) == level.width, "parse_level: line ", r + 1,
                " has ", line.size(), " cells, expected ", level.width, " (the width of line 1)");
    for (int64_t c = 0; c < level.width; ++c) {
      const char ch = line[c];
      Cell cell = Cell::Empty;
      switch (ch) {
        case '.':
          break;
        case '#':
          cell = Cell::Wall;
          break;
        case 'a':
          cell = Cell::DistractorA;
          break;
        case 'b':
          cell = Cell::DistractorB;
          break;
        case 'c':
          cell = Cell::DistractorC;
          break;
        case 'G':
          TORCH_CHECK(!have_goal, "parse_level: line ", r + 1, ", column ", c + 1,
                      ": a second goal 'G'; a level has exactly one");
          have_goal = true;
          cell = Cell::Goal;
          level.goal = {r, c};
          break;
        case 'A':
          TORCH_CHECK(!have_agent, "parse_level: line ", r + 1, ", column ", c + 1,
                      ": a second agent 'A'; a level has exactly one");
          have_agent = true;
          level.start = {r, c};
          break;
        default:
          TORCH_CHECK(
              false, "parse_level: line ", r + 1, ", column ", c + 1, ": unexpected character '",
              ch, "' (code ", static_cast<int>(static_cast<unsigned char>(ch)),
              "); valid: '#' wall, '.' empty, 'G' goal, 'A' agent, 'a' 'b' 'c' distractors");
      }
      level.cells.push_back(cell);
    }
  }
  TORCH_CHECK(have_goal, "parse_level: no goal 'G' in the level");
  TORCH_CHECK(have_agent, "parse_level: no agent 'A' in the level");
  validate_level(level);
  return level;
}

std::string render_level(const Level& level) { return render_level(level, level.start); }

std::string render_level(const Level& level, Position agent) {
  TORCH_CHECK(level.height >= 1 && level.width >= 1 &&
                  static_cast<int64_t>(level.cells.size()) == level.height * level.width,
              "render_level: malformed level (", level.height, " x ", level.width, ", ",
              level.cells.size(), " cells); see validate_level");
  std::string out;
  out.reserve(static_cast<size_t>((level.width + 1) * level.height));
  for (int64_t r = 0; r < level.height; ++r) {
    for (int64_t c = 0; c < level.width; ++c) {
      out += Position{r, c} == agent ? 'A' : cell_char(level.at({r, c}));
    }
    out += '\n';
  }
  return out;
}

Observation observe(const Level& level, Position agent) {
  TORCH_CHECK(
      static_cast<int64_t>(level.cells.size()) == level.height * level.width && level.inside(agent),
      "observe: agent (", agent.row, ", ", agent.col, ") must lie inside the ", level.height, " x ",
      level.width, " grid of a well-formed level");
  const int64_t n = level.height * level.width;
  Observation obs;
  obs.height = level.height;
  obs.width = level.width;
  obs.types = torch::empty({n}, torch::kInt64);
  obs.rows = torch::empty({n}, torch::kInt64);
  obs.cols = torch::empty({n}, torch::kInt64);
  int64_t* t = obs.types.data_ptr<int64_t>();
  int64_t* r = obs.rows.data_ptr<int64_t>();
  int64_t* c = obs.cols.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    t[i] = static_cast<int64_t>(level.cells[i]);
    r[i] = i / level.width;
    c[i] = i % level.width;
  }
  t[index_of(level, agent)] = kAgentToken;
  return obs;
}

Observation stack_observations(const std::vector<Observation>& observations) {
  TORCH_CHECK(!observations.empty(), "stack_observations: observations must not be empty");
  std::vector<torch::Tensor> types, rows, cols;
  for (const auto& o : observations) {
    TORCH_CHECK(o.height == observations[0].height && o.width == observations[0].width,
                "stack_observations: all observations must be ", observations[0].height, " x ",
                observations[0].width, ", got ", o.height, " x ", o.width);
    types.push_back(o.types);
    rows.push_back(o.rows);
    cols.push_back(o.cols);
  }
  return {torch::stack(types), torch::stack(rows), torch::stack(cols), observations[0].height,
          observations[0].width};
}

GridWorld::GridWorld(GridWorldOptions options) : options_(options) { check_options(options_); }

void GridWorld::reset(const Level& level) {
  validate_level(level);
  level_ = level;
  agent_ = level.start;
  steps_ = 0;
  max_steps_ = resolved_max_steps(options_, level_);
  return_ = 0.0;
  started_ = true;
  done_ = false;
}

StepResult GridWorld::step(int64_t action) {
  check_action(action);
  TORCH_CHECK(started_, "GridWorld::step: call reset(level) first");
  TORCH_CHECK(!done_, "GridWorld::step: the episode is over (after ", steps_,
              " steps); call reset(level)");
  StepResult result;
  const Position next = next_position(level_, agent_, action);
  result.moved = next != agent_;
  agent_ = next;
  ++steps_;
  result.reward = -options_.step_cost();
  const Cell cell = level_.at(agent_);
  if (result.moved && is_distractor(cell)) result.reward -= options_.distractor_penalty();
  if (cell == Cell::Goal) {
    result.reward += options_.goal_reward();
    result.reached_goal = true;
  } else if (steps_ >= max_steps_) {
    result.truncated = true;
  }
  result.done = result.reached_goal || result.truncated;
  done_ = result.done;
  return_ += result.reward;
  result.agent = agent_;
  result.steps = steps_;
  return result;
}

Observation GridWorld::observation() const {
  TORCH_CHECK(started_, "GridWorld::observation: call reset(level) first");
  return observe(level_, agent_);
}

}  // namespace env
}  // namespace kvq
