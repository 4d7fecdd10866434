#include "harness/run_dir.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/hash.hpp"

namespace strata::harness {
namespace fs = std::filesystem;

RunLock::RunLock(const fs::path& lock_file) {
  // O_CLOEXEC: helper processes (git, gnuplot) must not inherit, and so keep holding, the lock.
  fd_ = ::open(lock_file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("cannot open lock file {}: {}", lock_file.string(), std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    int error = errno;
    ::close(fd_);
    fd_ = -1;
    if (error != EWOULDBLOCK) fail("cannot lock {}: {}", lock_file.string(), std::strerror(error));
    std::string holder;
    try {
      holder = read_text_file(lock_file);
    } catch (const Error&) {
    }
    holder.erase(std::remove_if(holder.begin(), holder.end(), [](char c) { return std::isspace(static_cast<unsigned char>(c)); }),
                 holder.end());
    fail("run directory {} is in use by another strata process (pid {}); wait for it to finish, or write to another "
         "directory with --out",
         lock_file.parent_path().string(), holder.empty() ? "unknown" : holder);
  }
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size()))
    fail("cannot write lock file {}: {}", lock_file.string(), std::strerror(errno));
  ::fsync(fd_);
}

RunLock::~RunLock() {
  if (fd_ < 0) return;
  // Empty the file before releasing, so that a stale pid never names a process that no longer holds it.
  [[maybe_unused]] int ignored = ::ftruncate(fd_, 0);
  ::flock(fd_, LOCK_UN);
  ::close(fd_);
}

RunDir::RunDir(fs::path root, std::unique_ptr<RunLock> lock) : root_(std::move(root)), lock_(std::move(lock)) {}

namespace {
// The temporary an atomic write of manifest.json leaves when the process dies before its rename
// (core/fs.cpp names temporaries ".<name>.tmp-<pid>-<random>").
bool is_manifest_temporary(const std::string& name) { return name.rfind(".manifest.json.tmp-", 0) == 0; }
}  // namespace

std::unique_ptr<RunDir> RunDir::create(const fs::path& root) {
  fs::path absolute = fs::absolute(root).lexically_normal();
  if (fs::exists(absolute / "manifest.json"))
    fail("{} already holds a run; resume it with --resume {}, or choose a new --out", absolute.string(), root.string());
  if (fs::exists(absolute) && !fs::is_directory(absolute))
    fail("{} exists and is not a directory; a run directory must be a new or empty directory", absolute.string());
  if (fs::is_directory(absolute)) {
    // A run among unrelated files would be verified, reported and cleaned up together with them. Only
    // what an interrupted create leaves (its lock, its log, the temporary of its first manifest save) may
    // already be there.
    for (const auto& entry : fs::directory_iterator(absolute)) {
      const std::string name = entry.path().filename().string();
      if (name != "logs" && name != "run.lock" && !is_manifest_temporary(name))
        fail("{} is not empty and holds no run (it has '{}'); write the run to a new or empty directory",
             absolute.string(), name);
    }
  }
  fs::create_directories(absolute / "logs");
  auto lock = std::make_unique<RunLock>(absolute / "run.lock");
  // Re-check under the lock: another process may have created the run in between.
  if (fs::exists(absolute / "manifest.json")) fail("{} already holds a run", absolute.string());
  for (const auto& entry : fs::directory_iterator(absolute))
    if (is_manifest_temporary(entry.path().filename().string())) fs::remove(entry.path());
  auto run = std::unique_ptr<RunDir>(new RunDir(absolute, std::move(lock)));
  run->save_manifest();
  return run;
}

std::unique_ptr<RunDir> RunDir::open(const fs::path& root) {
  fs::path absolute = fs::absolute(root).lexically_normal();
  if (!fs::exists(absolute / "manifest.json"))
    fail("{} is not a run directory (no manifest.json)", absolute.string());
  auto lock = std::make_unique<RunLock>(absolute / "run.lock");
  auto run = std::unique_ptr<RunDir>(new RunDir(absolute, std::move(lock)));
  run->manifest_ = Manifest::load(absolute / "manifest.json");
  return run;
}

std::unique_ptr<RunDir> RunDir::unit_view(const fs::path& root, Manifest manifest) {
  auto run = std::unique_ptr<RunDir>(new RunDir(fs::absolute(root).lexically_normal(), nullptr));
  run->manifest_ = std::move(manifest);
  run->persistent_ = false;
  return run;
}

std::string RunDir::relative(const fs::path& path) const {
  fs::path rel = fs::absolute(path).lexically_normal().lexically_relative(root_);
  if (rel.empty() || *rel.begin() == "..") fail("{} is not inside the run directory {}", path.string(), root_.string());
  return rel.generic_string();
}

void RunDir::save_manifest() {
  std::lock_guard lock(mutex_);
  if (persistent_) manifest_.save(manifest_path());
}

namespace {
// The same rule Manifest::load applies to recorded paths, so that whatever is recorded can be read back.
void check_relative(const std::string& relative) {
  if (!is_run_relative_path(relative))
    fail("internal: artifact path '{}' must be a plain relative path inside the run directory", relative);
}
}  // namespace

std::string path_sha256(const fs::path& path, const std::function<std::string(const fs::path&)>& file_sha256) {
  const auto hash_file = [&](const fs::path& file) { return file_sha256 ? file_sha256(file) : sha256_file(file); };
  if (fs::is_regular_file(path)) return hash_file(path);
  if (!fs::is_directory(path)) fail("cannot hash {}: no such file or directory", path.string());
  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator(path))
    if (entry.is_regular_file()) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  std::string listing;
  for (const auto& file : files) listing += fs::relative(file, path).generic_string() + "  " + hash_file(file) + "\n";
  return sha256_hex(listing);
}

std::string RunDir::input_sha256(const std::string& input) {
  fs::path p(input);
  std::string key = input;
  if (p.is_absolute()) {
    fs::path rel = p.lexically_normal().lexically_relative(root_);
    if (!rel.empty() && *rel.begin() != "..") key = rel.generic_string(), p = rel;
  }
  if (!p.is_absolute()) {
    std::lock_guard lock(mutex_);
    if (auto* recorded = manifest_.artifact(key)) return recorded->sha256;
    if (!fs::exists(root_ / p))
      fail("input '{}' is neither a recorded artifact nor a file of the run {}", input, root_.string());
    return path_sha256(root_ / p);
  }
  return path_sha256(p, [this](const fs::path& file) { return cached_file_sha256(file); });
}

std::string RunDir::cached_file_sha256(const fs::path& file) {
  const std::string stamp =
      fmt::format("{}:{}", fs::file_size(file), fs::last_write_time(file).time_since_epoch().count());
  {
    std::lock_guard lock(mutex_);
    auto it = hash_cache_.find(file.string());
    if (it != hash_cache_.end() && it->second.first == stamp) return it->second.second;
  }
  std::string sha = sha256_file(file);
  std::lock_guard lock(mutex_);
  hash_cache_[file.string()] = {stamp, sha};
  return sha;
}

ArtifactRecord RunDir::write_artifact(const std::string& relative, const std::string& step,
                                      const std::function<void(const fs::path&)>& write,
                                      const std::vector<std::string>& inputs) {
  check_relative(relative);
  atomic_write(path(relative), write);
  return record_artifact(relative, step, inputs);
}

ArtifactRecord RunDir::record_artifact(const std::string& relative, const std::string& step,
                                       const std::vector<std::string>& inputs) {
  check_relative(relative);
  fs::path file = path(relative);
  if (!fs::is_regular_file(file)) fail("internal: step {} recorded artifact {} but no such file exists", step, file.string());
  ArtifactRecord record;
  record.path = fs::path(relative).lexically_normal().generic_string();
  record.step = step;
  record.size = fs::file_size(file);
  record.sha256 = sha256_file(file);
  for (const auto& input : inputs) record.inputs[input] = input_sha256(input);
  record.recorded_at = now_iso8601();
  std::lock_guard lock(mutex_);
  manifest_.record_artifact(record);
  save_manifest();
  return record;
}

}  // namespace strata::harness
