#define BOOST_TEST_MODULE text
#include <boost/test/unit_test.hpp>

#include <nlohmann/json.hpp>

#include <fstream>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "test_helpers.hpp"
#include "text/tokenizer.hpp"

namespace fs = std::filesystem;
using strata::text::Tokenizer;

namespace {

fs::path tokenizer_dir(const std::string& name) { return strata::testing::data_dir() / "tokenizers" / name; }

const Tokenizer& cached_tokenizer(const std::string& name) {
  static std::map<std::string, Tokenizer> loaded;
  auto it = loaded.find(name);
  if (it == loaded.end()) it = loaded.emplace(name, Tokenizer::load(tokenizer_dir(name))).first;
  return it->second;
}

// Checks every line of a case file; returns how many id lists were compared.
int check_cases(const Tokenizer& tokenizer, const fs::path& file) {
  std::ifstream in(file);
  BOOST_REQUIRE_MESSAGE(in, "cannot open " << file);
  std::string line;
  int compared = 0, line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line);
    std::string text = j.at("text");
    for (auto [key, special] : {std::pair{"ids", false}, std::pair{"ids_with_special", true}}) {
      if (!j.contains(key)) continue;
      auto expected = j[key].get<std::vector<int32_t>>();
      auto enc = tokenizer.encode(text, special);
      BOOST_CHECK_MESSAGE(enc.ids == expected, file.filename().string() << ":" << line_no << " " << key << " "
                                                   << nlohmann::json(text).dump() << "\n  got      "
                                                   << nlohmann::json(enc.ids).dump() << "\n  expected "
                                                   << nlohmann::json(expected).dump());
      BOOST_CHECK_EQUAL(enc.offsets.size(), enc.ids.size());
      BOOST_CHECK_EQUAL(enc.special.size(), enc.ids.size());
      ++compared;
    }
  }
  return compared;
}

void check_model(const std::string& name) {
  const Tokenizer& t = cached_tokenizer(name);
  int n = check_cases(t, tokenizer_dir(name) / "cases.jsonl");
  n += check_cases(t, tokenizer_dir(name) / "external_cases.jsonl");
  BOOST_TEST_MESSAGE(name << ": " << n << " id lists compared");
  BOOST_CHECK_GT(n, 100);
}

}  // namespace

BOOST_AUTO_TEST_CASE(gpt2_matches_hf) { check_model("gpt2"); }
BOOST_AUTO_TEST_CASE(pythia_matches_hf) { check_model("pythia"); }
BOOST_AUTO_TEST_CASE(phi2_matches_hf) { check_model("phi-2"); }
BOOST_AUTO_TEST_CASE(gemma_matches_hf) { check_model("gemma"); }
