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

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // the format's own cap is 100 MB

struct DTypeRow {
  DType dtype;
  const char* name;
  size_t size;
  torch::ScalarType scalar;
};
constexpr DTypeRow kDTypes[] = {
    {DType::F64, "F64", 8, torch::kFloat64}, {DType::F32, "F32", 4, torch::kFloat32},
    {DType::F16, "F16", 2, torch::kFloat16}, {DType::BF16, "BF16", 2, torch::kBFloat16},
    {DType::I64, "I64", 8, torch::kInt64},   {DType::I32, "I32", 4, torch::kInt32},
    {DType::I16, "I16", 2, torch::kInt16},   {DType::I8, "I8", 1, torch::kInt8},
    {DType::U8, "U8", 1, torch::kUInt8},     {DType::BOOL, "BOOL", 1, torch::kBool},
};

const DTypeRow& row(DType dtype) {
  for (const auto& r : kDTypes)
    if (r.dtype == dtype) return r;
  fail("internal: unknown dtype");
}

}  // namespace

size_t dtype_size(DType dtype) { return row(dtype).size; }
const char* dtype_name(DType dtype) { return row(dtype).name; }
torch::ScalarType to_scalar_type(DType dtype) { return row(dtype).scalar; }
DType from_scalar_type(torch::ScalarType type) {
  for (const auto& r : kDTypes)
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
    fail("{}: truncated safetensors file ({} bytes, the header length alone needs 8)", name, map_size_);
  }
  map_ = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    fail("{}: mmap failed ({})", name, std::strerror(errno));
  }
  try {
    const auto* bytes = static_cast<const uint8_t*>(map_);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
    // A pickle renamed to .safetensors would otherwise read as an absurd header length. torch.save writes
    // a zip archive (PK\3\4) holding a pickle, or (before torch 1.6) a bare pickle whose first byte is the
    // PROTO opcode 0x80 followed by protocol 2..5. Only a file that is not valid safetensors is judged by
    // these bytes (a real header of 640 bytes also starts 0x80 0x02, but its JSON follows at byte 8).
    const bool valid_start = header_len <= kMaxHeaderBytes && 8 + header_len <= map_size_ && map_size_ > 8 &&
                             bytes[8] == '{';
    const bool zip = bytes[0] == 'P' && bytes[1] == 'K' && bytes[2] == 3 && bytes[3] == 4;
    const bool bare_pickle = bytes[0] == 0x80 && bytes[1] >= 2 && bytes[1] <= 5;
    if (!valid_start && (zip || bare_pickle))
      fail("{}: this is a {} (the PyTorch torch.save format), not safetensors. strata never loads pickles, "
           "because loading one runs arbitrary code from the file; convert it to safetensors once in a trusted "
           "Python (save_pretrained(out_dir, safe_serialization=True))",
           name, zip ? "zip archive holding a pickle" : "pickle");
    if (header_len > kMaxHeaderBytes)
      fail("{}: header length {} exceeds the {} byte cap; the file is corrupt or not safetensors", name,
           header_len, kMaxHeaderBytes);
    if (8 + header_len > map_size_)
      fail("{}: header length {} runs past the end of the file ({} bytes); the file is truncated or corrupt",
           name, header_len, map_size_);
    data_ = bytes + 8 + header_len;
    const size_t data_size = map_size_ - 8 - header_len;

    nlohmann::json header;
    try {
      header = nlohmann::json::parse(bytes + 8, bytes + 8 + header_len);
    } catch (const std::exception& e) {
      fail("{}: header is not valid JSON ({})", name, e.what());
    }
    if (!header.is_object()) fail("{}: header is not a JSON object", name);

    std::vector<std::pair<size_t, size_t>> ranges;
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        if (it->is_object())
          for (auto m = it->begin(); m != it->end(); ++m)
            if (m->is_string()) metadata_[m.key()] = m->get<std::string>();
        continue;
      }
      const auto& entry = *it;
      const std::string& tname = it.key();
      if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
          !entry.contains("data_offsets"))
        fail("{}: tensor '{}' lacks dtype, shape or data_offsets", name, tname);
      TensorInfo info{};
      std::string dtype = entry["dtype"].is_string() ? entry["dtype"].get<std::string>() : "";
      bool known = false;
      for (const auto& r : kDTypes)
        if (dtype == r.name) info.dtype = r.dtype, known = true;
      if (!known) fail("{}: tensor '{}' has unsupported dtype '{}'", name, tname, dtype);
      if (!entry["shape"].is_array()) fail("{}: tensor '{}' shape is not an array", name, tname);
      size_t numel = 1;
      for (const auto& dim : entry["shape"]) {
        if (!dim.is_number_unsigned()) fail("{}: tensor '{}' has a negative or non-integer dimension", name, tname);
        uint64_t d = dim.get<uint64_t>();
        if (d > (1ull << 40) || (d && numel > (1ull << 46) / d))
          fail("{}: tensor '{}' shape is implausibly large", name, tname);
        numel *= d;
        info.shape.push_back(static_cast<int64_t>(d));
      }
      const auto& off = entry["data_offsets"];
      if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
        fail("{}: tensor '{}' data_offsets must be two non-negative integers", name, tname);
      info.begin = off[0].get<size_t>();
      info.end = off[1].get<size_t>();
      if (info.end < info.begin) fail("{}: tensor '{}' data_offsets are reversed", name, tname);
      if (info.end > data_size)
        fail("{}: tensor '{}' data [{}, {}) lies past the end of the data section ({} bytes); the file is "
             "truncated",
             name, tname, info.begin, info.end, data_size);
      if (info.end - info.begin != numel * dtype_size(info.dtype))
        fail("{}: tensor '{}' is {} bytes but dtype {} and shape {} need {}", name, tname, info.end - info.begin,
             dtype, entry["shape"].dump(), numel * dtype_size(info.dtype));
      if (info.end > info.begin) ranges.emplace_back(info.begin, info.end);
      tensors_.emplace(tname, std::move(info));
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i)
      if (ranges[i].first < ranges[i - 1].second)
        fail("{}: tensor data ranges overlap at byte {}; the file is corrupt", name, ranges[i].first);
  } catch (...) {
    ::munmap(map_, map_size_);
    map_ = nullptr;
    throw;
  }
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
