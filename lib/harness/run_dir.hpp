// A run directory (docs/run_layout.md): its lock, its manifest, and the one way artifacts enter it.
#pragma once
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "harness/manifest.hpp"

namespace strata::harness {

// An exclusive flock on RUN_DIR/run.lock, held for the object's lifetime (released by the kernel if the
// process dies). The holder writes its pid into the file; a second process gets a strata::Error naming
// that pid instead of waiting.
class RunLock {
 public:
  explicit RunLock(const std::filesystem::path& lock_file);
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

 private:
  int fd_ = -1;
};

class RunDir {
 public:
  // A new run: creates the directory (which must not already hold a manifest), locks it, and starts an
  // empty manifest (the runner fills in git state, environment and config).
  static std::unique_ptr<RunDir> create(const std::filesystem::path& root);
  // An existing run (resume, or reading it for reproduce): locks it and loads the manifest.
  static std::unique_ptr<RunDir> open(const std::filesystem::path& root);
  // One unit of work's view of a run (harness/executor.hpp): units run concurrently in separate processes,
  // each writing only its own files, so the view takes no run lock (the caller holds the unit's own lock)
  // and keeps `manifest` in memory only: save_manifest() writes nothing, and the unit's record, not
  // manifest.json, carries what the unit recorded (the reduce merges the records).
  static std::unique_ptr<RunDir> unit_view(const std::filesystem::path& root, Manifest manifest);

  const std::filesystem::path& root() const { return root_; }
  std::filesystem::path manifest_path() const { return root_ / "manifest.json"; }
  std::filesystem::path log_path() const { return root_ / "logs" / "strata.log"; }
  // Absolute path of a run-relative path.
  std::filesystem::path path(const std::string& relative) const { return root_ / relative; }
  // The run-relative, '/'-separated form of a path inside the run (error if outside).
  std::string relative(const std::filesystem::path& path) const;

  // Manifest access is serialized: steps may record artifacts from several threads. Lock mutex() around
  // direct use of manifest(); the member functions below lock it themselves.
  Manifest& manifest() { return manifest_; }
  std::recursive_mutex& mutex() { return mutex_; }
  void save_manifest();  // atomic; nothing for a unit_view

  // Writes `relative` atomically through `write` (given the temporary path) and records it with its
  // size, SHA-256, step and inputs; the manifest is saved before returning. If `write` throws (or the
  // process dies) nothing is recorded and nothing exists under the final name.
  ArtifactRecord write_artifact(const std::string& relative, const std::string& step,
                                 const std::function<void(const std::filesystem::path& tmp)>& write,
                                 const std::vector<std::string>& inputs = {});
  // Records a file that another layer already wrote atomically under `relative`.
  ArtifactRecord record_artifact(const std::string& relative, const std::string& step,
                                  const std::vector<std::string>& inputs = {});

  // SHA-256 of an input: a recorded artifact's recorded hash (run-relative path), else the file's hash;
  // a directory hashes as the list "<relative file>  <sha256>\n" of its regular files in name order.
  // Hashes of files outside the run are cached per file by (path, size, mtime) for this RunDir's lifetime,
  // so a checkpoint directory that is the input of many artifacts is read once.
  std::string input_sha256(const std::string& input);

 private:
  RunDir(std::filesystem::path root, std::unique_ptr<RunLock> lock);
  std::filesystem::path root_;
  std::unique_ptr<RunLock> lock_;
  Manifest manifest_;
  bool persistent_ = true;  // false for a unit_view
  std::recursive_mutex mutex_;
  std::string cached_file_sha256(const std::filesystem::path& file);
  std::map<std::string, std::pair<std::string, std::string>> hash_cache_;  // file -> (size:mtime, sha256)
};

// SHA-256 of a regular file, or of a directory as described at RunDir::input_sha256.
// file_sha256 hashes one regular file (default: sha256_file).
std::string path_sha256(const std::filesystem::path& path,
                        const std::function<std::string(const std::filesystem::path&)>& file_sha256 = {});

}  // namespace strata::harness
