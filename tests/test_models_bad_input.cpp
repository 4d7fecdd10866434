#define BOOST_TEST_MODULE models_bad_input
#include <boost/test/unit_test.hpp>

#include <fstream>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "io/safetensors.hpp"
#include "models/transformer.hpp"
#include "test_helpers.hpp"

// Checkpoints and requests the model layer must refuse with a clear strata::Error.

using namespace strata;
namespace fs = std::filesystem;

namespace {

fs::path fixture(const std::string& name) { return testing::data_dir() / "models" / name; }


// A copy of a fixture whose config.json is edited by `edit`.
fs::path copy_with_config(const std::string& name, const std::string& test,
                          const std::function<void(nlohmann::json&)>& edit) {
  auto dir = testing::fresh_dir(test);
  for (const auto& e : fs::directory_iterator(fixture(name))) fs::copy_file(e.path(), dir / e.path().filename());
  auto config = nlohmann::json::parse(read_text_file(dir / "config.json"));
  edit(config);
  fs::permissions(dir / "config.json", fs::perms::owner_write, fs::perm_options::add);
  atomic_write_text(dir / "config.json", config.dump(2));
  return dir;
}

}  // namespace

BOOST_AUTO_TEST_CASE(unknown_model_type_lists_supported_ones) {
  testing::expect_error([] { models::parse_config({{"model_type", "llama"}}, "some/config.json"); },
               {"some/config.json", "'llama'", "gpt2, gpt_neox, phi, gemma"});
  auto dir = copy_with_config("gpt2-tiny", "models_bad_type", [](auto& c) { c["model_type"] = "mistral"; });
  testing::expect_error([&] { models::Transformer::load(dir); }, {"config.json", "'mistral'", "gpt2, gpt_neox, phi, gemma"});
  testing::expect_error([] { models::parse_config({{"n_embd", 4}}, "c.json"); }, {"model_type"});
}

BOOST_AUTO_TEST_CASE(config_hidden_size_disagreeing_with_weights) {
  auto dir = copy_with_config("gpt2-tiny", "models_bad_hidden", [](auto& c) { c["n_embd"] = 64; });
  testing::expect_error([&] { models::Transformer::load(dir); }, {"hidden_size 64", "config.json does not describe these weights"});
  auto gemma = copy_with_config("gemma-tiny-bf16", "models_bad_heads", [](auto& c) { c["num_key_value_heads"] = 2; });
  testing::expect_error([&] { models::Transformer::load(gemma); }, {"k_proj.weight", "does not describe"});
  auto layers = copy_with_config("phi-tiny", "models_bad_layers", [](auto& c) { c["num_hidden_layers"] = 5; });
  testing::expect_error([&] { models::Transformer::load(layers); }, {"missing", "model.layers.4."});
  auto fewer = copy_with_config("gpt-neox-tiny", "models_fewer_layers", [](auto& c) { c["num_hidden_layers"] = 3; });
  testing::expect_error([&] { models::Transformer::load(fewer); }, {"not used", "gpt_neox.layers.3."});
}

BOOST_AUTO_TEST_CASE(unsupported_options_are_errors_not_silently_ignored) {
  testing::expect_error([] { models::parse_config({{"model_type", "phi"}, {"qk_layernorm", true}}, "c.json"); }, {"qk_layernorm"});
  testing::expect_error([] { models::parse_config({{"model_type", "gpt_neox"}, {"rope_scaling", {{"type", "linear"}}}}, "c.json"); },
               {"rope_scaling"});
  testing::expect_error([] { models::parse_config({{"model_type", "gpt2"}, {"activation_function", "quick_gelu"}}, "c.json"); },
               {"quick_gelu"});
  testing::expect_error([] { models::parse_config({{"model_type", "gpt2"}, {"n_embd", 30}, {"n_head", 4}}, "c.json"); },
               {"multiple"});
  testing::expect_error([] { models::parse_config({{"model_type", "gpt2"}, {"n_embd", "big"}}, "c.json"); }, {"'n_embd'"});
}

BOOST_AUTO_TEST_CASE(pickle_only_checkpoint_is_refused) {
  auto dir = testing::fresh_dir("models_pickle");
  fs::copy_file(fixture("gpt2-tiny") / "config.json", dir / "config.json");
  std::ofstream(dir / "pytorch_model.bin") << "pickle";
  testing::expect_error([&] { models::Transformer::load(dir); }, {"pickle", "arbitrary code"});
}

BOOST_AUTO_TEST_CASE(bad_forward_requests) {
  auto model = models::Transformer::load(fixture("gpt2-tiny"));
  torch::NoGradGuard no_grad;
  torch::Tensor ids = torch::ones({1, 4}, torch::kInt64);
  models::ForwardRequest request;
  request.blocks = {4};
  testing::expect_error([&] { model.forward(ids, {}, request); }, {"block 4 does not exist", "4 blocks"});
  request.blocks = {0};
  testing::expect_error([&] { model.forward(ids * 512, {}, request); }, {"512", "vocabulary"});
  testing::expect_error([&] { model.forward(torch::ones({1, 65}, torch::kInt64), {}, request); }, {"64 learned positions"});
  testing::expect_error([&] { model.forward(ids, torch::ones({1, 3}), request); }, {"attention_mask"});
}

BOOST_AUTO_TEST_CASE(from_parameters_checks_names_and_shapes) {
  auto spec = models::parse_config({{"model_type", "gemma"}, {"hidden_size", 8}, {"num_hidden_layers", 1},
                                    {"num_attention_heads", 2}, {"num_key_value_heads", 1}, {"head_dim", 4},
                                    {"intermediate_size", 16}, {"vocab_size", 10}},
                                   "tiny gemma");
  auto params = models::Transformer::init_parameters(spec, 1);
  auto missing = params;
  missing.erase("model.norm.weight");
  testing::expect_error([&] { models::Transformer::from_parameters(spec, missing); }, {"missing", "model.norm.weight"});
  auto extra = params;
  extra["lm_head.weight"] = torch::zeros({10, 8});
  testing::expect_error([&] { models::Transformer::from_parameters(spec, extra); }, {"not used", "lm_head.weight"});
  auto wrong = params;
  wrong["model.layers.0.mlp.up_proj.weight"] = torch::zeros({16, 9});
  testing::expect_error([&] { models::Transformer::from_parameters(spec, wrong); }, {"up_proj", "[16, 9]", "[16, 8]"});
}
