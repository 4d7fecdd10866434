// Capture in a low-precision compute dtype (issue 15): the forward pass runs in bf16/f16 with HF's upcasts,
// the rows reach the store in its own dtype, and the meta records both.
#define BOOST_TEST_MODULE capture_dtype
#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include "capture/capture.hpp"
#include "io/activation_store.hpp"
#include "test_capture_fixture.hpp"
#include "test_helpers.hpp"

namespace fs = std::filesystem;
using namespace strata;

BOOST_AUTO_TEST_CASE(bf16_compute_stays_within_the_low_precision_row_of_f32) {
  static const std::vector<text::Document> docs = text::load_dataset("synthetic", 100);
  // Its own copy of the capture checkpoint, so that it may run beside test_capture.
  const fs::path ckpt = testing::tiny_checkpoint(testing::fresh_dir("capture-dtype-tiny-gpt2"), "gpt2-tiny", 300);
  capture::CaptureOptions options;
  options.layers = {0, 2, 4};
  options.batch_size = 4;
  options.num_batches = 2;
  options.seq_len = 48;
  const fs::path f32_dir = testing::fresh_dir("capture-dtype-f32");
  capture::capture_model("tiny", ckpt, text::DocumentReader(docs), "synthetic", options, f32_dir);
  for (auto dtype : {torch::kBFloat16}) {  // f16: CUDA only with LibTorch 1.13 (see the next test)
    BOOST_TEST_CONTEXT(c10::toString(dtype)) {
      options.compute_dtype = dtype;
      const fs::path dir = testing::fresh_dir(std::string("capture-dtype-") + c10::toString(dtype));
      auto result = capture::capture_model("tiny", ckpt, text::DocumentReader(docs), "synthetic", options, dir);
      for (int layer : result.layers) {
        auto reference = io::ActivationStore::open(f32_dir, "tiny", layer);
        auto store = io::ActivationStore::open(dir, "tiny", layer);
        BOOST_TEST(store.meta()["compute_dtype"] == (dtype == torch::kBFloat16 ? "bf16" : "f16"));
        BOOST_TEST(reference.meta()["compute_dtype"] == "f32");
        BOOST_TEST(store.meta()["store_dtype"] == "f32");  // independent of the compute dtype
        BOOST_REQUIRE(store.rows() == reference.rows());
        auto got = store.read_rows(0, store.rows()).to(torch::kFloat64);
        auto want = reference.read_rows(0, reference.rows()).to(torch::kFloat64);
        const double normwise = ((got - want).norm() / want.norm()).item<double>();
        BOOST_TEST_MESSAGE("layer " << layer << ": normwise error " << normwise);
        BOOST_TEST(normwise <= 3e-2);  // the low-precision row of tests/test_models.cpp
        BOOST_TEST(normwise > 1e-6);     // it did compute in low precision
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(f16_compute_on_the_cpu_fails_before_writing_a_store) {
  static const std::vector<text::Document> docs = text::load_dataset("synthetic", 20);
  const fs::path ckpt = testing::tiny_checkpoint(testing::fresh_dir("capture-dtype-tiny-gpt2-f16"), "gpt2-tiny", 300);
  capture::CaptureOptions options;
  options.layers = {2};
  options.num_batches = 1;
  options.compute_dtype = torch::kFloat16;
  options.seq_len = 48;  // within the tiny model's 64 positions, so the dtype check is what fails
  const fs::path dir = testing::fresh_dir("capture-dtype-f16");
  testing::expect_error(
      [&] { capture::capture_model("tiny", ckpt, text::DocumentReader(docs), "synthetic", options, dir); },
      {"f16 needs a CUDA device", "bf16 or f32"});
  BOOST_TEST(fs::is_empty(dir));
}
