#include "kvq/data/parallel_text.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <random>
#include <sstream>

#include "kvq/data/char_corpus.h"
#include "kvq/data/io.h"
#include "kvq/util/atomic_file.h"
#include "kvq/util/sampler.h"

namespace kvq {
namespace data {
namespace {

// ---- Character classes of tokenize_words (documented in the header) ----

bool is_space(char32_t c) {
  return c == U' ' || (c >= U'\t' && c <= U'\r') || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

bool is_word_char(char32_t c) {
  if (c < 0x80) return (c >= U'a' && c <= U'z') || (c >= U'A' && c <= U'Z') ||
                       (c >= U'0' && c <= U'9');
  if (c < 0xC0) return false;
  if (c <= 0xFF) return c != 0xD7 && c != 0xF7;
  return !((c >= 0x2000 && c <= 0x206F) || (c >= 0x2E00 && c <= 0x2E7F) ||
           (c >= 0x3000 && c <= 0x303F));
}

bool is_letter(char32_t c) { return is_word_char(c) && !(c >= U'0' && c <= U'9'); }

bool is_apostrophe(char32_t c) { return c == U'\'' || c == 0x2019; }

char32_t to_lower(char32_t c) {
  if (c >= U'A' && c <= U'Z') return c + 32;
  if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 32;
  return c;
}

using util::uniform_below;

bool has_forbidden_tsv_char(const std::string& s) {
  return s.find_first_of("\t\r\n") != std::string::npos;
}

// ---- PO text ----

std::string unescape_po_string(const std::string& literal, const std::string& where) {
  TORCH_CHECK(literal.size() >= 2 && literal.front() == '"' && literal.back() == '"', where,
              ": expected a quoted string, got: ", literal);
  std::string out;
  for (size_t i = 1; i + 1 < literal.size(); ++i) {
    char c = literal[i];
    if (c != '\\') {
      out += c;
      continue;
    }
    TORCH_CHECK(i + 2 < literal.size(), where, ": dangling backslash in ", literal);
    c = literal[++i];
    switch (c) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'v': out += '\v'; break;
      case '\\': case '"': case '\'': case '?': out += c; break;
      case 'x': {
        int value = 0, digits = 0;
        while (i + 2 < literal.size() && std::isxdigit(static_cast<unsigned char>(literal[i + 1]))) {
          const char h = literal[++i];
          // Capped at 256 (rejected below): every hex digit belongs to the escape, and a long
          // run of them must not overflow.
          value = std::min(256, value * 16 + (std::isdigit(static_cast<unsigned char>(h))
                                                  ? h - '0'
                                                  : (h | 0x20) - 'a' + 10));
          ++digits;
        }
        TORCH_CHECK(digits > 0 && value < 256, where, ": bad \\x escape in ", literal);
        out += static_cast<char>(value);
        break;
      }
      default: {
        TORCH_CHECK(c >= '0' && c <= '7', where, ": unknown escape \\", c, " in ", literal);
        int value = c - '0';
        for (int k = 0; k < 2 && i + 2 < literal.size() && literal[i + 1] >= '0' &&
                        literal[i + 1] <= '7';
             ++k) {
          value = value * 8 + (literal[++i] - '0');
        }
        TORCH_CHECK(value < 256, where, ": bad octal escape in ", literal);
        out += static_cast<char>(value);
      }
    }
  }
  return out;
}

std::string trim(const std::string& s) {
  const char* ws = " \t\n\r\v\f";
  const size_t begin = s.find_first_not_of(ws);
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(ws) - begin + 1);
}

// Placeholders removed (replaced by a space); `count` receives how many there were.
std::string strip_placeholders(const std::string& s, int64_t& count) {
  auto digit = [&](size_t i) { return i < s.size() && s[i] >= '0' && s[i] <= '9'; };
  std::string out;
  count = 0;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    bool counted = true;
    if (s[i] == '%' && i + 1 < s.size() && (s[i + 1] == '<' || s[i + 1] == '>')) {
      size_t k = i + 2;
      while (k < s.size() && (std::isalnum(static_cast<unsigned char>(s[k])) || s[k] == '_')) ++k;
      if (s[i + 1] == '<' && k > i + 2 && k < s.size() && s[k] == '>') {
        j = k + 1;  // %<PRIuMAX>
      } else {
        j = i + 2;  // GCC's quote marks %< %>
        counted = false;
      }
    } else if (s[i] == '%') {
      const auto skip_flags = [&](const char* flags) {
        while (j < s.size() && std::strchr(flags, s[j]) != nullptr && s[j] != '\0') ++j;
      };
      j = i + 1;
      size_t k = j;
      while (digit(k)) ++k;
      if (k > j && k < s.size() && s[k] == '$') j = k + 1;  // %1$s
      skip_flags("-+#0");
      if (j < s.size() && s[j] == '*') ++j; else while (digit(j)) ++j;
      if (j < s.size() && s[j] == '.') {
        ++j;
        if (j < s.size() && s[j] == '*') ++j; else while (digit(j)) ++j;
      }
      if (j < s.size() && s[j] == 'q') ++j;  // GCC: quoted argument, %qs %q#D
      skip_flags("+#");
      const auto is_conversion = [&](size_t at) {
        return at < s.size() && s[at] != '\0' &&
               std::strchr("diouxXeEfFgGaAcsSpnm%DTVCLHIKRJ", s[at]) != nullptr;
      };
      const size_t before_length = j;
      for (const char* len : {"hh", "ll", "h", "l", "L", "q", "j", "z", "Z", "t", "w"}) {
        if (s.compare(j, std::strlen(len), len) == 0) {
          j += std::strlen(len);
          break;
        }
      }
      if (is_conversion(j)) {
        ++j;
      } else if (j > before_length && is_conversion(before_length)) {
        j = before_length + 1;  // the "length" was the conversion itself: GCC's %L, %q
      } else {
        j = i;  // a literal percent sign
      }
    } else if (s[i] == '{' || (s[i] == '$' && i + 1 < s.size() && s[i + 1] == '{')) {
      size_t k = s[i] == '$' ? i + 2 : i + 1;
      while (k < s.size() && (std::isalnum(static_cast<unsigned char>(s[k])) || s[k] == '_')) ++k;
      if (k < s.size() && s[k] == '}') j = k + 1;
    } else if (s[i] == '$' && digit(i + 1)) {
      j = i + 1;
      while (digit(j)) ++j;
    }
    if (j > i) {
      count += counted;
      out += ' ';
      i = j;
    } else {
      out += s[i++];
    }
  }
  return out;
}

// Words of two or more letters (is_letter) in UTF-8 text.
int64_t count_words(const std::string& s, const std::string& what) {
  int64_t words = 0, run = 0;
  for (char32_t c : decode_utf8(s, what)) {
    if (is_letter(c)) {
      ++run;
    } else {
      words += run >= 2;
      run = 0;
    }
  }
  return words + (run >= 2);
}

constexpr const char* kDeMessages = "/de/LC_MESSAGES/";

std::string package_version(const std::string& package) {
  if (!command_on_path("dpkg-query")) return "unknown";
  const auto result = run_command(
      "package_version", "dpkg-query -W -f='${Version}' " + shell_quote(package) + " 2>/dev/null");
  return result.status == 0 && !result.output.empty() ? result.output : "unknown";
}

}  // namespace

// ---- Files ----

std::vector<TextPair> read_parallel_tsv(const std::string& path, bool ignore_extra_columns) {
  const std::string who = "read_parallel_tsv";
  std::string bytes = util::read_file(path, who);
  if (bytes.compare(0, 3, "\xEF\xBB\xBF") == 0) bytes.erase(0, 3);
  std::vector<TextPair> pairs;
  std::istringstream in(bytes);
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    const std::string where = path + ":" + std::to_string(number);
    decode_utf8(line, who + ": " + where);
    const size_t tab = line.find('\t');
    TORCH_CHECK(tab != std::string::npos, who, ": ", where,
                ": malformed line, expected source<TAB>target but found no TAB");
    size_t end = line.find('\t', tab + 1);
    TORCH_CHECK(end == std::string::npos || ignore_extra_columns, who, ": ", where,
                ": malformed line, expected source<TAB>target but found ",
                std::count(line.begin(), line.end(), '\t') + 1, " fields");
    if (end == std::string::npos) end = line.size();
    TextPair pair{line.substr(0, tab), line.substr(tab + 1, end - tab - 1)};
    TORCH_CHECK(!pair.source.empty() && !pair.target.empty(), who, ": ", where,
                ": malformed line, empty ", pair.source.empty() ? "source" : "target", " field");
    pairs.push_back(std::move(pair));
  }
  TORCH_CHECK(!pairs.empty(), who, ": ", path, ": no sentence pairs in the file");
  return pairs;
}

void write_parallel_tsv(const std::string& path, const std::vector<TextPair>& pairs) {
  std::string bytes;
  // The reader drops a byte-order mark at the start of the file: a first field that starts with
  // U+FEFF keeps it only behind a mark of the file's own.
  if (!pairs.empty() && pairs[0].source.compare(0, 3, "\xEF\xBB\xBF") == 0) bytes = "\xEF\xBB\xBF";
  for (size_t i = 0; i < pairs.size(); ++i) {
    const auto& p = pairs[i];
    TORCH_CHECK(!p.source.empty() && !p.target.empty() && !has_forbidden_tsv_char(p.source) &&
                    !has_forbidden_tsv_char(p.target),
                "write_parallel_tsv: ", path, ": pair ", i,
                " has an empty field or a TAB/CR/LF inside a field");
    bytes += p.source + '\t' + p.target + '\n';
  }
  util::write_file_atomic(path, bytes, "write_parallel_tsv");
}

// ---- Tokens ----

std::vector<std::string> tokenize_words(const std::string& text) {
  std::u32string chars = decode_utf8(text, "tokenize_words");
  for (auto& c : chars) c = to_lower(c);
  std::vector<std::string> tokens;
  std::u32string word;
  auto flush = [&] {
    if (!word.empty()) tokens.push_back(encode_utf8(word));
    word.clear();
  };
  for (size_t i = 0; i < chars.size(); ++i) {
    const char32_t c = chars[i];
    if (is_word_char(c)) {
      word += c;
    } else if (is_apostrophe(c) && !word.empty() && i + 1 < chars.size() &&
               is_word_char(chars[i + 1])) {
      word += c;
    } else {
      flush();
      if (!is_space(c)) tokens.push_back(encode_utf8(std::u32string(1, c)));
    }
  }
  flush();
  return tokens;
}

WordVocab::WordVocab() : WordVocab(std::vector<std::string>(kSpecials.begin(), kSpecials.end())) {}

WordVocab::WordVocab(std::vector<std::string> tokens) : tokens_(std::move(tokens)) {
  TORCH_CHECK(tokens_.size() >= kSpecials.size(), "WordVocab: the token list must start with ",
              "<pad> <unk> <bos> <eos>, got ", tokens_.size(), " tokens");
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (i < kSpecials.size()) {
      TORCH_CHECK(tokens_[i] == kSpecials[i], "WordVocab: token ", i, " must be ", kSpecials[i],
                  ", got '", tokens_[i], "'");
    }
    TORCH_CHECK(index_.emplace(tokens_[i], static_cast<int64_t>(i)).second,
                "WordVocab: duplicate token '", tokens_[i], "' at id ", i);
  }
}

WordVocab WordVocab::build(const std::vector<std::vector<std::string>>& sentences,
                           int64_t min_freq, int64_t max_size) {
  TORCH_CHECK(min_freq >= 1, "WordVocab::build: min_freq must be >= 1, got ", min_freq);
  TORCH_CHECK(max_size == 0 || max_size >= static_cast<int64_t>(kSpecials.size()),
              "WordVocab::build: max_size must be 0 (no cap) or >= 4, got ", max_size);
  std::unordered_map<std::string, int64_t> counts;
  for (const auto& sentence : sentences) {
    for (const auto& token : sentence) ++counts[token];
  }
  std::vector<std::pair<int64_t, std::string>> ranked;
  for (const auto& [token, count] : counts) {
    const bool special =
        std::find(kSpecials.begin(), kSpecials.end(), token) != kSpecials.end();
    if (count >= min_freq && !special) ranked.emplace_back(-count, token);
  }
  std::sort(ranked.begin(), ranked.end());
  std::vector<std::string> tokens(kSpecials.begin(), kSpecials.end());
  for (const auto& entry : ranked) {
    if (max_size > 0 && static_cast<int64_t>(tokens.size()) >= max_size) break;
    tokens.push_back(entry.second);
  }
  return WordVocab(std::move(tokens));
}

const std::string& WordVocab::token(int64_t id) const {
  TORCH_CHECK(id >= 0 && id < size(), "WordVocab::token: id ", id, " out of range [0, ", size(),
              ")");
  return tokens_[static_cast<size_t>(id)];
}

int64_t WordVocab::id(const std::string& token) const {
  const auto it = index_.find(token);
  return it == index_.end() ? kUnk : it->second;
}

std::vector<int64_t> WordVocab::encode(const std::vector<std::string>& tokens,
                                       bool add_bos_eos) const {
  std::vector<int64_t> ids;
  ids.reserve(tokens.size() + 2);
  if (add_bos_eos) ids.push_back(kBos);
  for (const auto& t : tokens) ids.push_back(id(t));
  if (add_bos_eos) ids.push_back(kEos);
  return ids;
}

std::vector<std::string> WordVocab::decode(const std::vector<int64_t>& ids) const {
  std::vector<std::string> tokens;
  for (int64_t i : ids) {
    if (i == kEos) break;
    if (i == kBos || i == kPad) continue;
    tokens.push_back(token(i));
  }
  return tokens;
}

// ---- Splits, statistics, tensors ----

ParallelSplits split_parallel(const std::vector<TextPair>& pairs, uint64_t seed,
                              double val_fraction, double test_fraction) {
  TORCH_CHECK(val_fraction >= 0 && test_fraction >= 0 && val_fraction + test_fraction < 1,
              "split_parallel: need val_fraction, test_fraction >= 0 with a sum below 1, got ",
              val_fraction, " and ", test_fraction);
  const auto n = static_cast<int64_t>(pairs.size());
  const auto n_val = static_cast<int64_t>(val_fraction * static_cast<double>(n));
  const auto n_test = static_cast<int64_t>(test_fraction * static_cast<double>(n));
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  std::mt19937_64 engine(seed);
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(uniform_below(engine, static_cast<uint64_t>(i + 1)));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  ParallelSplits out;
  const int64_t n_train = n - n_val - n_test;
  for (int64_t k = 0; k < n; ++k) {
    auto& split = k < n_train ? out.train : (k < n_train + n_val ? out.val : out.test);
    split.push_back(pairs[static_cast<size_t>(order[static_cast<size_t>(k)])]);
  }
  return out;
}

ParallelCorpusStats parallel_corpus_stats(const std::vector<TextPair>& pairs) {
  ParallelCorpusStats stats;
  stats.pairs = static_cast<int64_t>(pairs.size());
  std::unordered_map<std::string, int64_t> source_types, target_types;
  int64_t source_total = 0, target_total = 0;
  for (const auto& p : pairs) {
    const auto s = tokenize_words(p.source);
    const auto t = tokenize_words(p.target);
    source_total += static_cast<int64_t>(s.size());
    target_total += static_cast<int64_t>(t.size());
    stats.max_source_len = std::max<int64_t>(stats.max_source_len, s.size());
    stats.max_target_len = std::max<int64_t>(stats.max_target_len, t.size());
    for (const auto& w : s) ++source_types[w];
    for (const auto& w : t) ++target_types[w];
  }
  if (stats.pairs > 0) {
    stats.mean_source_len = static_cast<double>(source_total) / static_cast<double>(stats.pairs);
    stats.mean_target_len = static_cast<double>(target_total) / static_cast<double>(stats.pairs);
  }
  stats.source_vocab = static_cast<int64_t>(source_types.size());
  stats.target_vocab = static_cast<int64_t>(target_types.size());
  return stats;
}

std::string to_string(const ParallelCorpusStats& s) {
  std::ostringstream out;
  out.precision(3);
  out << s.pairs << " pairs; source tokens mean " << s.mean_source_len << " max "
      << s.max_source_len << ", " << s.source_vocab << " types; target tokens mean "
      << s.mean_target_len << " max " << s.max_target_len << ", " << s.target_vocab << " types";
  return out.str();
}

EncodedParallel encode_parallel(const std::vector<TextPair>& pairs, const WordVocab& source_vocab,
                                const WordVocab& target_vocab, int64_t max_tokens) {
  TORCH_CHECK(max_tokens >= 0, "encode_parallel: max_tokens must be >= 0, got ", max_tokens);
  auto encode_side = [&](bool source) {
    std::vector<std::vector<int64_t>> rows;
    size_t width = 0;
    for (const auto& p : pairs) {
      auto tokens = tokenize_words(source ? p.source : p.target);
      if (max_tokens > 0 && static_cast<int64_t>(tokens.size()) > max_tokens) {
        tokens.resize(static_cast<size_t>(max_tokens));
      }
      rows.push_back((source ? source_vocab : target_vocab).encode(tokens, true));
      width = std::max(width, rows.back().size());
    }
    auto out = torch::full({static_cast<int64_t>(rows.size()), static_cast<int64_t>(width)},
                           WordVocab::kPad, torch::kInt64);
    auto acc = out.accessor<int64_t, 2>();
    for (size_t r = 0; r < rows.size(); ++r) {
      for (size_t c = 0; c < rows[r].size(); ++c) acc[r][c] = rows[r][c];
    }
    return out;
  };
  return {encode_side(true), encode_side(false)};
}

// ---- gettext ----

std::vector<TextPair> parse_po(const std::string& po_text, const std::string& what) {
  struct Entry {
    std::string id, str0;
    bool has_id = false;
  } entry;
  std::vector<TextPair> pairs;
  std::string charset;
  auto flush = [&] {
    if (entry.has_id && entry.id.empty()) {
      const size_t at = entry.str0.find("charset=");
      if (at != std::string::npos) {
        charset = entry.str0.substr(at + 8, entry.str0.find_first_of(" ;\n", at + 8) - at - 8);
      }
    } else if (entry.has_id && !entry.str0.empty()) {
      pairs.push_back({entry.id, entry.str0});
    }
    entry = Entry();
  };
  std::string* field = nullptr;
  std::string ignored;
  std::istringstream in(po_text);
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    const std::string where = what + ":" + std::to_string(number);
    if (line[0] == '"') {
      TORCH_CHECK(field != nullptr, "parse_po: ", where, ": string continuation without keyword");
      *field += unescape_po_string(trim(line), "parse_po: " + where);
      continue;
    }
    const size_t space = line.find(' ');
    TORCH_CHECK(space != std::string::npos, "parse_po: ", where, ": expected a keyword and a ",
                "string, got: ", line);
    const std::string keyword = line.substr(0, space);
    const std::string value = unescape_po_string(trim(line.substr(space)), "parse_po: " + where);
    if (keyword == "msgctxt" || keyword == "msgid") {
      if (entry.has_id) flush();
      if (keyword == "msgid") {
        entry.has_id = true;
        field = &entry.id;
      } else {
        field = &ignored;
      }
    } else if (keyword == "msgstr" || keyword == "msgstr[0]") {
      TORCH_CHECK(entry.has_id, "parse_po: ", where, ": ", keyword, " before msgid");
      field = &entry.str0;
    } else if (keyword == "msgid_plural" || keyword.compare(0, 7, "msgstr[") == 0) {
      field = &ignored;
    } else {
      TORCH_CHECK(false, "parse_po: ", where, ": unknown keyword '", keyword, "'");
    }
    field->clear();
    *field += value;
  }
  flush();
  std::string lower = charset;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  TORCH_CHECK(charset.empty() || lower == "utf-8" || lower == "utf8" ||
                  lower == "ascii" || lower == "us-ascii",
              "parse_po: ", what, ": catalog charset is ", charset, ", expected UTF-8");
  for (const auto& p : pairs) {
    decode_utf8(p.source, "parse_po: " + what);
    decode_utf8(p.target, "parse_po: " + what);
  }
  return pairs;
}

std::vector<TextPair> read_mo_catalog(const std::string& mo_path) {
  const std::string who = "read_mo_catalog";
  TORCH_CHECK(std::filesystem::is_regular_file(mo_path), who, ": ", mo_path, ": no such file");
  TORCH_CHECK(command_on_path("msgunfmt"), who, ": the `msgunfmt` command is not installed; ",
              "install the Debian package gettext (apt-get install gettext)");
  const std::string command = "msgunfmt " + shell_quote(mo_path);
  const auto result = run_command(who, command + " 2>/dev/null");
  if (result.status != 0) {
    const auto errors = run_command(who, command + " 2>&1 >/dev/null");
    TORCH_CHECK(false, who, ": ", mo_path, ": msgunfmt failed (status ", result.status,
                "): ", trim(errors.output));
  }
  return parse_po(result.output, mo_path);
}

c10::optional<TextPair> clean_gettext_pair(const TextPair& pair,
                                           const GettextFilterOptions& options) {
  TextPair out{trim(pair.source), trim(pair.target)};
  if (out.source.empty() || out.target.empty() || out.source == out.target) return c10::nullopt;
  for (const std::string* side : {&out.source, &out.target}) {
    for (unsigned char c : *side) {
      if (c < 0x20 || c == 0x7F) return c10::nullopt;
    }
    if (side->find("   ") != std::string::npos) return c10::nullopt;
    const auto n = static_cast<int64_t>(tokenize_words(*side).size());
    if (n < options.min_tokens() || n > options.max_tokens()) return c10::nullopt;
  }
  int64_t placeholders = 0;
  const int64_t words = count_words(strip_placeholders(out.source, placeholders), "source");
  if (words < 1 || 2 * placeholders > words) return c10::nullopt;
  int64_t target_placeholders = 0;
  if (count_words(strip_placeholders(out.target, target_placeholders), "target") < 1) {
    return c10::nullopt;
  }
  return out;
}

std::vector<GettextCatalogReport> build_gettext_en_de_corpus(
    const std::string& cache_path, const GettextFilterOptions& options,
    const std::string& locale_dir) {
  const std::string who = "build_gettext_en_de_corpus";
  TORCH_CHECK(options.min_tokens() >= 1 && options.max_tokens() >= options.min_tokens(), who,
              ": need 1 <= min_tokens <= max_tokens, got ", options.min_tokens(), " and ",
              options.max_tokens());
  TORCH_CHECK(command_on_path("msgunfmt"), who, ": the `msgunfmt` command is not installed; ",
              "install the Debian package gettext (apt-get install gettext)");
  std::vector<std::string> missing, missing_packages;
  for (const auto& catalog : kGettextDeCatalogs) {
    const std::string path = locale_dir + kDeMessages + catalog.domain + ".mo";
    if (!std::filesystem::is_regular_file(path)) {
      missing.push_back(path + " (package " + catalog.package + ")");
      if (std::find(missing_packages.begin(), missing_packages.end(), catalog.package) ==
          missing_packages.end()) {
        missing_packages.push_back(catalog.package);
      }
    }
  }
  if (!missing.empty()) {
    std::ostringstream message;
    message << who << ": missing German gettext catalogs:";
    for (const auto& m : missing) message << " " << m << ";";
    message << " install them with: apt-get install -y";
    for (const auto& p : missing_packages) message << " " << p;
    message << " (if they are installed, a dpkg path-exclude rule in /etc/dpkg/dpkg.cfg.d/ may be "
               "dropping /usr/share/locale)";
    TORCH_CHECK(false, message.str());
  }

  std::vector<GettextCatalogReport> reports;
  std::vector<TextPair> corpus;
  std::unordered_map<std::string, bool> seen;
  for (const auto& catalog : kGettextDeCatalogs) {
    GettextCatalogReport report;
    report.package = catalog.package;
    report.domain = catalog.domain;
    report.version = package_version(catalog.package);
    const auto entries = read_mo_catalog(locale_dir + kDeMessages + catalog.domain + ".mo");
    report.entries = static_cast<int64_t>(entries.size());
    for (const auto& entry : entries) {
      const auto cleaned = clean_gettext_pair(entry, options);
      if (!cleaned) continue;
      ++report.kept;
      if (seen.emplace(cleaned->source, true).second) {
        ++report.added;
        corpus.push_back(*cleaned);
      }
    }
    reports.push_back(report);
  }
  TORCH_CHECK(!corpus.empty(), who, ": no sentence pairs survived the filter");

  std::ostringstream manifest;
  manifest << "# package\tdomain\tversion\tentries\tkept\tadded\n";
  for (const auto& r : reports) {
    manifest << r.package << '\t' << r.domain << '\t' << r.version << '\t' << r.entries << '\t'
             << r.kept << '\t' << r.added << '\n';
  }
  write_parallel_tsv(cache_path, corpus);
  util::write_file_atomic(cache_path + ".manifest", manifest.str(), who);
  return reports;
}

std::vector<TextPair> load_gettext_en_de(const std::string& cache_path) {
  if (!std::filesystem::is_regular_file(cache_path)) build_gettext_en_de_corpus(cache_path);
  return read_parallel_tsv(cache_path);
}

}  // namespace data
}  // namespace kvq
