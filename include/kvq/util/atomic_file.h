#pragma once
// Whole-file reads and crash-safe whole-file writes, shared by the training components
// (checkpoints, saved configs, metrics rewrites). Every error names the caller (`who`), the path
// and the system's reason.
#include <string>

namespace kvq {
namespace util {

// The temporary file that write_file_atomic(path, ...) writes before renaming it over `path`:
// "<path>.tmp-<pid>", in the same directory (rename is atomic only within one file system).
std::string temp_path_for(const std::string& path);

// Replaces the content of `path` by `bytes` so that readers (and a crash at any moment) see
// either the old file or the new one, never a mix: write temp_path_for(path), fsync it, rename it
// over `path`, fsync the directory. Missing parent directories are created. On failure the
// temporary file is removed, `path` is left as it was, and the error names `who`, the file and
// the reason. A stale temporary file of an earlier, interrupted write is simply overwritten.
void write_file_atomic(const std::string& path, const std::string& bytes, const std::string& who);

// The whole file as bytes. Throws "<who>: <path>: no such file" / "cannot open" / "read error".
std::string read_file(const std::string& path, const std::string& who);

// Removes `path` and, for a directory, everything below it (symbolic links are removed, not
// followed), as std::filesystem::remove_all does; a missing path is no error. Returns false when
// something could not be removed. PyTorch's pip builds of libtorch.so (2.11 seen) export their own
// std::filesystem::remove_all, which crashes (a call through a null pointer) in programs linked
// against them; kvq's tests and fuzz drivers clean up with this instead (POSIX nftw).
bool remove_tree(const std::string& path);

}  // namespace util
}  // namespace kvq
