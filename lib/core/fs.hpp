// File-system helpers. Every artifact strata writes goes through atomic_write: the data lands in a
// temporary file beside the target, is fsynced, then renamed over it, so a crash never leaves a
// half-written file under the final name.
//
// Fault injection for the crash and disk-full tests (environment variables, read at every write; writes
// are counted from 1 since the variables took their current values):
//   STRATA_ABORT_AT_WRITE=N       the N-th atomic_write kills the process with
//                                 SIGKILL after its temporary file is written and before the rename, as a
//                                 `kill -9` at that moment would.
//   STRATA_FAIL_WRITE=N[:ERRNO]   the N-th atomic_write fails as if the write had hit ERRNO (ENOSPC, the
//                                 default, or EACCES), after its temporary file is written; later writes
//                                 succeed, as after freeing space.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

namespace strata {

// `write` fills the temporary path it is given (any way it likes); on success the file is fsynced and
// renamed to `target`. If `write` throws (or the file system refuses the data) the temporary file is
// removed and a strata::Error names the target; a write that fails for lack of space or permission says
// so (ENOSPC / EACCES ...), with the bytes it needed and the bytes free.
void atomic_write(const std::filesystem::path& target,
                  const std::function<void(const std::filesystem::path& tmp)>& write);
void atomic_write_text(const std::filesystem::path& target, std::string_view text);

// Throws the error of a write of `file` that failed with `error` (an errno value): the reason with its
// errno name, `bytes_needed` (a lower bound; 0: unknown) and the space free on the file system that holds it.
[[noreturn]] void fail_write(const std::filesystem::path& file, int error, uint64_t bytes_needed);

std::string read_text_file(const std::filesystem::path& file);
void fsync_path(const std::filesystem::path& path);

}  // namespace strata
