// `strata forward` as a user runs it: token ids in JSON, every hidden state out in safetensors, matching
// the Hugging Face reference of each fixture; bad input fails with a message naming the file.
#define BOOST_TEST_MODULE cli_forward
#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include <fstream>

#include "io/safetensors.hpp"
#include "test_helpers.hpp"

namespace fs = std::filesystem;
using namespace strata;

namespace {

fs::path fixture(const std::string& name) { return testing::data_dir() / "models" / name; }

std::string quoted(const fs::path& p) { return "'" + p.string() + "'"; }

// The reference's input_ids and attention_mask as the JSON `strata forward --ids` reads.
fs::path write_ids(const io::SafetensorsFile& reference, const fs::path& file) {
  auto rows = [](const torch::Tensor& t) {
    nlohmann::json out = nlohmann::json::array();
    for (int64_t b = 0; b < t.size(0); ++b) {
      auto row = t[b].to(torch::kInt64).contiguous();
      out.push_back(std::vector<int64_t>(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel()));
    }
    return out;
  };
  std::ofstream(file) << nlohmann::json{{"input_ids", rows(reference.load("input_ids"))},
                                        {"attention_mask", rows(reference.load("attention_mask"))}}
                             .dump();
  return file;
}

}  // namespace

BOOST_AUTO_TEST_CASE(forward_cli_writes_every_hidden_state_within_the_hf_tolerance) {
  for (const char* name : {"gpt2-tiny", "gpt-neox-tiny", "phi-tiny", "gemma-tiny"}) {
    BOOST_TEST_CONTEXT("fixture " << name) {
      const fs::path dir = testing::fresh_dir(std::string("cli-forward-") + name);
      io::SafetensorsFile reference(fixture(name) / "reference.safetensors");
      const fs::path ids = write_ids(reference, dir / "ids.json");
      std::string output;
      const int code = testing::run_command(fmt::format("{} forward --model {} --ids {} --out {}",
                                                        quoted(testing::strata_binary()), quoted(fixture(name)),
                                                        quoted(ids), quoted(dir / "out.safetensors")),
                                            &output);
      BOOST_TEST_REQUIRE(code == 0, output);
      io::SafetensorsFile got(dir / "out.safetensors");
      const torch::Tensor real = reference.load("attention_mask").to(torch::kBool);
      std::vector<std::string> names{"embed", "final_norm", "logits"};
      for (const auto& tensor : reference.names())
        if (tensor.rfind("resid_post.", 0) == 0) names.push_back(tensor);
      BOOST_TEST(names.size() > 4u);
      for (const auto& tensor : names) {
        BOOST_TEST_REQUIRE(got.contains(tensor), tensor);
        const torch::Tensor ref = reference.load(tensor).to(torch::kFloat64), out = got.load(tensor).to(torch::kFloat64);
        BOOST_TEST_REQUIRE(out.sizes() == ref.sizes(), tensor);
        // The bound of the model tests: |got - ref| <= 5e-5 + 1e-5 |ref| at every real position.
        const double worst = ((out - ref).abs() / (5e-5 + 1e-5 * ref.abs())).index({real}).max().item<double>();
        BOOST_TEST(worst <= 1.0, tensor << ": " << worst << " of the bound");
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(forward_cli_rejects_bad_ids_naming_the_file) {
  const fs::path dir = testing::fresh_dir("cli-forward-bad");
  auto run = [&](const std::string& json_text) {
    const fs::path ids = dir / "ids.json";
    std::ofstream(ids) << json_text;
    std::string output;
    const int code = testing::run_command(fmt::format("{} forward --model {} --ids {} --out {}",
                                                      quoted(testing::strata_binary()), quoted(fixture("gpt2-tiny")),
                                                      quoted(ids), quoted(dir / "out.safetensors")),
                                          &output);
    BOOST_TEST(code == 1, output);
    BOOST_TEST(output.find("ids.json") != std::string::npos, output);
    BOOST_TEST(!fs::exists(dir / "out.safetensors"));
    return output;
  };
  BOOST_TEST(run("{\"input_ids\": [[1, 2,").find("not valid JSON") != std::string::npos);
  BOOST_TEST(run("{\"input_ids\": [[1, 2.5]]}").find("non-integer") != std::string::npos);
  BOOST_TEST(run("{\"input_ids\": [[1, 2]], \"attention_mask\": [[1, 7]]}").find("0 or 1") != std::string::npos);

  std::ofstream(dir / "oov.json") << "{\"input_ids\": [[1, 99999]]}";
  std::string output;
  BOOST_TEST(testing::run_command(fmt::format("{} forward --model {} --ids {} --out {}", quoted(testing::strata_binary()),
                                              quoted(fixture("gpt2-tiny")), quoted(dir / "oov.json"),
                                              quoted(dir / "out.safetensors")),
                                  &output) == 1);
  BOOST_TEST(output.find("token id 99999 is outside the model's vocabulary [0, 512)") != std::string::npos, output);
  BOOST_TEST(!fs::exists(dir / "out.safetensors"));
}
