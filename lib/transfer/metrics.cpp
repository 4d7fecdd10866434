#include "transfer/metrics.hpp"

#include "transfer/mmac_native.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <limits>
#include <string>

namespace strata::transfer {
using torch::indexing::Slice;

double SequenceSums::fvu() const {
  double n = count.sum().item<double>();
  double denominator = square.sum().item<double>() - sum.sum(0).pow(2).sum().item<double>() / n;
  return residual.sum().item<double>() / denominator;
}

torch::Tensor SequenceSums::fvu(const torch::Tensor& weights) const {
  torch::Tensor n = torch::mv(weights, count);
  torch::Tensor denominator = torch::mv(weights, square) - torch::mm(weights, sum).pow(2).sum(1) / n;
  return torch::mv(weights, residual) / denominator;
}

int64_t LatentCodes::nnz() const { return offsets.defined() ? offsets[offsets.numel() - 1].item<int64_t>() : 0; }

void LatentCodes::spill(const std::shared_ptr<ScratchFile>& file) {
  if (spilled()) return;
  const torch::Tensor r = rows.to(torch::kCPU).contiguous(), v = values.to(torch::kCPU).contiguous();
  rows_at_ = file->append(r.data_ptr<int32_t>(), r.numel() * int64_t(sizeof(int32_t)));
  values_at_ = file->append(v.data_ptr<float>(), v.numel() * int64_t(sizeof(float)));
  file_ = file;
  rows = torch::Tensor();
  values = torch::Tensor();
}

LatentCodes::Entries LatentCodes::entries(int64_t first, int64_t last) const {
  if (!spilled()) return {rows.index({Slice(first, last)}), values.index({Slice(first, last)})};
  Entries out{torch::empty({last - first}, torch::kInt32), torch::empty({last - first}, torch::kFloat32)};
  file_->read(rows_at_ + first * int64_t(sizeof(int32_t)), (last - first) * int64_t(sizeof(int32_t)),
              out.rows.data_ptr<int32_t>());
  file_->read(values_at_ + first * int64_t(sizeof(float)), (last - first) * int64_t(sizeof(float)),
              out.values.data_ptr<float>());
  if (!alive.device().is_cpu()) out = {out.rows.to(alive.device()), out.values.to(alive.device())};
  return out;
}

LatentCodes::Block LatentCodes::block(int64_t begin, int64_t end) const {
  const int64_t first = offsets[begin].item<int64_t>(), last = offsets[end].item<int64_t>();
  Block out;
  // The alive position of each entry, relative to `begin`: entries are stored column by column.
  out.latent = torch::searchsorted(offsets, torch::arange(first, last, offsets.options()), false, true) - 1 - begin;
  Entries e = entries(first, last);
  out.rows = e.rows.to(torch::kInt64);  // index tensors are I64; one block at a time
  out.values = e.values;
  return out;
}

torch::Tensor LatentCodes::dense(int64_t begin, int64_t end) const {
  torch::Tensor out = torch::zeros({tokens, end - begin}, alive.options().dtype(torch::kFloat32));
  Block b = block(begin, end);
  if (b.values.numel() == 0) return out;
  out.index_put_({b.rows, b.latent}, b.values);
  return out;
}

torch::Tensor LatentCodes::sparse_t(int64_t begin, int64_t end) const {
  Block b = block(begin, end);
  // Entries are sorted by (latent, token) and unique: already coalesced.
  return torch::_sparse_coo_tensor_unsafe(torch::stack({b.latent, b.rows}), b.values, {end - begin, tokens})
      ._coalesced_(true);
}

std::function<BatchCodes(const torch::Tensor&)> encoder_of(const sae::Sae& sae, double sparse_below) {
  if (sae.architecture == "topk" && double(sae.k) < sparse_below * double(sae.d_sae()))
    return [&sae](const torch::Tensor& x) { return BatchCodes(sae.encode_topk(x)); };
  return [&sae](const torch::Tensor& x) { return BatchCodes(sae.encode(x)); };
}

Encoding encode_rows(const std::function<BatchCodes(const torch::Tensor&)>& encode, const sae::Sae* decoder,
                     const torch::Tensor& x, const torch::Tensor& doc, int64_t n_docs, int64_t batch,
                     int64_t keep_codes_min_firings, bool moments) {
  const int64_t n = x.size(0), d = x.size(1);
  const bool keep = keep_codes_min_firings >= 0;
  if (keep && n > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("encode_rows: kept codes index tokens in int32, but there are " + std::to_string(n));
  if (keep && !moments) throw std::invalid_argument("encode_rows: keeping codes needs the latent moments");
  Encoding out;
  auto f64 = torch::dtype(torch::kFloat64).device(x.device());  // everything stays on the rows' device
  out.sums.residual = torch::zeros({n_docs}, f64);
  out.sums.square = torch::zeros({n_docs}, f64);
  out.sums.count = torch::zeros({n_docs}, f64);
  out.sums.sum = torch::zeros({n_docs, d}, f64);
  torch::Tensor latent_sum, latent_sq, firings;
  std::vector<torch::Tensor> entry_rows, entry_cols, entry_values;
  for (int64_t begin = 0; begin < n; begin += batch) {
    int64_t end = std::min(n, begin + batch);
    torch::Tensor xb = x.index({Slice(begin, end)});
    torch::Tensor db = doc.index({Slice(begin, end)});
    const BatchCodes codes = encode(xb);
    const auto* topk = std::get_if<sae::TopKCodes>(&codes);
    if (moments && !latent_sum.defined()) {
      const int64_t d_sae = topk ? topk->d_sae : std::get<torch::Tensor>(codes).size(1);
      latent_sum = torch::zeros({d_sae}, f64);
      latent_sq = torch::zeros({d_sae}, f64);
      firings = torch::zeros({d_sae}, f64);
    }
    // The firing entries (row in batch r, latent c, value v) for the kept codes: dense codes scanned row-major,
    // TopK codes row by row (the column-major sort below makes both orders the same).
    torch::Tensor r, c, v;
    if (topk) {
      if (moments) {
        // Flat positions and index_select: several times faster than 2-D advanced indexing on the CPU.
        torch::Tensor flat = (topk->values.reshape(-1) > 0).nonzero().squeeze(1);
        r = flat.div(topk->values.size(1), "floor");
        c = topk->indices.reshape(-1).index_select(0, flat);
        v = topk->values.reshape(-1).index_select(0, flat);
        torch::Tensor vd = v.to(torch::kFloat64);
        latent_sum.index_add_(0, c, vd);
        latent_sq.index_add_(0, c, vd.square());
        firings.index_add_(0, c, torch::ones_like(vd));
      }
    } else if (moments) {
      const torch::Tensor& f = std::get<torch::Tensor>(codes);
      torch::Tensor fd = f.to(torch::kFloat64);
      latent_sum += fd.sum(0);
      latent_sq += fd.square().sum(0);
      torch::Tensor fired = (f > 0);
      firings += fired.sum(0, false, torch::kFloat64);
      if (keep) {
        torch::Tensor flat = fired.reshape(-1).nonzero().squeeze(1);  // row-major
        r = flat.div(f.size(1), "floor");
        c = flat.remainder(f.size(1));
        v = f.reshape(-1).index_select(0, flat);
      }
    }
    if (decoder) {
      torch::Tensor xd = xb.to(torch::kFloat64);
      // decode(f, x): per-token normalised (published) SAEs need the input to undo their normalisation.
      torch::Tensor x_hat = std::visit([&](const auto& f) { return decoder->decode(f, xb); }, codes);
      torch::Tensor residual = (xd - x_hat.to(torch::kFloat64)).pow(2).sum(1);
      out.sums.residual.index_add_(0, db, residual);
      out.sums.square.index_add_(0, db, xd.pow(2).sum(1));
      out.sums.sum.index_add_(0, db, xd);
      out.sums.count.index_add_(0, db, torch::ones({end - begin}, f64));
    }
    if (keep) {
      entry_values.push_back(v.to(torch::kFloat32));
      entry_rows.push_back((r + begin).to(torch::kInt32));
      entry_cols.push_back(c.to(torch::kInt32));
    }
  }
  if (!moments) return out;
  out.latent_mean = latent_sum / double(n);
  out.latent_var = (latent_sq / double(n) - out.latent_mean.pow(2)).clamp_min(0);
  out.firings = firings;
  out.mass = latent_sum;
  out.l0 = firings.sum().item<double>() / double(n);
  if (keep) {
    LatentCodes& codes = out.codes;
    const int64_t d_sae = latent_sum.size(0);
    codes.tokens = n;
    codes.alive = (firings >= double(keep_codes_min_firings)).nonzero().squeeze(1);
    const auto i64 = torch::dtype(torch::kInt64).device(x.device());
    torch::Tensor position = torch::full({d_sae}, -1, i64);
    position.index_put_({codes.alive}, torch::arange(codes.alive.numel(), i64));
    // Column-major: entries ordered by (alive position, then as produced: batch by batch, row-major), so
    // tokens ascend within a column. Each latent's entry count is its firings (both count codes > 0).
    torch::Tensor counts = firings.index_select(0, codes.alive).to(torch::kInt64);
    codes.offsets = torch::cat({torch::zeros({1}, i64), counts.cumsum(0)});
    if (runtime::kernel_path(x.device()) == runtime::KernelPath::native) {
      // A counting sort, batch by batch, each batch freed once placed: the transient is the batches not yet
      // placed plus the result (8 B per entry), where the tensor form below holds about 5x that at once.
      const int64_t nnz = codes.offsets[-1].item<int64_t>();
      codes.rows = torch::empty({nnz}, torch::kInt32);
      codes.values = torch::empty({nnz}, torch::kFloat32);
      std::vector<int64_t> cursor(codes.offsets.data_ptr<int64_t>(), codes.offsets.data_ptr<int64_t>() + codes.alive.numel());
      const int64_t* pos = position.data_ptr<int64_t>();
      int32_t* rows_out = codes.rows.data_ptr<int32_t>();
      float* values_out = codes.values.data_ptr<float>();
      for (size_t b = 0; b < entry_rows.size(); ++b) {
        const torch::Tensor r = entry_rows[b].contiguous(), c = entry_cols[b].contiguous(), v = entry_values[b].contiguous();
        const int32_t *rp = r.data_ptr<int32_t>(), *cp = c.data_ptr<int32_t>();
        const float* vp = v.data_ptr<float>();
        for (int64_t e = 0; e < r.numel(); ++e) {
          const int64_t p = pos[cp[e]];
          if (p < 0) continue;
          const int64_t at = cursor[p]++;
          rows_out[at] = rp[e];
          values_out[at] = vp[e];
        }
        entry_rows[b] = entry_cols[b] = entry_values[b] = torch::Tensor();
      }
    } else {  // the portable form (any device): a stable sort by alive position
      torch::Tensor rows = torch::cat(entry_rows), cols = torch::cat(entry_cols), values = torch::cat(entry_values);
      entry_rows.clear();
      entry_cols.clear();
      entry_values.clear();
      torch::Tensor pos = position.index_select(0, cols);
      torch::Tensor kept = (pos >= 0).nonzero().squeeze(1);
      pos = pos.index_select(0, kept);
      rows = rows.index_select(0, kept);
      values = values.index_select(0, kept);
      torch::Tensor order = std::get<1>(torch::sort(pos, /*stable=*/true, 0, false));
      codes.rows = rows.index_select(0, order);
      codes.values = values.index_select(0, order);
    }
    codes.mean = out.latent_mean.index_select(0, codes.alive);
    codes.sd = out.latent_var.index_select(0, codes.alive).sqrt();
    codes.mass = latent_sum.index_select(0, codes.alive);
  }
  return out;
}

namespace {

native::Moments moments_of(const LatentCodes& c) { return {c.mean.data_ptr<double>(), c.sd.data_ptr<double>()}; }

// B's codes in token-major order for native::sparse_correlation_max (the same entries, sorted by token, each
// token's entries by alive position); the tensors own the memory the view points into.
struct TokenMajor {
  torch::Tensor offsets, latent, values;
  native::TokenCodes view(const LatentCodes& c) const {
    return {c.n_alive(), c.tokens, offsets.data_ptr<int64_t>(), latent.data_ptr<int64_t>(), values.data_ptr<float>()};
  }
};
TokenMajor token_major(const LatentCodes& c) {
  TokenMajor out;
  torch::Tensor latent_of_entry = torch::repeat_interleave(torch::arange(c.n_alive(), c.offsets.options()),
                                                           c.offsets.diff());
  const LatentCodes::Entries e = c.entries(0, c.nnz());
  torch::Tensor order = std::get<1>(torch::sort(e.rows, /*stable=*/true, 0, false));
  out.latent = latent_of_entry.index_select(0, order).contiguous();
  out.values = e.values.index_select(0, order).contiguous();
  out.offsets = torch::cat({torch::zeros({1}, c.offsets.options()), torch::bincount(e.rows, {}, c.tokens).cumsum(0)});
  return out;
}

double density(const LatentCodes& c) {
  return double(c.nnz()) / (double(std::max<int64_t>(c.n_alive(), 1)) * double(std::max<int64_t>(c.tokens, 1)));
}

}  // namespace

MmacResult mmac(const LatentCodes& a, const LatentCodes& b, int64_t block_bytes, double sparse_below) {
  return mmac(a, b, block_bytes, sparse_below, runtime::kernel_path(a.alive.device()));
}

MmacResult mmac(const LatentCodes& a, const LatentCodes& b, int64_t block_bytes, double sparse_below,
                runtime::KernelPath path) {
  MmacResult out;
  const int64_t na = a.n_alive(), nb = b.n_alive();
  if (na == 0 || nb == 0) return out;
  const int64_t n = a.tokens;
  if (path == runtime::KernelPath::native && !a.alive.device().is_cpu())
    throw std::invalid_argument("mmac: the native kernels run on the CPU only, but the codes are on " +
                                a.alive.device().str());
  // The host kernels skip NaN correlations where the tensor form's max keeps them: a latent with sd 0 (one
  // value on every token) takes the tensor form.
  const bool native = path == runtime::KernelPath::native && (a.sd > 0).all().item<bool>() &&
                      (b.sd > 0).all().item<bool>();
  torch::Tensor best_a = torch::full({na}, -1.0, a.mean.options());  // fp64, on the codes' device
  torch::Tensor best_b = torch::full({nb}, -1.0, b.mean.options());
  if (native && density(a) * density(b) < kMmacSparseProductBelow) {
    const TokenMajor bt = token_major(b);
    const LatentCodes::Entries a_entries = a.entries(0, a.nnz());
    const torch::Tensor a_offsets = a.offsets.contiguous(), a_rows = a_entries.rows.contiguous();
    const torch::Tensor a_values = a_entries.values.contiguous();
    native::sparse_correlation_max({na, a_offsets.data_ptr<int64_t>(), a_rows.data_ptr<int32_t>(),
                                    a_values.data_ptr<float>()},
                                   bt.view(b), double(n), moments_of(a), moments_of(b), best_a.data_ptr<double>(),
                                   best_b.data_ptr<double>());
  } else {
    const native::Moments ma = native ? moments_of(a) : native::Moments{}, mb = native ? moments_of(b) : native::Moments{};
    const int64_t block = std::max<int64_t>(1, block_bytes / (2 * 4 * std::max<int64_t>(n, 1)));
    // With everything in one block, B's dense codes are made once; otherwise once per A block.
    torch::Tensor b_whole = nb <= block ? b.dense(0, nb) : torch::Tensor();
    for (int64_t a0 = 0; a0 < na; a0 += block) {
      const int64_t a1 = std::min(na, a0 + block);
      const double nnz = double(a.offsets[a1].item<int64_t>() - a.offsets[a0].item<int64_t>());
      const bool sparse = nnz < sparse_below * double(a1 - a0) * double(n);
      torch::Tensor fa = sparse ? a.sparse_t(a0, a1) : a.dense(a0, a1);  // [ba, N] sparse or [N, ba] dense
      torch::Tensor mean_a = a.mean.index({Slice(a0, a1)}), sd_a = a.sd.index({Slice(a0, a1)});
      for (int64_t b0 = 0; b0 < nb; b0 += block) {
        const int64_t b1 = std::min(nb, b0 + block);
        torch::Tensor fb = b_whole.defined() ? b_whole : b.dense(b0, b1);
        torch::Tensor cross = sparse ? torch::mm(fa, fb) : torch::mm(fa.t(), fb);  // fp32 [ba, bb]
        if (native) {
          cross = cross.contiguous();
          native::correlation_max(cross.data_ptr<float>(), a1 - a0, b1 - b0, double(n), {ma.mean + a0, ma.sd + a0},
                                  {mb.mean + b0, mb.sd + b0}, best_a.data_ptr<double>() + a0,
                                  best_b.data_ptr<double>() + b0);
          continue;
        }
        // In place over the block x block fp64 matrix, with the same roundings as the out-of-place form:
        // (E[ab] - mean_a mean_b) / (sd_a sd_b).
        torch::Tensor corr = cross.to(torch::kFloat64);
        corr.div_(double(n));
        corr.sub_(mean_a.unsqueeze(1) * b.mean.index({Slice(b0, b1)}).unsqueeze(0));
        corr.div_(sd_a.unsqueeze(1) * b.sd.index({Slice(b0, b1)}).unsqueeze(0));
        best_a.index_put_({Slice(a0, a1)}, torch::maximum(best_a.index({Slice(a0, a1)}), std::get<0>(corr.max(1))));
        best_b.index_put_({Slice(b0, b1)}, torch::maximum(best_b.index({Slice(b0, b1)}), std::get<0>(corr.max(0))));
      }
    }
  }
  out.a_to_b = best_a.mean().item<double>();
  out.b_to_a = best_b.mean().item<double>();
  out.a_to_b_weighted = ((best_a * a.mass).sum() / a.mass.sum()).item<double>();
  out.b_to_a_weighted = ((best_b * b.mass).sum() / b.mass.sum()).item<double>();
  return out;
}

double decoder_similarity(const torch::Tensor& source_rows, const torch::Tensor& target_rows) {
  torch::Tensor s = source_rows.to(torch::kFloat64), t = target_rows.to(torch::kFloat64);
  s = s / s.norm(2, 1, true).clamp_min(1e-12);
  t = t / t.norm(2, 1, true).clamp_min(1e-12);
  return std::get<0>(torch::mm(s, t.t()).max(1)).mean().item<double>();
}

}  // namespace strata::transfer
