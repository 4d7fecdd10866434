// safetensors: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then raw little-endian data.
// The reader memory-maps the file and validates the whole header (io/safetensors_header.hpp, torch-free)
// before any tensor is touched.
#pragma once
#include <torch/types.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/safetensors_header.hpp"

namespace strata::io {

torch::ScalarType to_scalar_type(DType dtype);
DType from_scalar_type(torch::ScalarType type);

class SafetensorsFile {
 public:
  // Maps and validates; throws strata::Error naming the file and the defect.
  explicit SafetensorsFile(const std::filesystem::path& file);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  bool contains(const std::string& name) const { return tensors_.count(name) > 0; }
  const TensorInfo& info(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // A view of the mapped bytes (no copy; valid while this object lives). Not writable.
  torch::Tensor view(const std::string& name) const;
  // An owned copy, converted to `dtype` if given.
  torch::Tensor load(const std::string& name, std::optional<torch::ScalarType> dtype = std::nullopt) const;
  // Rows [row_begin, row_end) of the leading dimension, as an owned copy.
  torch::Tensor load_rows(const std::string& name, int64_t row_begin, int64_t row_end,
                          std::optional<torch::ScalarType> dtype = std::nullopt) const;
  // Drops the mapped pages from this process's resident memory (they stay in the page cache and fault back in
  // on the next read): for a reader that copies what it needs, so that a file read once in full does not
  // count in its RSS for the rest of the run. Views stay valid.
  void release_pages() const;

 private:
  std::filesystem::path path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Writes tensors (made contiguous, any supported dtype, 0-dim allowed) in sorted-name order with
// deterministic bytes; atomic (temp + fsync + rename).
void save_safetensors(const std::filesystem::path& file, const std::map<std::string, torch::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace strata::io
