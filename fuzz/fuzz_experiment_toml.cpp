// The TOML experiment parser on arbitrary bytes: every error must be a strata::Error with file:line:col.
#include "core/error.hpp"
#include "fuzz_common.hpp"
#include "harness/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    strata::harness::parse_experiment(std::string(reinterpret_cast<const char*>(data), size), "fuzz.toml",
                                      strata::fuzz::scratch());
  } catch (const strata::Error&) {
  }
  return 0;
}
