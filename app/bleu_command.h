#pragma once
// `kvq bleu` (hidden; for tests): kvq::data::corpus_bleu on a JSON corpus read from stdin,
//   {"hypotheses": [[tok, ...], ...], "references": [[[tok, ...], ...], ...], "max_n": 4}
// (references[i]: the references of hypothesis i, at least one; max_n optional, default 4), printed
// as one JSON object: bleu, brevity_penalty, matches, totals, precisions, hypothesis_length,
// reference_length, with 17 significant digits.
namespace CLI {
class App;
}

namespace kvq {
namespace app {

// Registers the hidden `bleu` subcommand on `app`.
void add_bleu_command(CLI::App& app);

}  // namespace app
}  // namespace kvq
