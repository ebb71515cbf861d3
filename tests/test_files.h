#pragma once
// Helpers shared by the tests that touch files: error capture and a temporary directory.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "kvq/util/atomic_file.h"

// `text` contains `part`; the failure prints both.
#define EXPECT_HAS(text, part)                                  \
  EXPECT_NE(std::string(text).find(part), std::string::npos) \
      << "missing \"" << (part) << "\" in: " << (text)

namespace kvq_test_files {

// `text` as a parameterised test's name: every character but letters and digits becomes '_'.
inline std::string test_name(std::string text) {
  for (auto& ch : text) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return text;
}

// The message of the c10::Error that f throws (without backtrace), or "<no error>".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "<no error>";
}

// f throws a c10::Error whose message contains every one of `parts`.
inline void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  const auto message = error_of(f);
  for (const auto& part : parts) {
    EXPECT_NE(message.find(part), std::string::npos) << "missing '" << part << "' in: " << message;
  }
}

// A fresh directory named after the running test (unique per instance), removed at the end of the
// scope.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    static int counter = 0;
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path = std::filesystem::temp_directory_path() /
           ("kvq_" + std::string(info ? info->name() : "test") + "_" + std::to_string(::getpid()) +
            "_" + std::to_string(counter++));
    kvq::util::remove_tree(path.string());
    std::filesystem::create_directories(path);
  }
  ~TempDir() { kvq::util::remove_tree(path.string()); }
  std::string file(const std::string& name) const { return (path / name).string(); }
  std::string dir() const { return path.string(); }
  // Writes `text` to file(name) and returns that path.
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(file(name), std::ios::binary) << text;
    return file(name);
  }
};

// A toy English -> German corpus for translation runs, written to dir/pairs.tsv (its path is
// returned): "the <colour> <thing> is big" and "a <colour> <thing>" for 5 colours and 4 things.
inline std::string write_toy_translation_tsv(const TempDir& dir) {
  const std::vector<std::pair<std::string, std::string>> colours = {
      {"red", "rot"},         {"green", "grün"}, {"blue", "blau"},
      {"black", "schwarz"},   {"white", "weiß"}};
  const std::vector<std::pair<std::string, std::string>> things = {
      {"house", "Haus"}, {"car", "Auto"}, {"tree", "Baum"}, {"book", "Buch"}};
  std::string tsv;
  for (const auto& [en_adj, de_adj] : colours) {
    for (const auto& [en, de] : things) {
      tsv += "the " + en_adj + " " + en + " is big\tdas " + de_adj + " " + de + " ist groß\n";
      tsv += "a " + en_adj + " " + en + "\tein " + de_adj + " " + de + "\n";
    }
  }
  return dir.write("pairs.tsv", tsv);
}

}  // namespace kvq_test_files
