#include "transfer/transfer.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <numeric>
#include <set>
#include <sstream>

#include "core/bench.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/log.hpp"
#include "io/activation_store.hpp"
#include "io/safetensors.hpp"
#include "sae/sae.hpp"
#include "stats/cka.hpp"
#include "stats/correlation.hpp"
#include "stats/linalg.hpp"
#include "text/alignment.hpp"

namespace strata::transfer {
namespace fs = std::filesystem;
using torch::indexing::Slice;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
uint64_t derive_seed(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0) {
  return splitmix64(splitmix64(splitmix64(seed ^ splitmix64(a)) ^ b) ^ c);
}
double unit_hash(uint64_t seed, uint64_t tag, int64_t doc) {
  return double(derive_seed(seed, tag, uint64_t(doc)) >> 11) * 0x1.0p-53;
}
constexpr uint64_t kSplitTag = 1, kCapTag = 2, kNullTag = 3, kBootTag = 4, kCkaTag = 5, kRandomTag = 6;

torch::Generator generator_for(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

struct CellData {
  Cell cell;
  size_t model = 0;
  io::ActivationStore store;
  sae::Sae sae;
  std::optional<sae::Sae> ceiling;
  double scale = 1.0;  // scaled = raw * scale, E||scaled||^2 = d on the fitting split
};

struct ModelData {
  std::string name;
  std::vector<size_t> cells;
  int64_t rows = 0;
  torch::Tensor sequence;  // I64 [rows]: doc_id, or a pseudo-sequence id
  torch::Tensor byte_end;  // I64 [rows] or undefined
};

// Aligned rows of one model pair, split into fitting and evaluation parts.
struct Selection {
  torch::Tensor fit_a, fit_b, eval_a, eval_b;  // I64 row ids
  torch::Tensor eval_doc;                       // I64 [n_eval]: index into the global evaluation-doc list
  int64_t aligned = 0, fit_sequences = 0, eval_sequences = 0;
  double retained_a = 1, retained_b = 1;
};

// FVU pooled over tokens, kept per sequence so that the bootstrap can resample sequences.
struct DocSums {
  torch::Tensor residual, square, count;  // fp64 [D]
  torch::Tensor sum;                      // fp64 [D, d]
  double fvu() const {
    double n = count.sum().item<double>();
    double denominator = square.sum().item<double>() - sum.sum(0).pow(2).sum().item<double>() / n;
    return residual.sum().item<double>() / denominator;
  }
  // weights [B, D] -> FVU per replicate [B]
  torch::Tensor fvu(const torch::Tensor& weights) const {
    torch::Tensor n = torch::mv(weights, count);
    torch::Tensor denominator = torch::mv(weights, square) - torch::mm(weights, sum).pow(2).sum(1) / n;
    return torch::mv(weights, residual) / denominator;
  }
};

struct Encoding {
  DocSums sums;
  torch::Tensor latent_mean, latent_var;  // fp64 [d_sae] over tokens
  torch::Tensor firings, mass;            // fp64 [d_sae]: tokens with f > 0, sum of f
  torch::Tensor latents;                  // sparse COO [N, d_sae] fp32 when kept
  double l0 = 0;
};

// Applies `encode` (latents) and `decode` in batches to raw rows x [N, d], accumulating per-sequence FVU
// sums (fp64) and per-latent moments.
Encoding evaluate(const std::function<torch::Tensor(const torch::Tensor&)>& encode, const sae::Sae* decoder,
                  const torch::Tensor& x, const torch::Tensor& doc, int64_t n_docs, int64_t batch, bool keep_latents) {
  const int64_t n = x.size(0), d = x.size(1);
  Encoding out;
  auto f64 = torch::dtype(torch::kFloat64);
  out.sums.residual = torch::zeros({n_docs}, f64);
  out.sums.square = torch::zeros({n_docs}, f64);
  out.sums.count = torch::zeros({n_docs}, f64);
  out.sums.sum = torch::zeros({n_docs, d}, f64);
  torch::Tensor latent_sum, latent_sq, firings, mass;
  std::vector<torch::Tensor> indices, values;
  double active = 0;
  for (int64_t begin = 0; begin < n; begin += batch) {
    int64_t end = std::min(n, begin + batch);
    torch::Tensor xb = x.index({Slice(begin, end)});
    torch::Tensor db = doc.index({Slice(begin, end)});
    torch::Tensor f = encode(xb);
    if (!latent_sum.defined()) {
      latent_sum = torch::zeros({f.size(1)}, f64);
      latent_sq = torch::zeros({f.size(1)}, f64);
      firings = torch::zeros({f.size(1)}, f64);
    }
    torch::Tensor fd = f.to(torch::kFloat64);
    latent_sum += fd.sum(0);
    latent_sq += fd.pow(2).sum(0);
    torch::Tensor fired = (f > 0);
    firings += fired.sum(0).to(torch::kFloat64);
    active += fired.sum().item<double>();
    if (decoder) {
      torch::Tensor xd = xb.to(torch::kFloat64);
      torch::Tensor residual = (xd - decoder->decode(f).to(torch::kFloat64)).pow(2).sum(1);
      out.sums.residual.index_add_(0, db, residual);
      out.sums.square.index_add_(0, db, xd.pow(2).sum(1));
      out.sums.sum.index_add_(0, db, xd);
      out.sums.count.index_add_(0, db, torch::ones({end - begin}, f64));
    }
    if (keep_latents) {
      torch::Tensor nz = fired.nonzero();  // [nnz, 2]
      torch::Tensor rows = nz.select(1, 0), cols = nz.select(1, 1);
      values.push_back(f.index({rows, cols}).to(torch::kFloat32));
      indices.push_back(torch::stack({rows + begin, cols}));
    }
  }
  out.latent_mean = latent_sum / double(n);
  out.latent_var = (latent_sq / double(n) - out.latent_mean.pow(2)).clamp_min(0);
  out.firings = firings;
  out.mass = latent_sum;
  out.l0 = active / double(n);
  if (keep_latents)
    out.latents = torch::sparse_coo_tensor(torch::cat(indices, 1), torch::cat(values), {n, latent_sum.size(0)})
                      .coalesce();
  return out;
}

// Max-over-partners Pearson correlation of sparse latents (Lan et al. 2024), both directions at once.
struct MmacResult {
  double a_to_b = kNaN, a_to_b_weighted = kNaN, b_to_a = kNaN, b_to_a_weighted = kNaN;
};

MmacResult mmac(const Encoding& a, const Encoding& b, int64_t min_firings) {
  MmacResult out;
  torch::Tensor alive_a = (a.firings >= double(min_firings)).nonzero().squeeze(1);
  torch::Tensor alive_b = (b.firings >= double(min_firings)).nonzero().squeeze(1);
  if (alive_a.numel() == 0 || alive_b.numel() == 0) return out;
  const double n = double(a.latents.size(0));
  // Columns of alive latents only; A^T sparse [na, N], B dense in column chunks.
  auto select = [](const torch::Tensor& sparse, const torch::Tensor& alive) {
    return sparse.index_select(1, alive).coalesce();
  };
  torch::Tensor at = select(a.latents, alive_a).t().coalesce();  // [na, N]
  torch::Tensor bs = select(b.latents, alive_b);                  // [N, nb] sparse
  torch::Tensor mean_a = a.latent_mean.index_select(0, alive_a), sd_a = a.latent_var.index_select(0, alive_a).sqrt();
  torch::Tensor mean_b = b.latent_mean.index_select(0, alive_b), sd_b = b.latent_var.index_select(0, alive_b).sqrt();
  const int64_t na = alive_a.numel(), nb = alive_b.numel(), chunk = 2048;
  torch::Tensor best_a = torch::full({na}, -1.0, torch::kFloat64);
  std::vector<torch::Tensor> best_b;
  for (int64_t begin = 0; begin < nb; begin += chunk) {
    int64_t end = std::min(nb, begin + chunk);
    torch::Tensor cols = torch::arange(begin, end, torch::kInt64);
    torch::Tensor dense = bs.index_select(1, cols).to_dense();                   // [N, c]
    torch::Tensor cross = torch::mm(at, dense).to(torch::kFloat64) / n;          // E[ab], [na, c]
    torch::Tensor cov = cross - mean_a.unsqueeze(1) * mean_b.index({Slice(begin, end)}).unsqueeze(0);
    torch::Tensor corr = cov / (sd_a.unsqueeze(1) * sd_b.index({Slice(begin, end)}).unsqueeze(0));
    best_a = torch::maximum(best_a, std::get<0>(corr.max(1)));
    best_b.push_back(std::get<0>(corr.max(0)));
  }
  torch::Tensor best_bt = torch::cat(best_b);
  torch::Tensor mass_a = a.mass.index_select(0, alive_a), mass_b = b.mass.index_select(0, alive_b);
  out.a_to_b = best_a.mean().item<double>();
  out.b_to_a = best_bt.mean().item<double>();
  out.a_to_b_weighted = ((best_a * mass_a).sum() / mass_a.sum()).item<double>();
  out.b_to_a_weighted = ((best_bt * mass_b).sum() / mass_b.sum()).item<double>();
  return out;
}

// An affine map from scaled target space into RAW source space: y = ((z_scaled - mean_in) Q alpha + mean_out) / s_src.
struct AffineMap {
  torch::Tensor mean_in, linear, mean_out;  // fp64; linear undefined = identity
  double alpha = 1, target_scale = 1, source_scale = 1;
  torch::Tensor apply(const torch::Tensor& raw_target) const {
    torch::Tensor z = raw_target.to(torch::kFloat64) * target_scale;
    if (!linear.defined()) return (z / source_scale).to(torch::kFloat32);
    torch::Tensor y = torch::mm(z - mean_in, linear) * alpha + mean_out;
    return (y / source_scale).to(torch::kFloat32);
  }
};

// Semi-orthogonal Procrustes on centred scaled fitting rows, rescaled to the source's total variance.
AffineMap fit_procrustes(const torch::Tensor& z_centred, const torch::Tensor& y_centred, const torch::Tensor& mean_z,
                         const torch::Tensor& mean_y, double target_scale, double source_scale) {
  AffineMap map;
  map.mean_in = mean_z;
  map.mean_out = mean_y;
  map.target_scale = target_scale;
  map.source_scale = source_scale;
  map.linear = stats::procrustes(z_centred, y_centred);
  double mapped = torch::mm(z_centred, map.linear).pow(2).sum().item<double>();
  double source = y_centred.pow(2).sum().item<double>();
  map.alpha = mapped > 0 ? std::sqrt(source / mapped) : 1.0;
  return map;
}

std::string label_for(double q_excess, const TransferOptions& options) {
  if (q_excess >= options.high_threshold) return "HIGH_UNIVERSALITY";
  if (q_excess >= options.moderate_threshold) return "MODERATE_UNIVERSALITY";
  return "LOW_UNIVERSALITY";
}

double relative_depth(const Cell& c) { return c.n_layers > 0 ? double(c.layer) / double(c.n_layers) : 0.0; }

nlohmann::json finite_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

std::vector<double> to_vector(const torch::Tensor& t) {
  torch::Tensor c = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// The scalar metrics of a pair entry, in CSV / safetensors order.
const std::vector<std::string> kMatrixMetrics = {
    "transfer_recon_ratio", "fvu_source", "fvu_target", "q", "q_null", "q_excess", "feature_variance_ratio",
    "top_k_spearman", "top_k_spearman_p", "decoder_similarity", "cka", "cka_p", "map_r2", "mmac",
    "mmac_weighted", "mmac_random", "retained_fraction", "p_adjusted"};

class Runner {
 public:
  Runner(const std::vector<Cell>& cells, const TransferOptions& options, uint64_t seed)
      : options_(options), seed_(seed) {
    load(cells);
  }
  TransferResult run(const fs::path& out_dir);

 private:
  void load(const std::vector<Cell>& cells);
  void build_global_docs();
  Selection select(size_t a, size_t b) const;
  torch::Tensor read(const CellData& cell, const torch::Tensor& rows) const { return cell.store.read_rows(rows); }
  void compute_scales();
  void process_model_pair(size_t a, size_t b, log::Progress& progress);
  std::pair<double, double> plan_estimate() const;

  TransferOptions options_;
  uint64_t seed_;
  std::vector<CellData> cells_;
  std::vector<ModelData> models_;
  std::map<int64_t, int64_t> eval_doc_index_;  // doc id -> column of boot_weights_
  torch::Tensor boot_weights_;                 // fp64 [B, D_eval]
  std::map<std::string, nlohmann::json> pairs_;
  std::map<std::string, std::vector<double>> q_excess_boot_;
  nlohmann::json model_pairs_ = nlohmann::json::object();
  nlohmann::json ceilings_ = nlohmann::json::object();
};

void Runner::load(const std::vector<Cell>& cells) {
  if (cells.empty()) fail("transfer: no cells given (each needs an activation store and an SAE)");
  std::set<std::string> names;
  std::map<std::string, size_t> model_index;
  for (const Cell& cell : cells) {
    if (!names.insert(cell.name).second) fail("transfer: cell '{}' given twice", cell.name);
    CellData data;
    data.cell = cell;
    data.store = io::ActivationStore::open(cell.store);
    data.sae = sae::Sae::load(cell.sae_dir);
    if (data.sae.d_in() != data.store.dim())
      fail("transfer: SAE {} has d_in {} but the activations {} have dim {}; pair each SAE with its own cell",
           cell.sae_dir.string(), data.sae.d_in(), cell.store.string(), data.store.dim());
    if (cell.ceiling_sae_dir) {
      data.ceiling = sae::Sae::load(*cell.ceiling_sae_dir);
      if (data.ceiling->d_in() != data.store.dim())
        fail("transfer: ceiling SAE {} has d_in {} but {} has dim {}", cell.ceiling_sae_dir->string(),
             data.ceiling->d_in(), cell.store.string(), data.store.dim());
    }
    auto [it, inserted] = model_index.emplace(cell.model, models_.size());
    if (inserted) models_.push_back(ModelData{cell.model, {}, 0, {}, {}});
    data.model = it->second;
    models_[data.model].cells.push_back(cells_.size());
    cells_.push_back(std::move(data));
  }
  for (ModelData& model : models_) {
    const CellData& first = cells_[model.cells.front()];
    model.rows = first.store.rows();
    for (size_t c : model.cells)
      if (cells_[c].store.rows() != model.rows)
        fail("transfer: cells of model '{}' hold different token counts ({} has {}, {} has {}); all layers of a "
             "model must come from one capture",
             model.name, first.cell.name, model.rows, cells_[c].cell.name, cells_[c].store.rows());
    if (first.store.has_index()) {
      model.sequence = first.store.index_column("doc_id");
      model.byte_end = first.store.index_column("byte_end");
    } else {
      if (!options_.aligned_rows && models_.size() > 1)
        log::warn("transfer: {} has no doc_id/byte_end index; its rows can only be paired with --aligned",
                  first.cell.store.string());
      model.sequence = torch::arange(model.rows, torch::kInt64).div(options_.pseudo_sequence_rows, "floor");
    }
  }
  if (options_.aligned_rows)
    for (const ModelData& model : models_)
      if (model.rows != models_.front().rows)
        fail("transfer: --aligned needs every activation file to hold the same rows ({} has {}, {} has {})",
             models_.front().name, models_.front().rows, model.name, model.rows);
  for (const ModelData& model : models_)
    if (!model.byte_end.defined() && !options_.aligned_rows && models_.size() > 1)
      fail("transfer: model '{}' has no doc_id/byte_end columns to align with other models; capture with strata "
           "or pass --aligned if all files hold the same tokens in the same order",
           model.name);
}

bool in_fit(uint64_t seed, int64_t doc, double fraction) { return unit_hash(seed, kSplitTag, doc) < fraction; }

void Runner::build_global_docs() {
  std::set<int64_t> eval_docs;
  for (const ModelData& model : models_) {
    torch::Tensor unique = std::get<0>(torch::_unique(model.sequence));
    const int64_t* ids = unique.data_ptr<int64_t>();
    for (int64_t i = 0; i < unique.numel(); ++i)
      if (!in_fit(seed_, ids[i], options_.fit_fraction)) eval_docs.insert(ids[i]);
  }
  int64_t column = 0;
  for (int64_t doc : eval_docs) eval_doc_index_[doc] = column++;
  const int64_t d = column, b = std::max<int64_t>(options_.bootstrap, 0);
  boot_weights_ = torch::zeros({b, d}, torch::kFloat64);
  if (d == 0) return;
  auto generator = generator_for(derive_seed(seed_, kBootTag));
  torch::Tensor draws = torch::randint(0, d, {b, d}, generator, torch::kInt64);
  boot_weights_.scatter_add_(1, draws, torch::ones({b, d}, torch::kFloat64));
}

// Whole sequences, in the order of a seeded hash, until `cap` rows are reached.
torch::Tensor cap_rows(const std::vector<int64_t>& rows, const std::vector<int64_t>& docs, int64_t cap, uint64_t seed) {
  std::map<int64_t, std::vector<int64_t>> by_doc;
  for (size_t i = 0; i < rows.size(); ++i) by_doc[docs[i]].push_back(int64_t(i));
  std::vector<int64_t> order;
  for (auto& [doc, _] : by_doc) order.push_back(doc);
  std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
    return unit_hash(seed, kCapTag, x) < unit_hash(seed, kCapTag, y);
  });
  std::vector<int64_t> kept;
  for (int64_t doc : order) {
    const auto& members = by_doc[doc];
    if (!kept.empty() && int64_t(kept.size() + members.size()) > cap) break;
    kept.insert(kept.end(), members.begin(), members.end());
    if (int64_t(kept.size()) >= cap) break;
  }
  std::sort(kept.begin(), kept.end());
  return torch::tensor(kept, torch::kInt64);
}

Selection Runner::select(size_t a, size_t b) const {
  const ModelData &ma = models_[a], &mb = models_[b];
  Selection s;
  torch::Tensor rows_a, rows_b;
  if (a == b || options_.aligned_rows) {
    rows_a = torch::arange(ma.rows, torch::kInt64);
    rows_b = rows_a;
  } else {
    text::Alignment alignment = text::align_token_ends(ma.sequence, ma.byte_end, mb.sequence, mb.byte_end);
    rows_a = alignment.rows_a;
    rows_b = alignment.rows_b;
    s.retained_a = alignment.retained_a;
    s.retained_b = alignment.retained_b;
  }
  s.aligned = rows_a.numel();
  if (s.aligned == 0) fail("transfer: models '{}' and '{}' share no aligned tokens", ma.name, mb.name);
  torch::Tensor docs = ma.sequence.index_select(0, rows_a);
  std::vector<int64_t> fit_rows, fit_docs, eval_rows, eval_docs;
  const int64_t* dp = docs.data_ptr<int64_t>();
  for (int64_t i = 0; i < s.aligned; ++i) {
    bool fit = in_fit(seed_, dp[i], options_.fit_fraction);
    (fit ? fit_rows : eval_rows).push_back(i);
    (fit ? fit_docs : eval_docs).push_back(dp[i]);
  }
  if (fit_rows.size() < 2 || eval_rows.size() < 2)
    fail("transfer: models '{}' and '{}': too few sequences to split ({} fitting, {} evaluation tokens)", ma.name,
         mb.name, fit_rows.size(), eval_rows.size());
  torch::Tensor fit_pick = cap_rows(fit_rows, fit_docs, options_.max_fit_tokens, seed_);
  torch::Tensor eval_pick = cap_rows(eval_rows, eval_docs, options_.max_eval_tokens, seed_);
  torch::Tensor fit_idx = torch::tensor(fit_rows, torch::kInt64).index_select(0, fit_pick);
  torch::Tensor eval_idx = torch::tensor(eval_rows, torch::kInt64).index_select(0, eval_pick);
  s.fit_a = rows_a.index_select(0, fit_idx);
  s.fit_b = rows_b.index_select(0, fit_idx);
  s.eval_a = rows_a.index_select(0, eval_idx);
  s.eval_b = rows_b.index_select(0, eval_idx);
  torch::Tensor eval_doc_ids = docs.index_select(0, eval_idx);
  std::vector<int64_t> columns(eval_doc_ids.numel());
  const torch::Tensor eval_doc_column = eval_doc_ids.contiguous();
  const int64_t* eval_doc = eval_doc_column.data_ptr<int64_t>();
  for (int64_t i = 0; i < eval_doc_column.numel(); ++i) columns[i] = eval_doc_index_.at(eval_doc[i]);
  s.eval_doc = torch::tensor(columns, torch::kInt64);
  s.fit_sequences = std::get<0>(torch::_unique(docs.index_select(0, fit_idx))).numel();
  s.eval_sequences = std::get<0>(torch::_unique(eval_doc_ids)).numel();
  return s;
}

void Runner::compute_scales() {
  for (size_t m = 0; m < models_.size(); ++m) {
    Selection s = select(m, m);
    for (size_t c : models_[m].cells) {
      torch::Tensor x = read(cells_[c], s.fit_a).to(torch::kFloat64);
      double mean_sq = x.pow(2).sum(1).mean().item<double>();
      if (!(mean_sq > 0)) fail("transfer: {} has zero activations on the fitting split", cells_[c].cell.store.string());
      cells_[c].scale = std::sqrt(double(x.size(1)) / mean_sq);
    }
  }
}

std::pair<double, double> Runner::plan_estimate() const {
  // Work: per ordered pair, three SAE passes (source, mapped, null) of 4 N d d_sae flops; per unordered
  // pair, the CKA permutations (~N_cka^2 gathers each); per model pair, the map fits (2 n_fit d_t d_s).
  double gflops = bench::gemm_gflops(512, 512, 512, 3);
  double flops = 0, gathers = 0;
  const double n_eval = double(options_.max_eval_tokens), n_fit = double(options_.max_fit_tokens);
  const double n_cka = double(options_.cka_max_tokens);
  for (size_t i = 0; i < cells_.size(); ++i)
    for (size_t j = 0; j < cells_.size(); ++j) {
      double d_s = double(cells_[i].store.dim()), d_t = double(cells_[j].store.dim());
      double rows = std::min<double>(n_eval, double(cells_[j].store.rows()));
      flops += 3 * 4 * rows * d_s * double(cells_[i].sae.d_sae());
      flops += 3 * 2 * std::min<double>(n_fit, double(cells_[j].store.rows())) * d_t * d_s;
      if (i < j) gathers += double(options_.cka_permutations) * n_cka * n_cka / 2;
    }
  const double seconds_per_gather = 1.0e-9;  // measured order of the permutation loop on this class of CPU
  return {flops, flops / (gflops * 1e9) + gathers * seconds_per_gather};
}

void Runner::process_model_pair(size_t a, size_t b, log::Progress& progress) {
  const ModelData &ma = models_[a], &mb = models_[b];
  Selection s = select(a, b);
  const int64_t n_docs = boot_weights_.size(1), batch = options_.batch_size;
  const bool same = a == b;
  nlohmann::json info = {{"model_a", ma.name},
                         {"model_b", mb.name},
                         {"aligned_tokens", s.aligned},
                         {"retained_fraction_a", s.retained_a},
                         {"retained_fraction_b", s.retained_b},
                         {"fit_tokens", s.fit_a.numel()},
                         {"eval_tokens", s.eval_a.numel()},
                         {"fit_sequences", s.fit_sequences},
                         {"eval_sequences", s.eval_sequences}};
  model_pairs_[ma.name + "__" + mb.name] = info;

  // Scaled fitting rows and raw evaluation rows of every cell of both models, on the aligned rows.
  struct Side {
    torch::Tensor fit, fit_mean, eval;  // fit: scaled centred fp64 [n_fit, d]; eval: raw fp32 [n_eval, d]
    Encoding own, random;
  };
  std::map<size_t, Side> sides;
  auto prepare = [&](size_t c, const torch::Tensor& fit_rows, const torch::Tensor& eval_rows) {
    Side side;
    const CellData& cell = cells_[c];
    torch::Tensor fit = read(cell, fit_rows).to(torch::kFloat64) * cell.scale;
    side.fit_mean = fit.mean(0);
    side.fit = fit - side.fit_mean;
    side.eval = read(cell, eval_rows);
    const sae::Sae& sae = cell.sae;
    side.own = evaluate([&](const torch::Tensor& x) { return sae.encode(x); }, &sae, side.eval, s.eval_doc, n_docs,
                        batch, true);
    // Random unit dictionary of the same size, top-k at the SAE's L0 on these tokens (mmac_random).
    auto generator = generator_for(derive_seed(seed_, kRandomTag, c));
    torch::Tensor dictionary = torch::randn({sae.d_sae(), cell.store.dim()}, generator, torch::kFloat32);
    dictionary = dictionary / dictionary.norm(2, 1, true);
    int64_t k = std::max<int64_t>(1, std::llround(side.own.l0));
    torch::Tensor centre = side.eval.mean(0, true);
    side.random = evaluate(
        [&](const torch::Tensor& x) {
          torch::Tensor pre = torch::relu(torch::mm(x - centre, dictionary.t()));
          auto [values, indices] = pre.topk(std::min<int64_t>(k, pre.size(1)), 1);
          return torch::zeros_like(pre).scatter_(1, indices, values);
        },
        nullptr, side.eval, s.eval_doc, n_docs, batch, true);
    sides[c] = std::move(side);
  };
  for (size_t c : ma.cells) prepare(c, s.fit_a, s.eval_a);
  if (!same)
    for (size_t c : mb.cells) prepare(c, s.fit_b, s.eval_b);

  // Symmetric quantities per unordered cell pair: CKA (+ permutation p, bootstrap) and MMAC both ways.
  struct Symmetric {
    double cka = kNaN, cka_p = kNaN;
    int64_t cka_n = 0;
    std::vector<double> cka_boot;
    MmacResult mmac, mmac_random;
  };
  std::map<std::pair<size_t, size_t>, Symmetric> symmetric;
  const int64_t n_eval = s.eval_a.numel();
  torch::Tensor cka_rows;
  {
    auto generator = generator_for(derive_seed(seed_, kCkaTag, a, b));
    cka_rows = std::get<0>(torch::randperm(n_eval, generator, torch::kInt64)
                               .index({Slice(0, std::min(n_eval, options_.cka_max_tokens))})
                               .sort());
  }
  torch::Tensor cka_weights = boot_weights_.index_select(1, s.eval_doc.index_select(0, cka_rows));
  for (size_t i : ma.cells)
    for (size_t j : mb.cells) {
      if (same && j < i) continue;
      Symmetric sym;
      const Side &si = sides.at(i), &sj = sides.at(j);
      if (i == j) {
        sym.cka = 1.0;
        sym.cka_p = 1.0 / double(1 + options_.cka_permutations);  // no non-identity permutation reaches 1
        sym.cka_boot.assign(boot_weights_.size(0), 1.0);
      } else {
        sym.cka = stats::linear_cka(si.eval, sj.eval);
        stats::GramCka gram(si.eval.index_select(0, cka_rows), sj.eval.index_select(0, cka_rows));
        sym.cka_p = gram.permutation_test(options_.cka_permutations, derive_seed(seed_, kCkaTag, i, j)).p;
        if (boot_weights_.size(0) > 0) sym.cka_boot = gram.weighted(cka_weights);
      }
      sym.cka_n = cka_rows.numel();
      sym.mmac = mmac(si.own, sj.own, options_.mmac_min_firings);
      sym.mmac_random = mmac(si.random, sj.random, options_.mmac_min_firings);
      symmetric[{i, j}] = std::move(sym);
    }

  // Ordered pairs: SAE of `src` on the mapped evaluation rows of `tgt`.
  auto pair = [&](size_t src, size_t tgt) {
    const CellData &cs = cells_[src], &ct = cells_[tgt];
    const Side &ss = sides.at(src), &st = sides.at(tgt);
    const sae::Sae& sae = cs.sae;
    const bool same_model = cs.model == ct.model;
    AffineMap map;
    map.target_scale = ct.scale;
    map.source_scale = cs.scale;
    if (!same_model) map = fit_procrustes(st.fit, ss.fit, st.fit_mean, ss.fit_mean, ct.scale, cs.scale);
    // Null: the same fit after shuffling target rows against source rows.
    auto generator = generator_for(derive_seed(seed_, kNullTag, src, tgt));
    torch::Tensor shuffle = torch::randperm(st.fit.size(0), generator, torch::kInt64);
    AffineMap null_map =
        fit_procrustes(st.fit.index_select(0, shuffle), ss.fit, st.fit_mean, ss.fit_mean, ct.scale, cs.scale);
    auto encode = [&](const torch::Tensor& x) { return sae.encode(x); };
    Encoding mapped, null;
    if (src == tgt) {
      mapped = ss.own;  // identity at equal scale: exactly the source's own reconstruction
    } else {
      mapped = evaluate(encode, &sae, map.apply(st.eval), s.eval_doc, n_docs, batch, false);
    }
    null = evaluate(encode, &sae, null_map.apply(st.eval), s.eval_doc, n_docs, batch, false);
    const double fvu_source = ss.own.sums.fvu(), fvu_target = mapped.sums.fvu(), fvu_null = null.sums.fvu();
    const double ev_source = 1 - fvu_source;
    const double q = src == tgt ? 1.0 : (1 - fvu_target) / ev_source;
    const double q_null = (1 - fvu_null) / ev_source;
    const double q_excess = (q - q_null) / (1 - q_null);
    std::vector<double> q_excess_boot;
    if (boot_weights_.size(0) > 0) {
      torch::Tensor ev_s = 1 - ss.own.sums.fvu(boot_weights_);
      torch::Tensor qb = (1 - mapped.sums.fvu(boot_weights_)) / ev_s;
      torch::Tensor qnb = (1 - null.sums.fvu(boot_weights_)) / ev_s;
      q_excess_boot = to_vector((qb - qnb) / (1 - qnb));
    }
    // Latent variances over the top-k latents by source variance.
    int64_t k = std::min<int64_t>(options_.top_k, sae.d_sae());
    torch::Tensor top = std::get<1>(ss.own.latent_var.topk(k));
    torch::Tensor var_s = ss.own.latent_var.index_select(0, top), var_t = mapped.latent_var.index_select(0, top);
    double variance_ratio = var_t.mean().item<double>() / var_s.mean().item<double>();
    stats::Correlation rho = stats::spearman(to_vector(var_s), to_vector(var_t));
    // Decoder rows of the target's SAE carried into source space by the map's linear part.
    torch::Tensor dec_s = sae.W_dec.index_select(0, top).to(torch::kFloat64);
    torch::Tensor dec_t = ct.sae.W_dec.to(torch::kFloat64);
    if (!same_model) dec_t = torch::mm(dec_t, map.linear);
    dec_s = dec_s / dec_s.norm(2, 1, true).clamp_min(1e-12);
    dec_t = dec_t / dec_t.norm(2, 1, true).clamp_min(1e-12);
    double decoder_similarity = std::get<0>(torch::mm(dec_s, dec_t.t()).max(1)).mean().item<double>();
    // map_r2: held-out R^2 of a ridge map target -> source (scaled spaces), a map-only baseline.
    double map_r2;
    {
      double lambda = options_.ridge_lambda * st.fit.pow(2).sum().item<double>() / double(st.fit.size(1));
      torch::Tensor w = stats::ridge(st.fit, ss.fit, lambda);
      torch::Tensor z = st.eval.to(torch::kFloat64) * ct.scale - st.fit_mean;
      torch::Tensor y = ss.eval.to(torch::kFloat64) * cs.scale;
      torch::Tensor predicted = torch::mm(z, w) + ss.fit_mean;
      map_r2 = 1 - (y - predicted).pow(2).sum().item<double>() / (y - y.mean(0)).pow(2).sum().item<double>();
    }
    bool forward = symmetric.count({src, tgt}) > 0;
    const Symmetric& sym = forward ? symmetric.at({src, tgt}) : symmetric.at({tgt, src});
    double mmac_value = forward ? sym.mmac.a_to_b : sym.mmac.b_to_a;
    double mmac_weighted = forward ? sym.mmac.a_to_b_weighted : sym.mmac.b_to_a_weighted;
    double mmac_random = forward ? sym.mmac_random.a_to_b : sym.mmac_random.b_to_a;
    auto [q_lo, q_hi] = stats::percentile_interval(q_excess_boot, options_.ci_level);
    auto [c_lo, c_hi] = stats::percentile_interval(sym.cka_boot, options_.ci_level);
    const std::string key = pair_key(cs.cell.name, ct.cell.name);
    // Fraction of the target model's rows that found a partner in the source model.
    const double retained = ct.model == a ? s.retained_a : s.retained_b;
    nlohmann::json entry = {
        {"source", cs.cell.name},
        {"target", ct.cell.name},
        {"source_model", cs.cell.model},
        {"source_layer", cs.cell.layer},
        {"target_model", ct.cell.model},
        {"target_layer", ct.cell.layer},
        {"source_relative_depth", relative_depth(cs.cell)},
        {"target_relative_depth", relative_depth(ct.cell)},
        {"same_model", same_model},
        {"map", same_model ? "identity" : "procrustes"},
        {"transfer_recon_ratio", finite_or_null(fvu_target / fvu_source)},
        {"fvu_source", finite_or_null(fvu_source)},
        {"fvu_target", finite_or_null(fvu_target)},
        {"fvu_null", finite_or_null(fvu_null)},
        {"q", finite_or_null(q)},
        {"q_null", finite_or_null(q_null)},
        {"q_excess", finite_or_null(q_excess)},
        {"q_excess_ci", {finite_or_null(q_lo), finite_or_null(q_hi)}},
        {"feature_variance_ratio", finite_or_null(variance_ratio)},
        {"top_k", k},
        {"top_k_spearman", finite_or_null(rho.r)},
        {"top_k_spearman_p", finite_or_null(rho.p)},
        {"decoder_similarity", finite_or_null(decoder_similarity)},
        {"cka", finite_or_null(sym.cka)},
        {"cka_p", finite_or_null(sym.cka_p)},
        {"cka_ci", {finite_or_null(c_lo), finite_or_null(c_hi)}},
        {"cka_tokens", n_eval},
        {"cka_permutation_tokens", sym.cka_n},
        {"map_r2", finite_or_null(map_r2)},
        {"mmac", finite_or_null(mmac_value)},
        {"mmac_weighted", finite_or_null(mmac_weighted)},
        {"mmac_random", finite_or_null(mmac_random)},
        {"source_l0", ss.own.l0},
        {"aligned_tokens", s.aligned},
        {"eval_tokens", n_eval},
        {"retained_fraction", retained},
        {"evaluation", label_for(q_excess, options_)}};
    pairs_[key] = std::move(entry);
    q_excess_boot_[key] = std::move(q_excess_boot);
    progress.advance();
  };
  for (size_t i : ma.cells)
    for (size_t j : mb.cells) {
      pair(i, j);
      if (!same) pair(j, i);
    }

  // Seed-to-seed ceiling: the second-seed SAE of a cell against the first, on the cell's own rows.
  if (same)
    for (size_t c : ma.cells) {
      const CellData& cell = cells_[c];
      if (!cell.ceiling) continue;
      const Side& side = sides.at(c);
      const sae::Sae& second = *cell.ceiling;
      Encoding other = evaluate([&](const torch::Tensor& x) { return second.encode(x); }, &second, side.eval,
                                s.eval_doc, n_docs, batch, true);
      const nlohmann::json& diagonal = pairs_.at(pair_key(cell.cell.name, cell.cell.name));
      double q_null = diagonal["q_null"].is_number() ? diagonal["q_null"].get<double>() : kNaN;
      double q = (1 - other.sums.fvu()) / (1 - side.own.sums.fvu());
      MmacResult m = mmac(side.own, other, options_.mmac_min_firings);
      torch::Tensor da = cell.sae.W_dec.to(torch::kFloat64), db = second.W_dec.to(torch::kFloat64);
      da = da / da.norm(2, 1, true).clamp_min(1e-12);
      db = db / db.norm(2, 1, true).clamp_min(1e-12);
      int64_t k = std::min<int64_t>(options_.top_k, cell.sae.d_sae());
      torch::Tensor top = std::get<1>(side.own.latent_var.topk(k));
      double decoder = std::get<0>(torch::mm(da.index_select(0, top), db.t()).max(1)).mean().item<double>();
      ceilings_[cell.cell.name] = {{"ceiling_sae_dir", cell.cell.ceiling_sae_dir->filename().generic_string()},
                                   {"fvu_first", side.own.sums.fvu()},
                                   {"fvu_second", other.sums.fvu()},
                                   {"q", finite_or_null(q)},
                                   {"q_null", finite_or_null(q_null)},
                                   {"q_excess", finite_or_null((q - q_null) / (1 - q_null))},
                                   {"mmac", finite_or_null(m.a_to_b)},
                                   {"mmac_weighted", finite_or_null(m.a_to_b_weighted)},
                                   {"decoder_similarity", finite_or_null(decoder)}};
    }
}

TransferResult Runner::run(const fs::path& out_dir) {
  auto start = std::chrono::steady_clock::now();
  build_global_docs();
  compute_scales();
  const size_t n = cells_.size();
  auto [flops, estimate] = plan_estimate();
  log::info("transfer plan: {} cells, {} pairs ({} model pairs), up to {} fitting + {} evaluation tokens per model "
            "pair, {} CKA permutations at N<={}, {} bootstrap resamples; estimated {:.0f} s ({:.1f} TFLOP)",
            n, n * n, models_.size() * (models_.size() + 1) / 2, options_.max_fit_tokens, options_.max_eval_tokens,
            options_.cka_permutations, options_.cka_max_tokens, options_.bootstrap, estimate, flops / 1e12);
  {
    log::Progress progress("transfer pairs", int64_t(n * n));
    for (size_t a = 0; a < models_.size(); ++a)
      for (size_t b = a; b < models_.size(); ++b) process_model_pair(a, b, progress);
    progress.finish();
  }
  // Benjamini-Hochberg across all pairs, on the CKA permutation p-values.
  std::vector<std::string> keys;
  std::vector<double> cka_p;
  for (auto& [key, entry] : pairs_) {
    keys.push_back(key);
    cka_p.push_back(entry["cka_p"].get<double>());
  }
  std::vector<double> adjusted = stats::benjamini_hochberg(cka_p);
  for (size_t i = 0; i < keys.size(); ++i) pairs_[keys[i]]["p_adjusted"] = adjusted[i];

  nlohmann::json matrix = nlohmann::json::object();
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) {
      std::string key = pair_key(cells_[i].cell.name, cells_[j].cell.name);
      matrix[key] = pairs_.at(key);
    }

  // Layer universality: per cell, cross-model pairs (both directions) with the other models' cells of the
  // nearest relative depth; CI from the same bootstrap replicates averaged over those pairs.
  nlohmann::json layer_scores = nlohmann::json::array();
  std::vector<size_t> by_depth(n);
  std::iota(by_depth.begin(), by_depth.end(), size_t{0});
  std::stable_sort(by_depth.begin(), by_depth.end(),
                   [&](size_t x, size_t y) { return relative_depth(cells_[x].cell) < relative_depth(cells_[y].cell); });
  for (size_t c : by_depth) {
    const CellData& cell = cells_[c];
    std::vector<std::string> keys_for_cell;
    for (size_t m = 0; m < models_.size(); ++m) {
      if (m == cell.model) continue;
      size_t best = models_[m].cells.front();
      for (size_t other : models_[m].cells)
        if (std::abs(relative_depth(cells_[other].cell) - relative_depth(cell.cell)) <
            std::abs(relative_depth(cells_[best].cell) - relative_depth(cell.cell)))
          best = other;
      keys_for_cell.push_back(pair_key(cell.cell.name, cells_[best].cell.name));
      keys_for_cell.push_back(pair_key(cells_[best].cell.name, cell.cell.name));
    }
    nlohmann::json score = {{"relative_depth", relative_depth(cell.cell)},
                            {"cell", cell.cell.name},
                            {"model", cell.cell.model},
                            {"layer", cell.cell.layer},
                            {"pairs", keys_for_cell}};
    if (keys_for_cell.empty()) {
      score["mean_cross_model_q_excess"] = nullptr;
      score["ci"] = {nullptr, nullptr};
      score["mean_cross_model_cka"] = nullptr;
    } else {
      double q_sum = 0, cka_sum = 0;
      std::vector<double> boot(boot_weights_.size(0), 0.0);
      for (const std::string& key : keys_for_cell) {
        q_sum += pairs_.at(key)["q_excess"].is_number() ? pairs_.at(key)["q_excess"].get<double>() : kNaN;
        cka_sum += pairs_.at(key)["cka"].get<double>();
        const auto& replicate = q_excess_boot_.at(key);
        for (size_t r = 0; r < boot.size() && r < replicate.size(); ++r) boot[r] += replicate[r];
      }
      const double count = double(keys_for_cell.size());
      for (double& v : boot) v /= count;
      auto [lo, hi] = stats::percentile_interval(boot, options_.ci_level);
      score["mean_cross_model_q_excess"] = finite_or_null(q_sum / count);
      score["ci"] = {finite_or_null(lo), finite_or_null(hi)};
      score["mean_cross_model_cka"] = finite_or_null(cka_sum / count);
    }
    layer_scores.push_back(score);
  }

  // Paths inside the run directory are recorded relative to it, so that a reproduced run elsewhere
  // writes the same bytes.
  const fs::path run_root = fs::weakly_canonical(out_dir).parent_path();
  auto portable_path = [&](const fs::path& p) {
    fs::path abs = fs::weakly_canonical(p);
    fs::path rel = abs.lexically_relative(run_root);
    return (!rel.empty() && *rel.begin() != "..") ? rel.generic_string() : abs.generic_string();
  };
  nlohmann::json cells_json = nlohmann::json::array();
  for (const CellData& cell : cells_)
    cells_json.push_back({{"name", cell.cell.name},
                          {"model", cell.cell.model},
                          {"layer", cell.cell.layer},
                          {"n_layers", cell.cell.n_layers},
                          {"relative_depth", relative_depth(cell.cell)},
                          {"store", portable_path(cell.cell.store)},
                          {"sae_dir", portable_path(cell.cell.sae_dir)},
                          {"dim", cell.store.dim()},
                          {"d_sae", cell.sae.d_sae()},
                          {"architecture", cell.sae.architecture},
                          {"scaling_factor", cell.scale}});
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  nlohmann::json config = {
      {"seed", seed_},
      {"fit_fraction", options_.fit_fraction},
      {"split", "by sequence (doc_id): fitting iff hash(seed, doc_id) < fit_fraction"},
      {"top_k", options_.top_k},
      {"cka_permutations", options_.cka_permutations},
      {"cka_max_tokens", options_.cka_max_tokens},
      {"bootstrap", options_.bootstrap},
      {"ci_level", options_.ci_level},
      {"max_fit_tokens", options_.max_fit_tokens},
      {"max_eval_tokens", options_.max_eval_tokens},
      {"mmac_min_firings", options_.mmac_min_firings},
      {"ridge_lambda", options_.ridge_lambda},
      {"aligned_rows", options_.aligned_rows},
      {"thresholds", {{"HIGH_UNIVERSALITY", options_.high_threshold}, {"MODERATE_UNIVERSALITY", options_.moderate_threshold}}},
      {"evaluation_metric", "q_excess"},
      {"cells", cells_json},
      {"model_pairs", model_pairs_}};
  log::info("transfer: {} pairs in {:.1f} s", n * n, seconds);
  nlohmann::json result = {{"config", config},
                           {"transfer_matrix", matrix},
                           {"layer_universality_scores", layer_scores},
                           {"seed_ceilings", ceilings_}};

  // Per model: within-model and cross-model summaries and a depth trend of cross-model q_excess.
  nlohmann::json per_model = nlohmann::json::object();
  for (const ModelData& model : models_) {
    std::vector<double> within, adjacent, cross_out, cross_in, depth_trend;
    nlohmann::json layers = nlohmann::json::array();
    for (size_t i : model.cells) {
      std::vector<double> as_source;
      for (size_t j = 0; j < n; ++j) {
        if (i == j) continue;
        double q_out = matrix[pair_key(cells_[i].cell.name, cells_[j].cell.name)]["q_excess"].is_number()
                           ? matrix[pair_key(cells_[i].cell.name, cells_[j].cell.name)]["q_excess"].get<double>()
                           : kNaN;
        double q_in = matrix[pair_key(cells_[j].cell.name, cells_[i].cell.name)]["q_excess"].is_number()
                          ? matrix[pair_key(cells_[j].cell.name, cells_[i].cell.name)]["q_excess"].get<double>()
                          : kNaN;
        if (cells_[j].model == cells_[i].model) {
          within.push_back(q_out);
          if (std::abs(cells_[j].cell.layer - cells_[i].cell.layer) == 1) adjacent.push_back(q_out);
        } else {
          cross_out.push_back(q_out);
          cross_in.push_back(q_in);
          as_source.push_back(q_out);
        }
      }
      auto mean = [](const std::vector<double>& v) {
        return v.empty() ? kNaN : std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
      };
      depth_trend.push_back(mean(as_source));
      layers.push_back({{"cell", cells_[i].cell.name},
                        {"layer", cells_[i].cell.layer},
                        {"relative_depth", relative_depth(cells_[i].cell)},
                        {"mean_cross_model_q_excess_as_source", finite_or_null(mean(as_source))},
                        {"fvu", finite_or_null(matrix[pair_key(cells_[i].cell.name, cells_[i].cell.name)]["fvu_source"]
                                                   .is_number()
                                               ? matrix[pair_key(cells_[i].cell.name, cells_[i].cell.name)]["fvu_source"]
                                                     .get<double>()
                                               : kNaN)}});
    }
    auto mean = [](const std::vector<double>& v) {
      return v.empty() ? kNaN : std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
    };
    stats::TrendTest trend = stats::mann_kendall(depth_trend);
    per_model[model.name] = {
        {"cells", layers},
        {"mean_within_model_q_excess", finite_or_null(mean(within))},
        {"mean_adjacent_layer_q_excess", finite_or_null(mean(adjacent))},
        {"mean_cross_model_q_excess_as_source", finite_or_null(mean(cross_out))},
        {"mean_cross_model_q_excess_as_target", finite_or_null(mean(cross_in))},
        {"depth_trend_mann_kendall",
         {{"of", "mean_cross_model_q_excess_as_source by layer"}, {"s", trend.s}, {"z", trend.z}, {"p", trend.p},
          {"tau", trend.tau}, {"n", trend.n}}}};
  }

  fs::create_directories(out_dir);
  TransferResult out;
  out.matrix = result;
  atomic_write_text(out_dir / "transfer_matrix.json", result.dump(2));
  out.files.push_back(out_dir / "transfer_matrix.json");
  atomic_write_text(out_dir / "per_model_transfer_analysis.json", per_model.dump(2));
  out.files.push_back(out_dir / "per_model_transfer_analysis.json");

  std::ostringstream csv;
  csv.precision(17);
  csv << "source,target,source_model,source_layer,target_model,target_layer,same_model";
  for (const std::string& metric : kMatrixMetrics) csv << ',' << metric;
  csv << ",q_excess_ci_lo,q_excess_ci_hi,cka_ci_lo,cka_ci_hi,aligned_tokens,eval_tokens,evaluation\n";
  auto number = [](const nlohmann::json& v) { return v.is_number() ? v.get<double>() : kNaN; };
  std::map<std::string, torch::Tensor> tensors;
  for (const std::string& metric : kMatrixMetrics)
    tensors[metric] = torch::full({int64_t(n), int64_t(n)}, kNaN, torch::kFloat64);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) {
      const nlohmann::json& e = matrix[pair_key(cells_[i].cell.name, cells_[j].cell.name)];
      csv << e["source"].get<std::string>() << ',' << e["target"].get<std::string>() << ','
          << e["source_model"].get<std::string>() << ',' << e["source_layer"].get<int>() << ','
          << e["target_model"].get<std::string>() << ',' << e["target_layer"].get<int>() << ','
          << (e["same_model"].get<bool>() ? "true" : "false");
      for (const std::string& metric : kMatrixMetrics) {
        double v = number(e[metric]);
        csv << ',' << v;
        tensors[metric][int64_t(i)][int64_t(j)] = v;
      }
      csv << ',' << number(e["q_excess_ci"][0]) << ',' << number(e["q_excess_ci"][1]) << ','
          << number(e["cka_ci"][0]) << ',' << number(e["cka_ci"][1]) << ',' << e["aligned_tokens"].get<int64_t>()
          << ',' << e["eval_tokens"].get<int64_t>() << ',' << e["evaluation"].get<std::string>() << '\n';
    }
  atomic_write_text(out_dir / "transfer_metrics.csv", csv.str());
  out.files.push_back(out_dir / "transfer_metrics.csv");
  nlohmann::json cell_names = nlohmann::json::array();
  for (const CellData& cell : cells_) cell_names.push_back(cell.cell.name);
  io::save_safetensors(out_dir / "transfer_matrices.safetensors", tensors,
                       {{"cells", cell_names.dump()},
                        {"layout", "[source, target], fp64; row i / column j = cells[i] / cells[j]"}});
  out.files.push_back(out_dir / "transfer_matrices.safetensors");
  log::info("transfer: {} pairs in {:.1f} s -> {}", n * n, seconds, out_dir.string());
  return out;
}

}  // namespace

std::string pair_key(const std::string& source, const std::string& target) { return source + "__to__" + target; }

TransferResult run_transfer(const std::vector<Cell>& cells, const TransferOptions& options, uint64_t seed,
                            const fs::path& out_dir) {
  if (!(options.fit_fraction > 0 && options.fit_fraction < 1))
    fail("transfer: fit_fraction must lie in (0, 1), got {}", options.fit_fraction);
  if (options.top_k <= 0 || options.cka_max_tokens < 4 || options.batch_size <= 0 || options.max_eval_tokens < 4 ||
      options.max_fit_tokens < 4 || options.cka_permutations < 0 || options.bootstrap < 0)
    fail("transfer: top_k, batch_size > 0; cka_max_tokens, max_fit_tokens, max_eval_tokens >= 4; "
         "cka_permutations, bootstrap >= 0");
  torch::NoGradGuard no_grad;
  Runner runner(cells, options, seed);
  return runner.run(out_dir);
}

nlohmann::json check_pair_matrix(const nlohmann::json& transfer_matrix, size_t n_src, size_t n_tgt) {
  nlohmann::json checks = nlohmann::json::array();
  auto add = [&](const std::string& name, bool passed, const std::string& detail) {
    checks.push_back({{"name", name}, {"passed", passed}, {"detail", detail}});
    return passed;
  };
  const nlohmann::json& pairs =
      transfer_matrix.contains("transfer_matrix") ? transfer_matrix["transfer_matrix"] : transfer_matrix;
  bool ok = true;
  if (!pairs.is_object()) {
    add("pair_count", false, "transfer_matrix is missing or not an object");
    return {{"passed", false}, {"checks", checks}};
  }
  ok &= add("pair_count", pairs.size() == n_src * n_tgt,
            fmt::format("{} pairs, expected {} x {} = {}", pairs.size(), n_src, n_tgt, n_src * n_tgt));
  std::vector<std::string> nonfinite;
  std::vector<std::string> bad_diagonal;
  size_t diagonal = 0;
  for (auto& [key, entry] : pairs.items()) {
    for (const std::string& metric : kMatrixMetrics) {
      if (!entry.contains(metric)) {
        nonfinite.push_back(key + "." + metric + " (missing)");
        continue;
      }
      const nlohmann::json& v = entry[metric];
      if (!v.is_number() || !std::isfinite(v.get<double>())) nonfinite.push_back(key + "." + metric);
    }
    if (entry.contains("source") && entry.contains("target") && entry["source"] == entry["target"]) {
      ++diagonal;
      if (!entry["q"].is_number() || entry["q"].get<double>() != 1.0) bad_diagonal.push_back(key);
    }
  }
  auto head = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 5; ++i) s += (i ? ", " : "") + v[i];
    return s + (v.size() > 5 ? fmt::format(" and {} more", v.size() - 5) : "");
  };
  ok &= add("all_finite", nonfinite.empty(),
            nonfinite.empty() ? "every metric finite" : "not finite: " + head(nonfinite));
  ok &= add("diagonal_q_is_1", bad_diagonal.empty() && diagonal == std::min(n_src, n_tgt),
            bad_diagonal.empty() ? fmt::format("q == 1 on all {} diagonal pairs", diagonal)
                                 : "q != 1 on: " + head(bad_diagonal));
  return {{"passed", ok}, {"checks", checks}};
}

}  // namespace strata::transfer
