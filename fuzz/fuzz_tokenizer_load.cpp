// Tokenizer loading on arbitrary files (a tokenizer.json, or a vocab.json + merges.txt pair), then
// encoding and decoding the rest of the input with whatever loaded.
#include <fuzzer/FuzzedDataProvider.h>

#include "core/error.hpp"
#include "fuzz_common.hpp"
#include "text/tokenizer.hpp"

namespace fs = std::filesystem;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider input(data, size);
  const bool pair = input.ConsumeBool();
  const fs::path dir = strata::fuzz::scratch() / (pair ? "pair" : "json");
  fs::create_directories(dir);
  if (pair) {
    strata::fuzz::write_file(dir / "vocab.json", input.ConsumeRandomLengthString());
    strata::fuzz::write_file(dir / "merges.txt", input.ConsumeRandomLengthString());
  } else {
    strata::fuzz::write_file(dir / "tokenizer.json", input.ConsumeRandomLengthString());
  }
  const std::string text = input.ConsumeRemainingBytesAsString();
  try {
    const auto tokenizer = strata::text::Tokenizer::load(dir);
    const auto encoding = tokenizer.encode(text, true);
    tokenizer.decode(encoding.ids);
  } catch (const strata::Error&) {
  }
  return 0;
}
