#include "capture/capture.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <deque>

#include "core/error.hpp"
#include "core/read_bounded.hpp"
#include "core/fs.hpp"
#include "core/log.hpp"
#include "core/runtime.hpp"
#include "io/activation_store.hpp"
#include "models/spec.hpp"
#include "models/transformer.hpp"
#include "text/tokenizer.hpp"

namespace strata::capture {
namespace fs = std::filesystem;

std::vector<int> resolve_layers(const std::vector<int>& layers, const std::vector<double>& depths, int n_layers,
                                const std::string& model_name) {
  if (layers.empty() && depths.empty())
    fail("capture {}: no layers requested; give layers (1..{}, 0 = embeddings) or relative depths in (0, 1]",
         model_name, n_layers);
  std::vector<int> out;
  for (int layer : layers) {
    if (layer < 0 || layer > n_layers)
      fail("capture {}: layer {} does not exist; the model has {} layers (1..{}, 0 = embeddings)", model_name, layer,
           n_layers, n_layers);
    out.push_back(layer);
  }
  for (double depth : depths) {
    if (!(depth > 0.0 && depth <= 1.0))
      fail("capture {}: relative depth {} is outside (0, 1]; it maps to layer round(depth * {})", model_name, depth,
           n_layers);
    out.push_back(std::clamp(static_cast<int>(std::lround(depth * n_layers)), 1, n_layers));
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

namespace {

// Model-input sequences made lazily, a few documents at a time, so that memory does not grow with the
// dataset. The result equals text::make_sequences over all documents: Pack's cut runs across chunks.
// Every document read is added to `hash`.
class SequenceStream {
 public:
  SequenceStream(const text::Tokenizer& tokenizer, text::DocumentReader& documents, text::DatasetHash& hash,
                 int64_t seq_len, text::PackingPolicy packing)
      : tokenizer_(tokenizer), documents_(documents), hash_(hash), seq_len_(seq_len), packing_(packing) {}

  bool next(text::Sequence& out) {
    while (ready_.empty() && !exhausted_) refill();
    if (ready_.empty() && !carry_.ids.empty()) ready_.push_back(std::exchange(carry_, text::Sequence{}));
    if (ready_.empty()) return false;
    out = std::move(ready_.front());
    ready_.pop_front();
    return true;
  }

 private:
  static constexpr size_t kChunkDocs = 16;

  void refill() {
    std::vector<text::Document> chunk;
    for (text::Document doc; chunk.size() < kChunkDocs;) {
      if (!documents_.next(doc)) {
        exhausted_ = true;
        break;
      }
      hash_.add(doc);
      chunk.push_back(std::move(doc));
    }
    std::vector<text::Sequence> made = text::make_sequences(tokenizer_, chunk, seq_len_, packing_, true);
    if (packing_ == text::PackingPolicy::Truncate) {
      for (auto& s : made) ready_.push_back(std::move(s));
      return;
    }
    for (const auto& s : made) {  // re-cut after the previous chunk's short tail
      for (size_t i = 0; i < s.ids.size(); ++i) {
        carry_.ids.push_back(s.ids[i]);
        carry_.doc_id.push_back(s.doc_id[i]);
        carry_.byte_begin.push_back(s.byte_begin[i]);
        carry_.byte_end.push_back(s.byte_end[i]);
        carry_.special.push_back(s.special[i]);
        if (static_cast<int64_t>(carry_.ids.size()) == seq_len_) ready_.push_back(std::exchange(carry_, {}));
      }
    }
  }

  const text::Tokenizer& tokenizer_;
  text::DocumentReader& documents_;
  text::DatasetHash& hash_;
  int64_t seq_len_;
  text::PackingPolicy packing_;
  bool exhausted_ = false;
  std::deque<text::Sequence> ready_;
  text::Sequence carry_;
};

void cut_sequence(text::Sequence& s, size_t n) {
  s.ids.resize(n), s.doc_id.resize(n), s.byte_begin.resize(n), s.byte_end.resize(n), s.special.resize(n);
}

text::Tokenizer load_tokenizer(const std::string& model_name, const fs::path& checkpoint_dir,
                               const std::string& tokenizer_dir) {
  if (!tokenizer_dir.empty()) return text::Tokenizer::load(tokenizer_dir);
  for (const char* name : {"tokenizer.json", "tokenizer.json.gz", "vocab.json"})
    if (fs::exists(checkpoint_dir / name)) return text::Tokenizer::load(checkpoint_dir);
  fail("capture {}: checkpoint {} has no tokenizer (tokenizer.json, tokenizer.json.gz or vocab.json + merges.txt); "
       "pass --tokenizer DIR",
       model_name, checkpoint_dir.string());
}

// One batch of model input plus, for every stored position, its flat index into [B*T] and its row index.
struct Batch {
  torch::Tensor input_ids, attention_mask;  // [B, T] int64
  torch::Tensor keep;                       // [n] int64 flat positions b*T+t that are stored
  io::RowIndex index;                       // [n] each
  int64_t tokens = 0;                       // real tokens in the batch
  int64_t special_excluded = 0;
};

Batch make_batch(const std::vector<text::Sequence>& seqs, int64_t first_seq_id, bool keep_special,
                 const models::ModelSpec& spec, const std::string& model_name, const text::Tokenizer& tokenizer) {
  Batch batch;
  const int64_t B = static_cast<int64_t>(seqs.size());
  int64_t T = 0;
  for (const auto& s : seqs) T = std::max<int64_t>(T, static_cast<int64_t>(s.ids.size()));
  batch.input_ids = torch::zeros({B, T}, torch::kInt64);
  batch.attention_mask = torch::zeros({B, T}, torch::kInt64);
  auto ids = batch.input_ids.accessor<int64_t, 2>();
  auto mask = batch.attention_mask.accessor<int64_t, 2>();
  std::vector<int64_t> keep, doc, seq, pos, begin, end;
  for (int64_t b = 0; b < B; ++b) {
    const text::Sequence& s = seqs[static_cast<size_t>(b)];
    for (int64_t t = 0; t < static_cast<int64_t>(s.ids.size()); ++t) {
      const int32_t id = s.ids[static_cast<size_t>(t)];
      if (id < 0 || id >= spec.vocab_size)
        fail("capture {}: tokenizer {} produced token id {} (document {}) outside the model's vocabulary of {}; "
             "use the model's own tokenizer",
             model_name, tokenizer.source().string(), id, s.doc_id[static_cast<size_t>(t)], spec.vocab_size);
      ids[b][t] = id;
      mask[b][t] = 1;
      ++batch.tokens;
      if (s.special[static_cast<size_t>(t)] && !keep_special) {
        ++batch.special_excluded;
        continue;
      }
      keep.push_back(b * T + t);
      doc.push_back(s.doc_id[static_cast<size_t>(t)]);
      seq.push_back(first_seq_id + b);
      pos.push_back(t);
      begin.push_back(s.byte_begin[static_cast<size_t>(t)]);
      end.push_back(s.byte_end[static_cast<size_t>(t)]);
    }
  }
  auto column = [](const std::vector<int64_t>& v) { return torch::tensor(v, torch::kInt64); };
  batch.keep = column(keep);
  batch.index = {column(doc), column(seq), column(pos), column(begin), column(end)};
  return batch;
}

io::RowIndex select_rows(const io::RowIndex& index, const torch::Tensor& rows) {
  return {index.doc_id.index_select(0, rows), index.seq_id.index_select(0, rows),
          index.token_index.index_select(0, rows), index.byte_begin.index_select(0, rows),
          index.byte_end.index_select(0, rows)};
}

}  // namespace

CaptureResult capture_model(const std::string& model_name, const fs::path& checkpoint_dir,
                            text::DocumentReader documents, const std::string& dataset_spec,
                            const CaptureOptions& options, const fs::path& out_dir) {
  if (model_name.empty() || model_name.find('/') != std::string::npos)
    fail("capture: model name {} must be non-empty and contain no '/' (it names the store files)", shown_text(model_name));
  if (options.batch_size <= 0) fail("capture {}: batch size must be positive, got {}", model_name, options.batch_size);
  if (options.seq_len <= 0) fail("capture {}: seq_len must be positive, got {}", model_name, options.seq_len);
  if (options.max_tokens <= 0 && options.num_batches <= 0)
    fail("capture {}: give a positive number of batches or tokens", model_name);
  if (options.norm_outlier_factor < 0)
    fail("capture {}: norm outlier factor must be >= 0 (0 = off), got {}", model_name, options.norm_outlier_factor);
  io::store_dtype_name(options.store_dtype);  // an unsupported dtype fails before any work

  // The config alone settles the layers, so a bad request fails before any weight is read.
  const fs::path config_path = checkpoint_dir / "config.json";
  if (!fs::exists(config_path))
    fail("capture {}: {} not found; --model must name a Hugging Face checkpoint directory", model_name,
         config_path.string());
  nlohmann::json config_json;
  try {
    config_json = nlohmann::json::parse(read_text_file(config_path));
  } catch (const nlohmann::json::exception& e) {
    fail("capture {}: {}: not valid JSON ({})", model_name, config_path.string(), e.what());
  }
  const models::ModelSpec config_spec = models::parse_config(config_json, config_path.string());
  const int n_layers = static_cast<int>(config_spec.n_layers);
  CaptureResult result;
  result.layers = resolve_layers(options.layers, options.depths, n_layers, model_name);
  if (config_spec.positions == models::PositionKind::Learned && options.seq_len > config_spec.max_positions)
    fail("capture {}: seq_len {} exceeds the model's {} learned positions", model_name, options.seq_len,
         config_spec.max_positions);

  const text::Tokenizer tokenizer = load_tokenizer(model_name, checkpoint_dir, options.tokenizer_dir);
  log::info("capture {}: loading {}", model_name, checkpoint_dir.string());
  const models::Transformer model = models::Transformer::load(checkpoint_dir, options.compute_dtype, options.device);
  const models::ModelSpec& spec = model.spec();
  const int64_t H = spec.hidden_size;

  models::ForwardRequest request;
  for (int layer : result.layers) {
    if (layer == 0)
      request.embed = true;
    else
      request.blocks.push_back(layer - 1);
  }
  std::vector<std::unique_ptr<io::ActivationStoreWriter>> writers;
  for (int layer : result.layers)
    writers.push_back(std::make_unique<io::ActivationStoreWriter>(
        out_dir, io::store_base_name(model_name, layer), H, options.store_dtype, options.shard_size_bytes));
  std::vector<int64_t> outliers_flagged(result.layers.size(), 0);  // outliers at each layer
  int64_t outliers_excluded = 0;                                     // positions dropped from every layer

  text::DatasetHash dataset_hash;
  SequenceStream stream(tokenizer, documents, dataset_hash, options.seq_len, options.packing);
  const bool by_tokens = options.max_tokens > 0;
  log::Progress progress(fmt::format("capture {} layers {}", model_name, fmt::join(result.layers, ",")),
                         by_tokens ? options.max_tokens : options.num_batches);
  int64_t sequences = 0, special_excluded = 0, batches = 0;
  torch::NoGradGuard no_grad;
  while (by_tokens ? result.tokens < options.max_tokens : batches < options.num_batches) {
    std::vector<text::Sequence> seqs;
    int64_t planned = result.tokens;
    text::Sequence s;
    while (static_cast<int64_t>(seqs.size()) < options.batch_size && (!by_tokens || planned < options.max_tokens) &&
           stream.next(s)) {
      if (by_tokens && planned + static_cast<int64_t>(s.ids.size()) > options.max_tokens)
        cut_sequence(s, static_cast<size_t>(options.max_tokens - planned));
      planned += static_cast<int64_t>(s.ids.size());
      seqs.push_back(std::move(s));
    }
    if (seqs.empty()) {
      log::warn("capture {}: the dataset ran out after {} batches ({} tokens)", model_name, batches, result.tokens);
      break;
    }
    ++batches;
    const Batch batch = make_batch(seqs, sequences, options.keep_special, spec, model_name, tokenizer);
    sequences += static_cast<int64_t>(seqs.size());
    result.tokens += batch.tokens;
    special_excluded += batch.special_excluded;

    const models::ForwardOutput out =
        model.forward(batch.input_ids.to(options.device), batch.attention_mask.to(options.device), request);
    const torch::Tensor keep = batch.keep.to(options.device);
    std::vector<torch::Tensor> rows_by_layer;
    for (size_t i = 0; i < result.layers.size(); ++i) {
      const int layer = result.layers[i];
      const torch::Tensor& hidden = layer == 0 ? out.embed : out.resid_post.at(layer - 1);
      // One transfer per layer and batch, already f32 on arrival (outlier norms and the store work on f32;
      // the store writer counts non-finite values as it writes them).
      rows_by_layer.push_back(hidden.reshape({-1, H}).index_select(0, keep).to(torch::kCPU, torch::kFloat32));
    }
    // The outlier mask is one mask over positions: a position that is an outlier at any captured layer
    // goes from every layer, so that all layers of a model keep holding the same tokens (transfer pairs
    // a model's layers row by row).
    torch::Tensor kept_positions;
    if (options.norm_outlier_factor > 0 && batch.keep.numel() > 0) {
      torch::Tensor inlier = torch::ones({batch.keep.numel()}, torch::kBool);
      for (size_t i = 0; i < result.layers.size(); ++i) {
        // A non-finite row is never an outlier: it goes on to the writer, whose count stops the capture.
        const torch::Tensor norms = rows_by_layer[i].norm(2, {1});
        const torch::Tensor layer_inlier = (norms <= options.norm_outlier_factor * norms.nanmedian().item<double>()) |
                                           norms.isfinite().logical_not();
        outliers_flagged[i] += layer_inlier.logical_not().sum().item<int64_t>();
        inlier &= layer_inlier;
      }
      kept_positions = inlier.nonzero().squeeze(1);
      outliers_excluded += batch.keep.numel() - kept_positions.numel();
    }
    const io::RowIndex index = kept_positions.defined() ? select_rows(batch.index, kept_positions) : batch.index;
    for (size_t i = 0; i < result.layers.size(); ++i) {
      const torch::Tensor rows =
          kept_positions.defined() ? rows_by_layer[i].index_select(0, kept_positions) : rows_by_layer[i];
      // The writer counts NaN/Inf as stored (meta.json nonfinite_count); capture stops at the first, and the
      // unfinished stores are removed with their writers.
      if (const int64_t nonfinite = writers[i]->append(rows, index); nonfinite > 0)
        fail("capture {}: layer {} batch {}: {} NaN/Inf activation values{} (no store was written)", model_name,
             result.layers[i], batches, nonfinite,
             rows.isfinite().all().item<bool>()
                 ? fmt::format(" after conversion to {}: the values overflow it; store f32 or bf16",
                               io::store_dtype_name(options.store_dtype))
                 : std::string("; the model's activations are not finite"));
    }
    runtime::release_free_memory();
    progress.advance(by_tokens ? batch.tokens : 1);
  }
  progress.finish();

  const std::string checkpoint_sha = model.checkpoint_sha256();
  const std::string dataset_sha = dataset_hash.hex();
  for (size_t i = 0; i < result.layers.size(); ++i) {
    const int layer = result.layers[i];
    nlohmann::json meta = {
        {"model", model_name},
        {"checkpoint", checkpoint_dir.string()},
        {"checkpoint_sha256", checkpoint_sha},
        {"model_type", spec.model_type},
        {"layer", layer},
        {"n_layers", n_layers},
        {"relative_depth", static_cast<double>(layer) / n_layers},
        {"hook", layer == 0 ? std::string("embed") : fmt::format("resid_post.{}", layer - 1)},
        {"hidden_size", H},
        {"compute_dtype", models::compute_dtype_name(options.compute_dtype)},
        {"dataset", dataset_spec},
        {"dataset_sha256", dataset_sha},
        {"documents_read", documents.documents_read()},
        {"tokenizer", tokenizer.source().string()},
        {"tokenizer_sha256", tokenizer.sha256()},
        {"seq_len", options.seq_len},
        {"packing", text::to_string(options.packing)},
        {"batch_size", options.batch_size},
        {"batches", batches},
        {"sequences", sequences},
        {"tokens", result.tokens},
        {"mask_policy",
         {{"exclude_special", !options.keep_special},
          {"norm_outlier_factor", options.norm_outlier_factor},
          {"norm_outlier_reference",
           "median row norm of each captured layer within each batch; a position that is an outlier at any "
           "captured layer is excluded from all of them"},
          {"padding", "excluded"},
          {"special_excluded", options.keep_special ? 0 : special_excluded},
          {"norm_outliers_excluded", outliers_excluded},
          {"norm_outliers_at_this_layer", outliers_flagged[i]}}},
    };
    std::vector<fs::path> files = writers[i]->finish(std::move(meta));
    const nlohmann::json written = nlohmann::json::parse(read_text_file(files.back()));
    result.metas[std::to_string(layer)] = written;
    result.files.insert(result.files.end(), files.begin(), files.end());
    log::info("capture {}: layer {} -> {} rows in {} file(s)", model_name, layer, written["rows"].get<int64_t>(),
              files.size() - 1);
  }
  return result;
}

}  // namespace strata::capture
