// `strata run` on an experiment mixing strata-trained, SAELens-format and sparsify-format SAEs: a tiny
// run trains every SAE; two of them are then published (one through `strata sae-convert --to sparsify`,
// one rewritten by hand as a SAELens jumprelu with apply_b_dec_to_input = false and b_enc folded, the
// same function); a second run with `saes = {...}` uses those. The published SAEs compute the same
// functions and every other cell trains with the same seed, so the second run's transfer matrix must
// equal the first's and its verdict must be the same; the manifest and cfg.json name each SAE's source,
// format and hash.
#define BOOST_TEST_MODULE cli_published
#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include <fstream>

#include "core/fs.hpp"
#include "harness/manifest.hpp"
#include "sae/formats.hpp"
#include "sae/sae.hpp"
#include "test_capture_fixture.hpp"
#include "test_helpers.hpp"

namespace fs = std::filesystem;
using namespace strata;
using nlohmann::json;

namespace {

const char* kExperiment = R"(
[experiment]
name = "NAME"
seed = 5
threads = 1

[dataset]
spec = "synthetic"
num_documents = 48
seq_len = 48
batch_size = 8
num_batches = 4

[[models]]
name = "gpt2"
checkpoint = "ckpt-gpt2"
layers = [1, 2, 3]
GPT2_SAES

[[models]]
name = "neox"
checkpoint = "ckpt-neox"
layers = [1, 2, 3]
NEOX_SAES

[sae]
expansion = 4
lr = 1e-3
epochs = 3
min_epochs = 1
batch_size = 128
lr_warmup_steps = 5
l1_warmup_steps = 5
b_dec_init_rows = 512
shuffle_buffer_rows = 512
dead_window_tokens = 2000
resample_interval_steps = 0
checkpoint_interval_steps = 0

[transfer]
top_k = 16
cka_permutations = 20
cka_max_tokens = 128
bootstrap = 10
max_fit_tokens = 512
max_eval_tokens = 256
batch_size = 256
ceiling = false
)";

std::string experiment(const std::string& name, const std::string& gpt2, const std::string& neox) {
  std::string text = kExperiment;
  auto put = [&](const std::string& key, const std::string& value) { text.replace(text.find(key), key.size(), value); };
  put("NAME", name);
  put("GPT2_SAES", gpt2);
  put("NEOX_SAES", neox);
  return text;
}

int run(const fs::path& toml, const fs::path& out, std::string* output) {
  return testing::run_command(
      fmt::format("'{}' run '{}' --out '{}'", testing::strata_binary().string(), toml.string(), out.string()), output);
}

std::map<std::string, json> pairs(const fs::path& run_dir) {
  std::map<std::string, json> out;
  json doc = json::parse(read_text_file(run_dir / "transfer" / "transfer_matrix.json"));
  for (const auto& e : doc["transfer_matrix"]) out[e["source"].get<std::string>() + ">" + e["target"].get<std::string>()] = e;
  return out;
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_run_mixing_trained_saelens_and_sparsify_saes_matches_the_all_trained_run) {
  fs::path dir = testing::fresh_dir("cli_published");
  testing::tiny_checkpoint(dir / "ckpt-gpt2", "gpt2-tiny", 200);
  testing::tiny_checkpoint(dir / "ckpt-neox", "gpt-neox-tiny", 120);
  std::ofstream(dir / "trained.toml") << experiment("trained", "", "");
  std::string output;
  const int trained_code = run(dir / "trained.toml", dir / "trained", &output);
  BOOST_TEST_MESSAGE(output);
  BOOST_TEST_REQUIRE((trained_code == 0 || trained_code == 2), output);

  // Publish gpt2 layer 2 in the sparsify format (its directory is the hookpoint: layers.1 = block 2's output).
  const fs::path sparsify_dir = dir / "published" / "gpt2-sparsify" / "layers.1";
  BOOST_TEST_REQUIRE(testing::run_command(fmt::format("'{}' sae-convert '{}' '{}' --to sparsify", testing::strata_binary().string(),
                                                      (dir / "trained" / "saes" / "gpt2_layer2").string(), sparsify_dir.string()),
                                          &output) == 0,
                     output);
  BOOST_TEST(fs::exists(sparsify_dir / "sae.safetensors"));
  // Publish neox layer 3 as SAELens jumprelu (threshold 0 = ReLU) without b_dec subtraction:
  // (x - b_dec) W_enc + b_enc = x W_enc + (b_enc - b_dec W_enc).
  {
    sae::Sae s = sae::Sae::load(dir / "trained" / "saes" / "neox_layer3");
    sae::Sae p;
    p.architecture = "jumprelu";
    p.W_enc = s.W_enc;
    p.W_dec = s.W_dec;
    p.b_dec = s.b_dec;
    p.b_enc = (s.b_enc.to(torch::kFloat64) - torch::mv(s.W_enc.t().to(torch::kFloat64), s.b_dec.to(torch::kFloat64))).to(torch::kFloat32);
    p.threshold = torch::zeros_like(s.b_enc);
    p.apply_b_dec_to_input = false;
    p.cfg = {{"hook_name", "blocks.2.hook_resid_post"}, {"model_name", "neox-tiny"}};
    p.save(dir / "published" / "neox-saelens");
  }
  std::ofstream(dir / "mixed.toml") << experiment("mixed", "saes = { \"2\" = \"published/gpt2-sparsify/layers.1\" }",
                                                  "saes = { \"3\" = \"published/neox-saelens\" }");
  const int mixed_code = run(dir / "mixed.toml", dir / "mixed", &output);
  BOOST_TEST_MESSAGE(output);
  BOOST_TEST_REQUIRE((mixed_code == 0 || mixed_code == 2), output);

  // Each SAE's source and format are recorded for the report, with the published files' hash.
  harness::Manifest manifest = harness::Manifest::load(dir / "mixed" / "manifest.json");
  std::map<std::string, json> recorded;
  for (const auto& cell : manifest.section("cells")) recorded[cell["name"].get<std::string>()] = cell["sae"];
  BOOST_TEST(recorded["gpt2_layer2"]["format"] == "sparsify");
  BOOST_TEST(recorded["neox_layer3"]["format"] == "saelens");
  BOOST_TEST(recorded["gpt2_layer1"]["source"] == "trained");
  BOOST_TEST(recorded["neox_layer3"]["sha256"].get<std::string>() ==
             sae::sae_sha256(sae::load_sae(dir / "published" / "neox-saelens")));
  json cfg = json::parse(read_text_file(dir / "mixed" / "saes" / "gpt2_layer2" / "cfg.json"));
  BOOST_TEST(cfg["published"]["format"] == "sparsify");
  BOOST_TEST(cfg["published"]["hook_name"] == "layers.1");
  BOOST_TEST(cfg["metrics"]["fvu"].get<double>() > 0);
  // The report's SAE table names each SAE's source and format.
  const std::string saes_csv = read_text_file(dir / "mixed" / "report" / "tables" / "saes.csv");
  auto row_of = [&](const std::string& cell) {
    const size_t at = saes_csv.find("\n" + cell + ",");
    return at == std::string::npos ? std::string() : saes_csv.substr(at + 1, saes_csv.find('\n', at + 1) - at - 1);
  };
  BOOST_TEST(row_of("gpt2_layer2").find(",sparsify (" + sparsify_dir.string() + "),") != std::string::npos, saes_csv);
  BOOST_TEST(row_of("neox_layer3").find(",saelens (" + (dir / "published" / "neox-saelens").string() + "),") !=
                 std::string::npos,
             saes_csv);
  BOOST_TEST(row_of("gpt2_layer1").find(",trained,") != std::string::npos, saes_csv);

  // The same functions give the same transfer matrix, pair for pair.
  auto a = pairs(dir / "trained"), b = pairs(dir / "mixed");
  BOOST_TEST_REQUIRE(a.size() == 36u);
  BOOST_TEST_REQUIRE(b.size() == a.size());
  for (const auto& [key, entry] : a)
    for (const char* metric : {"q", "q_excess", "fvu_target"}) {
      if (!entry.contains(metric) || !entry[metric].is_number()) continue;
      BOOST_TEST(std::abs(entry[metric].get<double>() - b[key][metric].get<double>()) < 1e-4, key << " " << metric);
    }
  // Every gate decides the same, except that Gate 2 asks convergence only of the SAEs strata trained: the
  // mixed run's Gate 2 reasons are the trained run's minus those about the two published cells.
  const json gates_a = json::parse(read_text_file(dir / "trained" / "gates" / "gates.json"));
  const json gates_b = json::parse(read_text_file(dir / "mixed" / "gates" / "gates.json"));
  for (const char* tier : {"must_pass", "should_pass"}) {
    BOOST_TEST_REQUIRE(gates_a[tier].size() == gates_b[tier].size());
    for (size_t i = 0; i < gates_a[tier].size(); ++i) {
      const json &ga = gates_a[tier][i], &gb = gates_b[tier][i];
      if (ga["name"] != "gate2_saes") {
        BOOST_TEST(ga["status"] == gb["status"], ga["name"]);
        continue;
      }
      std::vector<std::string> expected;
      for (const auto& reason : ga["reasons"]) {
        const std::string text = reason.get<std::string>();
        bool published_convergence = (text.rfind("gpt2_layer2:", 0) == 0 || text.rfind("neox_layer3:", 0) == 0) &&
                                     text.find("not converged") != std::string::npos;
        if (!published_convergence) expected.push_back(text);
      }
      BOOST_TEST(gb["reasons"].get<std::vector<std::string>>() == expected, gb["reasons"].dump());
    }
  }
  BOOST_TEST(mixed_code == (gates_b["must_pass_ok"].get<bool>() ? 0 : 2));
}
