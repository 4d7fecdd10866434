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
#include <unordered_map>

#include <fmt/ranges.h>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/log.hpp"
#include "core/random.hpp"
#include "core/runtime.hpp"
#include "core/scratch_file.hpp"
#include "io/activation_store.hpp"
#include "io/safetensors.hpp"
#include "sae/sae.hpp"
#include "stats/cka.hpp"
#include "stats/correlation.hpp"
#include "stats/linalg.hpp"
#include "transfer/maps.hpp"
#include "transfer/metrics.hpp"
#include "transfer/plan.hpp"
#include "transfer/selection.hpp"

namespace strata::transfer {
namespace fs = std::filesystem;
using torch::indexing::Slice;

namespace {

torch::Generator generator_for(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

struct CellData {
  Cell cell;
  size_t model = 0;
  io::ActivationStore store;  // closed in merge mode
  int64_t dim = 0;
  // SAEs are resident only while a cell pair that involves the cell runs (Runner::resident): at real widths
  // (419 MB at 2560 x 20480) even one model pair's ten would take 4 GB.
  std::shared_ptr<const sae::Sae> sae, ceiling;
  int64_t d_sae = 0;
  int64_t topk = 0;  // k of a TopK SAE (its codes' L0 is known before any pass), else 0
  // The L0 the plan expects of the SAE's codes (and of its random dictionary's, top-k at the same L0): k of a
  // TopK SAE, else the held-out L0 its training recorded (cfg.json metrics.l0, strata-trained SAEs), else 0:
  // unknown until its pass, and costed as dense codes (a bound).
  double expected_l0 = 0;
  std::string architecture;
  double scale = 1.0;  // scaled = raw * scale, E||scaled||^2 = d on the fitting split
};

struct ModelData : ModelRows {
  std::vector<size_t> cells;
};

std::string label_for(double q_excess, const TransferOptions& options) {
  if (q_excess >= options.high_threshold) return "HIGH_UNIVERSALITY";
  if (q_excess >= options.moderate_threshold) return "MODERATE_UNIVERSALITY";
  return "LOW_UNIVERSALITY";
}

double relative_depth(const Cell& c) { return c.n_layers > 0 ? double(c.layer) / double(c.n_layers) : 0.0; }

nlohmann::json finite_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

std::vector<double> to_vector(const torch::Tensor& t) {
  torch::Tensor c = t.to(torch::kCPU, torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// The scalar metrics of a pair entry, in CSV / safetensors order.
const std::vector<std::string> kMatrixMetrics = {
    "transfer_recon_ratio", "fvu_source", "fvu_target", "q", "q_null", "q_excess", "feature_variance_ratio",
    "top_k_spearman", "top_k_spearman_p", "decoder_similarity", "cka", "cka_p", "map_r2", "mmac",
    "mmac_weighted", "mmac_random", "retained_fraction", "p_adjusted"};

class Runner {
 public:
  // Scratch files (spilled latent codes) go in scratch_dir, nameless (core/scratch_file.hpp).
  Runner(const std::vector<Cell>& cells, const TransferOptions& options, uint64_t seed, fs::path scratch_dir)
      : options_(options), seed_(seed), scratch_dir_(std::move(scratch_dir)) {
    load(cells);
  }
  // Merge mode: the cells, options and per-pair results of partial files (nothing is computed).
  explicit Runner(const std::vector<std::pair<std::string, nlohmann::json>>& partials);
  const TransferTiming& timing() const { return timing_; }
  // Computes every pair whose source is in `sources` (cell indices; every model pair that involves one).
  void compute(const std::set<size_t>& sources);
  nlohmann::json partial() const;  // what compute() made, plus what finish() needs from the run
  // BH across all pairs, the matrix, layer and per-model summaries; writes the four files.
  TransferResult finish(const fs::path& out_dir);

 private:
  void load(const std::vector<Cell>& cells);
  void build_global_docs();
  // Rows are read on the host (the store) and moved to the device in one transfer per cell and split. The
  // store's pages are then dropped from resident memory: the step keeps its own copies.
  torch::Tensor read(const CellData& cell, const torch::Tensor& rows) const {
    torch::Tensor out = cell.store.read_rows(rows).to(options_.device);
    cell.store.release_pages();
    return out;
  }
  torch::Tensor on_device(const torch::Tensor& t) const { return t.to(options_.device); }
  void compute_scales();
  void process_model_pair(size_t a, size_t b, log::Progress& progress);
  std::vector<PlanCell> plan_cells() const;
  PlanInput plan_input() const;  // the sizes the plan line is counted from
  // Makes the SAEs of `cells` (and their ceiling SAEs if `ceilings`) resident and releases all others: at most
  // two cells' SAEs are held at a time.
  void resident(const std::vector<size_t>& cells, bool ceilings = false);
  bool involves_sources(size_t a, size_t b) const {
    for (size_t c : sources_)
      if (cells_[c].model == a || cells_[c].model == b) return true;
    return false;
  }
  // Runs fn and adds its wall time to `term` (the plan's and the bench's per-term seconds), and the process's
  // system time and minor page faults over it (getrusage, about a microsecond a call): where memory handed
  // back to the kernel is faulted in again, that cost lands in the system time of the term that faulted.
  template <class Fn>
  auto timed(const std::string& term, Fn&& fn) {
    struct Add {
      Runner& runner;
      const std::string& term;
      std::chrono::steady_clock::time_point begin = std::chrono::steady_clock::now();
      runtime::ProcessUsage usage = runtime::process_usage();
      ~Add() {
        runner.term_seconds_[term] += std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
        const runtime::ProcessUsage end = runtime::process_usage();
        runner.timing_.system_seconds_by_term[term] += end.system_seconds - usage.system_seconds;
        runner.timing_.minor_faults_by_term[term] += double(end.minor_faults - usage.minor_faults);
      }
    } add{*this, term};
    return fn();
  }
  std::map<std::pair<size_t, size_t>, Selection> selections_;  // per model pair (a <= b), made once
  std::map<std::string, double> term_seconds_;
  TransferTiming timing_;

  TransferOptions options_;
  uint64_t seed_;
  fs::path scratch_dir_;
  std::vector<CellData> cells_;
  std::vector<ModelData> models_;
  DocumentDraws documents_;     // every doc id of every model
  SequenceBootstrap bootstrap_;  // over the evaluation documents
  int64_t replicates_ = 0;       // the bootstrap's B (also known in merge mode, where bootstrap_ is not made)
  std::set<size_t> sources_;                   // cells whose pairs (as source) compute() makes
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
    data.dim = data.store.dim();
    {  // checked up front (a bad pairing fails before any work), then released until needed
      sae::Sae sae = sae::Sae::load(cell.sae_dir);
      if (sae.d_in() != data.store.dim())
        fail("transfer: SAE {} has d_in {} but the activations {} have dim {}; pair each SAE with its own cell",
             cell.sae_dir.string(), sae.d_in(), cell.store.string(), data.store.dim());
      data.d_sae = sae.d_sae();
      data.architecture = sae.architecture;
      data.topk = sae.architecture == "topk" ? sae.k : 0;
      data.expected_l0 = double(data.topk);
      if (auto metrics = sae.cfg.find("metrics"); !data.topk && metrics != sae.cfg.end() && metrics->is_object())
        if (auto l0 = metrics->find("l0"); l0 != metrics->end() && l0->is_number()) {
          const double value = l0->get<double>();
          if (std::isfinite(value) && value > 0 && value <= double(data.d_sae)) data.expected_l0 = value;
        }
    }
    if (cell.ceiling_sae_dir) {
      sae::Sae ceiling = sae::Sae::load(*cell.ceiling_sae_dir);
      if (ceiling.d_in() != data.store.dim())
        fail("transfer: ceiling SAE {} has d_in {} but {} has dim {}", cell.ceiling_sae_dir->string(),
             ceiling.d_in(), cell.store.string(), data.store.dim());
    }
    auto [it, inserted] = model_index.emplace(cell.model, models_.size());
    if (inserted) models_.push_back(ModelData{{cell.model, 0, {}, {}}, {}});
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

void Runner::build_global_docs() {
  std::vector<const ModelRows*> rows;
  for (const ModelData& model : models_) rows.push_back(&model);
  documents_ = draw_documents(rows, seed_, options_.fit_fraction);
  bootstrap_ = bootstrap_sequences(documents_, options_.bootstrap, seed_);
  replicates_ = bootstrap_.replicates();
}

void Runner::compute_scales() {
  for (size_t m = 0; m < models_.size(); ++m) {
    const Selection& s = selections_.at({m, m});
    for (size_t c : models_[m].cells) {
      torch::Tensor x = read(cells_[c], s.fit_a).to(torch::kFloat64);
      double mean_sq = x.pow(2).sum(1).mean().item<double>();
      if (!(mean_sq > 0)) fail("transfer: {} has zero activations on the fitting split", cells_[c].cell.store.string());
      cells_[c].scale = std::sqrt(double(x.size(1)) / mean_sq);
    }
  }
}

std::vector<PlanCell> Runner::plan_cells() const {
  std::vector<PlanCell> out;
  for (const CellData& c : cells_) out.push_back({c.model, c.dim, c.d_sae, c.topk, c.expected_l0, bool(c.cell.ceiling_sae_dir)});
  return out;
}

PlanInput Runner::plan_input() const {
  PlanInput in;
  in.cells = plan_cells();
  for (const ModelData& m : models_) in.model_cells.push_back(m.cells);
  for (const auto& [pair, s] : selections_)
    if (involves_sources(pair.first, pair.second))
      in.model_pairs.push_back({pair.first, pair.second, s.fit_a.numel(), s.eval_a.numel()});
  in.sources = sources_;
  in.replicates = replicates_;
  in.eval_documents = bootstrap_.documents();
  return in;
}

void Runner::resident(const std::vector<size_t>& cells, bool ceilings) {
  for (size_t c = 0; c < cells_.size(); ++c) {
    CellData& cell = cells_[c];
    const bool keep = std::find(cells.begin(), cells.end(), c) != cells.end();
    if (!keep) {
      cell.sae.reset();
      cell.ceiling.reset();
      continue;
    }
    if (!cell.sae) cell.sae = std::make_shared<const sae::Sae>(sae::Sae::load(cell.cell.sae_dir).to(options_.device));
    if (ceilings && cell.cell.ceiling_sae_dir && !cell.ceiling)
      cell.ceiling =
          std::make_shared<const sae::Sae>(sae::Sae::load(*cell.cell.ceiling_sae_dir).to(options_.device));
    if (!ceilings) cell.ceiling.reset();
  }
}

void Runner::process_model_pair(size_t a, size_t b, log::Progress& progress) {
  const ModelData &ma = models_[a], &mb = models_[b];
  const Selection& s = selections_.at({a, b});
  const int64_t n_docs = bootstrap_.documents(), batch = options_.batch_size;
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
  std::shared_ptr<ScratchFile> scratch;
  auto spill = [&](LatentCodes& codes) {
    // Spilled codes are freed with the scratch file at the end of the model pair.
    if (codes.nnz() * 8 <= options_.spill_codes_above_bytes) return;
    if (!scratch) scratch = ScratchFile::create(scratch_dir_);
    codes.spill(scratch);
  };

  const int64_t n_eval = s.eval_a.numel();
  torch::Tensor cka_rows;
  {
    auto generator = generator_for(derive(seed_, "transfer/cka_tokens", ma.name, mb.name));
    cka_rows = std::get<0>(torch::randperm(n_eval, generator, torch::kInt64)
                               .index({Slice(0, std::min(n_eval, options_.cka_max_tokens))})
                               .sort());
  }
  torch::Tensor cka_weights = on_device(bootstrap_.weights.index_select(1, s.eval_doc.index_select(0, cka_rows)));
  // Index tensors are made on the host (selection, generators); the arithmetic reads device copies.
  const torch::Tensor eval_doc = on_device(s.eval_doc), cka_rows_device = on_device(cka_rows);
  const torch::Tensor boot_weights = on_device(bootstrap_.weights);

  // Per cell, once for this model pair's rows: the scaled fitting rows' mean and Gram (the centred rows
  // themselves are made again where a cell pair needs them: fitting_rows below), the raw evaluation rows,
  // the SAE's own and a random dictionary's encodings (with the alive latents' codes for MMAC, spilled when
  // large), and the CKA sides (centred features, centred Gram of the permutation-test tokens).
  struct Side {
    FitRows fit;  // centred undefined after prepare
    torch::Tensor fit_ids;
    torch::Tensor eval;  // raw fp32 [n_eval, d]
    Encoding own, random;
    stats::CkaSide cka;
    std::shared_ptr<const stats::CentredGram> gram;
  };
  std::map<size_t, Side> sides;
  // Bounded residency only where it pays: while the model pair's SAEs and centred fitting rows together stay
  // under options_.bounded_residency_above_bytes (1 GB; the zoo: a few MB) they are all held. Making them again
  // per cell pair cost 9 s of the default run's 78 (bench/RESULTS.md). Same bits either way.
  std::vector<size_t> involved = ma.cells;
  if (!same) involved.insert(involved.end(), mb.cells.begin(), mb.cells.end());
  const bool bounded =
      held_bytes(plan_cells(), involved, s.fit_a.numel()) > double(options_.bounded_residency_above_bytes);
  auto prepare = [&](size_t c, const torch::Tensor& fit_rows_ids, const torch::Tensor& eval_rows) {
    Side side;
    const CellData& cell = cells_[c];
    side.fit_ids = fit_rows_ids;
    side.fit = timed("maps", [&] { return fit_rows(read(cell, fit_rows_ids), cell.scale); });
    if (bounded) side.fit.centred = torch::Tensor();
    side.eval = read(cell, eval_rows);
    timed("residency", [&] { resident(bounded ? std::vector<size_t>{c} : involved); });
    const sae::Sae& sae = *cell.sae;
    side.own = timed("sae_own", [&] {
      return encode_rows(encoder_of(sae), &sae, side.eval, eval_doc, n_docs, batch, options_.mmac_min_firings);
    });
    // Random unit dictionary of the same size, top-k at the SAE's L0 on these tokens (mmac_random).
    auto generator = generator_for(derive(seed_, "transfer/random_dictionary", cell.cell.name));
    torch::Tensor dictionary = on_device(torch::randn({sae.d_sae(), cell.store.dim()}, generator, torch::kFloat32));
    dictionary = dictionary / dictionary.norm(2, 1, true);
    const int64_t k = std::min<int64_t>(std::max<int64_t>(1, std::llround(side.own.l0)), sae.d_sae());
    torch::Tensor centre = side.eval.mean(0, true);
    const bool sparse = double(k) < kTopkSparseBelow * double(sae.d_sae());
    side.random = timed("sae_random", [&] {
      return encode_rows(
          [&](const torch::Tensor& x) {
            sae::TopKCodes codes = sae::top_k_of_relu(torch::mm(x - centre, dictionary.t()), k);
            return sparse ? BatchCodes(codes) : BatchCodes(codes.dense());
          },
          nullptr, side.eval, eval_doc, n_docs, batch, options_.mmac_min_firings);
    });
    spill(side.own.codes);
    spill(side.random.codes);
    side.cka = timed("cka_linear", [&] { return stats::cka_side(side.eval); });
    side.gram = timed("cka_gram", [&] {
      return std::make_shared<const stats::CentredGram>(side.eval.index_select(0, cka_rows_device));
    });
    sides[c] = std::move(side);
  };
  for (size_t c : ma.cells) prepare(c, s.fit_a, s.eval_a);
  if (!same)
    for (size_t c : mb.cells) prepare(c, s.fit_b, s.eval_b);
  // A cell's centred scaled fitting rows, the same bits as fit_rows made them (read, fp64, scale, minus the mean).
  auto fitting_rows = [&](size_t c) {
    const Side& side = sides.at(c);
    if (side.fit.centred.defined()) return side.fit.centred;
    return centred_rows(read(cells_[c], side.fit_ids), cells_[c].scale, side.fit.mean);
  };

  // Per unordered cell pair {i, j}: CKA (+ permutation p, bootstrap), MMAC both ways, and the maps of both
  // directions from shared cross products (maps.hpp): C = Z_i^T Z_j serves Procrustes and ridge of i -> j and,
  // transposed, of j -> i; the null's N = Z_hi[pi]^T Z_lo serves both null fits likewise.
  struct Symmetric {
    double cka = kNaN, cka_p = kNaN;
    int64_t cka_n = 0;
    std::vector<double> cka_boot;
    MmacResult mmac, mmac_random;
    torch::Tensor cross;   // Z_i^T Z_j [d_i, d_j]
    torch::Tensor q;       // Procrustes factor, target i -> source j (across models only)
    torch::Tensor q_null;  // null Procrustes factor, target i -> source j
    torch::Tensor eval_cross;  // CKA's cross term Xc_j^T Xc_i [d_j, d_i] of the raw evaluation rows (i != j)
  };
  // Ordered pairs: SAE of `src` on the mapped evaluation rows of `tgt`.
  // `sym` holds the unordered pair {i, j} (i = ma's cell) in the orientation target i -> source j.
  auto pair = [&](size_t src, size_t tgt, const Symmetric& sym, size_t i) {
    const CellData &cs = cells_[src], &ct = cells_[tgt];
    const Side &ss = sides.at(src), &st = sides.at(tgt);
    const sae::Sae& sae = *cs.sae;  // resident: the cell pair's two SAEs are
    const bool same_model = cs.model == ct.model;
    const bool forward = tgt == i;
    auto oriented = [&](const torch::Tensor& t) { return forward ? t : t.t(); };
    AffineMap map;
    map.target_scale = ct.scale;
    map.source_scale = cs.scale;
    if (!same_model) map = timed("maps", [&] { return procrustes_map(oriented(sym.q), st.fit, ss.fit, ct.scale, cs.scale); });
    AffineMap null_map =
        timed("maps", [&] { return procrustes_map(oriented(sym.q_null), st.fit, ss.fit, ct.scale, cs.scale); });
    auto encode = encoder_of(sae);
    // The diagonal goes through the same map and SAE pass as every other pair: its q is computed, and Gate 3
    // checks that it lands within kDiagonalQTolerance of 1.
    Encoding mapped = timed("sae_mapped", [&] {
      return encode_rows(encode, &sae, map.apply(st.eval), eval_doc, n_docs, batch);
    });
    Encoding null = timed("sae_null", [&] {
      return encode_rows(encode, &sae, null_map.apply(st.eval), eval_doc, n_docs, batch, -1, /*moments=*/false);
    });
    const double fvu_source = ss.own.sums.fvu(), fvu_target = mapped.sums.fvu(), fvu_null = null.sums.fvu();
    const double ev_source = 1 - fvu_source;
    const double q = (1 - fvu_target) / ev_source;
    const double q_null = (1 - fvu_null) / ev_source;
    const double q_excess = (q - q_null) / (1 - q_null);
    std::vector<double> q_excess_boot;
    if (replicates_ > 0) timed("q_bootstrap", [&] {
      torch::Tensor ev_s = 1 - ss.own.sums.fvu(boot_weights);
      torch::Tensor qb = (1 - mapped.sums.fvu(boot_weights)) / ev_s;
      torch::Tensor qnb = (1 - null.sums.fvu(boot_weights)) / ev_s;
      q_excess_boot = to_vector((qb - qnb) / (1 - qnb));
    });
    // Latent variances over the top-k latents by source variance.
    int64_t k = std::min<int64_t>(options_.top_k, sae.d_sae());
    torch::Tensor top = std::get<1>(ss.own.latent_var.topk(k));
    torch::Tensor var_s = ss.own.latent_var.index_select(0, top), var_t = mapped.latent_var.index_select(0, top);
    double variance_ratio = var_t.mean().item<double>() / var_s.mean().item<double>();
    stats::Correlation rho = stats::spearman(to_vector(var_s), to_vector(var_t));
    // Decoder rows of the target's SAE carried into source space by the map's linear part.
    const double decoder = timed("decoder", [&] {
      torch::Tensor dec_t = ct.sae->W_dec.to(torch::kFloat64);
      if (!same_model) dec_t = torch::mm(dec_t, map.linear);
      return decoder_similarity(sae.W_dec.index_select(0, top), dec_t);
    });
    // map_r2: held-out R^2 of a ridge map target -> source (scaled spaces), a map-only baseline.
    // Evaluated from the evaluation rows' moments (maps.hpp): Xc_t^T Xc_s is the CKA's cross term, and a cell
    // with itself its Xc^T Xc.
    const double map_r2 = timed("ridge", [&] {
      const torch::Tensor xc_cross = src == tgt ? st.cka.gram : oriented(sym.eval_cross.t());
      return ridge_r2(st.fit, ss.fit, oriented(sym.cross), options_.ridge_lambda,
                      EvalMoments{st.cka.mean, st.cka.gram, n_eval}, EvalMoments{ss.cka.mean, ss.cka.gram, n_eval},
                      xc_cross, ct.scale, cs.scale);
    });
    // MMAC is stored with i = ma's cell as A: a_to_b is i -> j.
    const bool a_is_source = src == i;
    const Symmetric& msym = sym;
    double mmac_value = a_is_source ? msym.mmac.a_to_b : msym.mmac.b_to_a;
    double mmac_weighted = a_is_source ? msym.mmac.a_to_b_weighted : msym.mmac.b_to_a_weighted;
    double mmac_random = a_is_source ? msym.mmac_random.a_to_b : msym.mmac_random.b_to_a;
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
        {"decoder_similarity", finite_or_null(decoder)},
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
  // Each unordered pair's shared quantities, then both of its ordered pairs at once: only one pair's d x d
  // factors and cross products are held at a time (25 of them at width 2560 came to 5 GB).
  torch::Tensor eval_centred_i, fit_centred_i;  // CKA's Xc and the centred fitting rows of the current i
  size_t eval_centred_cell = std::numeric_limits<size_t>::max(), fit_centred_cell = eval_centred_cell;
  for (size_t i : ma.cells)
    for (size_t j : mb.cells) {
      if (same && j < i) continue;
      if (!sources_.count(i) && !sources_.count(j)) continue;
      Symmetric sym;
      const Side &si = sides.at(i), &sj = sides.at(j);
      if (bounded) timed("residency", [&] { resident({i, j}); });
      if (i == j) {
        sym.cka = 1.0;
        // CKA(X, X) = 1 and no permuted copy exceeds it; the p of a test that ran is 1/(B+1), of none NaN.
        sym.cka_p = options_.cka_permutations > 0 ? 1.0 / double(1 + options_.cka_permutations) : kNaN;
        sym.cka_boot.assign(replicates_, 1.0);
      } else {
        sym.eval_cross = timed("cka_linear", [&] {
          if (eval_centred_cell != i) {  // i's Xc made once for all its j
            eval_centred_i = si.cka.centred();
            eval_centred_cell = i;
          }
          return stats::cka_cross(eval_centred_i, sj.cka);
        });
        sym.cka = timed("cka_linear", [&] { return stats::linear_cka(si.cka, sj.cka, sym.eval_cross); });
        stats::GramCka gram(si.gram, sj.gram);
        sym.cka_p = timed("cka_permutations", [&] {
          return gram.permutation_test(options_.cka_permutations,
                                       derive(seed_, "transfer/cka_permutation", cells_[i].cell.name, cells_[j].cell.name))
              .p;
        });
        if (replicates_ > 0) sym.cka_boot = timed("cka_bootstrap", [&] { return gram.weighted(cka_weights); });
      }
      sym.cka_n = cka_rows.numel();
      timed("mmac", [&] {
        sym.mmac = mmac(si.own.codes, sj.own.codes);
        sym.mmac_random = mmac(si.random.codes, sj.random.codes);
      });
      timed("maps", [&] {
        // i's centred fitting rows are kept for all its j; j's are made for this cell pair only.
        if (fit_centred_cell != i) {
          fit_centred_i = torch::Tensor();
          fit_centred_i = fitting_rows(i);
          fit_centred_cell = i;
        }
        const torch::Tensor fit_centred_j = i == j ? fit_centred_i : fitting_rows(j);
        sym.cross = i == j ? si.fit.gram : torch::mm(fit_centred_i.t(), fit_centred_j);
        if (!same) sym.q = stats::procrustes_from_cross(sym.cross);
        // Null: one permutation pi per unordered cell pair {lo < hi} on hi's fitting rows (hi as the target;
        // pi^-1 on lo's rows when lo is the target, which is the transposed cross product).
        const size_t lo = std::min(i, j), hi = std::max(i, j);
        const torch::Tensor& z_hi = hi == i ? fit_centred_i : fit_centred_j;
        const torch::Tensor& z_lo = lo == i ? fit_centred_i : fit_centred_j;
        auto generator = generator_for(derive(seed_, "transfer/null", cells_[lo].cell.name, cells_[hi].cell.name));
        torch::Tensor shuffle = on_device(torch::randperm(z_hi.size(0), generator, torch::kInt64));
        torch::Tensor null_cross = torch::mm(z_hi.index_select(0, shuffle).t(), z_lo);  // [d_hi, d_lo]
        torch::Tensor q_hi_to_lo = stats::procrustes_from_cross(null_cross);
        sym.q_null = hi == i ? q_hi_to_lo : q_hi_to_lo.t();
      });
      if (sources_.count(i)) pair(i, j, sym, i);
      if (i != j && sources_.count(j)) pair(j, i, sym, i);
    }
  eval_centred_i = fit_centred_i = torch::Tensor();

  // Seed-to-seed ceiling: the second-seed SAE of a cell against the first, on the cell's own rows.
  if (same)
    for (size_t c : ma.cells) {
      const CellData& cell = cells_[c];
      if (!cell.cell.ceiling_sae_dir || !sources_.count(c)) continue;
      timed("residency", [&] { resident({c}, /*ceilings=*/true); });
      timed("ceilings", [&] {
        const Side& side = sides.at(c);
        const sae::Sae& second = *cell.ceiling;
        Encoding other = encode_rows(encoder_of(second), &second, side.eval,
                                     eval_doc, n_docs, batch, options_.mmac_min_firings);
        spill(other.codes);
        const nlohmann::json& diagonal = pairs_.at(pair_key(cell.cell.name, cell.cell.name));
        double q_null = diagonal["q_null"].is_number() ? diagonal["q_null"].get<double>() : kNaN;
        double q = (1 - other.sums.fvu()) / (1 - side.own.sums.fvu());
        MmacResult m = mmac(side.own.codes, other.codes);
        int64_t k = std::min<int64_t>(options_.top_k, cell.d_sae);
        torch::Tensor top = std::get<1>(side.own.latent_var.topk(k));
        double decoder = decoder_similarity(cell.sae->W_dec.index_select(0, top), second.W_dec);
        ceilings_[cell.cell.name] = {{"ceiling_sae_dir", cell.cell.ceiling_sae_dir->filename().generic_string()},
                                     {"fvu_first", side.own.sums.fvu()},
                                     {"fvu_second", other.sums.fvu()},
                                     {"q", finite_or_null(q)},
                                     {"q_null", finite_or_null(q_null)},
                                     {"q_excess", finite_or_null((q - q_null) / (1 - q_null))},
                                     {"mmac", finite_or_null(m.a_to_b)},
                                     {"mmac_weighted", finite_or_null(m.a_to_b_weighted)},
                                     {"decoder_similarity", finite_or_null(decoder)}};
      });
    }
  resident({});
}

// A partial result records its options so that merge can refuse partials made with different ones: the
// fields() table plus the two fields that say how the stores are fed (not experiment options).
nlohmann::json options_json(const TransferOptions& o) {
  nlohmann::json out = options::to_json(o);
  out["aligned_rows"] = o.aligned_rows;
  out["pseudo_sequence_rows"] = o.pseudo_sequence_rows;
  return out;
}

TransferOptions options_from_json(const nlohmann::json& j, const std::string& where) {
  nlohmann::json table = j;
  TransferOptions o;
  o.aligned_rows = table.at("aligned_rows").get<bool>();
  o.pseudo_sequence_rows = table.at("pseudo_sequence_rows").get<int64_t>();
  table.erase("aligned_rows");
  table.erase("pseudo_sequence_rows");
  options::apply_json(o, table, where, /*require_all=*/true);
  return o;
}

constexpr const char* kPartialFormat = "strata-transfer-partial-v1";

nlohmann::json Runner::partial() const {
  nlohmann::json cells = nlohmann::json::array(), sources = nlohmann::json::array();
  for (const CellData& cell : cells_)
    cells.push_back({{"name", cell.cell.name},
                     {"model", cell.cell.model},
                     {"layer", cell.cell.layer},
                     {"n_layers", cell.cell.n_layers},
                     {"store", fs::absolute(cell.cell.store).generic_string()},
                     {"sae_dir", fs::absolute(cell.cell.sae_dir).generic_string()},
                     {"ceiling_sae_dir", cell.cell.ceiling_sae_dir
                                             ? nlohmann::json(fs::absolute(*cell.cell.ceiling_sae_dir).generic_string())
                                             : nlohmann::json(nullptr)},
                     {"dim", cell.dim},
                     {"d_sae", cell.d_sae},
                     {"architecture", cell.architecture},
                     {"scaling_factor", cell.scale}});
  for (size_t c : sources_) sources.push_back(cells_[c].cell.name);
  nlohmann::json boots = nlohmann::json::object();
  for (const auto& [key, replicate] : q_excess_boot_) {
    nlohmann::json values = nlohmann::json::array();
    for (double v : replicate) values.push_back(finite_or_null(v));
    boots[key] = values;
  }
  nlohmann::json pairs(pairs_);
  return {{"format", kPartialFormat},
          {"seed", seed_},
          {"options", options_json(options_)},
          {"bootstrap_replicates", replicates_},
          {"cells", cells},
          {"sources", sources},
          {"pairs", pairs},
          {"q_excess_boot", boots},
          {"model_pairs", model_pairs_},
          {"seed_ceilings", ceilings_}};
}

Runner::Runner(const std::vector<std::pair<std::string, nlohmann::json>>& partials) {
  if (partials.empty()) fail("transfer merge: no partial results given");
  const auto& [first_name, first] = partials.front();
  std::set<std::string> covered;
  for (const auto& [name, partial] : partials) {
    if (!partial.is_object() || partial.value("format", "") != kPartialFormat)
      fail("transfer merge: {} is not a partial transfer result (format {})", name, kPartialFormat);
    for (const char* key : {"seed", "options", "bootstrap_replicates", "cells"})
      if (partial.at(key) != first.at(key))
        fail("transfer merge: {} and {} differ in \"{}\"; all partials must come from the same cells, options and seed",
             first_name, name, key);
    for (const auto& source : partial.at("sources"))
      if (!covered.insert(source.get<std::string>()).second)
        fail("transfer merge: source cell {} is in more than one partial (again in {})", source.dump(), name);
    for (const auto& [key, entry] : partial.at("pairs").items()) pairs_[key] = entry;
    for (const auto& [key, values] : partial.at("q_excess_boot").items()) {
      std::vector<double>& replicate = q_excess_boot_[key];
      for (const auto& v : values) replicate.push_back(v.is_number() ? v.get<double>() : kNaN);
    }
    model_pairs_.update(partial.at("model_pairs"));
    ceilings_.update(partial.at("seed_ceilings"));
  }
  seed_ = first.at("seed").get<uint64_t>();
  options_ = options_from_json(first.at("options"), first_name + ": \"options\"");
  replicates_ = first.at("bootstrap_replicates").get<int64_t>();
  std::map<std::string, size_t> model_index;
  std::vector<std::string> missing;
  for (const auto& c : first.at("cells")) {
    CellData data;
    data.cell.name = c.at("name").get<std::string>();
    data.cell.model = c.at("model").get<std::string>();
    data.cell.layer = c.at("layer").get<int>();
    data.cell.n_layers = c.at("n_layers").get<int>();
    data.cell.store = c.at("store").get<std::string>();
    data.cell.sae_dir = c.at("sae_dir").get<std::string>();
    if (!c.at("ceiling_sae_dir").is_null()) data.cell.ceiling_sae_dir = fs::path(c.at("ceiling_sae_dir").get<std::string>());
    data.dim = c.at("dim").get<int64_t>();
    data.d_sae = c.at("d_sae").get<int64_t>();
    data.architecture = c.at("architecture").get<std::string>();
    data.scale = c.at("scaling_factor").get<double>();
    if (!covered.count(data.cell.name)) missing.push_back(data.cell.name);
    auto [it, inserted] = model_index.emplace(data.cell.model, models_.size());
    if (inserted) models_.push_back(ModelData{{data.cell.model, 0, {}, {}}, {}});
    data.model = it->second;
    models_[data.model].cells.push_back(cells_.size());
    cells_.push_back(std::move(data));
  }
  if (!missing.empty())
    fail("transfer merge: no partial computed the pairs of source cell(s) {}; run those and merge again",
         fmt::join(missing, ", "));
}

void Runner::compute(const std::set<size_t>& sources) {
  // The passes, cell pairs and model pairs allocate and free the same big tensors: the memory they free stays
  // with the process for the whole step and is handed back once, at its end (runtime::KeepFreedMemory).
  const runtime::KeepFreedMemory keep_freed_memory;
  sources_ = sources;
  build_global_docs();
  timed("selection", [&] {
    for (size_t a = 0; a < models_.size(); ++a)
      for (size_t b = a; b < models_.size(); ++b) selections_.emplace(std::make_pair(a, b),
                            select_rows(models_[a], models_[b], a == b,
                                        {options_.aligned_rows, options_.max_fit_tokens, options_.max_eval_tokens},
                                        documents_, bootstrap_));
  });
  compute_scales();
  const size_t n = cells_.size();
  const PlanInput plan_in = plan_input();
  const Plan plan = estimate_plan(plan_in, options_, measure_plan_rates(plan_in, options_));
  auto terms = [](const std::map<std::string, double>& seconds) {
    std::string out;
    for (const auto& [term, value] : seconds) out += fmt::format("{}{} {:.1f}", out.empty() ? "" : ", ", term, value);
    return out;
  };
  log::info("transfer plan: {} cells, {} pairs ({} model pairs), up to {} fitting + {} evaluation tokens per model "
            "pair, {} CKA permutations at N<={}, {} bootstrap resamples; estimated {:.0f} s ({:.2f} TFLOP at GEMM "
            "ceilings {:.0f} GFLOP/s (512^3) and {:.0f} GFLOP/s (SAE shape), fp64 {:.0f} GFLOP/s; {:.2g} permutation-loop "
            "elements); peak memory ~{:.2f} GB in live tensors (the process's peak RSS has measured 0.9-1.6x this: freed "
            "memory is kept for reuse, bench/RESULTS.md){}; by term (s): {}",
            n, n * n, models_.size() * (models_.size() + 1) / 2, options_.max_fit_tokens, options_.max_eval_tokens,
            options_.cka_permutations, options_.cka_max_tokens, options_.bootstrap, plan.total_seconds,
            plan.total_flops / 1e12, plan.gemm_gflops, plan.sae_gemm_gflops, plan.fp64_gemm_gflops, plan.gathers, plan.peak_bytes / 1e9,
            std::any_of(cells_.begin(), cells_.end(), [](const CellData& c) { return c.expected_l0 <= 0; })
                ? " (a non-TopK SAE without a recorded L0 has codes whose L0 only its pass tells: they add up to "
                  "128 MB per cell, larger ones are spilled to disk, and their MMAC is costed as dense)"
                : "",
            terms(plan.seconds));
  const auto work_start = std::chrono::steady_clock::now();
  const runtime::ProcessUsage usage_start = runtime::process_usage();
  {
    log::Progress progress("transfer pairs", int64_t(sources_.size() * n));
    for (size_t a = 0; a < models_.size(); ++a)
      for (size_t b = a; b < models_.size(); ++b) {
        if (!involves_sources(a, b)) continue;
        const auto begin = std::chrono::steady_clock::now();
        process_model_pair(a, b, progress);
        timing_.model_pair_seconds[models_[a].name + "__" + models_[b].name] =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
      }
    progress.finish();
  }
  const double work_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - work_start).count();
  const runtime::ProcessUsage usage_end = runtime::process_usage();
  timing_.user_seconds = usage_end.user_seconds - usage_start.user_seconds;
  timing_.system_seconds = usage_end.system_seconds - usage_start.system_seconds;
  timing_.minor_faults = double(usage_end.minor_faults - usage_start.minor_faults);
  double timed_seconds = 0;
  for (const auto& [term, seconds] : term_seconds_)
    if (plan.seconds.count(term)) timed_seconds += seconds;
  term_seconds_["other"] = std::max(0.0, work_seconds - timed_seconds);
  log::info("transfer: measured {:.1f} s against the plan's {:.1f} s ({:+.0f} %); by term (s): {}", work_seconds,
            plan.total_seconds, 100.0 * (work_seconds / plan.total_seconds - 1.0), terms(term_seconds_));
  timing_.estimated_seconds = plan.total_seconds;
  timing_.measured_seconds = work_seconds;
  timing_.gemm_gflops = std::max(plan.gemm_gflops, plan.sae_gemm_gflops);  // the higher of the two ceilings
  timing_.flops = plan.total_flops;
  timing_.peak_bytes_estimate = plan.peak_bytes;
  timing_.estimated_by_term = plan.seconds;
  timing_.flops_by_term = plan.flops;
  timing_.fp64_flops_by_term = plan.fp64_flops;
  timing_.seconds_by_term = term_seconds_;
}

TransferResult Runner::finish(const fs::path& out_dir) {
  const size_t n = cells_.size();
  // Benjamini-Hochberg across all pairs, on the CKA permutation p-values; without a permutation test there
  // are no p-values and nothing to adjust (cka_p and p_adjusted stay null).
  std::vector<std::string> keys;
  std::vector<double> cka_p;
  for (auto& [key, entry] : pairs_) {
    entry["p_adjusted"] = nullptr;
    if (!entry["cka_p"].is_number()) continue;
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
      std::vector<double> boot(replicates_, 0.0);
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
                          {"dim", cell.dim},
                          {"d_sae", cell.d_sae},
                          {"architecture", cell.architecture},
                          {"scaling_factor", cell.scale}});
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
  out.timing = timing_;
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
  // A value that was not computed (null) is an empty CSV field, never "nan" or a number.
  auto field = [](const nlohmann::json& v) { return v.is_number() ? fmt::format("{}", v.get<double>()) : std::string(); };
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
        csv << ',' << field(e[metric]);
        tensors[metric][int64_t(i)][int64_t(j)] = number(e[metric]);
      }
      csv << ',' << field(e["q_excess_ci"][0]) << ',' << field(e["q_excess_ci"][1]) << ',' << field(e["cka_ci"][0])
          << ',' << field(e["cka_ci"][1]) << ',' << e["aligned_tokens"].get<int64_t>()
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
  log::info("transfer: {} pairs -> {}", n * n, out_dir.string());
  return out;
}

}  // namespace

std::string pair_key(const std::string& source, const std::string& target) { return source + "__to__" + target; }

TransferResult run_transfer(const std::vector<Cell>& cells, const TransferOptions& options, uint64_t seed,
                            const fs::path& out_dir) {
  options::validate(options, "transfer");  // the rules of the [transfer] section (transfer/options.hpp)
  torch::NoGradGuard no_grad;
  Runner runner(cells, options, seed, out_dir);
  std::set<size_t> all;
  for (size_t c = 0; c < cells.size(); ++c) all.insert(c);
  runner.compute(all);
  // The one-shot run goes through the same partial -> merge path as a split run, so both write the same bytes.
  std::vector<std::pair<std::string, nlohmann::json>> partials;
  partials.emplace_back("(in memory)", runner.partial());
  Runner merged(partials);
  TransferResult result = merged.finish(out_dir);
  result.timing = runner.timing();
  return result;
}

void compute_transfer_partial(const std::vector<Cell>& cells, const TransferOptions& options, uint64_t seed,
                              const std::vector<std::string>& sources, const fs::path& partial_file) {
  options::validate(options, "transfer");
  torch::NoGradGuard no_grad;
  Runner runner(cells, options, seed, partial_file.parent_path().empty() ? fs::path(".") : partial_file.parent_path());
  std::set<size_t> chosen;
  for (const std::string& name : sources) {
    auto it = std::find_if(cells.begin(), cells.end(), [&](const Cell& c) { return c.name == name; });
    if (it == cells.end()) fail("transfer: source cell '{}' is not among the {} cells given", name, cells.size());
    chosen.insert(size_t(it - cells.begin()));
  }
  if (chosen.empty()) fail("transfer: a partial run needs at least one source cell");
  runner.compute(chosen);
  if (!partial_file.parent_path().empty()) fs::create_directories(partial_file.parent_path());
  atomic_write_text(partial_file, runner.partial().dump() + "\n");
}

TransferResult merge_transfer(const std::vector<fs::path>& partial_files, const fs::path& out_dir) {
  std::vector<std::pair<std::string, nlohmann::json>> partials;
  for (const fs::path& file : partial_files) {
    std::ifstream in(file);
    if (!in) fail("transfer merge: cannot read {}", file.string());
    try {
      partials.emplace_back(file.string(), nlohmann::json::parse(in));
    } catch (const nlohmann::json::exception& e) {
      fail("transfer merge: {} is not valid JSON ({}); re-run that partial", file.string(), e.what());
    }
  }
  Runner merged(partials);
  return merged.finish(out_dir);
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
  // Without a permutation test (config.cka_permutations = 0) the p-values were never computed: they must be
  // null then, and finite otherwise.
  const bool permutation_test = !transfer_matrix.contains("config") ||
                                transfer_matrix["config"].value("cka_permutations", int64_t(1)) > 0;
  auto is_p_value = [](const std::string& metric) { return metric == "cka_p" || metric == "p_adjusted"; };
  std::vector<std::string> nonfinite, computed_without_test;
  std::vector<std::string> bad_diagonal;
  size_t diagonal = 0;
  double worst_diagonal = 0;
  for (auto& [key, entry] : pairs.items()) {
    for (const std::string& metric : kMatrixMetrics) {
      if (!entry.contains(metric)) {
        nonfinite.push_back(key + "." + metric + " (missing)");
        continue;
      }
      const nlohmann::json& v = entry[metric];
      if (!permutation_test && is_p_value(metric)) {
        if (!v.is_null()) computed_without_test.push_back(key + "." + metric);
        continue;
      }
      if (!v.is_number() || !std::isfinite(v.get<double>())) nonfinite.push_back(key + "." + metric);
    }
    if (entry.contains("source") && entry.contains("target") && entry["source"] == entry["target"]) {
      ++diagonal;
      const double deviation = entry["q"].is_number() ? std::abs(entry["q"].get<double>() - 1.0) : kNaN;
      if (!(deviation <= kDiagonalQTolerance)) bad_diagonal.push_back(fmt::format("{} (q = {})", key, entry["q"].dump()));
      else worst_diagonal = std::max(worst_diagonal, deviation);
    }
  }
  auto head = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 5; ++i) s += (i ? ", " : "") + v[i];
    return s + (v.size() > 5 ? fmt::format(" and {} more", v.size() - 5) : "");
  };
  ok &= add("all_finite", nonfinite.empty(),
            nonfinite.empty() ? "every metric finite" : "not finite: " + head(nonfinite));
  if (!permutation_test)
    ok &= add("p_values_absent_without_test", computed_without_test.empty(),
              computed_without_test.empty() ? "cka_permutations = 0: cka_p and p_adjusted are null on every pair"
                                            : "p-values present although no permutation test ran: " +
                                                  head(computed_without_test));
  ok &= add("diagonal_q_is_1", bad_diagonal.empty() && diagonal == std::min(n_src, n_tgt),
            bad_diagonal.empty()
                ? fmt::format("computed q within {:g} of 1 on all {} diagonal pairs (largest |q - 1| = {:.3g})",
                              kDiagonalQTolerance, diagonal, worst_diagonal)
                : fmt::format("|q - 1| > {:g} on: {}", kDiagonalQTolerance, head(bad_diagonal)));
  return {{"passed", ok}, {"checks", checks}};
}

}  // namespace strata::transfer
