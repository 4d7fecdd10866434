// Hugging Face checkpoint directories on disk: where a checkpoint is, and its weights across one or
// more safetensors files. Nothing here ever downloads; pickle weights are refused.
#pragma once
#include <torch/types.h>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/safetensors.hpp"

namespace strata::io {

// A local directory, or `hf://org/name[@revision]` looked up offline in the Hugging Face cache
// ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub) as
// models--org--name/snapshots/<hash>, where <hash> is read from refs/<revision> (default `main`) or is
// the revision itself when it names a snapshot. Throws strata::Error listing every place it looked.
std::filesystem::path resolve_checkpoint(const std::string& spec);

// hf://org/name[@revision][/sub/dir] resolved the same way (snapshot, then the sub-path), for files
// that are not checkpoints (e.g. a published SAE's directory); needs no config.json.
std::filesystem::path resolve_hub_path(const std::string& spec);

// The weights of a checkpoint directory: model.safetensors, or the shards named by
// model.safetensors.index.json. A directory holding only pickle weights (pytorch_model.bin, *.pt,
// *.ckpt) is refused with a message saying why and how to convert. Every shard is opened and its
// header validated on construction; a shard named in the index but missing is an error.
class CheckpointWeights {
 public:
  explicit CheckpointWeights(const std::filesystem::path& checkpoint_dir);

  const std::filesystem::path& dir() const { return dir_; }
  // Weight files in a fixed order (sorted by file name).
  std::vector<std::filesystem::path> files() const;
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return owner_.count(name) > 0; }
  const TensorInfo& info(const std::string& name) const;
  // An owned copy, converted to `dtype` if given (F16/BF16 -> F32 upcasts are exact).
  torch::Tensor load(const std::string& name, std::optional<torch::ScalarType> dtype = std::nullopt) const;

 private:
  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, const SafetensorsFile*> owner_;
};

// SHA-256 over config.json and every weight file of a checkpoint: sha256 of the text
// "<file name>  <sha256 of the file>\n" for config.json then each weight file in files() order
// (plus model.safetensors.index.json when present). Stable across copies of the same directory.
std::string checkpoint_sha256(const std::filesystem::path& checkpoint_dir);

}  // namespace strata::io
