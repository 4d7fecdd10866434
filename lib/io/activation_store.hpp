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

// The store dtypes and their names in meta.json, the CLI and the config: "f32", "f16", "bf16".
std::string store_dtype_name(torch::ScalarType dtype);  // throws for any other dtype
torch::ScalarType parse_store_dtype(const std::string& name);  // throws naming the choices

struct RowIndex {
  torch::Tensor doc_id, seq_id, token_index, byte_begin, byte_end;  // I64 [n] each
};

// Streams rows to disk: activations go straight into the current shard file (the safetensors header is
// written last, into space reserved for the largest possible shard), so memory holds only the current
// shard's row index (5 x 8 bytes per row), never activations beyond the rows of one append() call.
class ActivationStoreWriter {
 public:
  // Shards roll over once a shard's activation bytes reach max_shard_bytes.
  ActivationStoreWriter(std::filesystem::path dir, std::string base_name, int64_t dim, torch::ScalarType store_dtype,
                        int64_t max_shard_bytes);
  ~ActivationStoreWriter();  // removes unfinished temporary shards
  ActivationStoreWriter(const ActivationStoreWriter&) = delete;
  ActivationStoreWriter& operator=(const ActivationStoreWriter&) = delete;
  // activations: [n, dim] float (any float dtype, any device; converted to the store dtype). Returns the
  // number of NaN/Inf values in the rows as stored (e.g. an f16 overflow counts): the writer stores them
  // and records the total as meta.json nonfinite_count, which Gate 1 reads; whether a producer may go
  // on after a non-finite row is the producer's decision (capture refuses).
  int64_t append(const torch::Tensor& activations, const RowIndex& index);
  int64_t rows() const { return rows_; }
  int64_t max_shard_rows() const { return max_shard_rows_; }
  // Renames shards to their final names, removes shards of an earlier store under the same base name
  // that this one does not overwrite, and writes meta.json last (all atomically). `meta` is extended
  // with rows, dim, store_dtype, shards, shard_rows, mean/std per dimension and mean_norm (over the finite
  // rows), nonfinite_count (NaN/Inf values) and nonfinite_rows. Returns every file written.
  std::vector<std::filesystem::path> finish(nlohmann::json meta);

 private:
  void open_shard();
  void close_shard();
  void write_bytes(const void* data, size_t size);
  std::filesystem::path dir_;
  std::string base_;
  int64_t dim_;
  torch::ScalarType dtype_;
  int64_t max_shard_rows_;
  size_t header_capacity_ = 0;  // bytes reserved after the 8-byte length for the JSON header
  int64_t rows_ = 0;
  int fd_ = -1;                 // the open temporary shard, or -1
  int64_t shard_open_rows_ = 0;
  std::vector<int64_t> index_[5];  // the open shard's row index, in kIndexColumns order
  std::vector<std::filesystem::path> temp_shards_;
  std::vector<int64_t> shard_rows_;
  torch::Tensor sum_, sum_sq_;  // fp64 [dim]
  double norm_sum_ = 0.0;
  int64_t finite_rows_ = 0;       // rows in sum_, sum_sq_, norm_sum_
  int64_t nonfinite_values_ = 0;  // NaN/Inf values written
  int64_t nonfinite_rows_ = 0;
  bool failed_ = false;
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
  // Drops the shards' mapped pages from resident memory (io::SafetensorsFile::release_pages): for a reader that
  // holds copies of what it read.
  void release_pages() const;
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
