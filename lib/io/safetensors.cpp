#include "io/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/fs.hpp"

namespace strata::io {
namespace {

struct ScalarRow {
  DType dtype;
  torch::ScalarType scalar;
};
constexpr ScalarRow kScalarTypes[] = {
    {DType::F64, torch::kFloat64}, {DType::F32, torch::kFloat32}, {DType::F16, torch::kFloat16},
    {DType::BF16, torch::kBFloat16}, {DType::I64, torch::kInt64}, {DType::I32, torch::kInt32},
    {DType::I16, torch::kInt16},   {DType::I8, torch::kInt8},     {DType::U8, torch::kUInt8},
    {DType::BOOL, torch::kBool},
};

}  // namespace

torch::ScalarType to_scalar_type(DType dtype) {
  for (const auto& r : kScalarTypes)
    if (r.dtype == dtype) return r.scalar;
  fail("internal: unknown dtype");
}
DType from_scalar_type(torch::ScalarType type) {
  for (const auto& r : kScalarTypes)
    if (r.scalar == type) return r.dtype;
  fail("safetensors: unsupported tensor type {}", c10::toString(type));
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& file) : path_(file) {
  const std::string name = file.string();
  int fd = ::open(file.c_str(), O_RDONLY);
  if (fd < 0) fail("{}: cannot open safetensors file ({})", name, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail("{}: cannot stat ({})", name, std::strerror(errno));
  }
  map_size_ = static_cast<size_t>(st.st_size);
  if (map_size_ < 8) {
    ::close(fd);
    parse_safetensors_header({}, map_size_, name);  // throws: truncated
  }
  map_ = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    fail("{}: mmap failed ({})", name, std::strerror(errno));
  }
  try {
    const auto* bytes = static_cast<const char*>(map_);
    SafetensorsHeader header = parse_safetensors_header(std::string_view(bytes, map_size_), map_size_, name);
    data_ = reinterpret_cast<const uint8_t*>(bytes) + 8 + header.header_bytes;
    for (auto& entry : header.tensors) tensors_.emplace(std::move(entry.name), std::move(entry.info));
    metadata_ = std::move(header.metadata);
  } catch (...) {
    ::munmap(map_, map_size_);
    map_ = nullptr;
    throw;
  }
}

void SafetensorsFile::release_pages() const {
  // A private, read-only file mapping: MADV_DONTNEED only unmaps pages, which refault from the file (never zeros:
  // nothing was written).
  if (map_) ::madvise(map_, map_size_, MADV_DONTNEED);
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail("{}: no tensor named '{}'", path_.string(), name);
  return it->second;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : tensors_) out.push_back(k);
  return out;
}

torch::Tensor SafetensorsFile::view(const std::string& name) const {
  const TensorInfo& ti = info(name);
  auto options = torch::TensorOptions().dtype(to_scalar_type(ti.dtype));
  // from_blob needs a non-const pointer; the mapping is PROT_READ and callers get a copy via load().
  void* ptr = const_cast<uint8_t*>(data_ + ti.begin);
  static uint8_t empty = 0;
  if (ti.end == ti.begin) ptr = &empty;
  return torch::from_blob(ptr, ti.shape, options);
}

torch::Tensor SafetensorsFile::load(const std::string& name, std::optional<torch::ScalarType> dtype) const {
  torch::Tensor v = view(name);
  if (dtype && *dtype != v.scalar_type()) return v.to(*dtype);
  return v.clone();
}

torch::Tensor SafetensorsFile::load_rows(const std::string& name, int64_t row_begin, int64_t row_end,
                                         std::optional<torch::ScalarType> dtype) const {
  const TensorInfo& ti = info(name);
  if (ti.shape.empty()) fail("{}: tensor '{}' is 0-dimensional; it has no rows", path_.string(), name);
  if (row_begin < 0 || row_end > ti.shape[0] || row_begin > row_end)
    fail("{}: rows [{}, {}) of '{}' are out of range (it has {})", path_.string(), row_begin, row_end, name,
         ti.shape[0]);
  torch::Tensor v = view(name).slice(0, row_begin, row_end);
  if (dtype && *dtype != v.scalar_type()) return v.to(*dtype);
  return v.clone();
}

void save_safetensors(const std::filesystem::path& file, const std::map<std::string, torch::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = meta;
  }
  std::vector<torch::Tensor> cpu;
  size_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    torch::Tensor t = tensor.detach().to(torch::kCPU).contiguous();
    DType dtype = from_scalar_type(t.scalar_type());
    size_t bytes = static_cast<size_t>(t.numel()) * dtype_size(dtype);
    header[name] = {{"dtype", dtype_name(dtype)}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    cpu.push_back(t);
  }
  std::string text = header.dump();
  while ((text.size() + 8) % 8 != 0) text.push_back(' ');
  atomic_write(file, [&](const std::filesystem::path& tmp) {
    std::ofstream out(tmp, std::ios::binary);
    uint64_t n = text.size();
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& t : cpu)
      out.write(static_cast<const char*>(t.data_ptr()),
                static_cast<std::streamsize>(t.numel() * t.element_size()));
    out.flush();
    if (!out) fail("cannot write {}", tmp.string());
  });
}

}  // namespace strata::io
