#include "bleu_command.h"

#include <c10/util/Exception.h>

#include <CLI/CLI.hpp>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kvq/data/bleu.h"

namespace kvq {
namespace app {

void add_bleu_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "bleu", "Corpus BLEU of a JSON corpus on stdin (hypotheses, references, max_n)");
  cmd->group("");  // hidden: a test hook, not a user command
  cmd->callback([] {
    const auto in = nlohmann::json::parse(std::cin);
    using Sentence = std::vector<std::string>;
    const auto hypotheses = in.at("hypotheses").get<std::vector<Sentence>>();
    const auto references = in.at("references").get<std::vector<std::vector<Sentence>>>();
    const int max_n = in.value("max_n", 4);
    TORCH_CHECK(hypotheses.size() == references.size(), "kvq bleu: hypotheses (",
                hypotheses.size(), ") and references (", references.size(),
                ") must have one entry per sentence");
    const auto r = data::corpus_bleu(hypotheses, references, max_n);
    const nlohmann::json out = {{"bleu", r.bleu},
                                {"brevity_penalty", r.brevity_penalty},
                                {"matches", r.matches},
                                {"totals", r.totals},
                                {"precisions", r.precisions},
                                {"hypothesis_length", r.hypothesis_length},
                                {"reference_length", r.reference_length}};
    std::cout << out.dump() << std::endl;
  });
}

}  // namespace app
}  // namespace kvq
