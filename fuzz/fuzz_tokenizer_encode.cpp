// Encoding arbitrary bytes with the real tokenizers of the fixtures (GPT-2, Pythia, phi-2, Gemma): the
// first byte picks the tokenizer. Invalid UTF-8 must be a strata::Error; valid text must round-trip.
#include <vector>

#include "core/error.hpp"
#include "fuzz_common.hpp"
#include "text/tokenizer.hpp"

namespace {
const std::vector<strata::text::Tokenizer>& tokenizers() {
  static const std::vector<strata::text::Tokenizer> all = [] {
    std::vector<strata::text::Tokenizer> out;
    for (const char* name : {"gpt2", "pythia", "phi-2", "gemma"})
      out.push_back(strata::text::Tokenizer::load(strata::fuzz::test_data() / "tokenizers" / name));
    return out;
  }();
  return all;
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tokenizers();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto& tokenizer = tokenizers()[data[0] % tokenizers().size()];
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    const auto encoding = tokenizer.encode(text, false);
    if (encoding.ids.size() != encoding.offsets.size()) __builtin_trap();
    for (const auto& [begin, end] : encoding.offsets)
      if (begin < 0 || end < begin || end > static_cast<int64_t>(text.size())) __builtin_trap();
    tokenizer.decode(encoding.ids);
  } catch (const strata::Error&) {
  }
  return 0;
}
