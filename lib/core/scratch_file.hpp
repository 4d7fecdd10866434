// A scratch file for data a step spills out of memory and reads back by ranges: created in a directory the
// caller names (the step's output directory, so its disk, not /tmp's, takes the bytes) and unlinked at once,
// so it never appears in that directory and its space is freed when the last handle closes, crash or not.
// Reads go through pread into the caller's buffer: the bytes read back sit in the page cache, which the
// kernel may reclaim, not in the process's resident memory.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>

namespace strata {

class ScratchFile {
 public:
  // Fails (naming `dir` and the fix) if no file can be made there.
  static std::shared_ptr<ScratchFile> create(const std::filesystem::path& dir);
  ~ScratchFile();
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;

  // Appends `bytes` bytes and returns the offset they start at.
  int64_t append(const void* data, int64_t bytes);
  // Reads `bytes` bytes at `offset` (written before) into `out`.
  void read(int64_t offset, int64_t bytes, void* out) const;
  int64_t size() const { return size_; }

 private:
  ScratchFile(int fd, std::filesystem::path dir) : fd_(fd), dir_(std::move(dir)) {}
  int fd_ = -1;
  int64_t size_ = 0;
  std::filesystem::path dir_;  // for messages only: the file itself has no name
};

}  // namespace strata
