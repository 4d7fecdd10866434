// The activation store: the residual stream of one (model, layer) over a dataset.
//
// Layout (documented in README "Activation store"):
//   <model>_layer<L>_activations.safetensors                     (one shard), or
//   <model>_layer<L>_activations-0000k-of-0000n.safetensors      (k = 1..n, above the shard size)
//   <model>_layer<L>_activations.meta.json
// Each shard holds, for its rows:
//   activations [n, d]  store dtype (F32/F16/BF16)
//   doc_id      [n] I64  index of the source document in the dataset
//   seq_id      [n] I64  index of the model-input sequence (differs from doc_id only when packing)
//   token_index [n] I64  position of the token within its sequence
//   byte_begin, byte_end [n] I64  the token's byte span in its source document's UTF-8 text
// Rows of different models are aligned through (doc_id, byte_end).
#pragma once
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace strata::io {

class SafetensorsFile;

inline const char* const kIndexColumns[] = {"doc_id", "seq_id", "token_index", "byte_begin", "byte_end"};

std::string store_base_name(const std::string& model, int layer);  // "<model>_layer<L>_activations"

struct RowIndex {
  torch::Tensor doc_id, seq_id, token_index, byte_begin, byte_end;  // I64 [n] each
};

class ActivationStoreWriter {
 public:
  // Shards roll over once a shard's activation bytes reach max_shard_bytes.
  ActivationStoreWriter(std::filesystem::path dir, std::string base_name, int64_t dim, torch::ScalarType store_dtype,
                        int64_t max_shard_bytes);
  ~ActivationStoreWriter();  // removes unfinished temporary shards
  // activations: [n, dim] float (any float dtype; converted to the store dtype).
  void append(const torch::Tensor& activations, const RowIndex& index);
  int64_t rows() const { return rows_; }
  // Renames shards to their final names and writes meta.json (all atomically). `meta` is extended with
  // rows, dim, store_dtype, shards, mean/std per dimension, mean_norm. Returns every file written.
  std::vector<std::filesystem::path> finish(nlohmann::json meta);

 private:
  void flush_shard();
  std::filesystem::path dir_;
  std::string base_;
  int64_t dim_;
  torch::ScalarType dtype_;
  int64_t max_shard_rows_;
  int64_t rows_ = 0;
  std::vector<torch::Tensor> pending_acts_;
  std::vector<RowIndex> pending_index_;
  int64_t pending_rows_ = 0;
  std::vector<std::filesystem::path> temp_shards_;
  std::vector<int64_t> shard_rows_;
  torch::Tensor sum_, sum_sq_;  // fp64 [dim]
  double norm_sum_ = 0.0;
  bool finished_ = false;
};

class ActivationStore {
 public:
  // `path`: a store's meta.json, its base .safetensors (or the first shard), or any safetensors file
  // holding a 2-D float tensor (`tensor` names it; default "activations", else the only 2-D tensor).
  static ActivationStore open(const std::filesystem::path& path, const std::string& tensor = "");
  // Locates the store for (model, layer) in a directory.
  static ActivationStore open(const std::filesystem::path& dir, const std::string& model, int layer);

  int64_t rows() const { return total_rows_; }
  int64_t dim() const { return dim_; }
  size_t num_shards() const { return shards_.size(); }
  int64_t shard_rows(size_t shard) const { return shard_rows_[shard]; }
  const nlohmann::json& meta() const { return meta_; }  // empty object for a plain file
  bool has_index() const { return has_index_; }
  std::vector<std::filesystem::path> files() const;

  torch::Tensor load_shard(size_t shard) const;                    // fp32 [shard_rows, dim]
  torch::Tensor read_rows(int64_t begin, int64_t end) const;       // fp32, across shards
  torch::Tensor read_rows(const torch::Tensor& row_ids) const;     // fp32, gather of I64 ids
  torch::Tensor index_column(const std::string& column) const;     // I64 [rows], all shards

 private:
  std::vector<std::shared_ptr<io::SafetensorsFile>> shards_;
  std::vector<int64_t> shard_rows_, shard_start_;
  std::string tensor_ = "activations";
  int64_t total_rows_ = 0, dim_ = 0;
  bool has_index_ = false;
  nlohmann::json meta_ = nlohmann::json::object();
};

}  // namespace strata::io
