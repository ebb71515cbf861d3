#pragma once
// Sentence-pair corpora for translation: a TSV reader, a word-level tokeniser and vocabulary,
// deterministic splits, corpus statistics, tensor encoding, and the default English -> German
// corpus built offline from the German gettext catalogs of a pinned list of Debian packages.
#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace kvq {
namespace data {

struct TextPair {
  std::string source;
  std::string target;
};

// ---- Files ----

// One pair per line, "source<TAB>target" (Tatoeba / Anki exports), UTF-8, "\n" or "\r\n" line
// ends; blank lines are skipped. With ignore_extra_columns, fields after the second are dropped
// (manythings.org exports carry a third attribution column); otherwise a line must hold exactly one
// TAB. Errors name the file and the 1-based line: wrong field count, an empty field, invalid UTF-8.
std::vector<TextPair> read_parallel_tsv(const std::string& path, bool ignore_extra_columns = false);

// The inverse of read_parallel_tsv. Throws when a field is empty or holds a TAB, CR or LF. When
// the first source starts with U+FEFF, the file starts with a byte-order mark of its own (which
// the reader drops), so that the field reads back whole.
void write_parallel_tsv(const std::string& path, const std::vector<TextPair>& pairs);

// ---- Tokens ----

// Word-level tokeniser, a pure function of the text:
//  1. Decode UTF-8 (invalid input throws).
//  2. Lower-case A-Z and the Latin-1 capitals U+00C0..U+00DE except U+00D7 (so A-Z, Ä, Ö, Ü, É...
//     map to a-z, ä, ö, ü, é...); every other code point is kept as is.
//  3. White space (ASCII space, \t \n \v \f \r, U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028,
//     U+2029, U+202F, U+205F, U+3000) separates tokens and is dropped.
//  4. Word characters are ASCII letters and digits, U+00C0..U+00FF except U+00D7 and U+00F7, and
//     every code point from U+0100 up except the punctuation blocks U+2000..U+206F, U+2E00..U+2E7F
//     and U+3000..U+303F. A token is a maximal run of word characters; an apostrophe (U+0027 or
//     U+2019) between two word characters stays inside the word ("don't", "geht's").
//  5. Every other code point (ASCII punctuation and symbols, U+0080..U+00BF such as « » ¿ °, × ÷,
//     the punctuation blocks) is a token of its own: "Hello, world!" -> hello , world !
// Tokens are UTF-8 strings.
std::vector<std::string> tokenize_words(const std::string& text);

// Word vocabulary with the special tokens at fixed ids, then the other tokens by descending
// frequency, ties in ascending byte order (deterministic for given input).
class WordVocab {
 public:
  static constexpr int64_t kPad = 0;
  static constexpr int64_t kUnk = 1;
  static constexpr int64_t kBos = 2;
  static constexpr int64_t kEos = 3;
  static constexpr std::array<const char*, 4> kSpecials = {"<pad>", "<unk>", "<bos>", "<eos>"};

  WordVocab();  // the four specials only
  // From a saved token list, which must start with the four specials in order and hold no
  // duplicates.
  explicit WordVocab(std::vector<std::string> tokens);
  // Tokens occurring at least min_freq times over `sentences`; max_size > 0 caps the size
  // (specials included), keeping the most frequent.
  static WordVocab build(const std::vector<std::vector<std::string>>& sentences,
                         int64_t min_freq = 2, int64_t max_size = 0);

  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
  const std::vector<std::string>& tokens() const { return tokens_; }
  const std::string& token(int64_t id) const;
  int64_t id(const std::string& token) const;  // kUnk when absent
  // Token ids, wrapped in <bos> ... <eos> when add_bos_eos.
  std::vector<int64_t> encode(const std::vector<std::string>& tokens, bool add_bos_eos) const;
  // Ids -> tokens: stops at the first <eos>, skips <bos> and <pad>, keeps <unk> as "<unk>".
  std::vector<std::string> decode(const std::vector<int64_t>& ids) const;

 private:
  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int64_t> index_;
};

// ---- Splits, statistics, tensors ----

struct ParallelSplits {
  std::vector<TextPair> train, val, test;
};

// Shuffles the pairs with a Fisher-Yates shuffle driven by std::mt19937_64(seed) (bounded draws by
// rejection, no std distributions, so the split is the same on every machine), then takes
// n_test = floor(test_fraction * N) and n_val = floor(val_fraction * N) pairs for test and val from
// the end and leaves the first N - n_val - n_test for train.
ParallelSplits split_parallel(const std::vector<TextPair>& pairs, uint64_t seed,
                              double val_fraction = 0.05, double test_fraction = 0.05);

// Lengths are in tokenize_words tokens; vocab sizes count distinct tokens (no frequency cut-off).
struct ParallelCorpusStats {
  int64_t pairs = 0;
  double mean_source_len = 0, mean_target_len = 0;
  int64_t max_source_len = 0, max_target_len = 0;
  int64_t source_vocab = 0, target_vocab = 0;
};
ParallelCorpusStats parallel_corpus_stats(const std::vector<TextPair>& pairs);
std::string to_string(const ParallelCorpusStats& stats);

// Source and target as padded int64 (N, S) and (N, T): each row is <bos> tokens <eos> then <pad>
// (WordVocab::kPad) up to the longest row. max_tokens > 0 keeps at most that many tokens of a
// sentence before <bos>/<eos> are added.
struct EncodedParallel {
  torch::Tensor source;
  torch::Tensor target;
};
EncodedParallel encode_parallel(const std::vector<TextPair>& pairs, const WordVocab& source_vocab,
                                const WordVocab& target_vocab, int64_t max_tokens = 0);

// ---- The default English -> German corpus from gettext catalogs ----

struct GettextCatalog {
  const char* package;  // Debian package that installs /usr/share/locale/de/LC_MESSAGES/<domain>.mo
  const char* domain;
};

// Pinned list, in the order the corpus is assembled (it decides which duplicate is kept). Command-
// line tools, libraries and locale-only packages: none starts a service (the PostgreSQL server's
// catalogs are left out for that reason; its client's are in).
inline constexpr std::array<GettextCatalog, 29> kGettextDeCatalogs = {{
    {"coreutils", "coreutils"},
    {"tar", "tar"},
    {"sed", "sed"},
    {"grep", "grep"},
    {"findutils", "findutils"},
    {"diffutils", "diffutils"},
    {"bash", "bash"},
    {"dpkg", "dpkg"},
    {"apt", "apt"},
    {"libapt-pkg6.0", "libapt-pkg6.0"},
    {"libc-l10n", "libc"},
    {"git", "git"},
    {"gnupg-l10n", "gnupg2"},
    {"gcc-12-locales", "gcc-12"},
    {"gcc-12-locales", "cpplib-12"},
    {"make", "make"},
    {"wget", "wget"},
    {"gettext", "gettext-tools"},
    {"gettext-base", "gettext-runtime"},
    {"binutils-common", "ld"},
    {"binutils-common", "gprof"},
    {"binutils-common", "opcodes"},
    {"iso-codes", "iso_3166-1"},
    {"iso-codes", "iso_639-2"},
    {"iso-codes", "iso_4217"},
    {"iso-codes", "iso_15924"},
    {"libpq5", "libpq5-15"},
    {"postgresql-client-15", "psql-15"},
    {"postgresql-client-15", "pg_dump-15"},
}};

// msgid -> msgstr pairs of a PO text (the output of msgunfmt): string continuations joined, C
// escapes decoded, msgctxt ignored, plural entries give (msgid, msgstr[0]); the header (empty
// msgid) and untranslated entries (empty msgstr) are dropped. `what` names the source in errors.
std::vector<TextPair> parse_po(const std::string& po_text, const std::string& what);

// parse_po of `msgunfmt <mo_path>` (package gettext). The catalog must be UTF-8.
std::vector<TextPair> read_mo_catalog(const std::string& mo_path);

struct GettextFilterOptions {
  /// Fewest tokenize_words tokens on each side. Default: 3.
  TORCH_ARG(int64_t, min_tokens) = 3;
  /// Most tokenize_words tokens on each side. Default: 40.
  TORCH_ARG(int64_t, max_tokens) = 40;
};

// The cleaned pair when it is a usable sentence pair, else an empty optional. Both sides are
// trimmed of surrounding white space, then the pair is dropped when:
//  - a side holds a control character (U+0000..U+001F, U+007F): multi-line and tabbed strings;
//  - a side holds three spaces in a row: column-aligned option tables of --help texts;
//  - the sides are identical (untranslated copies, command names);
//  - a side has fewer than min_tokens or more than max_tokens tokens;
//  - it is format-only or mostly placeholders: with P = the number of placeholders in the source
//    and W = the number of words of 2+ letters left after removing them, the pair is kept only if
//    W >= 1 and 2 P <= W; the target must also contain a word of 2+ letters. Placeholders are
//    printf conversions (%s %d %1$s %-10.3lu %.*s %%; flags - + # 0 only, so the "% o" of
//    "50% of" stays text), gettext's %<PRIuMAX>, GCC's diagnostic directives (%qs %q#D %wu %L
//    %qE ...; its quote marks %< %> are removed without counting), braces {0} {name} ${var}, $1.
c10::optional<TextPair> clean_gettext_pair(const TextPair& pair,
                                           const GettextFilterOptions& options = {});

struct GettextCatalogReport {
  std::string package, domain, version;  // version from dpkg-query, "unknown" without dpkg
  int64_t entries = 0;  // translated entries in the catalog
  int64_t kept = 0;     // passing clean_gettext_pair
  int64_t added = 0;    // kept and new (source not seen in an earlier catalog)
};

// Builds the corpus from locale_dir/de/LC_MESSAGES/<domain>.mo for every catalog in
// kGettextDeCatalogs, in order: clean_gettext_pair, then deduplicated by source text (the first
// translation of an English string wins, so no source appears twice and splits cannot share one).
// Writes cache_path (TSV) and cache_path + ".manifest" (one line per catalog: package, domain,
// version, entries, kept, added) and returns the per-catalog report. Throws, listing every missing
// .mo file with its Debian package and the apt-get line to install them, when any is absent, or
// when msgunfmt (package gettext) is missing.
std::vector<GettextCatalogReport> build_gettext_en_de_corpus(
    const std::string& cache_path, const GettextFilterOptions& options = {},
    const std::string& locale_dir = "/usr/share/locale");

// read_parallel_tsv(cache_path), building the cache first when it does not exist.
std::vector<TextPair> load_gettext_en_de(const std::string& cache_path);

}  // namespace data
}  // namespace kvq
