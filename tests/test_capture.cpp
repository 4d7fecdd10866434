#define BOOST_TEST_MODULE capture
#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include "capture/capture.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/hash.hpp"
#include "io/activation_store.hpp"
#include "io/checkpoint.hpp"
#include "models/transformer.hpp"
#include "test_capture_fixture.hpp"
#include "test_helpers.hpp"

namespace fs = std::filesystem;
using namespace strata;

namespace {


capture::CaptureOptions small_options() {
  capture::CaptureOptions o;
  o.layers = {0, 2, 4};
  o.batch_size = 4;
  o.num_batches = 3;
  o.seq_len = 48;
  return o;
}

const std::vector<text::Document>& synthetic_docs() {
  static const std::vector<text::Document> docs = text::load_dataset("synthetic", 100);
  return docs;
}

std::vector<std::string> store_files(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

BOOST_AUTO_TEST_CASE(resolve_layers_maps_depths_and_names_the_real_depth) {
  BOOST_TEST(capture::resolve_layers({4, 8, 12}, {}, 24, "m") == (std::vector<int>{4, 8, 12}));
  // round(d * 24): 0.2 -> 4.8 -> 5, 0.5 -> 12, 1.0 -> 24; tiny depths clamp to layer 1; duplicates merge.
  BOOST_TEST(capture::resolve_layers({12}, {0.2, 0.5, 1.0, 0.001}, 24, "m") == (std::vector<int>{1, 5, 12, 24}));
  BOOST_TEST(capture::resolve_layers({0}, {}, 4, "m") == (std::vector<int>{0}));
  testing::expect_error([&] { capture::resolve_layers({25}, {}, 24, "gpt2-medium"); }, {"gpt2-medium", "layer 25", "24 layers"});
  testing::expect_error([&] { capture::resolve_layers({-1}, {}, 24, "m"); }, {"24 layers"});
  BOOST_CHECK_THROW(capture::resolve_layers({}, {0.0}, 24, "m"), Error);
  BOOST_CHECK_THROW(capture::resolve_layers({}, {1.5}, 24, "m"), Error);
  BOOST_CHECK_THROW(capture::resolve_layers({}, {}, 24, "m"), Error);
}

BOOST_AUTO_TEST_CASE(layer_beyond_depth_fails_before_loading_with_the_real_depth) {
  auto options = small_options();
  options.layers = {5};
  fs::path out = testing::fresh_dir("capture-layer-range");
  testing::expect_error([&] { capture::capture_model("tiny", testing::tiny_capture_checkpoint(), text::DocumentReader(synthetic_docs()), "synthetic", options, out); }, {"tiny", "layer 5", "4 layers"});
  BOOST_TEST(store_files(out).empty());
}

// The stored rows are exactly the forward pass's resid_post (or embedding) at the stored positions,
// checked against an independent forward over text::make_sequences with the same batching.
BOOST_AUTO_TEST_CASE(stored_rows_equal_the_forward_pass_and_meta_is_complete) {
  const fs::path ckpt = testing::tiny_capture_checkpoint();
  const fs::path out = testing::fresh_dir("capture-basic");
  auto options = small_options();
  auto result = capture::capture_model("tiny", ckpt, text::DocumentReader(synthetic_docs()), "synthetic:0", options, out);
  BOOST_TEST(result.layers == (std::vector<int>{0, 2, 4}));
  BOOST_TEST(result.files.size() == 6u);  // one shard + meta per layer

  auto tokenizer = text::Tokenizer::load(ckpt);
  auto seqs = text::make_sequences(tokenizer, synthetic_docs(), options.seq_len, text::PackingPolicy::Truncate, true);
  auto model = models::Transformer::load(ckpt);
  torch::NoGradGuard no_grad;
  std::map<int, std::vector<torch::Tensor>> expected;
  int64_t tokens = 0;
  for (int64_t batch = 0; batch < options.num_batches; ++batch) {
    int64_t first = batch * options.batch_size, B = options.batch_size, T = 0;
    for (int64_t b = 0; b < B; ++b) T = std::max<int64_t>(T, seqs[first + b].ids.size());
    auto ids = torch::zeros({B, T}, torch::kInt64), mask = torch::zeros({B, T}, torch::kInt64);
    for (int64_t b = 0; b < B; ++b)
      for (size_t t = 0; t < seqs[first + b].ids.size(); ++t) {
        ids[b][t] = seqs[first + b].ids[t];
        mask[b][t] = 1;
        ++tokens;
      }
    auto fwd = model.forward(ids, mask, {.blocks = {0, 1, 2, 3}, .embed = true});
    for (int layer : {0, 2, 4}) {
      auto hidden = layer == 0 ? fwd.embed : fwd.resid_post.at(layer - 1);
      for (int64_t b = 0; b < B; ++b)
        for (size_t t = 0; t < seqs[first + b].ids.size(); ++t)
          if (!seqs[first + b].special[t]) expected[layer].push_back(hidden[b][t]);
    }
  }
  BOOST_TEST(result.tokens == tokens);
  for (int layer : {0, 2, 4}) {
    auto store = io::ActivationStore::open(out, "tiny", layer);
    auto want = torch::stack(expected[layer]);
    BOOST_TEST(store.rows() == want.size(0));
    BOOST_TEST(store.dim() == 32);
    BOOST_TEST(torch::equal(store.read_rows(0, store.rows()), want));
    // Row index: every row points at a real token of its sequence, with that token's byte span.
    auto seq_id = store.index_column("seq_id"), pos = store.index_column("token_index");
    auto doc = store.index_column("doc_id"), begin = store.index_column("byte_begin"), end = store.index_column("byte_end");
    for (int64_t r = 0; r < store.rows(); r += 7) {
      const auto& s = seqs[seq_id[r].item<int64_t>()];
      size_t t = pos[r].item<int64_t>();
      BOOST_REQUIRE(t < s.ids.size());
      BOOST_TEST(doc[r].item<int64_t>() == s.doc_id[t]);
      BOOST_TEST(begin[r].item<int64_t>() == s.byte_begin[t]);
      BOOST_TEST(end[r].item<int64_t>() == s.byte_end[t]);
    }
    const auto& meta = store.meta();
    for (const char* key : {"model", "checkpoint", "checkpoint_sha256", "layer", "n_layers", "relative_depth",
                            "hidden_size", "store_dtype", "rows", "dim", "shards", "shard_rows", "dataset",
                            "dataset_sha256", "tokenizer_sha256", "seq_len", "mask_policy", "mean", "std", "mean_norm",
                            "nonfinite_count"})
      BOOST_TEST(meta.contains(key), "meta.json lacks " << key);
    BOOST_TEST(meta["layer"] == layer);
    BOOST_TEST(meta["n_layers"] == 4);
    BOOST_TEST(meta["relative_depth"].get<double>() == layer / 4.0);
    BOOST_TEST(meta["hidden_size"] == 32);
    BOOST_TEST(meta["checkpoint_sha256"] == io::checkpoint_sha256(ckpt));
    BOOST_TEST(meta["tokenizer_sha256"] == tokenizer.sha256());
    // Capture reads documents 16 at a time, as the batches need them, and hashes exactly those.
    BOOST_TEST(meta["documents_read"] == 16);
    BOOST_TEST(meta["dataset_sha256"] ==
               text::dataset_sha256({synthetic_docs().begin(), synthetic_docs().begin() + 16}));
    BOOST_TEST(meta["nonfinite_count"] == 0);
    BOOST_TEST(meta["mask_policy"]["padding"] == "excluded");
    BOOST_TEST(meta["mask_policy"]["exclude_special"] == true);
    auto mean = want.to(torch::kFloat64).mean(0);
    BOOST_TEST(std::abs(meta["mean"][5].get<double>() - mean[5].item<double>()) < 1e-9);
    BOOST_TEST(std::abs(meta["mean_norm"].get<double>() - want.to(torch::kFloat64).norm(2, {1}).mean().item<double>()) <
               1e-9);
  }
}

BOOST_AUTO_TEST_CASE(two_runs_are_byte_identical) {
  const fs::path ckpt = testing::tiny_capture_checkpoint();
  auto options = small_options();
  options.layers = {1, 3};
  options.shard_size_bytes = 4096;  // several shards
  std::vector<std::map<std::string, std::string>> hashes;
  for (const char* name : {"capture-determinism-a", "capture-determinism-b"}) {
    fs::path out = testing::fresh_dir(name);
    capture::capture_model("tiny", ckpt, text::DocumentReader(synthetic_docs()), "synthetic", options, out);
    std::map<std::string, std::string> h;
    for (const auto& f : store_files(out)) h[f] = sha256_file(out / f);
    hashes.push_back(h);
  }
  BOOST_TEST(hashes[0].size() > 4u);
  BOOST_TEST((hashes[0] == hashes[1]));
}

BOOST_AUTO_TEST_CASE(shards_reduced_dtypes_and_token_budget) {
  const fs::path ckpt = testing::tiny_capture_checkpoint();
  auto options = small_options();
  options.layers = {2};
  options.max_tokens = 1000;
  options.packing = text::PackingPolicy::Pack;
  options.seq_len = 64;
  fs::path whole = testing::fresh_dir("capture-one-shard");
  auto one = capture::capture_model("tiny", ckpt, text::DocumentReader(synthetic_docs()), "synthetic", options, whole);
  BOOST_TEST(one.tokens == 1000);  // exactly the budget; packed, so no special token is excluded
  auto reference = io::ActivationStore::open(whole, "tiny", 2);
  BOOST_TEST(reference.rows() == 1000);

  // Pack cuts across the capture's document chunks exactly like make_sequences over all documents.
  auto seqs = text::make_sequences(text::Tokenizer::load(ckpt), synthetic_docs(), 64, text::PackingPolicy::Pack, true);
  auto seq_id = reference.index_column("seq_id"), pos = reference.index_column("token_index");
  auto doc = reference.index_column("doc_id"), end = reference.index_column("byte_end");
  for (int64_t r = 0; r < reference.rows(); ++r) {
    const auto& s = seqs.at(seq_id[r].item<int64_t>());
    size_t t = pos[r].item<int64_t>();
    BOOST_REQUIRE(t < s.ids.size());
    BOOST_REQUIRE(doc[r].item<int64_t>() == s.doc_id[t]);
    BOOST_REQUIRE(end[r].item<int64_t>() == s.byte_end[t]);
  }

  options.shard_size_bytes = 100 * 32 * 4;  // 100 rows per shard
  fs::path sharded = testing::fresh_dir("capture-sharded");
  capture::capture_model("tiny", ckpt, text::DocumentReader(synthetic_docs()), "synthetic", options, sharded);
  auto store = io::ActivationStore::open(sharded, "tiny", 2);
  BOOST_TEST(store.num_shards() == 10u);
  BOOST_TEST(fs::exists(sharded / "tiny_layer2_activations-00001-of-00010.safetensors"));
  BOOST_TEST(torch::equal(store.read_rows(0, store.rows()), reference.read_rows(0, reference.rows())));
  BOOST_TEST(torch::equal(store.index_column("byte_end"), reference.index_column("byte_end")));

  // Re-capturing into the same directory with one shard removes the old shards.
  options.shard_size_bytes = 512 << 20;
  capture::capture_model("tiny", ckpt, text::DocumentReader(synthetic_docs()), "synthetic", options, sharded);
  BOOST_TEST(store_files(sharded) ==
             (std::vector<std::string>{"tiny_layer2_activations.meta.json", "tiny_layer2_activations.safetensors"}));

  for (auto dtype : {torch::kFloat16, torch::kBFloat16}) {
    options.store_dtype = dtype;
    fs::path dir = testing::fresh_dir("capture-reduced");
    capture::capture_model("tiny", ckpt, text::DocumentReader(synthetic_docs()), "synthetic", options, dir);
    auto reduced = io::ActivationStore::open(dir, "tiny", 2);
    auto want = reference.read_rows(0, reference.rows()).to(dtype).to(torch::kFloat32);
    BOOST_TEST(torch::equal(reduced.read_rows(0, reduced.rows()), want));
    BOOST_TEST(reduced.meta()["store_dtype"] == (dtype == torch::kFloat16 ? "f16" : "bf16"));
  }
}

BOOST_AUTO_TEST_CASE(special_tokens_and_norm_outliers_are_masked_and_recorded) {
  const fs::path ckpt = testing::tiny_capture_checkpoint();
  std::vector<text::Document> docs{{0, "Question: 3 + 4?<|endoftext|>Answer: 7"}, {1, "<|endoftext|>Tom has 5 apples."}};
  auto options = small_options();
  options.layers = {1};
  auto tokenizer = text::Tokenizer::load(ckpt);
  int64_t total = 0, special = 0;
  for (const auto& d : docs) {
    auto enc = tokenizer.encode(d.text, true);
    total += enc.ids.size();
    for (auto s : enc.special) special += s;
  }
  BOOST_REQUIRE(special == 2);
  fs::path out = testing::fresh_dir("capture-special");
  capture::capture_model("tiny", ckpt, text::DocumentReader(docs), "inline", options, out);
  auto store = io::ActivationStore::open(out, "tiny", 1);
  BOOST_TEST(store.rows() == total - special);
  BOOST_TEST(store.meta()["mask_policy"]["special_excluded"] == special);

  options.keep_special = true;
  capture::capture_model("tiny", ckpt, text::DocumentReader(docs), "inline", options, out);
  store = io::ActivationStore::open(out, "tiny", 1);
  BOOST_TEST(store.rows() == total);
  BOOST_TEST(store.meta()["mask_policy"]["exclude_special"] == false);

  // Norm outliers: with K = 1 every position above a layer's batch median norm goes, from every layer,
  // so the layers keep holding the same tokens: the union of the layers' outliers.
  options.keep_special = false;
  options.norm_outlier_factor = 1.0;
  options.layers = {1, 3};
  capture::capture_model("tiny", ckpt, text::DocumentReader(synthetic_docs()), "synthetic", options, out);
  auto first = io::ActivationStore::open(out, "tiny", 1);
  store = io::ActivationStore::open(out, "tiny", 3);
  const int64_t dropped = store.meta()["mask_policy"]["norm_outliers_excluded"];
  const int64_t at_layer1 = first.meta()["mask_policy"]["norm_outliers_at_this_layer"];
  const int64_t at_layer3 = store.meta()["mask_policy"]["norm_outliers_at_this_layer"];
  BOOST_TEST(first.meta()["mask_policy"]["norm_outliers_excluded"] == dropped);
  BOOST_TEST(dropped >= std::max(at_layer1, at_layer3));
  BOOST_TEST(dropped <= at_layer1 + at_layer3);
  BOOST_TEST(at_layer1 > 0);
  BOOST_TEST(first.rows() == store.rows());
  for (const char* column : io::kIndexColumns)
    BOOST_TEST(torch::equal(first.index_column(column), store.index_column(column)), column);
  options.norm_outlier_factor = 0;
  fs::path all = testing::fresh_dir("capture-no-outlier");
  capture::capture_model("tiny", ckpt, text::DocumentReader(synthetic_docs()), "synthetic", options, all);
  auto unfiltered = io::ActivationStore::open(all, "tiny", 3);
  BOOST_TEST(store.rows() + dropped == unfiltered.rows());
  // The kept rows are the unfiltered rows at the kept positions: (seq_id, token_index) pairs match up.
  const torch::Tensor key = store.index_column("seq_id") * 100000 + store.index_column("token_index");
  const torch::Tensor all_keys = unfiltered.index_column("seq_id") * 100000 + unfiltered.index_column("token_index");
  const torch::Tensor where = torch::searchsorted(all_keys, key);
  BOOST_TEST(torch::equal(all_keys.index_select(0, where), key));
  BOOST_TEST(torch::equal(unfiltered.read_rows(where), store.read_rows(0, store.rows())));
}

BOOST_AUTO_TEST_CASE(token_ids_outside_the_vocabulary_fail) {
  // The real GPT-2 tokenizer (50257 ids) on the 512-id model.
  auto options = small_options();
  options.tokenizer_dir = (testing::data_dir() / "tokenizers" / "gpt2").string();
  fs::path out = testing::fresh_dir("capture-vocab");
  testing::expect_error([&] { capture::capture_model("tiny", testing::tiny_capture_checkpoint(), text::DocumentReader(synthetic_docs()), "synthetic", options, out); }, {"tiny", "outside the model's vocabulary of 512"});
  BOOST_TEST(store_files(out).empty());
}

BOOST_AUTO_TEST_CASE(nan_activations_fail_naming_model_layer_and_batch_and_leave_no_store) {
  const fs::path ckpt = testing::tiny_capture_checkpoint();
  fs::path broken = testing::fresh_dir("capture-nan-model");
  auto model = models::Transformer::load(ckpt);
  auto params = model.parameters();
  params["h.2.mlp.c_fc.bias"] = params["h.2.mlp.c_fc.bias"].clone();
  params["h.2.mlp.c_fc.bias"][3] = std::numeric_limits<float>::quiet_NaN();
  models::save_checkpoint(broken, model.spec(), params);
  fs::copy_file(ckpt / "tokenizer.json", broken / "tokenizer.json");

  auto options = small_options();
  options.layers = {1, 3, 4};
  options.shard_size_bytes = 1024;  // shards of layer 1 are written before the failure
  fs::path out = testing::fresh_dir("capture-nan");
  testing::expect_error([&] { capture::capture_model("broken", broken, text::DocumentReader(synthetic_docs()), "synthetic", options, out); }, {"broken", "layer 3", "batch 1", "NaN"});
  BOOST_TEST(store_files(out).empty());
}

// The writer stores what it is given and records the true NaN/Inf count (Gate 1 reads it): here an f16
// overflow, counted on the values as stored. Statistics cover the finite rows only.
BOOST_AUTO_TEST_CASE(writer_records_the_nonfinite_count_of_what_it_stored) {
  fs::path dir = testing::fresh_dir("capture-writer-overflow");
  io::ActivationStoreWriter writer(dir, "w", 2, torch::kFloat16, 1 << 20);
  auto index = torch::zeros({2}, torch::kInt64);
  io::RowIndex rows{index, index, index, index, index};
  BOOST_TEST(writer.append(torch::tensor({{1.0f, 3.0f}, {3.0f, 5.0f}}), rows) == 0);
  BOOST_TEST(writer.append(torch::tensor({{1e6f, 2.0f}, {1e6f, 1e6f}}), rows) == 3);  // 1e6 overflows f16
  const auto files = writer.finish({{"model", "w"}});
  const auto meta = nlohmann::json::parse(read_text_file(files.back()));
  BOOST_TEST(meta["rows"] == 4);
  BOOST_TEST(meta["nonfinite_count"] == 3);
  BOOST_TEST(meta["nonfinite_rows"] == 2);
  BOOST_TEST(meta["mean"][0].get<double>() == 2.0);
  BOOST_TEST(meta["mean"][1].get<double>() == 4.0);
  BOOST_TEST(meta["std"][0].get<double>() == 1.0);
  BOOST_TEST(meta["mean_norm"].get<double>() == (std::sqrt(10.0) + std::sqrt(34.0)) / 2, boost::test_tools::tolerance(1e-12));
  const auto stored = io::ActivationStore::open(files.back()).read_rows(0, 4);
  BOOST_TEST(torch::isinf(stored).sum().item<int64_t>() == 3);
}

// Capture stops at the first non-finite value the writer counts, saying whether the model or the store
// dtype produced it, and leaves no store behind.
BOOST_AUTO_TEST_CASE(activations_that_overflow_the_store_dtype_fail_the_capture) {
  const fs::path ckpt = testing::tiny_capture_checkpoint();
  fs::path loud = testing::fresh_dir("capture-overflow-model");
  auto model = models::Transformer::load(ckpt);
  auto params = model.parameters();
  params["wte.weight"] = params["wte.weight"] * 1e7;
  models::save_checkpoint(loud, model.spec(), params);
  fs::copy_file(ckpt / "tokenizer.json", loud / "tokenizer.json");
  auto options = small_options();
  options.layers = {0};
  options.store_dtype = torch::kFloat16;
  fs::path out = testing::fresh_dir("capture-overflow");
  testing::expect_error([&] { capture::capture_model("loud", loud, text::DocumentReader(synthetic_docs()), "synthetic", options, out); },
                        {"loud", "layer 0", "batch 1", "after conversion to f16", "overflow"});
  BOOST_TEST(store_files(out).empty());
}

// A malformed config.json is reported with its path, before any weight is read.
BOOST_AUTO_TEST_CASE(malformed_config_json_error_names_the_file) {
  const fs::path ckpt = testing::tiny_capture_checkpoint();
  fs::path bad = testing::fresh_dir("capture-bad-config");
  for (const char* file : {"model.safetensors", "tokenizer.json"}) fs::copy_file(ckpt / file, bad / file);
  atomic_write_text(bad / "config.json", "{\"model_type\": \"gpt2\", \"n_layer\": 4,");
  fs::path out = testing::fresh_dir("capture-bad-config-out");
  testing::expect_error([&] { capture::capture_model("bad", bad, text::DocumentReader(synthetic_docs()), "synthetic", small_options(), out); },
                        {(bad / "config.json").string(), "not valid JSON"});
  BOOST_TEST(store_files(out).empty());
}
