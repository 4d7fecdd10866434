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

// Offsets are byte spans of the original text; byte-level tokenizers without a normalizer partition it.
BOOST_AUTO_TEST_CASE(offsets_partition_the_text_and_decode_round_trips) {
  for (const std::string name : {"gpt2", "phi-2", "gemma"}) {
    const Tokenizer& t = cached_tokenizer(name);
    std::ifstream in(tokenizer_dir(name) / "cases.jsonl");
    std::string line;
    int checked = 0;
    while (std::getline(in, line)) {
      std::string text = nlohmann::json::parse(line).at("text");
      auto enc = t.encode(text, false);
      int64_t pos = 0;
      for (auto [b, e] : enc.offsets) {
        BOOST_CHECK_EQUAL(b, pos);
        BOOST_CHECK_GT(e, b);
        pos = e;
      }
      BOOST_CHECK_EQUAL(pos, int64_t(text.size()));
      // Gemma cannot tell a literal U+2581 from a space; every other text decodes back exactly.
      if (name != "gemma" || text.find("\u2581") == std::string::npos)
        BOOST_CHECK_MESSAGE(t.decode(enc.ids) == text, name << ": decode round trip of " << nlohmann::json(text).dump());
      ++checked;
    }
    BOOST_CHECK_GT(checked, 90);
  }
}

BOOST_AUTO_TEST_CASE(known_offsets_and_special_tokens) {
  using Span = std::pair<int64_t, int64_t>;
  const Tokenizer& gpt2 = cached_tokenizer("gpt2");
  auto enc = gpt2.encode("Hello world<|endoftext|>", true);
  BOOST_CHECK((enc.ids == std::vector<int32_t>{15496, 995, 50256}));
  BOOST_CHECK((enc.offsets == std::vector<Span>{{0, 5}, {5, 11}, {11, 24}}));
  BOOST_CHECK((enc.special == std::vector<uint8_t>{0, 0, 1}));
  BOOST_CHECK(gpt2.is_special(50256));
  BOOST_CHECK(!gpt2.is_special(995));
  BOOST_CHECK_EQUAL(gpt2.vocab_size(), 50257);
  BOOST_CHECK(!gpt2.bos_id());
  BOOST_CHECK_EQUAL(gpt2.eos_id().value(), 50256);

  const Tokenizer& gemma = cached_tokenizer("gemma");
  enc = gemma.encode("Hello world", true);
  BOOST_CHECK_EQUAL(enc.ids.front(), 2);
  BOOST_CHECK((enc.offsets.front() == Span{0, 0}));
  BOOST_CHECK_EQUAL(enc.special.front(), 1);
  BOOST_CHECK((enc.offsets.back() == Span{5, 11}));  // "▁world" maps back to " world"
  BOOST_CHECK_EQUAL(gemma.vocab_size(), 256000);
  BOOST_CHECK_EQUAL(gemma.bos_id().value(), 2);
  BOOST_CHECK_EQUAL(gemma.eos_id().value(), 1);
  // Byte fallback: one token per UTF-8 byte, each with its own byte span.
  enc = gemma.encode("\xF0\xA0\xBC\x8E", false);
  BOOST_CHECK((enc.ids == std::vector<int32_t>{457, 377, 405, 359}));
  BOOST_CHECK((enc.offsets == std::vector<Span>{{0, 1}, {1, 2}, {2, 3}, {3, 4}}));

  // Pythia normalizes to NFC: "e" + U+0301 becomes one "é"; its span is the 3 original bytes.
  const Tokenizer& pythia = cached_tokenizer("pythia");
  enc = pythia.encode("caf" "e\xCC\x81", false);
  BOOST_CHECK((enc.offsets.back().second == 6));
  BOOST_CHECK_EQUAL(pythia.decode(enc.ids), "caf\xC3\xA9");
}

BOOST_AUTO_TEST_CASE(vocab_and_merges_directory_equals_tokenizer_json) {
  auto dir = strata::testing::fresh_dir("text_vocab_merges");
  fs::copy_file(tokenizer_dir("gpt2") / "vocab.json", dir / "vocab.json");
  fs::copy_file(tokenizer_dir("gpt2") / "merges.txt", dir / "merges.txt");
  auto pair = Tokenizer::load(dir);
  BOOST_CHECK_EQUAL(pair.vocab_size(), 50257);
  BOOST_CHECK_EQUAL(pair.sha256().size(), 64u);
  BOOST_CHECK_NE(pair.sha256(), cached_tokenizer("gpt2").sha256());
  check_cases(pair, tokenizer_dir("gpt2") / "cases.jsonl");
  check_cases(pair, tokenizer_dir("gpt2") / "external_cases.jsonl");
}

// A vocab.json that parses but maps a token to a non-integer (and the same in added_tokens.json): the error
// names the file and the token instead of surfacing a bare JSON type error.
BOOST_AUTO_TEST_CASE(malformed_vocab_json_error_names_the_file) {
  auto dir = strata::testing::fresh_dir("text_bad_vocab");
  strata::atomic_write_text(dir / "vocab.json", R"({"a": 0, "b": "one", "ab": 2})");
  strata::atomic_write_text(dir / "merges.txt", "#version: 0.2\na b\n");
  strata::testing::expect_error([&] { Tokenizer::load(dir); },
                                {(dir / "vocab.json").string(), "token \"b\"", "\"one\"", "not an integer"});
  strata::atomic_write_text(dir / "vocab.json", R"({"a": 0, "b": 1, "ab": 2})");
  strata::atomic_write_text(dir / "added_tokens.json", R"({"<pad>": 3.5})");
  strata::testing::expect_error([&] { Tokenizer::load(dir); },
                                {(dir / "added_tokens.json").string(), "token \"<pad>\"", "not an integer"});
}

BOOST_AUTO_TEST_CASE(invalid_utf8_is_an_error) {
  BOOST_CHECK_THROW(cached_tokenizer("gpt2").encode("ab\xC3", false), strata::Error);
  BOOST_CHECK_THROW(cached_tokenizer("gpt2").decode({-1}), strata::Error);
}

namespace {

// Writes `content` as tokenizer.json in a fresh directory and returns the error message of loading it.
std::string load_error(const std::string& name, const std::string& content) {
  auto dir = strata::testing::fresh_dir("text_malformed_" + name);
  strata::atomic_write_text(dir / "tokenizer.json", content);
  try {
    Tokenizer::load(dir);
  } catch (const strata::Error& e) {
    std::string message = e.what();
    BOOST_CHECK_MESSAGE(message.find((dir / "tokenizer.json").string()) != std::string::npos,
                        "error does not name the file: " << message);
    return message;
  }
  BOOST_ERROR("loading " << name << " did not fail");
  return "";
}

}  // namespace

BOOST_AUTO_TEST_CASE(malformed_tokenizer_json_is_a_clear_error) {
  BOOST_CHECK(load_error("invalid_json", R"({"model": {"type": "BPE", )").find("invalid JSON") != std::string::npos);
  BOOST_CHECK(load_error("missing_model", R"({"version": "1.0", "added_tokens": []})").find("no \"model\"") !=
              std::string::npos);
  BOOST_CHECK(load_error("unknown_type", R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})")
                  .find("model type \"WordPiece\" is not supported") != std::string::npos);
  auto absent = load_error("absent_merge", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2},
                                              "merges": ["a b", "a c"]}})");
  BOOST_CHECK_MESSAGE(absent.find("merge #2") != std::string::npos && absent.find("\"c\"") != std::string::npos, absent);
  auto dir = strata::testing::fresh_dir("text_no_tokenizer");
  BOOST_CHECK_THROW(Tokenizer::load(dir), strata::Error);
  BOOST_CHECK_THROW(Tokenizer::load(dir / "missing.json"), strata::Error);
}
