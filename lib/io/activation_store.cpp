#include "io/activation_store.hpp"

#include <torch/torch.h>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "io/safetensors.hpp"

namespace strata::io {
namespace fs = std::filesystem;

std::string store_base_name(const std::string& model, int layer) {
  return fmt::format("{}_layer{}_activations", model, layer);
}

namespace {
std::string dtype_label(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return "f32";
    case torch::kFloat16: return "f16";
    case torch::kBFloat16: return "bf16";
    default: fail("activation store: unsupported store dtype {} (use f32, f16 or bf16)", c10::toString(t));
  }
}
}  // namespace

ActivationStoreWriter::ActivationStoreWriter(fs::path dir, std::string base_name, int64_t dim,
                                             torch::ScalarType store_dtype, int64_t max_shard_bytes)
    : dir_(std::move(dir)), base_(std::move(base_name)), dim_(dim), dtype_(store_dtype) {
  dtype_label(store_dtype);
  int64_t row_bytes = dim * static_cast<int64_t>(c10::elementSize(store_dtype));
  max_shard_rows_ = std::max<int64_t>(1, max_shard_bytes / std::max<int64_t>(1, row_bytes));
  sum_ = torch::zeros({dim}, torch::kFloat64);
  sum_sq_ = torch::zeros({dim}, torch::kFloat64);
  fs::create_directories(dir_);
}

ActivationStoreWriter::~ActivationStoreWriter() {
  if (finished_) return;
  std::error_code ec;
  for (const auto& tmp : temp_shards_) fs::remove(tmp, ec);
}

void ActivationStoreWriter::append(const torch::Tensor& activations, const RowIndex& index) {
  if (activations.dim() != 2 || activations.size(1) != dim_)
    fail("activation store {}: rows must be [n, {}], got [{}]", base_, dim_, fmt::join(activations.sizes(), ", "));
  int64_t n = activations.size(0);
  auto acts64 = activations.detach().to(torch::kCPU, torch::kFloat64);
  sum_ += acts64.sum(0);
  sum_sq_ += (acts64 * acts64).sum(0);
  norm_sum_ += acts64.norm(2, {1}).sum().item<double>();
  int64_t offset = 0;
  while (offset < n) {
    int64_t take = std::min(n - offset, max_shard_rows_ - pending_rows_);
    pending_acts_.push_back(activations.detach().slice(0, offset, offset + take).to(torch::kCPU, dtype_));
    RowIndex part;
    part.doc_id = index.doc_id.slice(0, offset, offset + take);
    part.seq_id = index.seq_id.slice(0, offset, offset + take);
    part.token_index = index.token_index.slice(0, offset, offset + take);
    part.byte_begin = index.byte_begin.slice(0, offset, offset + take);
    part.byte_end = index.byte_end.slice(0, offset, offset + take);
    pending_index_.push_back(part);
    pending_rows_ += take;
    offset += take;
    if (pending_rows_ == max_shard_rows_) flush_shard();
  }
  rows_ += n;
}

void ActivationStoreWriter::flush_shard() {
  if (pending_rows_ == 0) return;
  std::vector<torch::Tensor> doc, seq, tok, beg, end;
  for (const auto& p : pending_index_) {
    doc.push_back(p.doc_id), seq.push_back(p.seq_id), tok.push_back(p.token_index);
    beg.push_back(p.byte_begin), end.push_back(p.byte_end);
  }
  auto cat64 = [](std::vector<torch::Tensor>& v) { return torch::cat(v).to(torch::kInt64).contiguous(); };
  std::map<std::string, torch::Tensor> tensors{{"activations", torch::cat(pending_acts_)},
                                               {"doc_id", cat64(doc)},
                                               {"seq_id", cat64(seq)},
                                               {"token_index", cat64(tok)},
                                               {"byte_begin", cat64(beg)},
                                               {"byte_end", cat64(end)}};
  fs::path tmp = dir_ / fmt::format(".{}.shard{}.partial", base_, temp_shards_.size());
  save_safetensors(tmp, tensors, {{"format", "pt"}});
  temp_shards_.push_back(tmp);
  shard_rows_.push_back(pending_rows_);
  pending_acts_.clear();
  pending_index_.clear();
  pending_rows_ = 0;
}

std::vector<fs::path> ActivationStoreWriter::finish(nlohmann::json meta) {
  flush_shard();
  if (rows_ == 0) fail("activation store {}: no rows were captured (every position was masked?)", base_);
  std::vector<fs::path> written;
  std::vector<std::string> shard_names;
  size_t n = temp_shards_.size();
  for (size_t i = 0; i < n; ++i) {
    std::string name = n == 1 ? base_ + ".safetensors"
                              : fmt::format("{}-{:05d}-of-{:05d}.safetensors", base_, i + 1, n);
    fs::rename(temp_shards_[i], dir_ / name);
    fsync_path(dir_);
    shard_names.push_back(name);
    written.push_back(dir_ / name);
  }
  temp_shards_.clear();
  auto mean = sum_ / double(rows_);
  auto var = (sum_sq_ / double(rows_) - mean * mean).clamp_min(0.0);
  meta["rows"] = rows_;
  meta["dim"] = dim_;
  meta["store_dtype"] = dtype_label(dtype_);
  meta["shards"] = shard_names;
  meta["shard_rows"] = shard_rows_;
  meta["mean"] = std::vector<double>(mean.data_ptr<double>(), mean.data_ptr<double>() + dim_);
  meta["std"] = [&] {
    auto s = var.sqrt();
    return std::vector<double>(s.data_ptr<double>(), s.data_ptr<double>() + dim_);
  }();
  meta["mean_norm"] = norm_sum_ / double(rows_);
  fs::path meta_path = dir_ / (base_ + ".meta.json");
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
  if (!meta_path.empty()) {
    if (!fs::exists(meta_path)) fail("activation store metadata {} does not exist", meta_path.string());
    store.meta_ = nlohmann::json::parse(read_text_file(meta_path), nullptr, false);
    if (store.meta_.is_discarded() || !store.meta_.contains("shards"))
      fail("{} is not a valid activation store meta.json", meta_path.string());
    for (const auto& name : store.meta_["shards"]) {
      fs::path shard = meta_path.parent_path() / name.get<std::string>();
      if (!fs::exists(shard)) fail("activation store shard {} named in {} is missing", shard.string(), meta_path.string());
      store.shards_.push_back(std::make_shared<SafetensorsFile>(shard));
    }
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

torch::Tensor ActivationStore::index_column(const std::string& column) const {
  if (!has_index_) fail("activation store {} has no row index (plain tensor file)", shards_.front()->path().string());
  std::vector<torch::Tensor> parts;
  for (const auto& s : shards_) parts.push_back(s->load(column, torch::kInt64));
  return torch::cat(parts);
}

}  // namespace strata::io
