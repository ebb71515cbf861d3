#pragma once
// The procedurally generated grid world of the policy-distillation experiment (Intention paper,
// Garnelo & Czarnecki 2023, "from few-shot learning to policy distillation"; the setup is kvq's,
// see design/tasks.md, "Experiments of the Intention paper", item 3).
//
// A level is an H x W grid, row-major, row 0 at the top. Each cell is empty, a wall, the goal or
// one of three distractors (objects that look like the goal to a learner but are not). The agent's
// position is kept apart from the cells; the start cell itself is never a wall or the goal.
//
// Rules (GridWorld::step):
//   actions    0 up (row - 1), 1 down (row + 1), 2 left (col - 1), 3 right (col + 1); no "stay",
//              which is never optimal. An action outside [0, 4) throws.
//   blocking   a move into a wall or off the grid leaves the agent in place (the step still counts
//              and still costs). There are no implicit border walls: the grid edge blocks.
//   reward     every step: -step_cost; entering a distractor cell (moving onto it, not staying on
//              it after a blocked move): -distractor_penalty as well; distractors are not consumed;
//              entering the goal: +goal_reward as well, and the episode terminates.
//   limit      after max_steps steps without reaching the goal the episode is truncated (no goal
//              reward). Reaching the goal on step max_steps counts as success.
// So an optimal episode returns goal_reward - d * step_cost, d the shortest-path length.
//
// Text format (parse_level / render_level): one line per row, one character per cell:
//   '#' wall  '.' empty  'G' goal  'A' agent start (an empty cell)  'a' 'b' 'c' distractors.
#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace kvq {
namespace env {

// Cell types; the values are also the observation token ids.
enum class Cell : int64_t {
  Empty = 0,
  Wall = 1,
  Goal = 2,
  DistractorA = 3,
  DistractorB = 4,
  DistractorC = 5
};
inline constexpr int64_t kNumCellTypes = 6;
inline constexpr int64_t kNumDistractorKinds = 3;
// The observation marks the agent's cell with this token instead of the cell's own type.
inline constexpr int64_t kAgentToken = 6;
inline constexpr int64_t kNumTokenTypes = 7;  // embedding table size for observation types

inline constexpr int64_t kNumActions = 4;
inline constexpr std::array<const char*, 4> kActionNames = {"up", "down", "left", "right"};

struct Position {
  int64_t row = 0;
  int64_t col = 0;
};
bool operator==(const Position& a, const Position& b);
bool operator!=(const Position& a, const Position& b);

struct Level {
  int64_t height = 0;
  int64_t width = 0;
  std::vector<Cell> cells;  // row-major, height * width
  Position start;           // agent start: inside the grid, not a wall, not the goal
  Position goal;            // the position of the single Cell::Goal

  // Unchecked: p must be inside().
  Cell at(Position p) const { return cells[static_cast<size_t>(p.row * width + p.col)]; }
  bool inside(Position p) const {
    return p.row >= 0 && p.row < height && p.col >= 0 && p.col < width;
  }
};
bool operator==(const Level& a, const Level& b);
bool operator!=(const Level& a, const Level& b);

// Generation and rules of the grid world in one config; generate_level reads the first five
// fields, GridWorld the last four (and max_steps).
struct GridWorldOptions {
  /// Rows of generated levels. Default: 9.
  TORCH_ARG(int64_t, height) = 9;
  /// Columns of generated levels. Default: 9.
  TORCH_ARG(int64_t, width) = 9;
  /// Share of the candidate cells (all cells, or the interior with border_walls) that become
  /// walls, rounded to the nearest count, in [0, 1). Default: 0.2.
  TORCH_ARG(double, wall_density) = 0.2;
  /// Distractors per generated level, kinds a/b/c drawn uniformly. Default: 3.
  TORCH_ARG(int64_t, num_distractors) = 3;
  /// Generated levels get a ring of walls on the grid border (needs height, width >= 3).
  /// Default: false (the grid edge blocks anyway).
  TORCH_ARG(bool, border_walls) = false;
  /// Episode limit in steps; 0 means 4 * (height + width) of the level being played. Default: 0.
  TORCH_ARG(int64_t, max_steps) = 0;
  /// Cost charged on every step. Default: 0.01.
  TORCH_ARG(double, step_cost) = 0.01;
  /// Reward for entering the goal. Default: 1.0.
  TORCH_ARG(double, goal_reward) = 1.0;
  /// Extra cost for entering a distractor cell. Default: 0.0 (distractors are harmless).
  TORCH_ARG(double, distractor_penalty) = 0.0;
};

// Throws on a negative size, wall_density outside [0, 1), negative num_distractors or max_steps.
void check_options(const GridWorldOptions& options);

// The episode limit for `level`: options.max_steps, or 4 * (height + width) when it is 0.
int64_t resolved_max_steps(const GridWorldOptions& options, const Level& level);

// Throws a one-line c10::Error naming the defect: height or width < 1, cells.size() != H * W,
// an unknown cell value, not exactly one goal cell, `goal` not on it, start outside the grid, on a
// wall or on the goal, goal unreachable from the start.
void validate_level(const Level& level);

// The cell reached from p by `action` under the blocking rule (p itself when blocked). Throws for
// an action outside [0, kNumActions), naming the action and the valid range.
Position next_position(const Level& level, Position p, int64_t action);

// Breadth-first shortest-path lengths to the goal over non-wall cells (4-neighbourhood), row-major
// H * W; -1 for walls and cells from which the goal is unreachable. Used by validation,
// generation and the teacher (kvq/env/teacher.h).
std::vector<int64_t> goal_distances(const Level& level);

// A level drawn from std::mt19937_64(seed) (integers by rejection sampling on the raw output, so a
// seed gives the same level on every machine): exactly round(wall_density * candidates) walls, then
// the goal, the start and num_distractors distractors on distinct remaining cells (the start on an
// empty cell). Always solvable within the episode limit: if the start cannot reach the goal in at
// most resolved_max_steps steps it is redrawn among the empty cells that can; if none can (goal
// walled in) the whole level is redrawn; after 100 draws an L-shaped corridor from the goal to the
// start is cleared of walls. Throws when the options leave too few cells.
Level generate_level(uint64_t seed, const GridWorldOptions& options = {});
// Levels for seeds seed0, seed0 + 1, ..., seed0 + n - 1.
std::vector<Level> generate_levels(uint64_t seed0, int64_t n, const GridWorldOptions& options = {});

// Parses the text format: lines separated by '\n' (the last one optionally '\n'-terminated, a
// trailing '\r' per line ignored), all of the same width, exactly one 'A' and one 'G'. Errors name
// the line and column (1-based) and the character, or the defect validate_level finds.
Level parse_level(const std::string& text);
// The text format, one '\n'-terminated line per row; 'A' marks `agent` (default: level.start),
// whatever cell lies under it. parse_level(render_level(l)) == l when l.start is an empty cell.
std::string render_level(const Level& level);
std::string render_level(const Level& level, Position agent);

// Cell tokens of one state for a transformer: three int64 tensors of H * W entries, row-major.
// types: the Cell value of each cell, except kAgentToken at the agent's cell (which hides the cell
// under the agent: never a wall or the goal in a running episode); rows / cols: each cell's row and
// column index, for 2D position embeddings. Batched (B, H * W) where a function says so.
struct Observation {
  torch::Tensor types;
  torch::Tensor rows;
  torch::Tensor cols;
  int64_t height = 0;
  int64_t width = 0;
};
Observation observe(const Level& level, Position agent);
// Stacks single observations of equal size into a batch (B, H * W).
Observation stack_observations(const std::vector<Observation>& observations);

struct StepResult {
  Position agent;       // position after the step
  double reward = 0.0;  // this step's reward
  bool done = false;    // reached_goal || truncated
  bool reached_goal = false;
  bool truncated = false;
  bool moved = false;  // false when the move was blocked
  int64_t steps = 0;   // steps taken in this episode so far
};

// One episode at a time on a given level. The rules are at the top of this file.
class GridWorld {
 public:
  explicit GridWorld(GridWorldOptions options = {});

  // Starts an episode on `level` (validated) with the agent at level.start.
  void reset(const Level& level);
  // Applies `action` in [0, kNumActions). Throws before reset, after the episode ended, and for an
  // invalid action.
  StepResult step(int64_t action);
  // observe(level(), agent()).
  Observation observation() const;

  const Level& level() const { return level_; }
  const GridWorldOptions& options() const { return options_; }
  Position agent() const { return agent_; }
  int64_t steps() const { return steps_; }
  int64_t max_steps() const { return max_steps_; }
  bool done() const { return done_; }
  double episode_return() const { return return_; }

 private:
  GridWorldOptions options_;
  Level level_;
  Position agent_;
  int64_t steps_ = 0;
  int64_t max_steps_ = 0;
  double return_ = 0.0;
  bool started_ = false;
  bool done_ = false;
};

}  // namespace env
}  // namespace kvq
