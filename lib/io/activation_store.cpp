#include "io/activation_store.hpp"

#include <fcntl.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <regex>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/read_bounded.hpp"
#include "core/write_error.hpp"
#include "io/safetensors.hpp"
#include "io/store_meta.hpp"

namespace strata::io {
namespace fs = std::filesystem;

std::string store_base_name(const std::string& model, int layer) {
  return fmt::format("{}_layer{}_activations", model, layer);
}

std::string store_dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return "f32";
    case torch::kFloat16: return "f16";
    case torch::kBFloat16: return "bf16";
    default: fail("activation store: unsupported store dtype {} (use f32, f16 or bf16)", c10::toString(t));
  }
}

torch::ScalarType parse_store_dtype(const std::string& name) {
  if (name == "f32") return torch::kFloat32;
  if (name == "f16") return torch::kFloat16;
  if (name == "bf16") return torch::kBFloat16;
  fail("store dtype {} is not understood: use f32, f16 or bf16", shown_text(name));
}

namespace {
// The safetensors header of one shard of `rows` rows, tensors in sorted-name order (as save_safetensors).
std::string shard_header(int64_t rows, int64_t dim, torch::ScalarType dtype) {
  nlohmann::ordered_json header;
  header["__metadata__"] = {{"format", "pt"}};
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
  };
  std::vector<Entry> entries{{"activations", from_scalar_type(dtype), {rows, dim}}};
  for (const char* column : kIndexColumns) entries.push_back({column, DType::I64, {rows}});
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.name < b.name; });
  size_t offset = 0;
  for (const auto& e : entries) {
    size_t bytes = dtype_size(e.dtype);
    for (int64_t d : e.shape) bytes *= static_cast<size_t>(d);
    header[e.name] = {{"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  return header.dump();
}
}  // namespace

ActivationStoreWriter::ActivationStoreWriter(fs::path dir, std::string base_name, int64_t dim,
                                             torch::ScalarType store_dtype, int64_t max_shard_bytes)
    : dir_(std::move(dir)), base_(std::move(base_name)), dim_(dim), dtype_(store_dtype) {
  store_dtype_name(store_dtype);
  if (dim <= 0) fail("activation store {}: dimension must be positive, got {}", base_, dim);
  int64_t row_bytes = dim * static_cast<int64_t>(c10::elementSize(store_dtype));
  max_shard_rows_ = std::max<int64_t>(1, max_shard_bytes / row_bytes);
  // Every number in the header grows with the row count, so the header of a full shard is the longest.
  header_capacity_ = shard_header(max_shard_rows_, dim_, dtype_).size();
  header_capacity_ += (8 - header_capacity_ % 8) % 8;
  sum_ = torch::zeros({dim}, torch::kFloat64);
  sum_sq_ = torch::zeros({dim}, torch::kFloat64);
  fs::create_directories(dir_);
}

ActivationStoreWriter::~ActivationStoreWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (finished_) return;
  std::error_code ec;
  for (const auto& tmp : temp_shards_) fs::remove(tmp, ec);
}

void ActivationStoreWriter::write_bytes(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd_, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      failed_ = true;
      fail_write(temp_shards_.back(), n < 0 ? errno : ENOSPC, size);  // write() returning 0 means no room
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
}

void ActivationStoreWriter::open_shard() {
  fs::path tmp = dir_ / fmt::format(".{}.shard{}.partial", base_, temp_shards_.size());
  fd_ = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("activation store {}: cannot create {}: {}", base_, tmp.string(), std::strerror(errno));
  temp_shards_.push_back(tmp);
  // Activations start right after the reserved header; the header is written when the shard closes.
  if (::lseek(fd_, static_cast<off_t>(8 + header_capacity_), SEEK_SET) < 0)
    fail("activation store {}: cannot seek in {}: {}", base_, tmp.string(), std::strerror(errno));
  shard_open_rows_ = 0;
}

void ActivationStoreWriter::close_shard() {
  if (fd_ < 0) return;
  // Data in the header's order: sorted by tensor name.
  std::vector<int> order{0, 1, 2, 3, 4};
  std::sort(order.begin(), order.end(),
            [](int a, int b) { return std::string_view(kIndexColumns[a]) < std::string_view(kIndexColumns[b]); });
  for (int c : order) write_bytes(index_[c].data(), index_[c].size() * sizeof(int64_t));
  std::string header = shard_header(shard_open_rows_, dim_, dtype_);
  header.resize(header_capacity_, ' ');  // safetensors allows trailing whitespace padding
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i));
  if (::lseek(fd_, 0, SEEK_SET) < 0) fail("activation store {}: cannot seek: {}", base_, std::strerror(errno));
  write_bytes(length, 8);
  write_bytes(header.data(), header.size());
  if (::fsync(fd_) != 0) fail("activation store {}: fsync failed: {}", base_, std::strerror(errno));
  ::close(fd_);
  fd_ = -1;
  shard_rows_.push_back(shard_open_rows_);
  for (auto& column : index_) column = {};  // release the memory, not just the size
  shard_open_rows_ = 0;
}

int64_t ActivationStoreWriter::append(const torch::Tensor& activations, const RowIndex& index) {
  if (finished_) fail("activation store {}: append after finish", base_);
  if (activations.dim() != 2 || activations.size(1) != dim_)
    fail("activation store {}: rows must be [n, {}], got [{}]", base_, dim_, fmt::join(activations.sizes(), ", "));
  if (!activations.is_floating_point()) fail("activation store {}: activations must be floating point", base_);
  const int64_t n = activations.size(0);
  const torch::Tensor* columns[5] = {&index.doc_id, &index.seq_id, &index.token_index, &index.byte_begin,
                                     &index.byte_end};
  std::vector<torch::Tensor> index64;
  for (int c = 0; c < 5; ++c) {
    if (!columns[c]->defined() || columns[c]->dim() != 1 || columns[c]->size(0) != n)
      fail("activation store {}: index column {} must be [{}]", base_, kIndexColumns[c], n);
    index64.push_back(columns[c]->to(torch::kCPU, torch::kInt64).contiguous());
  }
  if (n == 0) return 0;
  // The one NaN/Inf count of a store: taken here, on the values as stored (after conversion, so an f16
  // overflow counts), and recorded in meta.json. The statistics cover the finite rows only.
  const torch::Tensor stored = activations.detach().to(torch::kCPU, dtype_).contiguous();
  const torch::Tensor stored64 = stored.to(torch::kFloat64);
  const torch::Tensor finite = stored64.isfinite();
  const int64_t nonfinite = finite.numel() - finite.sum().item<int64_t>();
  if (nonfinite == 0) {
    sum_ += stored64.sum(0);
    sum_sq_ += stored64.square().sum(0);
    norm_sum_ += stored64.norm(2, {1}).sum().item<double>();
    finite_rows_ += n;
  } else {
    const torch::Tensor finite_rows = stored64.index_select(0, finite.all(1).nonzero().squeeze(1));
    sum_ += finite_rows.sum(0);
    sum_sq_ += finite_rows.square().sum(0);
    norm_sum_ += finite_rows.norm(2, {1}).sum().item<double>();
    finite_rows_ += finite_rows.size(0);
    nonfinite_values_ += nonfinite;
    nonfinite_rows_ += n - finite_rows.size(0);
  }
  const size_t row_bytes = static_cast<size_t>(dim_) * stored.element_size();
  const char* bytes = static_cast<const char*>(stored.data_ptr());
  int64_t offset = 0;
  while (offset < n) {
    if (fd_ < 0) open_shard();
    const int64_t take = std::min(n - offset, max_shard_rows_ - shard_open_rows_);
    write_bytes(bytes + static_cast<size_t>(offset) * row_bytes, static_cast<size_t>(take) * row_bytes);
    for (int c = 0; c < 5; ++c) {
      const int64_t* src = index64[c].data_ptr<int64_t>() + offset;
      index_[c].insert(index_[c].end(), src, src + take);
    }
    shard_open_rows_ += take;
    offset += take;
    if (shard_open_rows_ == max_shard_rows_) close_shard();
  }
  rows_ += n;
  return nonfinite;
}

std::vector<fs::path> ActivationStoreWriter::finish(nlohmann::json meta) {
  if (failed_) fail("activation store {}: an earlier write failed; the store is not finished", base_);
  if (finished_) fail("activation store {}: finish called twice", base_);
  if (rows_ == 0) fail("activation store {}: no rows were captured (every position was masked?)", base_);
  close_shard();
  std::vector<fs::path> written;
  std::vector<std::string> shard_names;
  const size_t n = temp_shards_.size();
  for (size_t i = 0; i < n; ++i) {
    std::string name = n == 1 ? base_ + ".safetensors"
                              : fmt::format("{}-{:05d}-of-{:05d}.safetensors", base_, i + 1, n);
    shard_names.push_back(name);
    written.push_back(dir_ / name);
  }
  // Shards of an earlier store under this name that the new one will not overwrite (another shard count).
  fs::path meta_path = dir_ / (base_ + ".meta.json");
  std::error_code ec;
  fs::remove(meta_path, ec);
  for (const auto& entry : fs::directory_iterator(dir_)) {
    const std::string name = entry.path().filename().string();
    static const std::regex shard_suffix(R"(-\d{5}-of-\d{5}\.safetensors)");
    const bool ours = name == base_ + ".safetensors" ||
                      (name.rfind(base_, 0) == 0 && std::regex_match(name.substr(base_.size()), shard_suffix));
    if (ours && std::find(shard_names.begin(), shard_names.end(), name) == shard_names.end())
      fs::remove(entry.path());
  }
  for (size_t i = 0; i < n; ++i) fs::rename(temp_shards_[i], written[i]);
  fsync_path(dir_);
  temp_shards_.clear();
  const double stat_rows = double(std::max<int64_t>(1, finite_rows_));
  auto mean = sum_ / stat_rows;
  auto var = (sum_sq_ / stat_rows - mean * mean).clamp_min(0.0);
  auto as_vector = [&](const torch::Tensor& t) {
    return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + dim_);
  };
  meta["rows"] = rows_;
  meta["dim"] = dim_;
  meta["store_dtype"] = store_dtype_name(dtype_);
  meta["shards"] = shard_names;
  meta["shard_rows"] = shard_rows_;
  meta["mean"] = as_vector(mean);
  meta["std"] = as_vector(var.sqrt().contiguous());
  meta["mean_norm"] = norm_sum_ / stat_rows;
  meta["nonfinite_count"] = nonfinite_values_;  // NaN/Inf values as written; Gate 1 fails on any
  meta["nonfinite_rows"] = nonfinite_rows_;     // rows holding one or more (left out of mean/std/mean_norm)
  atomic_write_text(meta_path, meta.dump(1));
  written.push_back(meta_path);
  finished_ = true;
  return written;
}

ActivationStore ActivationStore::open(const fs::path& dir, const std::string& model, int layer) {
  fs::path meta = dir / (store_base_name(model, layer) + ".meta.json");
  if (!fs::exists(meta))
    fail("no activation store for {} layer {} in {} (expected {}); run the capture step first", model, layer,
         dir.string(), meta.filename().string());
  return open(meta);
}

ActivationStore ActivationStore::open(const fs::path& path, const std::string& tensor) {
  ActivationStore store;
  fs::path meta_path;
  std::string s = path.string();
  auto ends_with = [&](const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (ends_with(".meta.json")) {
    meta_path = path;
  } else if (ends_with(".safetensors")) {
    // A shard name "<base>-0000k-of-0000n.safetensors" or "<base>.safetensors" of a store.
    std::string stem = path.stem().string();
    auto pos = stem.find("-of-");
    if (pos != std::string::npos && pos >= 6) stem = stem.substr(0, pos - 6);
    fs::path candidate = path.parent_path() / (stem + ".meta.json");
    if (fs::exists(candidate)) meta_path = candidate;
  } else if (fs::is_directory(path)) {
    fail("{} is a directory; name a store's .meta.json or .safetensors file", s);
  }
  std::optional<StoreMeta> parsed;  // meta.json's checked fields (doc moved into meta_)
  if (!meta_path.empty()) {
    if (!fs::exists(meta_path)) fail("activation store metadata {} does not exist", meta_path.string());
    parsed = parse_store_meta(read_bounded_text_file(meta_path, kMaxStoreMetaBytes), meta_path.string());
    for (const auto& file : parsed->shards) {
      fs::path shard = meta_path.parent_path() / file;
      if (!fs::exists(shard)) fail("activation store shard {} named in {} is missing", shard.string(), meta_path.string());
      store.shards_.push_back(std::make_shared<SafetensorsFile>(shard));
    }
    store.meta_ = std::move(parsed->doc);
    store.has_index_ = true;
  } else {
    if (!fs::exists(path)) fail("activations file {} does not exist", s);
    store.shards_.push_back(std::make_shared<SafetensorsFile>(path));
    const auto& file = *store.shards_.front();
    if (!tensor.empty()) {
      store.tensor_ = tensor;
    } else if (!file.contains("activations")) {
      std::vector<std::string> two_d;
      for (const auto& name : file.names())
        if (file.info(name).shape.size() == 2) two_d.push_back(name);
      if (two_d.size() != 1)
        fail("{}: cannot tell which tensor holds the activations ({} 2-D tensors); pass --tensor NAME", s,
             two_d.size());
      store.tensor_ = two_d.front();
    }
    store.has_index_ = file.contains("doc_id") && file.contains("byte_end");
  }
  for (const auto& shard : store.shards_) {
    if (!shard->contains(store.tensor_))
      fail("{}: no tensor named '{}'", shard->path().string(), store.tensor_);
    const auto& info = shard->info(store.tensor_);
    if (info.shape.size() != 2) fail("{}: tensor '{}' is not 2-D [rows, dim]", shard->path().string(), store.tensor_);
    auto t = to_scalar_type(info.dtype);
    if (t != torch::kFloat32 && t != torch::kFloat16 && t != torch::kBFloat16 && t != torch::kFloat64)
      fail("{}: tensor '{}' is not floating point", shard->path().string(), store.tensor_);
    if (store.dim_ == 0) store.dim_ = info.shape[1];
    if (info.shape[1] != store.dim_)
      fail("{}: width {} differs from the store's {}", shard->path().string(), info.shape[1], store.dim_);
    store.shard_start_.push_back(store.total_rows_);
    store.shard_rows_.push_back(info.shape[0]);
    store.total_rows_ += info.shape[0];
  }
  if (parsed)
    check_store_meta_counts(*parsed, meta_path.string(), store.shard_rows_, store.total_rows_, store.dim_);
  return store;
}

std::vector<fs::path> ActivationStore::files() const {
  std::vector<fs::path> out;
  for (const auto& s : shards_) out.push_back(s->path());
  return out;
}

torch::Tensor ActivationStore::load_shard(size_t shard) const {
  return shards_.at(shard)->load(tensor_, torch::kFloat32);
}

torch::Tensor ActivationStore::read_rows(int64_t begin, int64_t end) const {
  if (begin < 0 || end > total_rows_ || begin > end)
    fail("activation store: rows [{}, {}) out of range ({} rows)", begin, end, total_rows_);
  std::vector<torch::Tensor> parts;
  for (size_t i = 0; i < shards_.size() && begin < end; ++i) {
    int64_t s0 = shard_start_[i], s1 = s0 + shard_rows_[i];
    if (begin >= s1) continue;
    int64_t take_end = std::min(end, s1);
    parts.push_back(shards_[i]->load_rows(tensor_, begin - s0, take_end - s0, torch::kFloat32));
    begin = take_end;
  }
  if (parts.empty()) return torch::empty({0, dim_});
  return parts.size() == 1 ? parts[0] : torch::cat(parts);
}

torch::Tensor ActivationStore::read_rows(const torch::Tensor& row_ids) const {
  auto ids = row_ids.to(torch::kInt64).contiguous();
  auto out = torch::empty({ids.size(0), dim_});
  auto shard_of = torch::searchsorted(torch::tensor(shard_start_, torch::kInt64), ids, false, true) - 1;
  for (size_t i = 0; i < shards_.size(); ++i) {
    auto sel = (shard_of == static_cast<int64_t>(i)).nonzero().squeeze(1);
    if (sel.numel() == 0) continue;
    auto view = shards_[i]->view(tensor_);
    out.index_copy_(0, sel, view.index_select(0, ids.index_select(0, sel) - shard_start_[i]).to(torch::kFloat32));
  }
  return out;
}

void ActivationStore::release_pages() const {
  for (const auto& shard : shards_) shard->release_pages();
}

torch::Tensor ActivationStore::index_column(const std::string& column) const {
  if (!has_index_) fail("activation store {} has no row index (plain tensor file)", shards_.front()->path().string());
  std::vector<torch::Tensor> parts;
  for (const auto& s : shards_) parts.push_back(s->load(column, torch::kInt64));
  return torch::cat(parts);
}

}  // namespace strata::io
