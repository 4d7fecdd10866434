// Shared by the libFuzzer targets: a private scratch directory, and the rule every target checks. A
// parser given arbitrary bytes may only return or throw strata::Error (a message for the user); any other
// exception, a crash, a leak or undefined behaviour (ASan + UBSan) is a finding.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace strata::fuzz {

// A directory private to this process (under $TMPDIR, removed by scripts/fuzz.sh afterwards).
inline const std::filesystem::path& scratch() {
  static const std::filesystem::path dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/strata-fuzz-XXXXXX";
    if (!::mkdtemp(templ.data())) std::abort();
    return std::filesystem::path(templ);
  }();
  return dir;
}

inline void write_file(const std::filesystem::path& file, std::string_view bytes) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out.flush()) std::abort();
}

// The fixtures of the test suite (tests/data), for targets that need a valid file beside the fuzzed one.
inline std::filesystem::path test_data() { return STRATA_FUZZ_TEST_DATA; }

}  // namespace strata::fuzz
