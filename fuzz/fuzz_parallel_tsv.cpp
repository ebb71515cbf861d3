// Parallel text as TSV (the translation task's --set tsv_file): kvq::data::read_parallel_tsv on
// the input as a file, strict and with ignore_extra_columns, then what the translation task does
// with the pairs: tokenize_words, WordVocab::build, encode_parallel, parallel_corpus_stats. An
// accepted file must hold pairs with non-empty fields and no TAB, and pairs without CR write back
// (write_parallel_tsv) to a file that reads to the same pairs.
#include "fuzz_target.h"
#include "kvq/data/parallel_text.h"

namespace {

void check_pairs(const std::vector<kvq::data::TextPair>& pairs) {
  kvq::fuzz::expect(!pairs.empty(), "read_parallel_tsv returned no pairs without an error");
  std::vector<std::vector<std::string>> sources;
  bool has_cr = false;
  for (const auto& p : pairs) {
    kvq::fuzz::expect(!p.source.empty() && !p.target.empty() &&
                          p.source.find_first_of("\t\n") == std::string::npos &&
                          p.target.find_first_of("\t\n") == std::string::npos,
                      "read_parallel_tsv returned an empty field or one with a TAB or LF");
    has_cr = has_cr || p.source.find('\r') != std::string::npos ||
             p.target.find('\r') != std::string::npos;
    sources.push_back(kvq::data::tokenize_words(p.source));
  }
  const auto vocab = kvq::data::WordVocab::build(sources, 1);
  const auto encoded = kvq::data::encode_parallel(pairs, vocab, vocab, 8);
  kvq::fuzz::expect(encoded.source.size(0) == static_cast<int64_t>(pairs.size()) &&
                        encoded.source.size(1) <= 10,
                    "encode_parallel: wrong shape");
  (void)kvq::data::parallel_corpus_stats(pairs);

  const std::string copy = kvq::fuzz::scratch_dir() + "/copy.tsv";
  try {
    kvq::data::write_parallel_tsv(copy, pairs);
  } catch (const c10::Error& e) {
    kvq::fuzz::expect(has_cr, std::string("write_parallel_tsv refused pairs without CR: ") +
                                  e.what_without_backtrace());
    return;
  }
  kvq::fuzz::expect(!has_cr, "write_parallel_tsv accepted a field with a CR");
  const auto again = kvq::data::read_parallel_tsv(copy);
  kvq::fuzz::expect(again.size() == pairs.size(), "TSV round trip changed the number of pairs");
  for (size_t i = 0; i < pairs.size(); ++i) {
    kvq::fuzz::expect(again[i].source == pairs[i].source && again[i].target == pairs[i].target,
                      "TSV round trip changed pair " + std::to_string(i));
  }
}

}  // namespace

KVQ_FUZZ_TARGET(parallel_tsv) {
  const std::string path = kvq::fuzz::write_scratch("pairs.tsv", data, size);
  for (const bool extra : {false, true}) {
    std::vector<kvq::data::TextPair> pairs;
    try {
      pairs = kvq::data::read_parallel_tsv(path, extra);
    } catch (const c10::Error& e) {
      kvq::fuzz::expect_names(e, path);
      continue;
    }
    check_pairs(pairs);
  }
  return 0;
}
