// The replay driver: runs files through fuzz targets without libFuzzer, so any compiler's build
// (gcc Release in CI, the sanitizer builds) re-checks the committed corpora and the reproducers
// of past findings on every test run.
//   kvq_fuzz_replay TARGET PATH...   every file given, and every file under each directory given
//                                    (sorted), through TARGET; exit status 0 when all pass
//   kvq_fuzz_replay --list           the targets in this binary
// A finding aborts with the input's path (fuzz_target.h); an exception that escapes a target is
// reported with the path and exit status 1.
#include <algorithm>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "replay.h"

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  using kvq::fuzz::registered_targets;
  const std::string usage = "usage: kvq_fuzz_replay TARGET PATH... | --list";
  if (argc == 2 && std::string(argv[1]) == "--list") {
    for (const auto& [name, function] : registered_targets()) std::cout << name << "\n";
    return 0;
  }
  if (argc < 3) {
    std::cerr << usage << "\n";
    return 2;
  }
  const std::string target = argv[1];
  const auto it = std::find_if(registered_targets().begin(), registered_targets().end(),
                               [&](const auto& entry) { return entry.first == target; });
  if (it == registered_targets().end()) {
    std::cerr << "kvq_fuzz_replay: unknown target '" << target << "'; this binary has:";
    for (const auto& [name, function] : registered_targets()) std::cerr << " " << name;
    std::cerr << "\n";
    return 2;
  }
  std::vector<fs::path> files;
  for (int i = 2; i < argc; ++i) {
    const fs::path path = argv[i];
    std::error_code ec;
    if (fs::is_directory(path, ec)) {
      std::vector<fs::path> found;
      for (const auto& entry : fs::recursive_directory_iterator(path)) {
        if (entry.is_regular_file()) found.push_back(entry.path());
      }
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::is_regular_file(path, ec)) {
      files.push_back(path);
    } else {
      std::cerr << "kvq_fuzz_replay: " << path.string() << ": no such file or directory\n";
      return 2;
    }
  }
  if (files.empty()) {
    std::cerr << "kvq_fuzz_replay: no input files under the paths given\n";
    return 2;
  }
  for (const auto& file : files) {
    std::ifstream in(file, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.good() && !in.eof()) {
      std::cerr << "kvq_fuzz_replay: cannot read " << file.string() << "\n";
      return 2;
    }
    kvq::fuzz::set_current_input(file.string());
    try {
      it->second(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    } catch (const std::exception& e) {
      std::cerr << "kvq_fuzz_replay: " << target << ": " << file.string()
                << ": an exception escaped the target: " << e.what() << "\n";
      return 1;
    }
  }
  std::cout << target << ": " << files.size() << " inputs replayed, no finding\n";
  return 0;
}
