// Cross-tokenizer alignment. Two tokenizations of the same document are paired at the byte offsets
// where both end a token: there a causal LM has read exactly the same prefix of the text.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <string_view>

namespace strata::text {

struct Alignment {
  torch::Tensor rows_a, rows_b;  // I64 [m]: paired row indices into a and b, ordered by (doc_id, byte_end)
  double retained_a = 0, retained_b = 0;  // m / rows of each side
};

// doc_*, end_*: I64 [n] per row (the activation store's doc_id and byte_end columns).
// Rows of one side sharing a (doc_id, byte_end) key (e.g. a token emitted twice) keep the first.
// keep(doc, byte_end), when given, further filters keys (e.g. only word ends).
Alignment align_token_ends(const torch::Tensor& doc_a, const torch::Tensor& end_a, const torch::Tensor& doc_b,
                           const torch::Tensor& end_b,
                           const std::function<bool(int64_t doc, int64_t byte_end)>& keep = nullptr);

// True when byte offset `byte_end` of the UTF-8 `text` ends a word: the code point before it is a letter,
// number or combining mark (Unicode categories L, N, M), and the one after it (if any) is not. Use it as
// `keep` to align only at word ends, where both models have seen whole words.
bool is_word_end(std::string_view text, int64_t byte_end);

}  // namespace strata::text
