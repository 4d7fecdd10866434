// An SAE's cfg.json on arbitrary bytes, beside valid weights (d_in 4, d_sae 8): architecture, k, d_in
// and d_sae must be checked, with a strata::Error naming cfg.json, before the SAE is used.
#include <torch/torch.h>

#include "core/error.hpp"
#include "fuzz_common.hpp"
#include "io/safetensors.hpp"
#include "sae/sae.hpp"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  strata::io::save_safetensors(strata::fuzz::scratch() / "sae_weights.safetensors",
                               {{"W_enc", torch::ones({4, 8})}, {"W_dec", torch::ones({8, 4})},
                                {"b_enc", torch::zeros({8})}, {"b_dec", torch::zeros({4})}});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  strata::fuzz::write_file(strata::fuzz::scratch() / "cfg.json", {reinterpret_cast<const char*>(data), size});
  try {
    const auto sae = strata::sae::Sae::load(strata::fuzz::scratch());
    sae.encode(torch::ones({2, sae.d_in()}));
  } catch (const strata::Error&) {
  }
  return 0;
}
