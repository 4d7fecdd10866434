// Published SAE formats (sae/formats.hpp): fixtures are written here in each library's layout, and the
// expected encodings / reconstructions come from short fp64 references written from the formats'
// documented formulas (SAELens sae.py / saes/*.py, sparsify sparse_coder.py), not from the loader.
#define BOOST_TEST_MODULE sae_formats
#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include <cmath>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "io/safetensors.hpp"
#include "sae/formats.hpp"
#include "sae/sae.hpp"
#include "test_helpers.hpp"

using namespace strata;
namespace fs = std::filesystem;
using nlohmann::json;
using torch::Tensor;

namespace {

constexpr int64_t kDIn = 12, kDSae = 40, kRows = 64;

struct Weights {
  Tensor W_enc, W_dec, b_enc, b_dec, threshold;  // fp32, SAELens orientation
};

Weights random_weights(uint64_t seed) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
  Weights w;
  w.W_enc = torch::randn({kDIn, kDSae}, g, torch::kFloat32) * 0.4;
  w.W_dec = torch::randn({kDSae, kDIn}, g, torch::kFloat32) * 0.3;
  w.b_enc = torch::randn({kDSae}, g, torch::kFloat32) * 0.2;
  w.b_dec = torch::randn({kDIn}, g, torch::kFloat32) * 0.8 + 0.5;
  w.threshold = torch::rand({kDSae}, g, torch::kFloat32) * 0.6;
  return w;
}

// Activations with a large common offset and norms far from sqrt(d_in), so that every pre-processing
// step (b_dec, each normalisation) changes the result.
Tensor activations(uint64_t seed) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randn({kRows, kDIn}, g, torch::kFloat32) * 3.0 + 1.5;
}

void write_saelens(const fs::path& dir, const json& cfg, const std::map<std::string, Tensor>& tensors) {
  fs::create_directories(dir);
  io::save_safetensors(dir / "sae_weights.safetensors", tensors);
  atomic_write_text(dir / "cfg.json", cfg.dump(2));
}

std::map<std::string, Tensor> saelens_tensors(const Weights& w, bool with_threshold = false) {
  std::map<std::string, Tensor> t = {{"W_enc", w.W_enc}, {"W_dec", w.W_dec}, {"b_enc", w.b_enc}, {"b_dec", w.b_dec}};
  if (with_threshold) t["threshold"] = w.threshold;
  return t;
}

Tensor f64(const Tensor& t) { return t.to(torch::kFloat64); }

// Largest absolute difference relative to the reference's largest magnitude.
double rel_error(const Tensor& got, const Tensor& want) {
  return (f64(got) - want).abs().max().item<double>() / std::max(1e-12, want.abs().max().item<double>());
}

// The reference decoder: f @ W_dec + b_dec (SAELens decode before the output normalisation).
Tensor ref_decode(const Tensor& f, const Weights& w) { return f.matmul(f64(w.W_dec)) + f64(w.b_dec); }

}  // namespace

BOOST_AUTO_TEST_CASE(saelens_standard_without_b_dec_subtraction_matches_the_reference) {
  fs::path dir = testing::fresh_dir("formats_standard_no_bdec");
  Weights w = random_weights(1);
  write_saelens(dir, {{"architecture", "standard"}, {"d_in", kDIn}, {"d_sae", kDSae}, {"apply_b_dec_to_input", false},
                      {"normalize_activations", "none"}, {"dtype", "float32"}, {"hook_name", "blocks.2.hook_resid_post"}},
                saelens_tensors(w));
  sae::LoadedSae loaded = sae::load_sae(dir);
  BOOST_TEST(loaded.format == "saelens");
  BOOST_TEST(!loaded.sae.apply_b_dec_to_input);
  Tensor x = activations(2), xd = f64(x);
  // SAELens StandardSAE: f = ReLU(x @ W_enc + b_enc) (no b_dec subtraction), x_hat = f @ W_dec + b_dec.
  Tensor f_ref = torch::relu(xd.matmul(f64(w.W_enc)) + f64(w.b_enc));
  Tensor f = loaded.sae.encode(x);
  BOOST_TEST(rel_error(f, f_ref) < 1e-5);
  BOOST_TEST(rel_error(loaded.sae.reconstruct(x), ref_decode(f_ref, w)) < 1e-5);
  // The flag matters on this data: subtracting b_dec would give visibly different latents.
  Tensor f_with = torch::relu((xd - f64(w.b_dec)).matmul(f64(w.W_enc)) + f64(w.b_enc));
  BOOST_TEST(rel_error(f, f_with) > 0.05);
  // Its hook is strata layer 3; layer 2 is refused naming both.
  sae::check_hook_layer(loaded, 3, "m_layer3");
  testing::expect_error([&] { sae::check_hook_layer(loaded, 2, "m_layer2"); },
                        {"blocks.2.hook_resid_post", "strata layer 3", "layer 2", "m_layer2", "blocks.1.hook_resid_post"});
  // Save + load (strata's SAELens layout) keeps the encoding, flag included.
  loaded.sae.save(dir / "copy");
  sae::Sae copy = sae::Sae::load(dir / "copy");
  BOOST_TEST(!copy.apply_b_dec_to_input);
  BOOST_TEST(rel_error(copy.encode(x), f_ref) < 1e-5);
}

BOOST_AUTO_TEST_CASE(saelens_jumprelu_matches_the_reference_and_round_trips) {
  fs::path dir = testing::fresh_dir("formats_jumprelu");
  Weights w = random_weights(3);
  write_saelens(dir, {{"architecture", "jumprelu"}, {"d_in", kDIn}, {"d_sae", kDSae}, {"apply_b_dec_to_input", true},
                      {"normalize_activations", "none"}, {"meta", {{"hook_name", "blocks.4.hook_resid_pre"}}}},
                saelens_tensors(w, true));
  sae::LoadedSae loaded = sae::load_sae(dir);
  BOOST_TEST(loaded.sae.architecture == "jumprelu");
  BOOST_TEST(loaded.hook_name.value_or("") == "blocks.4.hook_resid_pre");  // SAELens 6: cfg.meta.hook_name
  Tensor x = activations(4), xd = f64(x);
  // JumpReLUSAE.encode: pre = (x - b_dec) @ W_enc + b_enc; f = ReLU(pre) * (pre > threshold).
  Tensor pre = (xd - f64(w.b_dec)).matmul(f64(w.W_enc)) + f64(w.b_enc);
  Tensor f_ref = torch::relu(pre) * (pre > f64(w.threshold)).to(torch::kFloat64);
  // The thresholds cut latents that ReLU alone would keep.
  BOOST_TEST((torch::relu(pre) > 0).sum().item<int64_t>() > (f_ref > 0).sum().item<int64_t>());
  BOOST_TEST((f_ref > 0).sum().item<int64_t>() > 0);
  BOOST_TEST(rel_error(loaded.sae.encode(x), f_ref) < 1e-5);
  BOOST_TEST(rel_error(loaded.sae.decode(loaded.sae.encode(x)), ref_decode(f_ref, w)) < 1e-5);
  sae::check_hook_layer(loaded, 4, "m_layer4");  // blocks.4.hook_resid_pre = strata layer 4
  loaded.sae.save(dir / "copy");
  sae::Sae copy = sae::Sae::load(dir / "copy");
  BOOST_TEST(copy.architecture == "jumprelu");
  BOOST_TEST(rel_error(copy.encode(x), f_ref) < 1e-5);
}

BOOST_AUTO_TEST_CASE(saelens_normalize_activations_modes_match_the_reference) {
  Weights w = random_weights(5);
  Tensor x = activations(6), xd = f64(x);
  const double sqrt_d = std::sqrt(double(kDIn));
  auto standard = [&](const Tensor& x_in) {
    return torch::relu((x_in - f64(w.b_dec)).matmul(f64(w.W_enc)) + f64(w.b_enc));
  };

  {  // constant_norm_rescale: x * sqrt(d_in)/||x|| per token, undone on the output.
    fs::path dir = testing::fresh_dir("formats_norm_constant");
    write_saelens(dir, {{"architecture", "standard"}, {"d_in", kDIn}, {"d_sae", kDSae}, {"normalize_activations", "constant_norm_rescale"}},
                  saelens_tensors(w));
    sae::Sae model = sae::Sae::load(dir);
    Tensor coeff = sqrt_d / xd.norm(2, {1}, true);
    Tensor f_ref = standard(xd * coeff);
    BOOST_TEST(rel_error(model.encode(x), f_ref) < 1e-5);
    BOOST_TEST(rel_error(model.reconstruct(x), ref_decode(f_ref, w) / coeff) < 1e-5);
    BOOST_TEST(model.decode_needs_input());
    testing::expect_error([&] { model.decode(model.encode(x)); }, {"constant_norm_rescale", "decode(f, x)"});
  }
  {  // layer_norm: (x - mean) / (std + 1e-5) with the unbiased std; output * std + mean.
    fs::path dir = testing::fresh_dir("formats_norm_ln");
    write_saelens(dir, {{"architecture", "standard"}, {"d_in", kDIn}, {"d_sae", kDSae}, {"normalize_activations", "layer_norm"}},
                  saelens_tensors(w));
    sae::Sae model = sae::Sae::load(dir);
    Tensor mu = xd.mean({1}, true);
    Tensor sd = ((xd - mu).pow(2).sum(1, true) / double(kDIn - 1)).sqrt();
    Tensor f_ref = standard((xd - mu) / (sd + 1e-5));
    BOOST_TEST(rel_error(model.encode(x), f_ref) < 1e-5);
    BOOST_TEST(rel_error(model.reconstruct(x), ref_decode(f_ref, w) * sd + mu) < 1e-5);
  }
  {  // expected_average_only_in (legacy spelling: normalize_activations = true): s = sqrt(d_in)/mean||x||.
    fs::path dir = testing::fresh_dir("formats_norm_expected");
    write_saelens(dir, {{"architecture", "standard"}, {"d_in", kDIn}, {"d_sae", kDSae}, {"normalize_activations", true}},
                  saelens_tensors(w));
    sae::Sae model = sae::Sae::load(dir);
    BOOST_TEST(model.normalize_activations == "expected_average_only_in");
    testing::expect_error([&] { model.encode(x); }, {"expected_average_only_in", "estimated"});
    const double s_ref = sqrt_d / xd.norm(2, {1}).mean().item<double>();
    const double s = sae::Sae::estimate_norm_scaling_factor(x);
    BOOST_TEST(std::abs(s - s_ref) / s_ref < 1e-12);
    model.fold_norm_scaling_factor(s);
    BOOST_TEST(model.normalize_activations == "none");
    Tensor f_ref = standard(xd * s_ref);
    BOOST_TEST(rel_error(model.encode(x), f_ref) < 1e-5);
    BOOST_TEST(rel_error(model.decode(model.encode(x)), ref_decode(f_ref, w) / s_ref) < 1e-5);
    BOOST_TEST(model.cfg["folded_norm_scaling_factor"].get<double>() == s);
  }
}

BOOST_AUTO_TEST_CASE(sparsify_topk_matches_the_reference_and_its_hookpoint_is_checked) {
  fs::path dir = testing::fresh_dir("formats_sparsify") / "layers.3";
  fs::create_directories(dir);
  auto g = at::make_generator<at::CPUGeneratorImpl>(7);
  const int64_t expansion = 3, latents = expansion * kDIn, k = 5;
  Tensor enc_w = torch::randn({latents, kDIn}, g, torch::kFloat32) * 0.4;
  Tensor enc_b = torch::randn({latents}, g, torch::kFloat32) * 0.1;
  Tensor W_dec = torch::randn({latents, kDIn}, g, torch::kFloat32) * 0.3;
  Tensor b_dec = torch::randn({kDIn}, g, torch::kFloat32) + 0.5;
  io::save_safetensors(dir / "sae.safetensors", {{"encoder.weight", enc_w}, {"encoder.bias", enc_b}, {"W_dec", W_dec}, {"b_dec", b_dec}});
  atomic_write_text(dir / "cfg.json", json({{"activation", "topk"}, {"expansion_factor", expansion}, {"normalize_decoder", true},
                                            {"num_latents", 0}, {"k", k}, {"multi_topk", false}, {"skip_connection", false},
                                            {"transcode", false}, {"d_in", kDIn}}).dump());
  sae::LoadedSae loaded = sae::load_sae(dir);
  BOOST_TEST(loaded.format == "sparsify");
  BOOST_TEST(loaded.sae.d_sae() == latents);
  Tensor x = activations(8), xd = f64(x);
  // sparsify: pre = ReLU((x - b_dec) @ encoder.weight^T + encoder.bias); keep the top k per token;
  // x_hat = sum of the kept latents' W_dec rows + b_dec.
  Tensor pre = torch::relu((xd - f64(b_dec)).matmul(f64(enc_w).t()) + f64(enc_b));
  Tensor f_ref = torch::zeros_like(pre);
  for (int64_t r = 0; r < kRows; ++r) {
    Tensor order = std::get<1>(pre[r].sort(/*dim=*/0, /*descending=*/true));
    for (int64_t j = 0; j < k; ++j) {
      int64_t i = order[j].item<int64_t>();
      f_ref[r][i] = pre[r][i];
    }
  }
  Tensor x_hat_ref = f_ref.matmul(f64(W_dec)) + f64(b_dec);
  Tensor f = loaded.sae.encode(x);
  BOOST_TEST(rel_error(f, f_ref) < 1e-5);
  BOOST_TEST(((f > 0).sum(1) <= k).all().item<bool>());
  BOOST_TEST(rel_error(loaded.sae.decode(f), x_hat_ref) < 1e-5);
  BOOST_TEST(rel_error(loaded.sae.decode(loaded.sae.encode_topk(x), x), x_hat_ref) < 1e-5);  // the sparse pair
  // Hookpoint layers.3 is the output of block index 3: strata layer 4.
  sae::check_hook_layer(loaded, 4, "m_layer4");
  testing::expect_error([&] { sae::check_hook_layer(loaded, 3, "m_layer3"); }, {"layers.3", "strata layer 4", "layer 3"});
  // Converted to strata's layout, the same SAE.
  loaded.sae.save(dir.parent_path() / "converted");
  BOOST_TEST(rel_error(sae::Sae::load(dir.parent_path() / "converted").encode(x), f_ref) < 1e-5);
}

BOOST_AUTO_TEST_CASE(bf16_weights_and_pre_6_field_names_are_read) {
  fs::path dir = testing::fresh_dir("formats_bf16");
  Weights w = random_weights(9);
  std::map<std::string, Tensor> bf16;
  for (auto& [name, t] : saelens_tensors(w)) bf16[name] = t.to(torch::kBFloat16);
  // SAELens < 6: architecture "standard" + activation_fn_str "topk" with activation_fn_kwargs.k, hook_point.
  write_saelens(dir, {{"d_in", kDIn}, {"d_sae", kDSae}, {"dtype", "bfloat16"}, {"activation_fn_str", "topk"},
                      {"activation_fn_kwargs", {{"k", 4}}}, {"hook_point", "blocks.0.hook_resid_pre"}},
                bf16);
  sae::LoadedSae loaded = sae::load_sae(dir);
  BOOST_TEST(loaded.sae.architecture == "topk");
  BOOST_TEST(loaded.sae.k == 4);
  BOOST_TEST(loaded.sae.W_enc.scalar_type() == torch::kFloat32);
  sae::check_hook_layer(loaded, 0, "m_layer0");  // blocks.0.hook_resid_pre = the embedding output
  Tensor x = activations(10), xd = f64(x);
  auto up = [](const Tensor& t) { return t.to(torch::kBFloat16).to(torch::kFloat64); };  // exact upcast
  Tensor pre = torch::relu((xd - up(w.b_dec)).matmul(up(w.W_enc)) + up(w.b_enc));
  Tensor f_ref = torch::zeros_like(pre);
  auto top = std::get<1>(pre.topk(4, 1));
  f_ref.scatter_(1, top, pre.gather(1, top));
  BOOST_TEST(rel_error(loaded.sae.encode(x), f_ref) < 1e-5);
  BOOST_TEST(rel_error(loaded.sae.decode(loaded.sae.encode(x)), f_ref.matmul(up(w.W_dec)) + up(w.b_dec)) < 1e-5);
}

BOOST_AUTO_TEST_CASE(hook_names_map_to_strata_layers) {
  BOOST_TEST(sae::layer_of_hook("blocks.6.hook_resid_post").value() == 7);
  BOOST_TEST(sae::layer_of_hook("blocks.7.hook_resid_pre").value() == 7);
  BOOST_TEST(sae::layer_of_hook("blocks.0.hook_resid_pre").value() == 0);
  BOOST_TEST(sae::layer_of_hook("hook_embed").value() == 0);  // what strata's own layer-0 SAEs record
  BOOST_TEST(sae::layer_of_hook("layers.6").value() == 7);
  BOOST_TEST(sae::layer_of_hook("gpt_neox.layers.0").value() == 1);
  BOOST_TEST(sae::layer_of_hook("h.11").value() == 12);
  BOOST_TEST(!sae::layer_of_hook("my_sae").has_value());
  testing::expect_error([] { sae::layer_of_hook("blocks.3.hook_mlp_out"); }, {"blocks.3.hook_mlp_out", "not the residual stream"});
  testing::expect_error([] { sae::layer_of_hook("layers.3.mlp"); }, {"layers.3.mlp", "not the residual stream"});
}

BOOST_AUTO_TEST_CASE(unsupported_fields_and_bad_shapes_are_errors_naming_file_and_field) {
  Weights w = random_weights(11);
  const json base = {{"architecture", "standard"}, {"d_in", kDIn}, {"d_sae", kDSae}};
  auto with = [&](json patch) {
    json cfg = base;
    cfg.update(patch);
    return cfg;
  };
  int n = 0;
  auto expect = [&](const json& cfg, const std::map<std::string, Tensor>& tensors, std::initializer_list<std::string> needles) {
    fs::path dir = testing::fresh_dir("formats_error_" + std::to_string(n++));
    write_saelens(dir, cfg, tensors);
    std::vector<std::string> all(needles);
    testing::expect_error([&] { sae::load_sae(dir); }, {all.size() > 0 ? all[0] : "", all.size() > 1 ? all[1] : "",
                                                       all.size() > 2 ? all[2] : "", "formats_error_"});
  };
  expect(with({{"architecture", "gated"}}), saelens_tensors(w), {"cfg.json", "'architecture'", "gated"});
  expect(with({{"normalize_activations", "batch_norm"}}), saelens_tensors(w), {"cfg.json", "'normalize_activations'", "batch_norm"});
  expect(with({{"activation_fn", "tanh-relu"}}), saelens_tensors(w), {"cfg.json", "'activation_fn'", "tanh-relu"});
  expect(with({{"finetuning_scaling_factor", true}}), saelens_tensors(w), {"cfg.json", "'finetuning_scaling_factor'", "true"});
  expect(with({{"reshape_activations", "hook_z"}}), saelens_tensors(w), {"cfg.json", "'reshape_activations'", "hook_z"});
  expect(with({{"apply_b_dec_to_input", "yes"}}), saelens_tensors(w), {"cfg.json", "'apply_b_dec_to_input'", "true or false"});
  expect(with({{"architecture", "topk"}, {"k", kDSae + 1}}), saelens_tensors(w), {"cfg.json", "'k'", "41"});
  expect(with({{"architecture", "jumprelu"}}), saelens_tensors(w), {"sae_weights.safetensors", "threshold", ""});
  expect(with({{"d_in", kDIn + 1}}), saelens_tensors(w), {"cfg.json", "'d_in'", "13"});
  auto bad_shape = saelens_tensors(w);
  bad_shape["W_dec"] = w.W_dec.t().contiguous();
  expect(base, bad_shape, {"sae_weights.safetensors", "'W_dec'", "expected [40, 12]"});
  auto extra = saelens_tensors(w);
  extra["b_gate"] = w.b_enc;
  expect(base, extra, {"sae_weights.safetensors", "'b_gate'", "refuses"});
  auto nan = saelens_tensors(w);
  nan["b_enc"] = w.b_enc.clone();
  nan["b_enc"][3] = std::nan("");
  expect(base, nan, {"sae_weights.safetensors", "'b_enc'", "NaN"});

  // sparsify: a transcoder and a wrong encoder shape.
  fs::path dir = testing::fresh_dir("formats_error_sparsify");
  io::save_safetensors(dir / "sae.safetensors", {{"encoder.weight", torch::zeros({24, kDIn})}, {"encoder.bias", torch::zeros({24})},
                                                 {"W_dec", torch::zeros({24, kDIn})}, {"b_dec", torch::zeros({kDIn})}});
  atomic_write_text(dir / "cfg.json", json({{"d_in", kDIn}, {"num_latents", 24}, {"k", 4}, {"transcode", true}}).dump());
  testing::expect_error([&] { sae::load_sae(dir); }, {"cfg.json", "'transcode'", "formats_error_sparsify"});
  atomic_write_text(dir / "cfg.json", json({{"d_in", kDIn}, {"num_latents", 32}, {"k", 4}}).dump());
  testing::expect_error([&] { sae::load_sae(dir); }, {"sae.safetensors", "'encoder.weight'", "expected [32, 12]"});
  atomic_write_text(dir / "cfg.json", json({{"d_in", kDIn}, {"num_latents", 24}, {"k", 4}, {"activation", "groupmax"}}).dump());
  testing::expect_error([&] { sae::load_sae(dir); }, {"cfg.json", "'activation'", "groupmax"});
  // Neither layout: the error lists what is there.
  fs::path empty = testing::fresh_dir("formats_error_empty");
  atomic_write_text(empty / "weights.bin", "x");
  testing::expect_error([&] { sae::load_sae(empty); }, {"not an SAE directory", "weights.bin"});
}

BOOST_AUTO_TEST_CASE(hf_paths_resolve_from_the_offline_cache_with_a_sub_directory) {
  fs::path cache = testing::fresh_dir("formats_hf_cache");
  const std::string commit = "0123456789abcdef0123456789abcdef01234567";
  fs::path snapshot = cache / "models--some-org--some-saes" / "snapshots" / commit;
  fs::create_directories(snapshot / "layers.1");
  fs::create_directories(cache / "models--some-org--some-saes" / "refs");
  atomic_write_text(cache / "models--some-org--some-saes" / "refs" / "main", commit + "\n");
  const char* previous = std::getenv("HF_HUB_CACHE");
  const std::string saved = previous ? previous : "";
  setenv("HF_HUB_CACHE", cache.c_str(), 1);
  BOOST_TEST(sae::resolve_sae_source("hf://some-org/some-saes/layers.1") == snapshot / "layers.1");
  BOOST_TEST(sae::resolve_sae_source("hf://some-org/some-saes@" + commit + "/layers.1") == snapshot / "layers.1");
  testing::expect_error([] { sae::resolve_sae_source("hf://some-org/some-saes/layers.9"); }, {"layers.9", "not in the cached snapshot"});
  testing::expect_error([] { sae::resolve_sae_source("hf://other/saes/layers.1"); }, {"hf://other/saes/layers.1", "offline"});
  testing::expect_error([] { sae::resolve_sae_source("hf://some-org/some-saes/../x"); }, {"'..'"});
  if (previous) setenv("HF_HUB_CACHE", saved.c_str(), 1); else unsetenv("HF_HUB_CACHE");
}

BOOST_AUTO_TEST_CASE(topk_codes_without_zeros_are_the_dense_codes_and_decode_the_same) {
  Weights w = random_weights(11);
  Tensor x = activations(12);
  sae::Sae model;
  model.architecture = "topk";
  model.k = 5;
  model.W_enc = w.W_enc;
  model.W_dec = w.W_dec;
  model.b_enc = w.b_enc;
  model.b_dec = w.b_dec;
  for (std::string mode : {"none", "layer_norm", "constant_norm_rescale"}) {
    BOOST_TEST_CONTEXT("normalize_activations " << mode) {
      model.normalize_activations = mode;
      sae::TopKCodes codes = model.encode_topk(x);
      BOOST_TEST(codes.values.size(0) == kRows);
      BOOST_TEST(codes.values.size(1) == model.k);
      BOOST_TEST(codes.d_sae == kDSae);
      Tensor f = model.encode(x);
      BOOST_TEST(torch::equal(codes.dense(), f));
      BOOST_TEST(rel_error(model.decode(codes, x), f64(model.decode(f, x))) < 1e-6);
    }
  }
  // Rows with fewer than k positive pre-activations keep zeros among their k values: the same reconstruction.
  model.normalize_activations = "none";
  model.b_enc = w.b_enc - 8.0;
  sae::TopKCodes codes = model.encode_topk(x);
  BOOST_TEST((codes.values == 0).any().item<bool>());
  BOOST_TEST((codes.values > 0).any().item<bool>());
  BOOST_TEST(torch::equal(codes.dense(), model.encode(x)));
  BOOST_TEST(rel_error(model.decode(codes, x), f64(model.decode(model.encode(x)))) < 1e-6);
  // The definition, the top k of ReLU(pre) (encode_topk takes the top k of pre, then their ReLU).
  auto [top_values, top_indices] = torch::relu(model.pre_activation(x)).topk(model.k, -1);
  BOOST_TEST(torch::equal(torch::zeros({kRows, kDSae}).scatter_(-1, top_indices, top_values), model.encode(x)));
  // Codes of another width and a non-TopK SAE are errors.
  sae::TopKCodes other = codes;
  other.d_sae = kDSae + 1;
  testing::expect_error([&] { model.decode(other, x); }, {"41 latents", "40"});
  model.architecture = "standard";
  testing::expect_error([&] { model.encode_topk(x); }, {"encode_topk", "standard"});
}
