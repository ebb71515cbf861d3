#pragma once
// The fuzz targets of kvq's input formats (one fuzz_<format>.cpp each) and what they share.
//
// A target is declared once with KVQ_FUZZ_TARGET(name) { ... } and compiled twice:
//   - with KVQ_LIBFUZZER (clang, -DKVQ_BUILD_FUZZERS=ON): the body is LLVMFuzzerTestOneInput of
//     the libFuzzer binary kvq_fuzz_<name> (scripts/fuzz.sh runs it);
//   - otherwise: the body is registered under `name` in a replay driver (replay_main.cpp) that
//     runs every file of fuzz/corpus/<name>/ through it, a CTest test of every build.
//
// The contract every target checks: a bad input is rejected with a c10::Error (kvq's one-line
// errors) whose message names the input (the file, or the config source); anything else - a
// crash, a sanitizer report, another exception type, an error that does not name its input, or
// a broken round trip - is a finding (fail() prints it and aborts, which libFuzzer records).
#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace kvq {
namespace fuzz {

using TargetFunction = int (*)(const uint8_t* data, size_t size);

// Adds a target to the replay driver's table (used by KVQ_FUZZ_TARGET); returns true.
bool register_target(const char* name, TargetFunction function);

// This process's scratch directory, created on first use under $KVQ_FUZZ_SCRATCH, else /dev/shm
// (memory), else $TMPDIR or /tmp, and removed at exit.
std::string scratch_dir();

// Writes `size` bytes to scratch_dir()/name and returns that path.
std::string write_scratch(const std::string& name, const uint8_t* data, size_t size);
std::string write_scratch(const std::string& name, const std::string& bytes);

// A finding: prints "kvq fuzz finding: <message>" (and, in the replay driver, the input file)
// on stderr and aborts.
[[noreturn]] void fail(const std::string& message);

// fail(message) unless ok.
inline void expect(bool ok, const std::string& message) {
  if (!ok) fail(message);
}

// The rejection contract: the first line of the error's message (what the CLI prints) names
// `input` (a path, or a config source); fails otherwise.
void expect_names(const c10::Error& error, const std::string& input);

}  // namespace fuzz
}  // namespace kvq

#ifdef KVQ_LIBFUZZER
#define KVQ_FUZZ_TARGET(name)                                                          \
  static int kvq_fuzz_target_##name(const uint8_t* data, size_t size);                 \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {             \
    return kvq_fuzz_target_##name(data, size);                                          \
  }                                                                                     \
  static int kvq_fuzz_target_##name(const uint8_t* data, size_t size)
#else
#define KVQ_FUZZ_TARGET(name)                                                          \
  static int kvq_fuzz_target_##name(const uint8_t* data, size_t size);                 \
  [[maybe_unused]] static const bool kvq_fuzz_registered_##name =                      \
      ::kvq::fuzz::register_target(#name, &kvq_fuzz_target_##name);                    \
  static int kvq_fuzz_target_##name(const uint8_t* data, size_t size)
#endif
