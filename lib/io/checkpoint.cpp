#include "io/checkpoint.hpp"

#include <cstdlib>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/hash.hpp"
#include "core/read_bounded.hpp"

namespace strata::io {
namespace fs = std::filesystem;
namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

bool is_pickle_name(const fs::path& file) {
  const std::string name = file.filename().string();
  const std::string ext = file.extension().string();
  return ext == ".bin" || ext == ".pt" || ext == ".pth" || ext == ".ckpt" || ext == ".pkl" ||
         name == "pytorch_model.bin.index.json";
}

[[noreturn]] void refuse_pickle(const fs::path& where, const fs::path& pickle_file) {
  fail("{}: only pickle weights found ({}). strata refuses pickle checkpoints because loading one runs "
       "arbitrary code from the file. Get safetensors instead: many hub repos have model.safetensors (or a "
       "'refs/pr/N' revision from the safetensors conversion bot), or convert once in a trusted Python with "
       "`AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out_dir, safe_serialization=True)`",
       where.string(), pickle_file.filename().string());
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t start = 0;
  while (start < s.size() && std::isspace(static_cast<unsigned char>(s[start]))) ++start;
  return s.substr(start);
}

fs::path hub_cache_root(std::string* how) {
  if (const char* v = std::getenv("HF_HUB_CACHE"); v && *v) {
    *how = "$HF_HUB_CACHE";
    return v;
  }
  if (const char* v = std::getenv("HF_HOME"); v && *v) {
    *how = "$HF_HOME/hub";
    return fs::path(v) / "hub";
  }
  const char* home = std::getenv("HOME");
  *how = "~/.cache/huggingface/hub";
  return fs::path(home ? home : "/") / ".cache" / "huggingface" / "hub";
}

// The snapshot directory of hub repo `repo_id` ("org/name" or "name") at `revision`, offline.
fs::path hub_snapshot(const std::string& spec, const std::string& repo_id, const std::string& revision) {
  std::string folder = "models--";
  for (char c : repo_id) folder += c == '/' ? std::string("--") : std::string(1, c);

  std::string how;
  const fs::path root = hub_cache_root(&how);
  const fs::path repo = root / folder;
  std::vector<std::string> looked;
  looked.push_back(fmt::format("cache root {} ({})", root.string(), how));
  if (!fs::is_directory(repo)) {
    looked.push_back(repo.string() + " (missing)");
    fail("'{}' is not in the offline Hugging Face cache; strata never downloads. Looked in:\n  {}\nDownload it "
         "elsewhere (e.g. `huggingface-cli download {}`) and copy the cache, or set HF_HUB_CACHE / HF_HOME",
         spec, fmt::join(looked, "\n  "), repo_id);
  }
  std::string commit;
  const fs::path ref = repo / "refs" / revision;
  if (fs::is_regular_file(ref)) {
    commit = trim(read_text_file(ref));
    looked.push_back(fmt::format("{} -> '{}'", ref.string(), commit));
  } else {
    looked.push_back(ref.string() + " (missing)");
    commit = revision;  // a commit hash names a snapshot directly
  }
  const fs::path snapshot = repo / "snapshots" / commit;
  if (commit.empty() || commit.find('/') != std::string::npos || !fs::is_directory(snapshot)) {
    looked.push_back(snapshot.string() + " (missing)");
    fail("'{}': revision '{}' is not in the offline Hugging Face cache. Looked in:\n  {}", spec, revision,
         fmt::join(looked, "\n  "));
  }
  return snapshot;
}

fs::path resolve_hub(const std::string& spec) {
  std::string rest = spec.substr(5);  // after hf://
  std::string revision = "main";
  if (auto at = rest.find('@'); at != std::string::npos) {
    revision = rest.substr(at + 1);
    rest = rest.substr(0, at);
  }
  auto slash = rest.find('/');
  if (rest.empty() || revision.empty() || slash == 0 || slash == rest.size() - 1 ||
      rest.find('/', slash == std::string::npos ? 0 : slash + 1) != std::string::npos)
    fail("'{}': expected hf://org/name[@revision] (or hf://name for a hub model without an org)", spec);
  const fs::path snapshot = hub_snapshot(spec, rest, revision);
  if (!fs::is_regular_file(snapshot / "config.json"))
    fail("'{}': snapshot {} has no config.json; the cached download is incomplete", spec, snapshot.string());
  return snapshot;
}

}  // namespace

fs::path resolve_hub_path(const std::string& spec) {
  if (spec.rfind("hf://", 0) != 0) fail("'{}': expected hf://org/name[@revision][/sub/dir]", spec);
  // org / name[@revision] / sub / dir
  std::vector<std::string> parts;
  for (size_t begin = 5;;) {
    size_t slash = spec.find('/', begin);
    parts.push_back(spec.substr(begin, slash == std::string::npos ? std::string::npos : slash - begin));
    if (slash == std::string::npos) break;
    begin = slash + 1;
  }
  for (const auto& part : parts)
    if (part.empty() || part == "." || part == "..")
      fail("'{}': expected hf://org/name[@revision][/sub/dir] (empty, '.' or '..' path parts are not allowed)", spec);
  if (parts.size() < 2) fail("'{}': expected hf://org/name[@revision][/sub/dir]", spec);
  std::string name = parts[1], revision = "main";
  if (auto at = name.find('@'); at != std::string::npos) {
    revision = name.substr(at + 1);
    name = name.substr(0, at);
    if (name.empty() || revision.empty()) fail("'{}': expected hf://org/name[@revision][/sub/dir]", spec);
  }
  fs::path path = hub_snapshot(spec, parts[0] + "/" + name, revision);
  for (size_t i = 2; i < parts.size(); ++i) path /= parts[i];
  if (!fs::exists(path)) fail("'{}': {} is not in the cached snapshot", spec, path.string());
  return path;
}

fs::path resolve_checkpoint(const std::string& spec) {
  if (spec.rfind("hf://", 0) == 0) return resolve_hub(spec);
  const fs::path path(spec);
  if (fs::is_regular_file(path)) {
    if (is_pickle_name(path)) refuse_pickle(path, path);
    fail("{}: a checkpoint is a directory holding config.json and model.safetensors (or its shards); pass "
         "the directory {} instead",
         spec, path.parent_path().string());
  }
  if (!fs::is_directory(path)) {
    std::string hint;
    if (spec.find('/') != std::string::npos && spec.find("//") == std::string::npos && !spec.starts_with("/") &&
        !spec.starts_with("."))
      hint = fmt::format(" (for a Hugging Face cache entry write hf://{})", spec);
    fail("{}: checkpoint directory not found{}", spec, hint);
  }
  if (!fs::is_regular_file(path / "config.json"))
    fail("{}: no config.json in the checkpoint directory", spec);
  return path;
}

CheckpointWeights::CheckpointWeights(const fs::path& checkpoint_dir) : dir_(checkpoint_dir) {
  const fs::path index = dir_ / kIndexFile;
  const fs::path single = dir_ / kSingleFile;
  if (fs::is_regular_file(index)) {
    const SafetensorsIndex parsed = parse_safetensors_index(read_bounded_text_file(index, kMaxIndexBytes), index.string());
    std::map<std::string, const SafetensorsFile*> by_file;
    for (const auto& [tensor, file] : parsed.weight_map) {
      if (!by_file.count(file)) {
        const fs::path shard = dir_ / file;
        if (!fs::is_regular_file(shard))
          fail("{}: shard '{}' (named in {} for tensor '{}') is missing; the download is incomplete",
               dir_.string(), file, kIndexFile, tensor);
        shards_.push_back(std::make_unique<SafetensorsFile>(shard));
        by_file[file] = shards_.back().get();
      }
      const SafetensorsFile* shard = by_file[file];
      if (!shard->contains(tensor))
        fail("{}: index names tensor '{}' in {} but that shard does not hold it", index.string(), tensor, file);
      owner_[tensor] = shard;
    }
    std::sort(shards_.begin(), shards_.end(), [](const auto& a, const auto& b) { return a->path() < b->path(); });
    return;
  }
  if (fs::is_regular_file(single)) {
    shards_.push_back(std::make_unique<SafetensorsFile>(single));
    for (const auto& name : shards_.back()->names()) owner_[name] = shards_.back().get();
    return;
  }
  std::vector<fs::path> entries;
  if (fs::is_directory(dir_))
    for (const auto& e : fs::directory_iterator(dir_)) entries.push_back(e.path());
  std::sort(entries.begin(), entries.end());
  for (const auto& e : entries)
    if (is_pickle_name(e)) refuse_pickle(dir_, e);
  fail("{}: no {} or {} in the checkpoint directory", dir_.string(), kSingleFile, kIndexFile);
}

std::vector<fs::path> CheckpointWeights::files() const {
  std::vector<fs::path> out;
  for (const auto& s : shards_) out.push_back(s->path());
  return out;
}

std::vector<std::string> CheckpointWeights::names() const {
  std::vector<std::string> out;
  for (const auto& [name, shard] : owner_) out.push_back(name);
  return out;
}

const TensorInfo& CheckpointWeights::info(const std::string& name) const {
  auto it = owner_.find(name);
  if (it == owner_.end()) fail("{}: the checkpoint has no tensor named '{}'", dir_.string(), name);
  return it->second->info(name);
}

torch::Tensor CheckpointWeights::load(const std::string& name, std::optional<torch::ScalarType> dtype) const {
  auto it = owner_.find(name);
  if (it == owner_.end()) fail("{}: the checkpoint has no tensor named '{}'", dir_.string(), name);
  return it->second->load(name, dtype);
}

std::string checkpoint_sha256(const fs::path& checkpoint_dir) {
  std::string listing;
  auto add = [&](const fs::path& file) {
    listing += fmt::format("{}  {}\n", file.filename().string(), sha256_file(file));
  };
  add(checkpoint_dir / "config.json");
  if (fs::is_regular_file(checkpoint_dir / kIndexFile)) add(checkpoint_dir / kIndexFile);
  for (const auto& file : CheckpointWeights(checkpoint_dir).files()) add(file);
  return sha256_hex(listing);
}

}  // namespace strata::io
