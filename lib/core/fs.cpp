#include "core/fs.hpp"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>

#include "core/error.hpp"
#include "core/write_error.hpp"

namespace strata {
namespace fs = std::filesystem;
namespace {

// Errors that mean "the file system refused the data", as opposed to a bug or bad input in the writer.
bool is_storage_error(int error) {
  return error == ENOSPC || error == EDQUOT || error == EACCES || error == EPERM || error == EROFS ||
         error == EFBIG || error == EIO;
}

// The fault (if any) the N-th atomic_write must simulate. The variables are read at every write; writes
// are counted from the moment the variables took their current values, so a test can set them mid-process.
enum class Fault { None, Abort, Fail };

Fault injected_fault(int* fail_errno) {
  static std::mutex mutex;
  static std::string seen;
  static long count = 0;
  const char* abort_at = std::getenv("STRATA_ABORT_AT_WRITE");
  const char* fail_at = std::getenv("STRATA_FAIL_WRITE");
  if (!abort_at && !fail_at) return Fault::None;
  std::lock_guard lock(mutex);
  const std::string current = std::string(abort_at ? abort_at : "") + "|" + (fail_at ? fail_at : "");
  if (current != seen) seen = current, count = 0;
  ++count;
  if (abort_at && *abort_at && count == std::strtol(abort_at, nullptr, 10)) return Fault::Abort;
  if (fail_at && *fail_at) {
    char* rest = nullptr;
    if (count == std::strtol(fail_at, &rest, 10)) {
      *fail_errno = rest && std::string_view(rest) == ":EACCES" ? EACCES : ENOSPC;
      return Fault::Fail;
    }
  }
  return Fault::None;
}

uint64_t size_or_zero(const fs::path& file) {
  std::error_code ec;
  auto size = fs::file_size(file, ec);
  return ec ? 0 : size;
}

}  // namespace

void fsync_path(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void fail_write(const fs::path& file, int error, uint64_t bytes_needed) {
  const fs::path dir = file.parent_path().empty() ? fs::path(".") : file.parent_path();
  std::string space;
  struct statvfs st {};
  if (::statvfs(dir.c_str(), &st) == 0)
    space = fmt::format("{} bytes free on the file system holding {}", uint64_t(st.f_bavail) * st.f_frsize,
                        dir.string());
  const char* name = ::strerrorname_np(error);
  const std::string needed = bytes_needed ? fmt::format("it needs at least {} bytes; ", bytes_needed) : "";
  const bool permission = error == EACCES || error == EPERM || error == EROFS;
  fail("cannot write {}: {} ({}); {}{}. {} and continue with `strata run --resume RUN_DIR`: finished artifacts "
       "are kept and this one is written again",
       file.string(), std::strerror(error), name ? name : "errno " + std::to_string(error), needed, space,
       permission ? "Make the directory writable" : "Free space");
}

void atomic_write(const fs::path& target, const std::function<void(const fs::path&)>& write) {
  fs::path dir = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail_write(target, ec.value(), 0);
  std::random_device rd;
  fs::path tmp = dir / fmt::format(".{}.tmp-{}-{:08x}", target.filename().string(), ::getpid(), rd());
  int injected_errno = 0;
  const Fault fault = injected_fault(&injected_errno);
  try {
    errno = 0;  // so that a storage errno seen below was set by this write
    try {
      write(tmp);
    } catch (const Error&) {
      // A stream that failed leaves the reason in errno; a disk-full or permission failure gets the one
      // clear message, anything else (the writer's own checks) propagates unchanged.
      const int error = errno;
      if (is_storage_error(error)) fail_write(target, error, size_or_zero(tmp));
      throw;
    }
    if (!fs::exists(tmp)) fail("internal: writer for {} produced no file", target.string());
    if (fault == Fault::Fail) fail_write(target, injected_errno, size_or_zero(tmp));
    if (fault == Fault::Abort) ::raise(SIGKILL);
    fsync_path(tmp);
    fs::rename(tmp, target, ec);
    if (ec) fail_write(target, ec.value(), size_or_zero(tmp));
    fsync_path(dir);
  } catch (...) {
    fs::remove(tmp, ec);
    throw;
  }
}

void atomic_write_text(const fs::path& target, std::string_view text) {
  atomic_write(target, [&](const fs::path& tmp) {
    std::ofstream out(tmp, std::ios::binary);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    out.flush();
    if (!out) fail("cannot write {}", tmp.string());
  });
}

std::string read_text_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("cannot open {}: {}", file.string(), fs::exists(file) ? "permission denied" : "no such file");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace strata
