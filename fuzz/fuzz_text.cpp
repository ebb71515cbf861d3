// UTF-8 text corpora: kvq::data::load_char_corpus (the char-lm task's --set text_file) on the
// input as a file, with nanoGPT's val_fraction 0.1 and with 0. An accepted corpus must decode
// back to the file's text (less a leading byte-order mark), and the vocabulary must encode that
// text to the same ids. Also the strict UTF-8 decoder and encoder on the raw bytes (decode then
// encode gives the bytes back), and the human-numbers decoder (the generated word corpus has no
// file format; its ids come from the model) on ids taken from the input.
#include "fuzz_target.h"
#include "kvq/data/char_corpus.h"
#include "kvq/data/human_numbers.h"

namespace {

void check_corpus(const std::string& path, const std::string& bytes, double val_fraction) {
  kvq::data::CharCorpus corpus;
  try {
    corpus = kvq::data::load_char_corpus(path, val_fraction);
  } catch (const c10::Error& e) {
    kvq::fuzz::expect_names(e, path);
    return;
  }
  const std::string bom = "\xEF\xBB\xBF";
  const std::string text = bytes.compare(0, 3, bom) == 0 ? bytes.substr(3) : bytes;
  const auto ids = torch::cat({corpus.train, corpus.val});
  kvq::fuzz::expect(corpus.num_chars == ids.numel() && corpus.train.numel() >= 1,
                    "load_char_corpus: inconsistent sizes");
  kvq::fuzz::expect(val_fraction == 0.0 ? corpus.val.numel() == 0 : corpus.val.numel() >= 1,
                    "load_char_corpus: the val split does not follow val_fraction");
  kvq::fuzz::expect(corpus.vocab.decode(ids) == text,
                    "load_char_corpus: the ids do not decode to the file's text");
  kvq::fuzz::expect(torch::equal(corpus.vocab.encode(text), ids),
                    "load_char_corpus: the vocabulary encodes the text to other ids");
}

}  // namespace

KVQ_FUZZ_TARGET(text) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  const std::string path = kvq::fuzz::write_scratch("corpus.txt", bytes);
  check_corpus(path, bytes, 0.1);
  check_corpus(path, bytes, 0.0);

  try {
    const std::u32string code_points = kvq::data::decode_utf8(bytes, "fuzz input");
    kvq::fuzz::expect(kvq::data::encode_utf8(code_points) == bytes,
                      "decode_utf8 then encode_utf8 does not give the bytes back");
  } catch (const c10::Error& e) {
    kvq::fuzz::expect_names(e, "fuzz input");
  }

  // Human numbers: every byte an id (ids >= 30 are out of range and must be refused).
  auto ids = torch::empty({static_cast<int64_t>(size)}, torch::kInt64);
  int64_t* id = ids.data_ptr<int64_t>();
  for (size_t i = 0; i < size; ++i) id[i] = data[i] % 40;
  try {
    const std::string words = kvq::data::decode_human_numbers(ids);
    for (size_t i = 0; i < size; ++i) {
      kvq::fuzz::expect(data[i] % 40 < 30, "decode_human_numbers accepted an id out of range");
    }
    (void)words;
  } catch (const c10::Error& e) {
    kvq::fuzz::expect_names(e, "decode_human_numbers");
  }
  return 0;
}
