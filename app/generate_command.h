#pragma once
// `kvq generate --run DIR`: text sampled from a char-lm (or human-numbers) run's checkpoint.
// `kvq translate --run DIR`: greedy translations by a translation run's checkpoint.
namespace CLI {
class App;
}

namespace kvq {
namespace app {

// Registers the `generate` and `translate` subcommands on `app`.
void add_generate_command(CLI::App& app);
void add_translate_command(CLI::App& app);

}  // namespace app
}  // namespace kvq
