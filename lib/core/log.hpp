// Timestamped logging to stderr and, while a run is open, to the run's log file.
// Lines look like `[2026-02-18 13:00:00] Training SAE for gemma-2b_layer4`.
#pragma once
#include <spdlog/spdlog.h>
#include <chrono>
#include <filesystem>
#include <string>

namespace strata::log {

// Idempotent; called by the CLI before anything logs.
void init();
// Mirrors every following line into `file` (appending) until detach_file().
void attach_file(const std::filesystem::path& file);
void detach_file();

template <class... Args>
void info(spdlog::format_string_t<Args...> format, Args&&... args) {
  spdlog::info(format, std::forward<Args>(args)...);
}
template <class... Args>
void warn(spdlog::format_string_t<Args...> format, Args&&... args) {
  spdlog::warn(format, std::forward<Args>(args)...);
}
template <class... Args>
void debug(spdlog::format_string_t<Args...> format, Args&&... args) {
  spdlog::debug(format, std::forward<Args>(args)...);
}

// Progress of a long loop: a redrawn bar on a terminal, a plain line every `interval` otherwise.
class Progress {
 public:
  Progress(std::string label, int64_t total, std::chrono::seconds interval = std::chrono::seconds(15));
  ~Progress();
  void advance(int64_t n = 1);
  void finish();

 private:
  void draw(bool force);
  std::string label_;
  int64_t total_;
  int64_t done_ = 0;
  bool terminal_;
  bool finished_ = false;
  std::chrono::seconds interval_;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace strata::log
