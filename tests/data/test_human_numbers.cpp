// The human-numbers corpus: spelling, vocabulary, the 1..8000 / 8001..9999 split.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <set>
#include <sstream>
#include <string>

#include "kvq/data/human_numbers.h"
#include "test_files.h"

namespace {

namespace D = kvq::data;

using kvq_test_files::error_of;

TEST(DataHumanNumbers, SpellsNumbersLikeFastai) {
  EXPECT_EQ(D::spell_number(1), "one");
  EXPECT_EQ(D::spell_number(10), "ten");
  EXPECT_EQ(D::spell_number(13), "thirteen");
  EXPECT_EQ(D::spell_number(20), "twenty");
  EXPECT_EQ(D::spell_number(21), "twenty one");
  EXPECT_EQ(D::spell_number(100), "one hundred");
  EXPECT_EQ(D::spell_number(101), "one hundred one");
  EXPECT_EQ(D::spell_number(115), "one hundred fifteen");
  EXPECT_EQ(D::spell_number(340), "three hundred forty");
  EXPECT_EQ(D::spell_number(1000), "one thousand");
  EXPECT_EQ(D::spell_number(2005), "two thousand five");
  EXPECT_EQ(D::spell_number(7010), "seven thousand ten");
  EXPECT_EQ(D::spell_number(8000), "eight thousand");
  EXPECT_EQ(D::spell_number(8888), "eight thousand eight hundred eighty eight");
  EXPECT_EQ(D::spell_number(9999), "nine thousand nine hundred ninety nine");
  EXPECT_NE(error_of([] { D::spell_number(0); }).find("[1, 9999]"), std::string::npos);
  EXPECT_NE(error_of([] { D::spell_number(10000); }).find("10000"), std::string::npos);
}

// Every word of 1..9999 is in the vocabulary and every vocabulary word but "." is used: 30 types.
TEST(DataHumanNumbers, VocabularyIsExactlyTheWordsUsed) {
  std::set<std::string> used;
  for (int64_t n = 1; n <= 9999; ++n) {
    std::istringstream words(D::spell_number(n));
    std::string w;
    while (words >> w) used.insert(w);
  }
  used.insert(".");
  const std::set<std::string> vocab(D::kHumanNumbersVocab.begin(), D::kHumanNumbersVocab.end());
  EXPECT_EQ(vocab.size(), 30u);
  EXPECT_EQ(used, vocab);
}

TEST(DataHumanNumbers, SplitsAreEightThousandAndTheRest) {
  const auto data = D::make_human_numbers();
  ASSERT_EQ(data.train.scalar_type(), torch::kInt64);
  ASSERT_EQ(data.train.dim(), 1);
  EXPECT_EQ((data.train == 0).sum().item<int64_t>(), 8000);  // one "." per number
  EXPECT_EQ((data.valid == 0).sum().item<int64_t>(), 1999);
  const auto train_text = D::decode_human_numbers(data.train);
  const auto valid_text = D::decode_human_numbers(data.valid);
  EXPECT_EQ(train_text.rfind("one . two . three . four .", 0), 0u);
  const std::string train_end = "seven thousand nine hundred ninety nine . eight thousand .";
  EXPECT_EQ(train_text.substr(train_text.size() - train_end.size()), train_end);
  EXPECT_EQ(valid_text.rfind("eight thousand one . eight thousand two .", 0), 0u);
  const std::string valid_end = "nine thousand nine hundred ninety nine .";
  EXPECT_EQ(valid_text.substr(valid_text.size() - valid_end.size()), valid_end);
  EXPECT_TRUE(torch::equal(D::human_numbers_tokens(21, 21),
                           torch::tensor({20, 1, 0}, torch::kInt64)));  // twenty one .
  EXPECT_TRUE(torch::equal(D::make_human_numbers().train, data.train));
  EXPECT_NE(error_of([] { D::decode_human_numbers(torch::tensor({30}, torch::kInt64)); })
                .find("id 30"),
            std::string::npos);
  EXPECT_NE(error_of([] { D::human_numbers_tokens(5, 4); }).find("first"), std::string::npos);
}

}  // namespace
