#pragma once
// KVQ_MULTIVERSION before a function definition: one copy per x86-64 instruction set level
// (AVX-512, AVX2, baseline), picked at load time, so that loops GCC vectorises use the widest
// vectors of the machine without -march flags.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KVQ_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KVQ_MULTIVERSION
#endif
