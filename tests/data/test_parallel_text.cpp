// Parallel text: TSV reading with line-numbered errors, the word tokeniser, the vocabulary, seeded
// splits, statistics, tensor encoding, PO parsing and the gettext filter; the corpus builder on
// catalogs compiled here with msgfmt, and on the Debian catalogs when they are installed.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "kvq/data/parallel_text.h"
#include "test_files.h"

namespace {

namespace D = kvq::data;
namespace fs = std::filesystem;
using Tokens = std::vector<std::string>;

using kvq_test_files::error_of;
using kvq_test_files::expect_error;
using kvq_test_files::TempDir;

void write_file(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

bool on_path(const std::string& command) {
  return std::system(("command -v " + command + " >/dev/null 2>&1").c_str()) == 0;
}

bool same(const D::TextPair& a, const D::TextPair& b) {
  return a.source == b.source && a.target == b.target;
}

void expect_pairs(const std::vector<D::TextPair>& got, const std::vector<D::TextPair>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].source, want[i].source) << i;
    EXPECT_EQ(got[i].target, want[i].target) << i;
  }
}

// ---- TSV ----

TEST(DataParallelText, ReadsTsvWithCrLfBlankLinesAndUtf8) {
  TempDir tmp;
  write_file(tmp.file("p.tsv"), "Hello.\tHallo.\r\n\nGood morning!\tGuten Morgen!\n"
                                "It's big.\tEs ist gro\xC3\x9F.");
  expect_pairs(D::read_parallel_tsv(tmp.file("p.tsv")),
               {{"Hello.", "Hallo."}, {"Good morning!", "Guten Morgen!"},
                {"It's big.", "Es ist gro\xC3\x9F."}});
}

TEST(DataParallelText, MalformedLinesNameFileAndLine) {
  TempDir tmp;
  write_file(tmp.file("notab.tsv"), "a\tb\nc\td\nno tab here\n");
  expect_error([&] { D::read_parallel_tsv(tmp.file("notab.tsv")); },
               {tmp.file("notab.tsv") + ":3", "malformed", "no TAB"});
  write_file(tmp.file("three.tsv"), "a\tb\nGo.\tGeh.\tCC-BY 2.0 (France)\n");
  expect_error([&] { D::read_parallel_tsv(tmp.file("three.tsv")); },
               {tmp.file("three.tsv") + ":2", "3 fields"});
  expect_pairs(D::read_parallel_tsv(tmp.file("three.tsv"), /*ignore_extra_columns=*/true),
               {{"a", "b"}, {"Go.", "Geh."}});
  write_file(tmp.file("empty_field.tsv"), "a\tb\nsource only\t\n");
  expect_error([&] { D::read_parallel_tsv(tmp.file("empty_field.tsv")); },
               {tmp.file("empty_field.tsv") + ":2", "empty target"});
  write_file(tmp.file("utf8.tsv"), "a\tb\nx\xC3\ty\n");
  expect_error([&] { D::read_parallel_tsv(tmp.file("utf8.tsv")); },
               {tmp.file("utf8.tsv") + ":2", "invalid UTF-8", "byte offset 1"});
  write_file(tmp.file("blank.tsv"), "\n\n");
  expect_error([&] { D::read_parallel_tsv(tmp.file("blank.tsv")); },
               {tmp.file("blank.tsv"), "no sentence pairs"});
  expect_error([&] { D::read_parallel_tsv(tmp.file("absent.tsv")); },
               {tmp.file("absent.tsv"), "no such file"});
}

TEST(DataParallelText, WriteThenReadRoundTrips) {
  TempDir tmp;
  const std::vector<D::TextPair> pairs = {{"one", "eins"}, {"\xC3\xBC" "ber", "over"}};
  D::write_parallel_tsv(tmp.file("sub/out.tsv"), pairs);
  EXPECT_EQ(read_file(tmp.file("sub/out.tsv")), "one\teins\n\xC3\xBC" "ber\tover\n");
  expect_pairs(D::read_parallel_tsv(tmp.file("sub/out.tsv")), pairs);
  expect_error([&] { D::write_parallel_tsv(tmp.file("x.tsv"), {{"a\tb", "c"}}); },
               {tmp.file("x.tsv"), "pair 0"});
}

// Found by fuzzing (fuzz/corpus/parallel_tsv/bom-in-first-field.tsv): a U+FEFF that starts the
// first source (a blank first line put it there) came first in the written file, where the
// reader drops it as a byte-order mark.
TEST(DataParallelText, FirstFieldStartingWithAByteOrderMarkRoundTrips) {
  TempDir tmp;
  const auto path = tmp.write("in.tsv", "\r\n\xEF\xBB\xBFHi.\tHallo!\r\n");
  const auto pairs = D::read_parallel_tsv(path);
  ASSERT_EQ(pairs.size(), 1u);
  EXPECT_EQ(pairs[0].source, "\xEF\xBB\xBFHi.");
  D::write_parallel_tsv(tmp.file("out.tsv"), pairs);
  expect_pairs(D::read_parallel_tsv(tmp.file("out.tsv")), pairs);
  // No mark is added otherwise.
  D::write_parallel_tsv(tmp.file("plain.tsv"), {{"Hi.", "Hallo!"}});
  EXPECT_EQ(read_file(tmp.file("plain.tsv")), "Hi.\tHallo!\n");
}

// ---- Tokeniser ----

TEST(DataParallelText, TokeniserFollowsItsDocumentedRules) {
  EXPECT_EQ(D::tokenize_words("Hello, World!"), (Tokens{"hello", ",", "world", "!"}));
  EXPECT_EQ(D::tokenize_words("Don't stop"), (Tokens{"don't", "stop"}));
  EXPECT_EQ(D::tokenize_words("It\xE2\x80\x99s"), (Tokens{"it\xE2\x80\x99s"}));  // ’ inside
  EXPECT_EQ(D::tokenize_words("'quoted'"), (Tokens{"'", "quoted", "'"}));
  // Gr\xC3\xB6\xC3\x9F" "e = Größe; Ä Ö Ü lower-cased to ä ö ü.
  EXPECT_EQ(D::tokenize_words("Gr\xC3\xB6\xC3\x9F" "e: 10 MB."),
            (Tokens{"gr\xC3\xB6\xC3\x9F" "e", ":", "10", "mb", "."}));
  EXPECT_EQ(D::tokenize_words("\xC3\x84\xC3\x96\xC3\x9C"), (Tokens{"\xC3\xA4\xC3\xB6\xC3\xBC"}));
  // « » are punctuation (U+00AB, U+00BB), × (U+00D7) too; U+00A0 is a space.
  EXPECT_EQ(D::tokenize_words("\xC2\xAB" "Hallo" "\xC2\xBB"), (Tokens{"\xC2\xAB", "hallo", "\xC2\xBB"}));
  EXPECT_EQ(D::tokenize_words("3\xC3\x97" "4"), (Tokens{"3", "\xC3\x97", "4"}));
  EXPECT_EQ(D::tokenize_words("a\xC2\xA0" "b\tc\r\nd"), (Tokens{"a", "b", "c", "d"}));
  // En dash U+2013 is in the General Punctuation block.
  EXPECT_EQ(D::tokenize_words("x\xE2\x80\x93y"), (Tokens{"x", "\xE2\x80\x93", "y"}));
  EXPECT_EQ(D::tokenize_words("%s: file_name"), (Tokens{"%", "s", ":", "file", "_", "name"}));
  EXPECT_EQ(D::tokenize_words("  "), Tokens{});
  EXPECT_EQ(D::tokenize_words(""), Tokens{});
  expect_error([] { D::tokenize_words("bad\xFF"); }, {"invalid UTF-8", "byte offset 3"});
}

// ---- Vocabulary ----

// Counts over the sentences: a 3, b 2, c 1.
TEST(DataParallelText, VocabularyOrderAndCutOffs) {
  const std::vector<Tokens> sentences = {{"a", "b", "a"}, {"c", "a", "b"}};
  const auto v2 = D::WordVocab::build(sentences, 2);
  EXPECT_EQ(v2.tokens(), (Tokens{"<pad>", "<unk>", "<bos>", "<eos>", "a", "b"}));
  EXPECT_EQ(v2.id("c"), D::WordVocab::kUnk);
  EXPECT_EQ(v2.id("b"), 5);
  const auto v1 = D::WordVocab::build(sentences, 1);
  EXPECT_EQ(v1.tokens(), (Tokens{"<pad>", "<unk>", "<bos>", "<eos>", "a", "b", "c"}));
  EXPECT_EQ(D::WordVocab::build(sentences, 1, 5).tokens(),
            (Tokens{"<pad>", "<unk>", "<bos>", "<eos>", "a"}));
  // Equal counts: ascending byte order.
  EXPECT_EQ(D::WordVocab::build({{"y", "x", "<unk>"}}, 1).tokens(),
            (Tokens{"<pad>", "<unk>", "<bos>", "<eos>", "x", "y"}));
  EXPECT_EQ(v2.encode({"a", "c", "b"}, true), (std::vector<int64_t>{2, 4, 1, 5, 3}));
  EXPECT_EQ(v2.encode({"a"}, false), (std::vector<int64_t>{4}));
  EXPECT_EQ(v2.decode({2, 4, 1, 0, 5, 3, 4}), (Tokens{"a", "<unk>", "b"}));
  EXPECT_EQ(D::WordVocab(v1.tokens()).tokens(), v1.tokens());
  expect_error([] { D::WordVocab(Tokens{"<pad>", "<bos>", "<unk>", "<eos>"}); }, {"<unk>"});
  expect_error([] { D::WordVocab(Tokens{"<pad>", "<unk>", "<bos>", "<eos>", "a", "a"}); },
               {"duplicate token 'a'"});
  expect_error([&] { v2.token(6); }, {"id 6"});
  EXPECT_EQ(D::WordVocab().size(), 4);
}

// ---- Splits, statistics, tensors ----

std::vector<D::TextPair> numbered_pairs(int n) {
  std::vector<D::TextPair> pairs;
  for (int i = 0; i < n; ++i) pairs.push_back({"s" + std::to_string(i), "t" + std::to_string(i)});
  return pairs;
}

std::multiset<std::string> sources(const std::vector<D::TextPair>& pairs) {
  std::multiset<std::string> out;
  for (const auto& p : pairs) out.insert(p.source);
  return out;
}

TEST(DataParallelText, SplitIsASeededPartition) {
  const auto pairs = numbered_pairs(103);
  const auto a = D::split_parallel(pairs, 11, 0.05, 0.1);
  // floor(0.05 * 103) = 5 val, floor(0.1 * 103) = 10 test, 88 train.
  ASSERT_EQ(a.train.size(), 88u);
  ASSERT_EQ(a.val.size(), 5u);
  ASSERT_EQ(a.test.size(), 10u);
  auto all = sources(a.train);
  for (const auto& s : sources(a.val)) all.insert(s);
  for (const auto& s : sources(a.test)) all.insert(s);
  EXPECT_EQ(all, sources(pairs));  // every pair exactly once
  for (const auto* split : {&a.train, &a.val, &a.test}) {
    for (const auto& p : *split) EXPECT_EQ(p.target, "t" + p.source.substr(1));  // pairs intact
  }
  const auto b = D::split_parallel(pairs, 11, 0.05, 0.1);
  const auto c = D::split_parallel(pairs, 12, 0.05, 0.1);
  bool identical = true, differs = false;
  for (size_t i = 0; i < a.train.size(); ++i) {
    identical = identical && same(a.train[i], b.train[i]);
    differs = differs || !same(a.train[i], c.train[i]);
  }
  EXPECT_TRUE(identical);
  EXPECT_TRUE(differs);
  bool shuffled = false;
  for (size_t i = 0; i < a.train.size(); ++i) shuffled = shuffled || !same(a.train[i], pairs[i]);
  EXPECT_TRUE(shuffled);
  expect_error([&] { D::split_parallel(pairs, 1, 0.5, 0.5); }, {"val_fraction"});
}

TEST(DataParallelText, StatisticsCountTokensAndTypes) {
  // source lengths 2 and 3 (types a b c d), target lengths 1 and 2 (types x y z).
  const auto stats = D::parallel_corpus_stats({{"a b", "x"}, {"A c d", "y z"}});
  EXPECT_EQ(stats.pairs, 2);
  EXPECT_DOUBLE_EQ(stats.mean_source_len, 2.5);
  EXPECT_DOUBLE_EQ(stats.mean_target_len, 1.5);
  EXPECT_EQ(stats.max_source_len, 3);
  EXPECT_EQ(stats.max_target_len, 2);
  EXPECT_EQ(stats.source_vocab, 4);
  EXPECT_EQ(stats.target_vocab, 3);
  EXPECT_NE(D::to_string(stats).find("2 pairs"), std::string::npos);
}

TEST(DataParallelText, EncodingPadsRowsWithBosEos) {
  const std::vector<D::TextPair> pairs = {{"a b a", "x"}, {"b", "x y q"}};
  const auto src = D::WordVocab::build({{"a", "b", "a"}, {"b"}}, 1);  // a=4 b=5
  const auto tgt = D::WordVocab::build({{"x"}, {"x", "y"}}, 1);       // x=4 y=5
  const auto enc = D::encode_parallel(pairs, src, tgt);
  EXPECT_TRUE(torch::equal(enc.source, torch::tensor({2, 4, 5, 4, 3, 2, 5, 3, 0, 0}, torch::kInt64)
                                           .view({2, 5})));
  EXPECT_TRUE(torch::equal(enc.target, torch::tensor({2, 4, 3, 0, 0, 2, 4, 5, 1, 3}, torch::kInt64)
                                           .view({2, 5})));
  const auto cut = D::encode_parallel(pairs, src, tgt, 2);
  EXPECT_TRUE(torch::equal(cut.source, torch::tensor({2, 4, 5, 3, 2, 5, 3, 0}, torch::kInt64)
                                           .view({2, 4})));
}

// ---- gettext ----

const char* kPo = R"PO(# a comment
msgid ""
msgstr ""
"Project-Id-Version: test\n"
"Content-Type: text/plain; charset=UTF-8\n"

msgid "Cannot open file"
msgstr "Datei kann nicht geöffnet werden"

msgctxt "menu"
msgid "Open the "
"selected file"
msgstr "Die ausgewählte "
"Datei öffnen"

msgid "Say \"hi\"\tnow\n"
msgstr "Sag \"hallo\"\tjetzt\n"

msgid "untranslated"
msgstr ""

msgid "%d file"
msgid_plural "%d files"
msgstr[0] "%d Datei"
msgstr[1] "%d Dateien"

msgid "octal \101 and backslash \\"
msgstr "oktal \101 und Rückstrich \\"
)PO";

const std::vector<D::TextPair> kPoPairs = {
    {"Cannot open file", "Datei kann nicht ge\xC3\xB6" "ffnet werden"},
    {"Open the selected file", "Die ausgew\xC3\xA4hlte Datei \xC3\xB6" "ffnen"},
    {"Say \"hi\"\tnow\n", "Sag \"hallo\"\tjetzt\n"},
    {"%d file", "%d Datei"},
    {"octal A and backslash \\", "oktal A und R\xC3\xBC" "ckstrich \\"}};

TEST(DataParallelText, ParsesPoText) {
  expect_pairs(D::parse_po(kPo, "t.po"), kPoPairs);
  expect_error([] { D::parse_po("msgid \"a\"\nmsgstr \"b\"\nmsgfoo \"c\"\n", "x.po"); },
               {"x.po:3", "unknown keyword 'msgfoo'"});
  expect_error([] { D::parse_po("\"dangling\"\n", "y.po"); }, {"y.po:1", "without keyword"});
  expect_error(
      [] {
        D::parse_po("msgid \"\"\nmsgstr \"Content-Type: text/plain; charset=ISO-8859-1\\n\"\n",
                    "latin.po");
      },
      {"latin.po", "charset is ISO-8859-1"});
}

// Found by fuzzing (fuzz/corpus/po/long-hex-escape.po): the value of a \x escape with many hex
// digits overflowed an int (undefined behaviour) before it was checked against 255.
TEST(DataParallelText, LongHexEscapeIsRejectedWithoutOverflow) {
  expect_error([] { D::parse_po("msgid \"a\\x123456789abcdef0123\"\nmsgstr \"b\"\n", "hex.po"); },
               {"hex.po:1", "bad \\x escape"});
  expect_pairs(D::parse_po("msgid \"a\\x41\\x0042\"\nmsgstr \"b\"\n", "ok.po"), {{"aAB", "b"}});
}

TEST(DataParallelText, GettextFilter) {
  const auto keep = [](const std::string& s, const std::string& t) {
    return D::clean_gettext_pair({s, t}).has_value();
  };
  const auto kept = D::clean_gettext_pair({"  Cannot open the file\n", "Kann Datei nicht \xC3\xB6" "ffnen\n"});
  ASSERT_TRUE(kept.has_value());
  EXPECT_EQ(kept->source, "Cannot open the file");
  EXPECT_EQ(kept->target, "Kann Datei nicht \xC3\xB6" "ffnen");
  EXPECT_FALSE(keep("line one\nline two", "Zeile eins\nZeile zwei"));  // multi-line
  EXPECT_FALSE(keep("a\tb c", "a\tb d"));                              // tab
  EXPECT_FALSE(keep("Show all files", "Show all files"));              // untranslated copy
  EXPECT_FALSE(keep("File", "Datei"));                                 // 1 token < 3
  EXPECT_TRUE(
      D::clean_gettext_pair({"File", "Datei"}, D::GettextFilterOptions().min_tokens(1)).has_value());
  EXPECT_FALSE(keep("%s: %s", "%s \xE2\x80\x93 %s"));                   // P 2, W 0
  EXPECT_FALSE(keep("%s %s %d files", "%s %s %d Dateien"));            // P 3, W 1
  EXPECT_TRUE(keep("cannot open %s for writing", "%s kann nicht ge\xC3\xB6" "ffnet werden"));  // P 1, W 4
  EXPECT_FALSE(keep("%s: cannot stat %s", "%s: stat f\xC3\xBCr %s fehlgeschlagen"));  // P 2, W 2
  EXPECT_FALSE(keep("{0} files in {1}", "{0} Dateien in {1}"));        // P 2, W 2
  EXPECT_TRUE(keep("${HOME} is not set", "${HOME} ist nicht gesetzt"));  // P 1, W 3
  EXPECT_TRUE(keep("%1$s was copied to %2$s successfully", "%1$s wurde nach %2$s kopiert"));  // P 2, W 4
  EXPECT_FALSE(keep("%1$s copied to %2$s successfully", "%1$s nach %2$s kopiert"));  // P 2, W 3
  EXPECT_TRUE(keep("50% of the disk", "50% der Platte"));               // literal %, P 0
  EXPECT_FALSE(keep("Press the button now", "!!! ... ???"));            // no target word
  // GCC diagnostics: %qs %q#D %qT are placeholders (not the words "qs", "qT"), %< %> only quote.
  EXPECT_TRUE(keep("%qs attribute ignored", "Attribut %qs wird ignoriert"));  // P 1, W 2
  EXPECT_TRUE(keep("%qD was declared %<extern%> and later %<static%>",
                   "%qD wurde %<extern%> und sp\xC3\xA4ter %<static%> deklariert"));  // P 1, W 6
  EXPECT_FALSE(keep("%q#D redeclared as %qT", "%q#D als %qT redeklariert"));  // P 2, W 2
  EXPECT_FALSE(keep("%L and %L differ", "%L und %L unterscheiden sich"));  // Fortran loci: P 2, W 2
  // gettext's system-dependent %<PRIuMAX> is one placeholder.
  EXPECT_TRUE(keep("%<PRIuMAX> records truncated", "%<PRIuMAX> Datens\xC3\xA4tze abgeschnitten"));
  EXPECT_FALSE(keep("%s:%<PRIuMAX>: is not sorted", "%s:%<PRIuMAX>: ist nicht sortiert"));  // P 2, W 3
  // Column-aligned option help.
  EXPECT_FALSE(keep("--debug          print warnings about input",
                    "--debug          Warnungen zur Eingabe ausgeben"));
  std::string forty, forty_one;
  for (int i = 0; i < 40; ++i) forty += "w ";
  forty_one = forty + "w";
  EXPECT_TRUE(keep("ab " + forty.substr(2), "cd " + forty.substr(2)));  // 40 tokens
  EXPECT_FALSE(keep("ab " + forty_one.substr(2), "cd " + forty.substr(2)));  // 41 tokens
}

TEST(DataParallelText, ReadsACatalogCompiledWithMsgfmt) {
  if (!on_path("msgfmt") || !on_path("msgunfmt")) GTEST_SKIP() << "gettext is not installed";
  TempDir tmp;
  write_file(tmp.file("t.po"), kPo);
  ASSERT_EQ(std::system(("msgfmt -o " + tmp.file("t.mo") + " " + tmp.file("t.po")).c_str()), 0);
  auto got = D::read_mo_catalog(tmp.file("t.mo"));
  auto want = kPoPairs;
  const auto by_source = [](const D::TextPair& a, const D::TextPair& b) { return a.source < b.source; };
  std::sort(got.begin(), got.end(), by_source);  // msgunfmt sorts by msgid
  std::sort(want.begin(), want.end(), by_source);
  expect_pairs(got, want);
  write_file(tmp.file("junk.mo"), "not a catalog");
  expect_error([&] { D::read_mo_catalog(tmp.file("junk.mo")); }, {tmp.file("junk.mo"), "msgunfmt failed"});
  expect_error([&] { D::read_mo_catalog(tmp.file("absent.mo")); }, {tmp.file("absent.mo"), "no such file"});
}

TEST(DataParallelText, MissingCatalogsAreListedWithTheirPackages) {
  TempDir tmp;
  if (!on_path("msgunfmt")) {
    expect_error([&] { D::build_gettext_en_de_corpus(tmp.file("c.tsv"), {}, tmp.dir()); },
                 {"msgunfmt", "gettext"});
    return;
  }
  expect_error([&] { D::build_gettext_en_de_corpus(tmp.file("c.tsv"), {}, tmp.dir()); },
               {tmp.dir() + "/de/LC_MESSAGES/coreutils.mo (package coreutils)",
                "gnupg2.mo (package gnupg-l10n)", "apt-get install -y coreutils"});
  EXPECT_FALSE(fs::exists(tmp.file("c.tsv")));
}

// Every pinned catalog compiled from a two-entry PO: the first catalog's "Shared message here"
// wins over the same msgid in all later ones, one entry per catalog is filtered out.
TEST(DataParallelText, BuildsTheCorpusFromALocaleTree) {
  if (!on_path("msgfmt") || !on_path("msgunfmt")) GTEST_SKIP() << "gettext is not installed";
  TempDir tmp;
  fs::create_directories(tmp.file("de/LC_MESSAGES"));
  std::set<std::string> domains;
  for (const auto& c : D::kGettextDeCatalogs) {
    if (!domains.insert(c.domain).second) continue;
    const std::string d = c.domain;
    const std::string po = "msgid \"\"\nmsgstr \"Content-Type: text/plain; charset=UTF-8\\n\"\n\n"
                           "msgid \"Shared message here\"\nmsgstr \"Gemeinsame Nachricht " + d + "\"\n\n"
                           "msgid \"Message from the " + d + " catalog\"\nmsgstr \"Nachricht aus " + d + "\"\n\n"
                           "msgid \"%s\"\nmsgstr \"%s\"\n";
    write_file(tmp.file(d + ".po"), po);
    const auto mo = tmp.file("de/LC_MESSAGES/" + d + ".mo");
    ASSERT_EQ(std::system(("msgfmt -o " + mo + " " + tmp.file(d + ".po")).c_str()), 0) << d;
  }
  const auto reports = D::build_gettext_en_de_corpus(tmp.file("out/c.tsv"), {}, tmp.dir());
  ASSERT_EQ(reports.size(), D::kGettextDeCatalogs.size());
  std::vector<D::TextPair> want;
  std::set<std::string> seen;
  for (size_t i = 0; i < reports.size(); ++i) {
    const std::string d = D::kGettextDeCatalogs[i].domain;
    EXPECT_EQ(reports[i].package, D::kGettextDeCatalogs[i].package);
    EXPECT_EQ(reports[i].entries, 3);
    EXPECT_EQ(reports[i].kept, 2);
    if (i == 0) want.push_back({"Shared message here", "Gemeinsame Nachricht " + d});
    if (seen.insert(d).second) want.push_back({"Message from the " + d + " catalog", "Nachricht aus " + d});
  }
  // msgunfmt sorts entries by msgid: "Message..." precedes "Shared..." within a catalog.
  std::swap(want[0], want[1]);
  EXPECT_EQ(reports[0].added, 2);
  EXPECT_EQ(reports[1].added, 1);
  expect_pairs(D::read_parallel_tsv(tmp.file("out/c.tsv")), want);
  expect_pairs(D::load_gettext_en_de(tmp.file("out/c.tsv")), want);
  const auto manifest = read_file(tmp.file("out/c.tsv.manifest"));
  EXPECT_NE(manifest.find(std::string(D::kGettextDeCatalogs[0].package) + "\t" +
                          D::kGettextDeCatalogs[0].domain + "\t"),
            std::string::npos)
      << manifest;
}

TEST(DataParallelText, DebianCatalogsWhenInstalled) {
  for (const auto& c : D::kGettextDeCatalogs) {
    if (!fs::exists(std::string("/usr/share/locale/de/LC_MESSAGES/") + c.domain + ".mo")) {
      GTEST_SKIP() << c.domain << ".mo (package " << c.package << ") is not installed";
    }
  }
  if (!on_path("msgunfmt")) GTEST_SKIP() << "gettext is not installed";
  TempDir tmp;
  const auto reports = D::build_gettext_en_de_corpus(tmp.file("gettext.tsv"));
  const auto pairs = D::read_parallel_tsv(tmp.file("gettext.tsv"));
  int64_t added = 0;
  for (const auto& r : reports) {
    EXPECT_GT(r.entries, 0) << r.domain;
    EXPECT_LE(r.added, r.kept);
    EXPECT_LE(r.kept, r.entries);
    added += r.added;
  }
  EXPECT_EQ(added, static_cast<int64_t>(pairs.size()));
  EXPECT_GT(pairs.size(), 10000u);
  std::set<std::string> unique_sources;
  for (const auto& p : pairs) {
    unique_sources.insert(p.source);
    const auto again = D::clean_gettext_pair(p);  // the filter is idempotent on its output
    ASSERT_TRUE(again.has_value()) << p.source;
    EXPECT_TRUE(same(*again, p));
  }
  EXPECT_EQ(unique_sources.size(), pairs.size());
}

}  // namespace
