#include "core/log.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <unistd.h>

#include <cstdio>
#include <mutex>

namespace strata::log {
namespace {
constexpr const char* kPattern = "[%Y-%m-%d %H:%M:%S] %^%v%$";
std::mutex g_mutex;
std::shared_ptr<spdlog::sinks::basic_file_sink_mt> g_file_sink;
}  // namespace

void init() {
  std::lock_guard lock(g_mutex);
  if (spdlog::get("strata")) return;
  auto err = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>("strata", err);
  logger->set_pattern(kPattern);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
  if (const char* level = std::getenv("STRATA_LOG_LEVEL")) spdlog::set_level(spdlog::level::from_str(level));
}

void attach_file(const std::filesystem::path& file) {
  init();
  std::lock_guard lock(g_mutex);
  auto logger = spdlog::default_logger();
  if (g_file_sink) {
    auto& sinks = logger->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), g_file_sink), sinks.end());
  }
  std::filesystem::create_directories(file.parent_path());
  g_file_sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(file.string(), /*truncate=*/false);
  g_file_sink->set_pattern("[%Y-%m-%d %H:%M:%S] %v");
  logger->sinks().push_back(g_file_sink);
}

void detach_file() {
  std::lock_guard lock(g_mutex);
  if (!g_file_sink) return;
  auto& sinks = spdlog::default_logger()->sinks();
  sinks.erase(std::remove(sinks.begin(), sinks.end(), g_file_sink), sinks.end());
  g_file_sink.reset();
}

Progress::Progress(std::string label, int64_t total, std::chrono::seconds interval)
    : label_(std::move(label)), total_(total), terminal_(isatty(STDERR_FILENO) == 1), interval_(interval) {
  start_ = last_ = std::chrono::steady_clock::now();
}

Progress::~Progress() {
  if (!finished_ && terminal_ && done_ > 0) std::fputc('\n', stderr);
}

void Progress::advance(int64_t n) {
  done_ += n;
  draw(false);
}

void Progress::finish() {
  if (finished_) return;
  draw(true);
  if (terminal_) std::fputc('\n', stderr);
  finished_ = true;
}

void Progress::draw(bool force) {
  auto now = std::chrono::steady_clock::now();
  double elapsed = std::chrono::duration<double>(now - start_).count();
  double rate = elapsed > 0 ? done_ / elapsed : 0.0;
  double eta = (rate > 0 && total_ > done_) ? (total_ - done_) / rate : 0.0;
  if (terminal_) {
    if (!force && now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    int width = 30;
    int filled = total_ > 0 ? static_cast<int>(width * std::min<double>(1.0, double(done_) / total_)) : 0;
    std::string bar(filled, '#');
    bar.resize(width, '.');
    std::fprintf(stderr, "\r%s [%s] %lld/%lld %.1f/s eta %.0fs   ", label_.c_str(), bar.c_str(),
                 static_cast<long long>(done_), static_cast<long long>(total_), rate, eta);
    std::fflush(stderr);
  } else {
    if (!force && now - last_ < interval_) return;
    last_ = now;
    spdlog::info("{}: {}/{} ({:.1f}/s, eta {:.0f}s)", label_, done_, total_, rate, eta);
  }
}

}  // namespace strata::log
