// A sharded checkpoint's model.safetensors.index.json on arbitrary bytes, beside two valid shards (the
// phi-tiny-sharded fixture): shard names must stay inside the directory, tensors must be where it says.
#include "core/error.hpp"
#include "fuzz_common.hpp"
#include "io/checkpoint.hpp"

namespace fs = std::filesystem;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  for (const auto& e : fs::directory_iterator(strata::fuzz::test_data() / "models" / "phi-tiny-sharded"))
    if (e.path().extension() == ".safetensors")
      fs::copy_file(e.path(), strata::fuzz::scratch() / e.path().filename(), fs::copy_options::overwrite_existing);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  strata::fuzz::write_file(strata::fuzz::scratch() / "model.safetensors.index.json",
                           {reinterpret_cast<const char*>(data), size});
  try {
    strata::io::CheckpointWeights weights(strata::fuzz::scratch());
    for (const auto& name : weights.names()) weights.info(name);
  } catch (const strata::Error&) {
  }
  return 0;
}
