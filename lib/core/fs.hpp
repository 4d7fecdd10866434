// File-system helpers. Every artifact strata writes goes through atomic_write: the data lands in a
// temporary file beside the target, is fsynced, then renamed over it, so a crash never leaves a
// half-written file under the final name.
#pragma once
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

namespace strata {

// `write` fills the temporary path it is given (any way it likes); on success the file is fsynced and
// renamed to `target`. If `write` throws, the temporary file is removed and the exception propagates.
void atomic_write(const std::filesystem::path& target,
                  const std::function<void(const std::filesystem::path& tmp)>& write);
void atomic_write_text(const std::filesystem::path& target, std::string_view text);

std::string read_text_file(const std::filesystem::path& file);
void fsync_path(const std::filesystem::path& path);

}  // namespace strata
