// gettext PO catalogs (msgunfmt's output, from which the default English->German corpus is
// built): kvq::data::parse_po on the input text, then clean_gettext_pair on every pair, as
// build_gettext_en_de_corpus does. Accepted pairs have a non-empty translation and valid UTF-8;
// cleaned pairs are trimmed, free of control characters and within the token limits.
#include "fuzz_target.h"
#include "kvq/data/parallel_text.h"

KVQ_FUZZ_TARGET(po) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::string what = "fuzz.po";
  std::vector<kvq::data::TextPair> pairs;
  try {
    pairs = kvq::data::parse_po(text, what);
  } catch (const c10::Error& e) {
    kvq::fuzz::expect_names(e, what);
    return 0;
  }
  const auto options = kvq::data::GettextFilterOptions().min_tokens(1).max_tokens(40);
  for (const auto& pair : pairs) {
    kvq::fuzz::expect(!pair.target.empty(), "parse_po returned an untranslated entry");
    const auto cleaned = kvq::data::clean_gettext_pair(pair, options);
    if (!cleaned) continue;
    for (const std::string* side : {&cleaned->source, &cleaned->target}) {
      kvq::fuzz::expect(!side->empty() && side->front() != ' ' && side->back() != ' ',
                        "clean_gettext_pair kept an untrimmed side");
      for (const unsigned char c : *side) {
        kvq::fuzz::expect(c >= 0x20 && c != 0x7F,
                          "clean_gettext_pair kept a control character");
      }
      const auto n = static_cast<int64_t>(kvq::data::tokenize_words(*side).size());
      kvq::fuzz::expect(n >= options.min_tokens() && n <= options.max_tokens(),
                        "clean_gettext_pair kept a side outside the token limits");
    }
  }
  return 0;
}
