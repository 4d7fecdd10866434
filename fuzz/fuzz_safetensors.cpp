// The safetensors reader on arbitrary bytes: the header length, the JSON header, dtypes, shapes and
// offsets are validated against the file size before any tensor is touched; then every tensor is loaded.
#include "core/error.hpp"
#include "fuzz_common.hpp"
#include "io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto file = strata::fuzz::scratch() / "model.safetensors";
  strata::fuzz::write_file(file, {reinterpret_cast<const char*>(data), size});
  try {
    strata::io::SafetensorsFile st(file);
    for (const auto& name : st.names()) {
      const auto& info = st.info(name);
      st.load(name);
      if (!info.shape.empty()) st.load_rows(name, 0, info.shape[0] / 2, torch::kFloat32);
    }
  } catch (const strata::Error&) {
  }
  return 0;
}
