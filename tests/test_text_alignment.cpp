#define BOOST_TEST_MODULE text_alignment
#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include "test_helpers.hpp"
#include "text/alignment.hpp"
#include "text/tokenizer.hpp"

using namespace strata::text;

namespace {

torch::Tensor i64(const std::vector<int64_t>& v) { return torch::tensor(v, torch::kInt64); }
std::vector<int64_t> to_vec(const torch::Tensor& t) {
  auto c = t.contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

}  // namespace

// "naïve café" (ï and é are 2 bytes): a byte-level tokenizer may end a token inside a character.
BOOST_AUTO_TEST_CASE(aligns_known_token_ends_with_multibyte_characters) {
  // bytes: n a ï(2,3) v e ' ' c a f é(10,11) -> 12 bytes
  // A: "na" "ï"-first-byte "ï"-second-byte "ve" " caf" "é"   ends 2 3 4 6 10 12
  // B: "naï" "ve" " café"                                    ends 4 6 12
  auto doc_a = i64({0, 0, 0, 0, 0, 0}), end_a = i64({2, 3, 4, 6, 10, 12});
  auto doc_b = i64({0, 0, 0}), end_b = i64({4, 6, 12});
  auto al = align_token_ends(doc_a, end_a, doc_b, end_b);
  BOOST_CHECK((to_vec(al.rows_a) == std::vector<int64_t>{2, 3, 5}));
  BOOST_CHECK((to_vec(al.rows_b) == std::vector<int64_t>{0, 1, 2}));
  BOOST_CHECK_CLOSE(al.retained_a, 0.5, 1e-9);
  BOOST_CHECK_CLOSE(al.retained_b, 1.0, 1e-9);

  const std::string text = "na\xC3\xAFve caf\xC3\xA9";
  BOOST_CHECK(!is_word_end(text, 3));  // inside ï
  BOOST_CHECK(!is_word_end(text, 4));  // ï is followed by a letter
  BOOST_CHECK(is_word_end(text, 6));   // "naïve" then a space
  BOOST_CHECK(!is_word_end(text, 7));  // after the space
  BOOST_CHECK(is_word_end(text, 12));  // end of text after é
  BOOST_CHECK(!is_word_end(text, 11));
  auto words = align_token_ends(doc_a, end_a, doc_b, end_b, [&](int64_t, int64_t e) { return is_word_end(text, e); });
  BOOST_CHECK((to_vec(words.rows_a) == std::vector<int64_t>{3, 5}));
  BOOST_CHECK((to_vec(words.rows_b) == std::vector<int64_t>{1, 2}));
}

// Real tokenizations: GPT-2 and Gemma on the same two documents, known from the HF fixtures.
BOOST_AUTO_TEST_CASE(aligns_gpt2_and_gemma_tokenizations) {
  auto dir = strata::testing::data_dir() / "tokenizers";
  auto gpt2 = Tokenizer::load(dir / "gpt2"), gemma = Tokenizer::load(dir / "gemma");
  const std::vector<std::string> docs{"Hello world", "caf\xC3\xA9 \xC2\xBD"};
  std::vector<int64_t> da, ea, db, eb;
  for (int64_t d = 0; d < 2; ++d) {
    auto a = gpt2.encode(docs[d], false), b = gemma.encode(docs[d], true);
    for (auto [s, e] : a.offsets) da.push_back(d), ea.push_back(e);
    for (auto [s, e] : b.offsets) db.push_back(d), eb.push_back(e);
  }
  // GPT-2: "Hello" " world" | "ca" "f" "é" " " "½"  (½ is 0xC2 0xBD: 2 byte tokens)
  // Gemma: <bos> "Hello" "▁world" | <bos> "café" "▁" "½"  -- checked against the tokenizers below
  BOOST_CHECK((gpt2.encode(docs[0], false).ids == std::vector<int32_t>{15496, 995}));
  BOOST_CHECK((gemma.encode(docs[0], true).ids == std::vector<int32_t>{2, 4521, 2134}));
  auto al = align_token_ends(i64(da), i64(ea), i64(db), i64(eb));
  // Every aligned pair ends at the same byte of the same document.
  auto ra = to_vec(al.rows_a), rb = to_vec(al.rows_b);
  BOOST_REQUIRE_EQUAL(ra.size(), rb.size());
  for (size_t k = 0; k < ra.size(); ++k) {
    BOOST_CHECK_EQUAL(da[ra[k]], db[rb[k]]);
    BOOST_CHECK_EQUAL(ea[ra[k]], eb[rb[k]]);
  }
  // "Hello"(5), " world"(11) in doc 0; "café" ends at 5 and the text at 8 in doc 1 for both tokenizers.
  std::vector<std::pair<int64_t, int64_t>> keys;
  for (auto r : ra) keys.emplace_back(da[r], ea[r]);
  BOOST_CHECK((keys == std::vector<std::pair<int64_t, int64_t>>{{0, 5}, {0, 11}, {1, 5}, {1, 8}}));
}
