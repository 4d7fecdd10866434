// Writes that the file system refuses (no space, no permission), and the fault injection that tests them.
//
// atomic_write (core/fs.hpp) turns a write that failed for lack of space or permission into one clear
// strata::Error naming the path, the errno (ENOSPC, EACCES ...), the bytes it needed (at least) and the
// bytes free, and removes its temporary file.
//
// Fault injection for the crash and disk-full tests (environment variables, read at every atomic_write;
// writes are counted from 1 since the variables took their current values):
//   STRATA_ABORT_AT_WRITE=N       the N-th atomic_write kills the process with SIGKILL after its temporary
//                                 file is written and before the rename, as a `kill -9` at that moment would.
//   STRATA_FAIL_WRITE=N[:ERRNO]   the N-th atomic_write fails as if the write had hit ERRNO (ENOSPC, the
//                                 default, or EACCES), after its temporary file is written; later writes
//                                 succeed, as after freeing space.
#pragma once
#include <cstdint>
#include <filesystem>

namespace strata {

// Throws the error of a write of `file` that failed with `error` (an errno value): the reason with its
// errno name, `bytes_needed` (a lower bound; 0: unknown) and the space free on the file system that holds it.
[[noreturn]] void fail_write(const std::filesystem::path& file, int error, uint64_t bytes_needed);

}  // namespace strata
