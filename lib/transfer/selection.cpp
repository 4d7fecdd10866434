#include "transfer/selection.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <set>

#include "core/error.hpp"
#include "core/random.hpp"
#include "text/alignment.hpp"

namespace strata::transfer {

// derive() costs about a microsecond: each doc id is drawn once, however many models hold it.
DocumentDraws draw_documents(const std::vector<const ModelRows*>& models, uint64_t seed, double fit_fraction) {
  DocumentDraws draws;
  for (const ModelRows* model : models) {
    torch::Tensor unique = std::get<0>(torch::_unique(model->sequence));
    const int64_t* ids = unique.data_ptr<int64_t>();
    for (int64_t i = 0; i < unique.numel(); ++i) {
      if (draws.count(ids[i])) continue;
      draws[ids[i]] = {derive_unit(seed, "transfer/split", ids[i]) < fit_fraction,
                       derive_unit(seed, "transfer/cap", ids[i])};
    }
  }
  return draws;
}

SequenceBootstrap bootstrap_sequences(const DocumentDraws& draws, int64_t replicates, uint64_t seed) {
  SequenceBootstrap out;
  std::set<int64_t> eval_docs;
  for (const auto& [doc, draw] : draws)
    if (!draw.fit) eval_docs.insert(doc);
  int64_t column = 0;
  for (int64_t doc : eval_docs) out.column[doc] = column++;
  const int64_t d = column, b = std::max<int64_t>(replicates, 0);
  out.weights = torch::zeros({b, d}, torch::kFloat64);
  if (d == 0) return out;
  auto generator = at::make_generator<at::CPUGeneratorImpl>(derive(seed, "transfer/bootstrap"));
  torch::Tensor picks = torch::randint(0, d, {b, d}, generator, torch::kInt64);
  out.weights.scatter_add_(1, picks, torch::ones({b, d}, torch::kFloat64));
  return out;
}

torch::Tensor cap_rows(const std::vector<int64_t>& rows, const std::vector<int64_t>& docs, int64_t cap,
                       const DocumentDraws& draws) {
  std::map<int64_t, std::vector<int64_t>> by_doc;
  for (size_t i = 0; i < rows.size(); ++i) by_doc[docs[i]].push_back(int64_t(i));
  std::vector<int64_t> order;
  for (auto& [doc, _] : by_doc) order.push_back(doc);
  std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
    const double kx = draws.at(x).cap_order, ky = draws.at(y).cap_order;
    return kx != ky ? kx < ky : x < y;
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

Selection select_rows(const ModelRows& a, const ModelRows& b, bool within, const SelectionLimits& limits,
                      const DocumentDraws& draws, const SequenceBootstrap& bootstrap) {
  if ((within || limits.by_position) && a.rows != b.rows)
    fail("transfer: models '{}' ({} rows) and '{}' ({} rows) pair rows by position but hold different row counts; "
         "only stores of the same tokens in the same order pair by position",
         a.name, a.rows, b.name, b.rows);
  Selection s;
  torch::Tensor rows_a, rows_b;
  if (within || limits.by_position) {
    rows_a = torch::arange(a.rows, torch::kInt64);
    rows_b = rows_a;
  } else {
    text::Alignment alignment = text::align_token_ends(a.sequence, a.byte_end, b.sequence, b.byte_end);
    rows_a = alignment.rows_a;
    rows_b = alignment.rows_b;
    s.retained_a = alignment.retained_a;
    s.retained_b = alignment.retained_b;
  }
  s.aligned = rows_a.numel();
  if (s.aligned == 0) fail("transfer: models '{}' and '{}' share no aligned tokens", a.name, b.name);
  torch::Tensor docs = a.sequence.index_select(0, rows_a);
  std::vector<int64_t> fit_rows, fit_docs, eval_rows, eval_docs;
  const int64_t* dp = docs.data_ptr<int64_t>();
  for (int64_t i = 0; i < s.aligned; ++i) {
    bool fit = draws.at(dp[i]).fit;
    (fit ? fit_rows : eval_rows).push_back(i);
    (fit ? fit_docs : eval_docs).push_back(dp[i]);
  }
  if (fit_rows.size() < 2 || eval_rows.size() < 2)
    fail("transfer: models '{}' and '{}': too few sequences to split ({} fitting, {} evaluation tokens)", a.name,
         b.name, fit_rows.size(), eval_rows.size());
  torch::Tensor fit_pick = cap_rows(fit_rows, fit_docs, limits.max_fit_tokens, draws);
  torch::Tensor eval_pick = cap_rows(eval_rows, eval_docs, limits.max_eval_tokens, draws);
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
  for (int64_t i = 0; i < eval_doc_column.numel(); ++i) columns[i] = bootstrap.column.at(eval_doc[i]);
  s.eval_doc = torch::tensor(columns, torch::kInt64);
  s.fit_sequences = std::get<0>(torch::_unique(docs.index_select(0, fit_idx))).numel();
  s.eval_sequences = std::get<0>(torch::_unique(eval_doc_ids)).numel();
  return s;
}

}  // namespace strata::transfer
