#include "text/alignment.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "core/error.hpp"
#include "text/unicode.hpp"

namespace strata::text {
namespace {

struct Keyed {
  std::vector<std::pair<int64_t, int64_t>> keys;
  std::vector<int64_t> rows;
};

// First row for every key, sorted by key.
Keyed unique_sorted(const torch::Tensor& doc, const torch::Tensor& end) {
  auto d = doc.to(torch::kInt64).contiguous();
  auto e = end.to(torch::kInt64).contiguous();
  if (d.numel() != e.numel()) fail("alignment: doc_id and byte_end columns differ in length");
  const int64_t n = d.numel();
  const int64_t* dp = d.data_ptr<int64_t>();
  const int64_t* ep = e.data_ptr<int64_t>();
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
    return dp[x] != dp[y] ? dp[x] < dp[y] : ep[x] < ep[y];
  });
  Keyed out;
  for (int64_t r : order) {
    std::pair<int64_t, int64_t> key{dp[r], ep[r]};
    if (!out.keys.empty() && out.keys.back() == key) continue;
    out.keys.push_back(key);
    out.rows.push_back(r);
  }
  return out;
}

}  // namespace

Alignment align_token_ends(const torch::Tensor& doc_a, const torch::Tensor& end_a, const torch::Tensor& doc_b,
                           const torch::Tensor& end_b, const std::function<bool(int64_t, int64_t)>& keep) {
  Keyed a = unique_sorted(doc_a, end_a), b = unique_sorted(doc_b, end_b);
  std::vector<int64_t> rows_a, rows_b;
  size_t i = 0, j = 0;
  while (i < a.keys.size() && j < b.keys.size()) {
    if (a.keys[i] < b.keys[j]) ++i;
    else if (b.keys[j] < a.keys[i]) ++j;
    else {
      if (!keep || keep(a.keys[i].first, a.keys[i].second)) {
        rows_a.push_back(a.rows[i]);
        rows_b.push_back(b.rows[j]);
      }
      ++i, ++j;
    }
  }
  Alignment out;
  out.rows_a = torch::tensor(rows_a, torch::kInt64);
  out.rows_b = torch::tensor(rows_b, torch::kInt64);
  out.retained_a = doc_a.numel() ? double(rows_a.size()) / double(doc_a.numel()) : 0.0;
  out.retained_b = doc_b.numel() ? double(rows_b.size()) / double(doc_b.numel()) : 0.0;
  return out;
}

}  // namespace strata::text

namespace strata::text {

bool is_word_end(std::string_view text, int64_t byte_end) {
  if (byte_end <= 0 || byte_end > int64_t(text.size())) return false;
  size_t p = size_t(byte_end) - 1;  // start of the code point that ends before byte_end
  while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
  int len;
  char32_t before = unicode::decode_at(text, p, len);
  if (p + len != size_t(byte_end)) return false;  // byte_end falls inside a character
  if (!unicode::is_word_char(before)) return false;
  if (size_t(byte_end) == text.size()) return true;
  return !unicode::is_word_char(unicode::decode_at(text, size_t(byte_end), len));
}

}  // namespace strata::text
