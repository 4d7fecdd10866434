// Byte-level BPE training, following HF's BpeTrainer: words are GPT-2 regex pre-tokens, symbols start as
// bytes, and the most frequent adjacent pair is merged until the vocabulary is full. Pair counts are
// kept incrementally: a merge only revisits the words that contain the merged pair.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "text/regex.hpp"
#include "text/tokenizer.hpp"
#include "text/unicode.hpp"

namespace strata::text {
namespace {

constexpr const char* kEndOfText = "<|endoftext|>";

uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

struct Word {
  std::vector<int32_t> symbols;
  int64_t count;
};

}  // namespace

void train_byte_level_bpe(const std::vector<std::string>& texts, int64_t vocab_size,
                          const std::filesystem::path& out_tokenizer_json) {
  if (vocab_size < 257)
    fail("train_byte_level_bpe: vocab_size {} is too small (at least 257: <|endoftext|> and the 256 bytes)", vocab_size);

  // 1. Word counts (pre-tokens), with <|endoftext|> split out as HF's added-token pass would.
  Regex regex(kGpt2Pattern, out_tokenizer_json);
  std::unordered_map<std::string, int64_t> word_counts;
  for (const auto& text : texts) {
    if (size_t bad = unicode::find_invalid_utf8(text); bad != std::string::npos)
      fail("train_byte_level_bpe: a training text is not valid UTF-8 (byte {})", bad);
    size_t start = 0;
    while (start <= text.size()) {
      size_t stop = text.find(kEndOfText, start);
      if (stop == std::string::npos) stop = text.size();
      regex.for_each_match(text.data() + start, stop - start, [&](size_t b, size_t e) {
        ++word_counts[text.substr(start + b, e - b)];
      });
      start = stop + std::string_view(kEndOfText).size();
    }
  }

  // 2. Vocabulary: id 0 the special token, ids 1..256 the byte characters in code-point order.
  std::vector<std::string> tokens{kEndOfText};
  std::array<int32_t, 256> byte_id{};
  {
    std::vector<std::pair<char32_t, int>> alphabet;
    for (int b = 0; b < 256; ++b) alphabet.emplace_back(unicode::byte_to_codepoint(uint8_t(b)), b);
    std::sort(alphabet.begin(), alphabet.end());
    for (auto [cp, b] : alphabet) {
      byte_id[b] = int32_t(tokens.size());
      tokens.push_back(unicode::byte_to_utf8(uint8_t(b)));
    }
  }

  // Words in a fixed order (sorted), so every container below is filled deterministically.
  std::vector<std::pair<std::string, int64_t>> sorted_words(word_counts.begin(), word_counts.end());
  std::sort(sorted_words.begin(), sorted_words.end());
  std::vector<Word> words;
  words.reserve(sorted_words.size());
  for (auto& [w, c] : sorted_words) {
    Word word{{}, c};
    word.symbols.reserve(w.size());
    for (unsigned char b : w) word.symbols.push_back(byte_id[b]);
    words.push_back(std::move(word));
  }

  // 3. Pair counts and, per pair, the words containing it.
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> pair_words;
  for (int32_t w = 0; w < int32_t(words.size()); ++w) {
    const auto& s = words[w].symbols;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      uint64_t k = pair_key(s[i], s[i + 1]);
      pair_count[k] += words[w].count;
      auto& list = pair_words[k];
      if (list.empty() || list.back() != w) list.push_back(w);
    }
  }
  // Max-heap on (count, then smallest pair key).
  struct Candidate {
    int64_t count;
    uint64_t key;
    bool operator<(const Candidate& o) const { return count != o.count ? count < o.count : key > o.key; }
  };
  std::priority_queue<Candidate> heap;
  for (auto& [k, c] : pair_count)
    if (c > 0) heap.push({c, k});

  std::vector<std::pair<int32_t, int32_t>> merges;
  std::unordered_map<uint64_t, int64_t> delta;
  std::unordered_set<int32_t> touched_seen;
  while (int64_t(tokens.size()) < vocab_size && !heap.empty()) {
    Candidate top = heap.top();
    heap.pop();
    auto it = pair_count.find(top.key);
    int64_t current = it == pair_count.end() ? 0 : it->second;
    if (current != top.count) {  // stale: re-queue with the up-to-date count
      if (current > 0) heap.push({current, top.key});
      continue;
    }
    if (current <= 0) break;
    int32_t a = int32_t(top.key >> 32), b = int32_t(top.key & 0xFFFFFFFF);
    int32_t merged = int32_t(tokens.size());
    tokens.push_back(tokens[a] + tokens[b]);
    merges.emplace_back(a, b);

    delta.clear();
    std::vector<int32_t> affected = std::move(pair_words[top.key]);
    pair_words.erase(top.key);
    for (int32_t w : affected) {
      auto& s = words[w].symbols;
      const int64_t count = words[w].count;
      bool found = false;
      for (size_t i = 0; i + 1 < s.size(); ++i)
        if (s[i] == a && s[i + 1] == b) found = true;
      if (!found) continue;
      for (size_t i = 0; i + 1 < s.size(); ++i) delta[pair_key(s[i], s[i + 1])] -= count;
      std::vector<int32_t> next;
      next.reserve(s.size());
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) next.push_back(merged), ++i;
        else next.push_back(s[i]);
      }
      s = std::move(next);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        uint64_t k = pair_key(s[i], s[i + 1]);
        delta[k] += count;
        if (s[i] == merged || s[i + 1] == merged) {
          auto& list = pair_words[k];
          if (list.empty() || list.back() != w) list.push_back(w);
        }
      }
    }
    // Apply deltas in key order so the heap sees the same sequence of pushes on every run.
    std::vector<std::pair<uint64_t, int64_t>> changes(delta.begin(), delta.end());
    std::sort(changes.begin(), changes.end());
    for (auto [k, d] : changes) {
      if (d == 0) continue;
      int64_t& c = pair_count[k];
      c += d;
      if (d > 0 && c > 0) heap.push({c, k});  // decreases are caught lazily as stale entries
    }
    pair_count.erase(top.key);
  }

  // 4. tokenizer.json, in the layout HF's `tokenizers` writes.
  using ojson = nlohmann::ordered_json;
  ojson vocab = ojson::object();
  for (size_t id = 0; id < tokens.size(); ++id) vocab[tokens[id]] = id;
  ojson merge_list = ojson::array();
  for (auto [a, b] : merges) merge_list.push_back(tokens[a] + " " + tokens[b]);
  ojson byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  ojson post = byte_level;
  post["trim_offsets"] = false;
  ojson j = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens",
       ojson::array({{{"id", 0}, {"content", kEndOfText}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                      {"normalized", false}, {"special", true}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer", byte_level},
      {"post_processor", post},
      {"decoder", byte_level},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merge_list}}},
  };
  atomic_write_text(out_tokenizer_json, j.dump(2) + "\n");
}

}  // namespace strata::text
