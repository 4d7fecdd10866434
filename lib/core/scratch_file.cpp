#include "core/scratch_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "core/error.hpp"

namespace strata {

std::shared_ptr<ScratchFile> ScratchFile::create(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  std::string name = (dir / ".strata-scratch-XXXXXX").string();
  const int fd = ::mkstemp(name.data());
  if (fd < 0)
    fail("cannot create a scratch file in {} ({}); make the directory writable or free space on its disk",
         dir.string(), std::strerror(errno));
  ::unlink(name.c_str());  // nameless from now on: removed when closed, even if the process dies
  return std::shared_ptr<ScratchFile>(new ScratchFile(fd, dir));
}

ScratchFile::~ScratchFile() {
  if (fd_ >= 0) ::close(fd_);
}

int64_t ScratchFile::append(const void* data, int64_t bytes) {
  const int64_t offset = size_;
  const char* p = static_cast<const char*>(data);
  for (int64_t done = 0; done < bytes;) {
    const ssize_t n = ::pwrite(fd_, p + done, size_t(bytes - done), off_t(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      fail("cannot write {} bytes to a scratch file in {} ({}); free space on its disk", bytes, dir_.string(),
           n < 0 ? std::strerror(errno) : "no progress");
    done += n;
  }
  size_ += bytes;
  return offset;
}

void ScratchFile::read(int64_t offset, int64_t bytes, void* out) const {
  if (offset < 0 || bytes < 0 || offset + bytes > size_)
    fail("scratch file in {}: read of [{}, {}) past its {} bytes", dir_.string(), offset, offset + bytes, size_);
  char* p = static_cast<char*>(out);
  for (int64_t done = 0; done < bytes;) {
    const ssize_t n = ::pread(fd_, p + done, size_t(bytes - done), off_t(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      fail("cannot read a scratch file in {} ({})", dir_.string(), n < 0 ? std::strerror(errno) : "unexpected end");
    done += n;
  }
}

}  // namespace strata
