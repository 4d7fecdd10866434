// Which rows a model pair is measured on, and the bootstrap's resampling unit. Every draw is a function of
// (seed, tag, doc id) alone (core/random.hpp derive), so a document is in the same split, and taken by the
// caps in the same order, in every model pair and every job of a split run.
//   aligned rows:    within a model, and with --aligned, every row with itself; across models the rows where
//                    both tokenizations end a token at the same byte of the same document (text/alignment.hpp)
//   fit / eval:      whole documents: doc in the fitting split  <=>  u(seed, "transfer/split", doc) < fit_fraction
//   row caps:        whole documents in increasing u(seed, "transfer/cap", doc), ties by doc id, until the next
//                    one would exceed the cap (the first is taken even when it alone exceeds it)
//   bootstrap:       resample r draws D evaluation documents with replacement (seed "transfer/bootstrap");
//                    weights[r, c] = times document c was drawn. Per-document sufficient statistics weighted
//                    by a row of it give that resample's statistic without touching the rows again.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace strata::transfer {

// One model's rows as its activation store indexes them.
struct ModelRows {
  std::string name;
  int64_t rows = 0;
  torch::Tensor sequence;  // I64 [rows]: doc_id, or a pseudo-sequence id for stores without an index
  torch::Tensor byte_end;  // I64 [rows], or undefined (such a model pairs with others only by position)
};

struct DocumentDraw {
  bool fit = false;      // in the map-fitting split
  double cap_order = 0;  // caps take whole sequences in increasing order of this draw
};
using DocumentDraws = std::unordered_map<int64_t, DocumentDraw>;  // doc id -> its draws

// The draws of every doc id of every model.
DocumentDraws draw_documents(const std::vector<const ModelRows*>& models, uint64_t seed, double fit_fraction);

// The evaluation documents (every doc not in the fitting split, in increasing doc id: column c) and the
// bootstrap's weights over them.
struct SequenceBootstrap {
  std::map<int64_t, int64_t> column;  // doc id -> column of weights
  torch::Tensor weights;              // fp64 [replicates, documents]
  int64_t replicates() const { return weights.size(0); }
  int64_t documents() const { return weights.size(1); }
};
SequenceBootstrap bootstrap_sequences(const DocumentDraws& draws, int64_t replicates, uint64_t seed);

// Positions (I64, increasing) into `rows` of the whole documents the cap takes (docs[i] is row i's doc id).
torch::Tensor cap_rows(const std::vector<int64_t>& rows, const std::vector<int64_t>& docs, int64_t cap,
                       const DocumentDraws& draws);

// Aligned rows of one model pair, split into fitting and evaluation parts.
struct Selection {
  torch::Tensor fit_a, fit_b, eval_a, eval_b;  // I64 row ids into each model's store, pairwise aligned
  torch::Tensor eval_doc;                       // I64 [n_eval]: each evaluation row's column of the bootstrap
  int64_t aligned = 0, fit_sequences = 0, eval_sequences = 0;
  double retained_a = 1, retained_b = 1;  // fraction of each model's rows that aligned
};
struct SelectionLimits {
  bool by_position = false;  // --aligned: every store holds the same tokens in the same order
  int64_t max_fit_tokens = 0, max_eval_tokens = 0;
};
// `within` = a and b are one model (rows pair by position). Fails, naming both models, when they share no
// aligned token or too few sequences to split.
Selection select_rows(const ModelRows& a, const ModelRows& b, bool within, const SelectionLimits& limits,
                      const DocumentDraws& draws, const SequenceBootstrap& bootstrap);

}  // namespace strata::transfer
