#define BOOST_TEST_MODULE io
#include <boost/test/unit_test.hpp>

#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "test_helpers.hpp"

using namespace strata;

BOOST_AUTO_TEST_CASE(safetensors_round_trip_all_dtypes) {
  auto dir = testing::fresh_dir("core_safetensors");
  std::map<std::string, torch::Tensor> tensors{
      {"f32", torch::randn({3, 4})},
      {"f16", torch::randn({5}).to(torch::kFloat16)},
      {"bf16", torch::randn({2, 2}).to(torch::kBFloat16)},
      {"f64", torch::randn({2}, torch::kFloat64)},
      {"i64", torch::arange(6, torch::kInt64).reshape({2, 3})},
      {"u8", torch::tensor({1, 2, 3}, torch::kUInt8)},
      {"flag", torch::tensor({true, false})},
      {"scalar", torch::tensor(3.5f)},
  };
  io::save_safetensors(dir / "a.safetensors", tensors, {{"format", "pt"}});
  io::SafetensorsFile file(dir / "a.safetensors");
  BOOST_TEST(file.metadata().at("format") == "pt");
  for (const auto& [name, t] : tensors) {
    auto got = file.load(name);
    BOOST_TEST(got.scalar_type() == t.scalar_type());
    BOOST_TEST(got.sizes() == t.sizes());
    BOOST_TEST(torch::equal(got, t), name);
  }
  BOOST_TEST(file.load_rows("f32", 1, 3).equal(tensors["f32"].slice(0, 1, 3)));
}

