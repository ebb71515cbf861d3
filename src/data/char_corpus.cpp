#include "kvq/data/char_corpus.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "kvq/data/io.h"
#include "kvq/util/atomic_file.h"

namespace kvq {
namespace data {
namespace {

std::string hex_byte(unsigned char b) {
  char buffer[8];
  std::snprintf(buffer, sizeof(buffer), "0x%02x", b);
  return buffer;
}

std::string code_point_name(char32_t c) {
  char buffer[16];
  std::snprintf(buffer, sizeof(buffer), "U+%04X", static_cast<unsigned>(c));
  return buffer;
}

void append_utf8(std::string& out, char32_t c) {
  TORCH_CHECK(c <= 0x10FFFF && (c < 0xD800 || c > 0xDFFF),
              "encode_utf8: ", code_point_name(c), " is not a Unicode scalar value");
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

constexpr const char* kKjvFirstVerse = "In the beginning God created the heaven and the earth.";
constexpr const char* kKjvLastVerse = "The grace of our Lord Jesus Christ be with you all. Amen.";

}  // namespace

std::u32string decode_utf8(const std::string& bytes, const std::string& what) {
  std::u32string out;
  out.reserve(bytes.size());
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char b0 = p[i];
    if (b0 < 0x80) {
      out += static_cast<char32_t>(b0);
      ++i;
      continue;
    }
    size_t len;
    char32_t min_value;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2, min_value = 0x80;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3, min_value = 0x800;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4, min_value = 0x10000;
    } else {
      TORCH_CHECK(false, what, ": invalid UTF-8 at byte offset ", i, ": ",
                  b0 <= 0xBF ? "unexpected continuation byte " : "invalid lead byte ",
                  hex_byte(b0));
    }
    TORCH_CHECK(i + len <= n, what, ": invalid UTF-8 at byte offset ", i,
                ": sequence truncated by the end of the data");
    char32_t c = b0 & (0x7F >> len);
    for (size_t k = 1; k < len; ++k) {
      TORCH_CHECK((p[i + k] & 0xC0) == 0x80, what, ": invalid UTF-8 at byte offset ", i,
                  ": expected a continuation byte at offset ", i + k, ", got ", hex_byte(p[i + k]));
      c = (c << 6) | (p[i + k] & 0x3F);
    }
    TORCH_CHECK(c >= min_value, what, ": invalid UTF-8 at byte offset ", i, ": overlong encoding of ",
                code_point_name(c));
    TORCH_CHECK(c < 0xD800 || c > 0xDFFF, what, ": invalid UTF-8 at byte offset ", i,
                ": encoded surrogate ", code_point_name(c));
    TORCH_CHECK(c <= 0x10FFFF, what, ": invalid UTF-8 at byte offset ", i, ": code point above ",
                "U+10FFFF");
    out += c;
    i += len;
  }
  return out;
}

std::string encode_utf8(const std::u32string& text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) append_utf8(out, c);
  return out;
}

CharVocab::CharVocab(const std::u32string& chars) : chars_(chars) {
  std::sort(chars_.begin(), chars_.end());
  chars_.erase(std::unique(chars_.begin(), chars_.end()), chars_.end());
  for (size_t i = 0; i < chars_.size(); ++i) {
    TORCH_CHECK(chars_[i] <= 0x10FFFF && (chars_[i] < 0xD800 || chars_[i] > 0xDFFF),
                "CharVocab: ", code_point_name(chars_[i]), " is not a Unicode scalar value");
    index_.emplace(chars_[i], static_cast<int64_t>(i));
  }
}

torch::Tensor CharVocab::encode(const std::string& text) const {
  const std::u32string code_points = decode_utf8(text, "CharVocab::encode");
  auto ids = torch::empty({static_cast<int64_t>(code_points.size())}, torch::kInt64);
  int64_t* out = ids.data_ptr<int64_t>();
  for (size_t i = 0; i < code_points.size(); ++i) {
    const auto it = index_.find(code_points[i]);
    TORCH_CHECK(it != index_.end(), "CharVocab::encode: character ",
                code_point_name(code_points[i]), " at position ", i, " is not in the vocabulary");
    out[i] = it->second;
  }
  return ids;
}

std::string CharVocab::decode(const torch::Tensor& ids) const {
  TORCH_CHECK(ids.scalar_type() == torch::kInt64, "CharVocab::decode: ids must be int64, got ",
              ids.scalar_type());
  const auto flat = ids.contiguous().view(-1);
  const int64_t* p = flat.data_ptr<int64_t>();
  std::string out;
  for (int64_t i = 0; i < flat.numel(); ++i) {
    TORCH_CHECK(p[i] >= 0 && p[i] < size(), "CharVocab::decode: id ", p[i], " at position ", i,
                " out of range [0, ", size(), ")");
    append_utf8(out, chars_[static_cast<size_t>(p[i])]);
  }
  return out;
}

CharCorpus load_char_corpus(const std::string& path, double val_fraction) {
  TORCH_CHECK(val_fraction >= 0.0 && val_fraction < 1.0,
              "load_char_corpus: val_fraction must be in [0, 1), got ", val_fraction);
  const std::string bytes = util::read_file(path, "load_char_corpus");
  TORCH_CHECK(!bytes.empty(), "load_char_corpus: ", path, ": empty file, no text to learn from");
  std::u32string text = decode_utf8(bytes, "load_char_corpus: " + path);
  if (text[0] == U'\uFEFF') text.erase(0, 1);
  TORCH_CHECK(!text.empty(), "load_char_corpus: ", path, ": empty file (only a byte-order mark)");

  CharCorpus corpus;
  corpus.vocab = CharVocab(text);
  const auto total = static_cast<int64_t>(text.size());
  const auto num_train = static_cast<int64_t>(std::floor((1.0 - val_fraction) * total));
  TORCH_CHECK(num_train >= 1 && (val_fraction == 0.0 || num_train < total), "load_char_corpus: ",
              path, ": ", total, " characters are too few for val_fraction ", val_fraction,
              " (train or val would be empty)");
  auto ids = torch::empty({total}, torch::kInt64);
  int64_t* out = ids.data_ptr<int64_t>();
  const std::u32string& chars = corpus.vocab.chars();
  for (int64_t i = 0; i < total; ++i) {
    out[i] = std::lower_bound(chars.begin(), chars.end(), text[static_cast<size_t>(i)]) -
             chars.begin();
  }
  corpus.train = ids.narrow(0, 0, num_train);
  corpus.val = ids.narrow(0, num_train, total - num_train);
  corpus.num_chars = total;
  return corpus;
}

std::string ensure_kjv_text(const std::string& cache_path) {
  const std::string who = "ensure_kjv_text";
  if (std::filesystem::is_regular_file(cache_path) && std::filesystem::file_size(cache_path) > 0) {
    return cache_path;
  }
  TORCH_CHECK(command_on_path("bible"), who, ": the `bible` command is not installed; install the ",
              "Debian package bible-kjv (apt-get install bible-kjv) or pass a text file instead");
  const auto result = run_command(who, "bible 'Gen1:1-Rev22:21' 2>&1");
  TORCH_CHECK(result.status == 0, who, ": `bible 'Gen1:1-Rev22:21'` failed (status ",
              result.status, "): ", result.output.substr(0, 200));
  // `bible` exits 0 even on errors such as a missing text file, so check the content.
  TORCH_CHECK(result.output.find(kKjvFirstVerse) != std::string::npos &&
                  result.output.find(kKjvLastVerse) != std::string::npos,
              who, ": `bible 'Gen1:1-Rev22:21'` did not print the whole King James Bible (is ",
              "bible-kjv-text installed?); it printed: ", result.output.substr(0, 200));
  util::write_file_atomic(cache_path, result.output, who);
  return cache_path;
}

}  // namespace data
}  // namespace kvq
