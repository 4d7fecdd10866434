// Hugging Face tokenizers pipeline, reimplemented for BPE models:
//   added tokens (raw) -> normalizer -> added tokens (normalized) -> pre-tokenizer -> BPE -> post-processor.
// The specification is the HF `tokenizers` documentation and its tokenizer.json format; the fixtures in
// tests/data/tokenizers pin the behaviour to HF's ids.
#include "text/tokenizer.hpp"

#include <unicode/edits.h>
#include <unicode/normalizer2.h>
#include <unicode/bytestream.h>
#include <zlib.h>

#include <nlohmann/json.hpp>

#include <array>
#include <fstream>
#include <mutex>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/hash.hpp"
#include "core/read_bounded.hpp"
#include "text/regex.hpp"
#include "text/unicode.hpp"

namespace strata::text {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

std::string read_maybe_gzipped(const fs::path& file) {
  if (file.extension() != ".gz") return read_text_file(file);
  gzFile gz = gzopen(file.c_str(), "rb");
  if (!gz) fail("{}: cannot open", file.string());
  std::string out;
  std::array<char, 1 << 16> buffer;
  int n;
  // A gzip bomb must not exhaust memory: no real tokenizer.json comes near 1 GiB.
  constexpr size_t kMaxInflatedBytes = size_t(1) << 30;
  while ((n = gzread(gz, buffer.data(), buffer.size())) > 0) {
    out.append(buffer.data(), n);
    if (out.size() > kMaxInflatedBytes) {
      gzclose(gz);
      fail("{}: inflates to more than {} bytes; not a tokenizer.json", file.string(), kMaxInflatedBytes);
    }
  }
  int err = 0;
  const char* message = gzerror(gz, &err);
  std::string error_text = (n < 0 || (err != Z_OK && err != Z_STREAM_END)) ? std::string(message) : "";
  gzclose(gz);
  if (!error_text.empty()) fail("{}: corrupt gzip data ({})", file.string(), error_text);
  return out;
}

// Token ids index the token table, which is sized by the largest id: an id from the file is bounded before
// it is used (a vocab.json naming id 2^31-1 would otherwise allocate 2^31 strings). The cap is far above
// any released vocabulary (~260k tokens) and equals the vocab_size cap of config.json (models/spec.cpp).
constexpr int64_t kMaxTokenId = (1 << 22) - 1;

int32_t token_id(const json& value, const fs::path& file, std::string_view what) {
  if (!value.is_number_integer())
    fail("{}: the id of {} is {}, not an integer", file.string(), what,
         value.dump(-1, ' ', false, json::error_handler_t::replace));
  if ((value.is_number_unsigned() && value.get<uint64_t>() > uint64_t(kMaxTokenId)) ||
      value.get<int64_t>() < 0 || value.get<int64_t>() > kMaxTokenId)
    fail("{}: the id of {} is {}; token ids must be integers in [0, {}]", file.string(), what,
         value.dump(-1, ' ', false, json::error_handler_t::replace), kMaxTokenId);
  return static_cast<int32_t>(value.get<int64_t>());
}

std::string json_quoted(std::string_view token) {
  return json(std::string(token)).dump(-1, ' ', false, json::error_handler_t::replace);
}

json parse_json(const std::string& bytes, const fs::path& file) {
  try {
    return json::parse(bytes);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON ({})", file.string(), e.what());
  }
}

// ---------------------------------------------------------------------------------------------------------
// Normalized text: a string plus, per byte, the [begin, end) span of the original text it came from.

struct Normalized {
  std::string text;
  bool identity = true;  // byte i came from original byte base + i
  int64_t base = 0;
  std::vector<int64_t> begin, end;  // when !identity

  std::pair<int64_t, int64_t> original(size_t b, size_t e) const {
    if (identity) return {base + int64_t(b), base + int64_t(e)};
    if (e <= b) {
      int64_t at = b < begin.size() ? begin[b] : (end.empty() ? base : end.back());
      return {at, at};
    }
    return {begin[b], end[e - 1]};
  }
  void materialize() {
    if (!identity) return;
    begin.resize(text.size());
    end.resize(text.size());
    for (size_t i = 0; i < text.size(); ++i) begin[i] = base + int64_t(i), end[i] = base + int64_t(i) + 1;
    identity = false;
  }
};

struct NormalizerStep {
  enum class Kind { Unicode, Replace, Prepend } kind;
  const icu::Normalizer2* unicode = nullptr;
  std::string pattern, content;

  void apply(Normalized& n) const {
    switch (kind) {
      case Kind::Unicode: return apply_unicode(n);
      case Kind::Replace: return apply_replace(n);
      case Kind::Prepend: return apply_prepend(n);
    }
  }

 private:
  void apply_unicode(Normalized& n) const {
    UErrorCode status = U_ZERO_ERROR;
    if (unicode->isNormalizedUTF8(icu::StringPiece(n.text.data(), n.text.size()), status) && U_SUCCESS(status))
      return;
    status = U_ZERO_ERROR;
    std::string out;
    icu::StringByteSink<std::string> sink(&out);
    icu::Edits edits;
    unicode->normalizeUTF8(0, icu::StringPiece(n.text.data(), n.text.size()), sink, &edits, status);
    if (U_FAILURE(status)) fail("Unicode normalization failed: {}", u_errorName(status));
    n.materialize();
    std::vector<int64_t> begin(out.size()), end(out.size());
    auto it = edits.getFineIterator();
    while (it.next(status)) {
      int32_t src = it.sourceIndex(), dst = it.destinationIndex(), old_len = it.oldLength(),
              new_len = it.newLength();
      for (int32_t k = 0; k < new_len; ++k) {
        if (!it.hasChange()) {
          begin[dst + k] = n.begin[src + k];
          end[dst + k] = n.end[src + k];
        } else {  // a changed run maps as a whole to its source run
          begin[dst + k] = n.begin[src];
          end[dst + k] = n.end[src + old_len - 1];
        }
      }
    }
    n.text = std::move(out);
    n.begin = std::move(begin);
    n.end = std::move(end);
  }

  void apply_replace(Normalized& n) const {
    if (pattern.empty() || n.text.find(pattern) == std::string::npos) return;
    n.materialize();
    std::string out;
    std::vector<int64_t> begin, end;
    out.reserve(n.text.size() + n.text.size() / 2);
    begin.reserve(out.capacity());
    end.reserve(out.capacity());
    size_t i = 0;
    while (i < n.text.size()) {
      if (n.text.compare(i, pattern.size(), pattern) == 0) {
        int64_t b = n.begin[i], e = n.end[i + pattern.size() - 1];
        out += content;
        begin.insert(begin.end(), content.size(), b);
        end.insert(end.end(), content.size(), e);
        i += pattern.size();
      } else {
        out += n.text[i];
        begin.push_back(n.begin[i]);
        end.push_back(n.end[i]);
        ++i;
      }
    }
    n.text = std::move(out);
    n.begin = std::move(begin);
    n.end = std::move(end);
  }

  void apply_prepend(Normalized& n) const {
    if (n.text.empty()) return;
    n.materialize();
    int64_t at = n.begin.front();
    n.text.insert(0, content);
    n.begin.insert(n.begin.begin(), content.size(), at);
    n.end.insert(n.end.begin(), content.size(), at);
  }
};

// ---------------------------------------------------------------------------------------------------------
// Added tokens: a byte trie, matched leftmost-longest.

struct AddedToken {
  int32_t id;
  std::string content;
  bool special, lstrip, rstrip, normalized, single_word;
};

class AddedTokenMatcher {
 public:
  void add(const AddedToken& token) {
    if (token.content.empty()) return;
    int node = 0;
    for (unsigned char c : token.content) {
      auto& children = nodes_[node].children;
      auto it = std::lower_bound(children.begin(), children.end(), std::pair<unsigned char, int>{c, 0},
                                 [](auto& a, auto& b) { return a.first < b.first; });
      if (it != children.end() && it->first == c) {
        node = it->second;
      } else {
        int next = int(nodes_.size());
        children.insert(it, {c, next});
        nodes_.push_back({});
        node = next;
      }
    }
    nodes_[node].token = int(tokens_.size());
    tokens_.push_back(token);
    first_byte_[static_cast<unsigned char>(token.content[0])] = true;
  }
  bool empty() const { return tokens_.empty(); }

  // Splits text[0, size) into added-token matches and the text between them; calls
  // on_token(token, begin, end) and on_text(begin, end) in order.
  template <class OnToken, class OnText>
  void split(std::string_view text, OnToken&& on_token, OnText&& on_text) const {
    size_t gap = 0, pos = 0;
    const size_t n = text.size();
    while (pos < n) {
      if (!first_byte_[static_cast<unsigned char>(text[pos])]) {
        ++pos;
        continue;
      }
      int node = 0, best = -1;
      size_t best_end = 0;
      for (size_t i = pos; i < n; ++i) {
        node = child(node, static_cast<unsigned char>(text[i]));
        if (node < 0) break;
        int t = nodes_[node].token;
        if (t >= 0 && (!tokens_[t].single_word || is_single_word(text, pos, i + 1))) best = t, best_end = i + 1;
      }
      if (best < 0) {
        ++pos;
        continue;
      }
      const AddedToken& token = tokens_[best];
      size_t b = pos, e = best_end;
      if (token.lstrip) b = skip_space_left(text, gap, b);
      if (token.rstrip) e = skip_space_right(text, e);
      if (b > gap) on_text(gap, b);
      on_token(token, b, e);
      gap = pos = e;
    }
    if (gap < n) on_text(gap, n);
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int>> children;
    int token = -1;
  };
  int child(int node, unsigned char c) const {
    for (auto& [k, v] : nodes_[node].children)
      if (k == c) return v;
    return -1;
  }
  static bool is_single_word(std::string_view text, size_t b, size_t e) {
    if (b > 0) {
      size_t p = b - 1;
      while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
      int len;
      if (unicode::is_word_char(unicode::decode_at(text, p, len))) return false;
    }
    if (e < text.size()) {
      int len;
      if (unicode::is_word_char(unicode::decode_at(text, e, len))) return false;
    }
    return true;
  }
  static size_t skip_space_left(std::string_view text, size_t floor, size_t b) {
    while (b > floor) {
      size_t p = b - 1;
      while (p > floor && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
      int len;
      if (!unicode::is_white_space(unicode::decode_at(text, p, len))) break;
      b = p;
    }
    return b;
  }
  static size_t skip_space_right(std::string_view text, size_t e) {
    while (e < text.size()) {
      int len;
      if (!unicode::is_white_space(unicode::decode_at(text, e, len))) break;
      e += len;
    }
    return e;
  }
  std::vector<Node> nodes_{Node{}};
  std::vector<AddedToken> tokens_;
  std::array<bool, 256> first_byte_{};
};

// ---------------------------------------------------------------------------------------------------------
// BPE merges: (left id, right id) -> (rank, merged id), open addressing.

class MergeTable {
 public:
  struct Entry {
    uint64_t key = ~uint64_t(0);
    int32_t rank = -1, merged = -1;
  };
  void build(const std::vector<std::array<int32_t, 3>>& merges) {  // {left, right, merged}, by rank
    size_t capacity = 16;
    while (capacity < merges.size() * 2) capacity <<= 1;
    table_.assign(capacity, Entry{});
    mask_ = capacity - 1;
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      uint64_t key = pack(merges[rank][0], merges[rank][1]);
      size_t slot = hash(key) & mask_;
      while (table_[slot].key != ~uint64_t(0) && table_[slot].key != key) slot = (slot + 1) & mask_;
      if (table_[slot].key == key) continue;  // a duplicate merge keeps its first (best) rank
      table_[slot] = {key, int32_t(rank), merges[rank][2]};
    }
  }
  const Entry* find(int32_t left, int32_t right) const {
    if (table_.empty()) return nullptr;
    uint64_t key = pack(left, right);
    size_t slot = hash(key) & mask_;
    while (true) {
      const Entry& e = table_[slot];
      if (e.key == key) return &e;
      if (e.key == ~uint64_t(0)) return nullptr;
      slot = (slot + 1) & mask_;
    }
  }

 private:
  static uint64_t pack(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  static size_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return size_t(k);
  }
  std::vector<Entry> table_;
  size_t mask_ = 0;
};

struct Piece {  // one BPE output token, byte span relative to its word
  int32_t id;
  int32_t begin, end;
};

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

struct DecoderStep {
  enum class Kind { ByteLevel, Replace, ByteFallback, Fuse, Strip } kind;
  std::string pattern, content;
  int start = 0, stop = 0;
};

struct PreTokenizerStep {
  enum class Kind { ByteLevel, Split } kind;
  std::shared_ptr<Regex> regex;
  bool isolated = true;  // Split behaviour: Isolated keeps matches and gaps, Removed drops matches
};

}  // namespace

// ---------------------------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  fs::path source;
  std::string sha;

  // Model
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> vocab;
  std::vector<std::string> tokens;  // id -> string (vocab and added)
  MergeTable merges;
  bool byte_level = false;           // symbols start as bytes mapped through GPT-2's byte table
  std::array<int32_t, 256> byte_ids;  // byte-level: byte -> id of its character (-1 if absent)
  std::vector<int32_t> bmp_char_ids;                // otherwise: single-character pieces in the BMP (-1: none)
  std::unordered_map<char32_t, int32_t> char_ids;  // ... and beyond it
  bool byte_fallback = false;
  std::array<int32_t, 256> fallback_ids;  // <0xXX> pieces
  int32_t unk_id = -1;
  bool fuse_unk = false;
  bool ignore_merges = false;
  // Code points that some vocab token has right before U+2581 '▁'. A BPE merge only ever creates vocab
  // tokens, so no token can span a boundary "x▁" with x outside this set: without a pre-tokenizer
  // (Gemma) the text splits there exactly, and the pieces can be cached like pre-token words.
  std::unordered_set<char32_t> joins_before_space_mark;

  // Pipeline
  std::vector<AddedToken> added;
  AddedTokenMatcher raw_added, normalized_added;
  std::vector<NormalizerStep> normalizers;
  bool prefix_space = false;  // ByteLevel add_prefix_space
  std::vector<PreTokenizerStep> pre_tokenizers;
  std::vector<DecoderStep> decoders;
  bool has_decoder = false;
  std::vector<int32_t> prefix, suffix;  // added by add_special_tokens
  std::optional<int32_t> eos;
  std::vector<uint8_t> special;  // per id

  // Cache of BPE results per pre-token word (words are short and repeat a lot in byte-level models).
  static constexpr size_t kCacheMaxWordBytes = 64;
  static constexpr size_t kCacheMaxEntries = 1 << 20;
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<Piece>, StringHash, std::equal_to<>> cache;

  int32_t id_of(const std::string& token, const fs::path& file, const char* what) const {
    auto it = vocab.find(token);
    if (it == vocab.end()) fail("{}: {} {} is not in the vocabulary", file.string(), what, shown_text(token));
    return it->second;
  }

  void finish_model(const std::vector<std::pair<std::string, std::string>>& merge_pairs, const fs::path& file);
  void bpe(std::string_view word, std::vector<Piece>& out) const;
  void bpe_cached(std::string_view word, std::vector<Piece>& out) const;
  void encode_normalized_piece(const Normalized& n, size_t b, size_t e, Encoding& enc) const;
  void encode_text(std::string_view text, int64_t base, Encoding& enc) const;
};

namespace {

void push_token(Encoding& enc, int32_t id, std::pair<int64_t, int64_t> span, bool special) {
  enc.ids.push_back(id);
  enc.offsets.push_back(span);
  enc.special.push_back(special ? 1 : 0);
}

void merge_small(std::vector<Piece>& syms, const MergeTable& merges) {
  while (syms.size() > 1) {
    int32_t best_rank = INT32_MAX, best_merged = -1;
    size_t best = 0;
    for (size_t i = 0; i + 1 < syms.size(); ++i) {
      const auto* m = merges.find(syms[i].id, syms[i + 1].id);
      if (m && m->rank < best_rank) best_rank = m->rank, best_merged = m->merged, best = i;
    }
    if (best_merged < 0) break;
    syms[best].id = best_merged;
    syms[best].end = syms[best + 1].end;
    syms.erase(syms.begin() + best + 1);
  }
}

// Heap-based merge loop (as HF's word.merge_all): lowest rank first, leftmost among equal ranks.
void merge_large(std::vector<Piece>& syms, const MergeTable& merges) {
  const int n = int(syms.size());
  std::vector<int> prev(n), next(n);
  std::vector<uint8_t> alive(n, 1);
  for (int i = 0; i < n; ++i) prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;
  struct Candidate {
    int32_t rank;
    int pos;
    int32_t left, right, merged;  // the pair as it was when queued; a changed pair makes the entry stale
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<Candidate> storage;
  storage.reserve(2 * n);
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap(std::greater<>{}, std::move(storage));
  auto queue_pair = [&](int i, int j) {
    if (const auto* m = merges.find(syms[i].id, syms[j].id)) heap.push({m->rank, i, syms[i].id, syms[j].id, m->merged});
  };
  for (int i = 0; i + 1 < n; ++i) queue_pair(i, i + 1);
  while (!heap.empty()) {
    Candidate top = heap.top();
    heap.pop();
    int i = top.pos;
    if (!alive[i] || next[i] < 0) continue;
    int j = next[i];
    if (syms[i].id != top.left || syms[j].id != top.right) continue;  // stale entry
    syms[i].id = top.merged;
    syms[i].end = syms[j].end;
    alive[j] = 0;
    next[i] = next[j];
    if (next[j] >= 0) prev[next[j]] = i;
    if (prev[i] >= 0) queue_pair(prev[i], i);
    if (next[i] >= 0) queue_pair(i, next[i]);
  }
  size_t w = 0;
  for (int i = 0; i < n; ++i)
    if (alive[i]) syms[w++] = syms[i];
  syms.resize(w);
}

}  // namespace

void Tokenizer::Impl::bpe(std::string_view word, std::vector<Piece>& out) const {
  const size_t first = out.size();
  if (ignore_merges) {
    auto it = vocab.find(word);
    if (it != vocab.end()) {
      out.push_back({it->second, 0, int32_t(word.size())});
      return;
    }
  }
  std::vector<Piece> syms;
  syms.reserve(word.size());
  auto push_unknown = [&](int32_t b, int32_t e) {
    if (unk_id < 0) return;  // no unk token: HF drops the character
    if (fuse_unk && !syms.empty() && syms.back().id == unk_id && syms.back().end == b) syms.back().end = e;
    else syms.push_back({unk_id, b, e});
  };
  if (byte_level) {
    for (size_t i = 0; i < word.size(); ++i) {
      int32_t id = byte_ids[static_cast<unsigned char>(word[i])];
      if (id >= 0) syms.push_back({id, int32_t(i), int32_t(i + 1)});
      else push_unknown(int32_t(i), int32_t(i + 1));
    }
  } else {
    for (size_t i = 0; i < word.size();) {
      int len;
      char32_t cp = unicode::decode_at(word, i, len);
      int32_t id = -1;
      if (cp < bmp_char_ids.size()) {
        id = bmp_char_ids[cp];
      } else if (auto it = char_ids.find(cp); it != char_ids.end()) {
        id = it->second;
      }
      if (id >= 0) {
        syms.push_back({id, int32_t(i), int32_t(i + len)});
      } else if (byte_fallback && [&] {
                   for (int k = 0; k < len; ++k)
                     if (fallback_ids[static_cast<unsigned char>(word[i + k])] < 0) return false;
                   return true;
                 }()) {
        for (int k = 0; k < len; ++k)
          syms.push_back({fallback_ids[static_cast<unsigned char>(word[i + k])], int32_t(i + k), int32_t(i + k + 1)});
      } else {
        push_unknown(int32_t(i), int32_t(i + len));
      }
      i += len;
    }
  }
  if (syms.size() < 48) merge_small(syms, merges);
  else merge_large(syms, merges);
  out.insert(out.end(), syms.begin(), syms.end());
  (void)first;
}

void Tokenizer::Impl::bpe_cached(std::string_view word, std::vector<Piece>& out) const {
  if (word.size() > kCacheMaxWordBytes) return bpe(word, out);
  {
    std::lock_guard lock(cache_mutex);
    auto it = cache.find(word);
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t first = out.size();
  bpe(word, out);
  std::lock_guard lock(cache_mutex);
  if (cache.size() < kCacheMaxEntries) cache.emplace(std::string(word), std::vector<Piece>(out.begin() + first, out.end()));
}

void Tokenizer::Impl::encode_normalized_piece(const Normalized& n, size_t b, size_t e, Encoding& enc) const {
  thread_local std::vector<Piece> pieces;
  auto emit_word = [&](size_t wb, size_t we) {
    pieces.clear();
    bpe_cached(std::string_view(n.text).substr(wb, we - wb), pieces);
    for (const Piece& p : pieces) push_token(enc, p.id, n.original(wb + p.begin, wb + p.end), false);
  };
  // Pre-tokenization: each step splits the current ranges further.
  std::vector<std::pair<size_t, size_t>> ranges{{b, e}}, next;
  for (const auto& step : pre_tokenizers) {
    const Regex& regex = *step.regex;
    next.clear();
    for (const auto& range : ranges) {
      // Plain names, not a structured binding: clang before 16 cannot capture bindings in the lambda
      // (the fuzz build uses clang 14).
      const size_t rb = range.first, re = range.second;
      size_t gap = rb;
      regex.for_each_match(n.text.data() + rb, re - rb, [&](size_t mb, size_t me) {
        if (rb + mb > gap) next.emplace_back(gap, rb + mb);
        if (step.isolated) next.emplace_back(rb + mb, rb + me);
        gap = rb + me;
      });
      if (gap < re) next.emplace_back(gap, re);
    }
    std::swap(ranges, next);
  }
  if (pre_tokenizers.empty() && !byte_level) {
    // Split before each '▁' (E2 96 81) that no vocab token can join to the character before it.
    const std::string_view text(n.text);
    size_t word = b;
    for (size_t i = text.find("\xE2\x96\x81", b); i != std::string_view::npos && i < e; i = text.find("\xE2\x96\x81", i + 3)) {
      if (i == word) continue;
      size_t p = i - 1;
      while (p > word && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
      int len;
      if (joins_before_space_mark.count(unicode::decode_at(text, p, len))) continue;
      emit_word(word, i);
      word = i;
    }
    if (word < e) emit_word(word, e);
    return;
  }
  for (auto [wb, we] : ranges) emit_word(wb, we);
}

void Tokenizer::Impl::encode_text(std::string_view text, int64_t base, Encoding& enc) const {
  Normalized n;
  n.text.assign(text);
  n.base = base;
  for (const auto& step : normalizers) step.apply(n);
  if (prefix_space && !n.text.empty() && n.text[0] != ' ') {
    NormalizerStep{NormalizerStep::Kind::Prepend, nullptr, "", " "}.apply(n);
  }
  if (normalized_added.empty()) {
    encode_normalized_piece(n, 0, n.text.size(), enc);
    return;
  }
  normalized_added.split(
      n.text,
      [&](const AddedToken& t, size_t b, size_t e) { push_token(enc, t.id, n.original(b, e), t.special); },
      [&](size_t b, size_t e) { encode_normalized_piece(n, b, e, enc); });
}

// ---------------------------------------------------------------------------------------------------------

Encoding Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  if (size_t bad = unicode::find_invalid_utf8(text); bad != std::string_view::npos)
    fail("tokenize: the text is not valid UTF-8 (byte {} of {})", bad, text.size());
  const Impl& m = *impl_;
  Encoding enc;
  enc.ids.reserve(text.size() / 3 + 4);
  enc.offsets.reserve(text.size() / 3 + 4);
  enc.special.reserve(text.size() / 3 + 4);
  if (add_special_tokens)
    for (int32_t id : m.prefix) push_token(enc, id, {0, 0}, true);
  if (m.raw_added.empty()) {
    m.encode_text(text, 0, enc);
  } else {
    m.raw_added.split(
        text, [&](const AddedToken& t, size_t b, size_t e) { push_token(enc, t.id, {int64_t(b), int64_t(e)}, t.special); },
        [&](size_t b, size_t e) { m.encode_text(text.substr(b, e - b), int64_t(b), enc); });
  }
  if (add_special_tokens)
    for (int32_t id : m.suffix) push_token(enc, id, {int64_t(text.size()), int64_t(text.size())}, true);
  return enc;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  const Impl& m = *impl_;
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= int32_t(m.tokens.size())) fail("decode: token id {} is outside the vocabulary (size {})", id, m.tokens.size());
    toks.push_back(m.tokens[id]);
  }
  if (!m.has_decoder) {
    std::string out;
    for (size_t i = 0; i < toks.size(); ++i) out += (i ? " " : "") + toks[i];
    return out;
  }
  for (const auto& step : m.decoders) {
    switch (step.kind) {
      case DecoderStep::Kind::ByteLevel: {
        std::string bytes;
        for (const auto& t : toks) {
          for (size_t i = 0; i < t.size();) {
            int len;
            char32_t cp = unicode::decode_at(t, i, len);
            int b = unicode::codepoint_to_byte(cp);
            if (b >= 0) bytes += char(b);
            else bytes.append(t, i, len);
            i += len;
          }
        }
        toks.assign(1, std::move(bytes));
        break;
      }
      case DecoderStep::Kind::Replace:
        for (auto& t : toks) {
          std::string out;
          for (size_t i = 0; i < t.size();) {
            if (!step.pattern.empty() && t.compare(i, step.pattern.size(), step.pattern) == 0) out += step.content, i += step.pattern.size();
            else out += t[i++];
          }
          t = std::move(out);
        }
        break;
      case DecoderStep::Kind::ByteFallback: {
        std::vector<std::string> out;
        std::string pending;
        auto flush = [&] {
          if (pending.empty()) return;
          if (unicode::find_invalid_utf8(pending) == std::string::npos) out.push_back(pending);
          else
            for (size_t k = 0; k < pending.size(); ++k) out.push_back("\xEF\xBF\xBD");  // U+FFFD per byte
          pending.clear();
        };
        for (auto& t : toks) {
          if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::isxdigit(t[3]) && std::isxdigit(t[4])) {
            pending += char(std::stoi(t.substr(3, 2), nullptr, 16));
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        toks = std::move(out);
        break;
      }
      case DecoderStep::Kind::Fuse: {
        std::string all;
        for (auto& t : toks) all += t;
        toks.assign(1, std::move(all));
        break;
      }
      case DecoderStep::Kind::Strip:
        for (auto& t : toks) {
          int s = 0;
          while (s < step.start && t.compare(0, step.content.size(), step.content) == 0 && !step.content.empty())
            t.erase(0, step.content.size()), ++s;
          s = 0;
          while (s < step.stop && t.size() >= step.content.size() && !step.content.empty() &&
                 t.compare(t.size() - step.content.size(), step.content.size(), step.content) == 0)
            t.erase(t.size() - step.content.size()), ++s;
        }
        break;
    }
  }
  std::string out;
  for (auto& t : toks) out += t;
  return out;
}

int64_t Tokenizer::vocab_size() const { return int64_t(impl_->tokens.size()); }
bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < int32_t(impl_->special.size()) && impl_->special[id];
}
std::string Tokenizer::sha256() const { return impl_->sha; }
const fs::path& Tokenizer::source() const { return impl_->source; }
std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  for (const auto& a : impl_->added)
    if (a.content == token) return a.id;
  auto it = impl_->vocab.find(token);
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}
std::string Tokenizer::id_to_token(int32_t id) const {
  return id >= 0 && id < int32_t(impl_->tokens.size()) ? impl_->tokens[id] : std::string();
}
std::optional<int32_t> Tokenizer::bos_id() const {
  if (impl_->prefix.empty()) return std::nullopt;
  return impl_->prefix.front();
}
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }

// ---------------------------------------------------------------------------------------------------------
// Loading.

void Tokenizer::Impl::finish_model(const std::vector<std::pair<std::string, std::string>>& merge_pairs,
                                   const fs::path& file) {
  std::vector<std::array<int32_t, 3>> triples;
  triples.reserve(merge_pairs.size());
  std::string joined;
  for (size_t r = 0; r < merge_pairs.size(); ++r) {
    const auto& [a, b] = merge_pairs[r];
    auto ia = vocab.find(a), ib = vocab.find(b);
    joined = a + b;
    auto im = vocab.find(joined);
    if (ia == vocab.end() || ib == vocab.end() || im == vocab.end())
      fail("{}: merge #{} {} names a token absent from the vocabulary ({} missing)", file.string(), r + 1,
           shown_text(a + " " + b), shown_text(ia == vocab.end() ? a : ib == vocab.end() ? b : joined));
    triples.push_back({ia->second, ib->second, im->second});
  }
  merges.build(triples);
  byte_ids.fill(-1);
  fallback_ids.fill(-1);
  for (int byte = 0; byte < 256; ++byte) {
    if (auto it = vocab.find(unicode::byte_to_utf8(uint8_t(byte))); it != vocab.end()) byte_ids[byte] = it->second;
    if (auto it = vocab.find(fmt::format("<0x{:02X}>", byte)); it != vocab.end()) fallback_ids[byte] = it->second;
  }
  for (const auto& [token, id] : vocab) {
    if (token.empty()) continue;
    for (size_t at = token.find("\xE2\x96\x81", 1); at != std::string::npos; at = token.find("\xE2\x96\x81", at + 1)) {
      size_t p = at - 1;
      while (p > 0 && (static_cast<unsigned char>(token[p]) & 0xC0) == 0x80) --p;
      int cp_len;
      joins_before_space_mark.insert(unicode::decode_at(token, p, cp_len));
    }
    int len;
    char32_t cp = unicode::decode_at(token, 0, len);
    if (size_t(len) != token.size()) continue;
    if (cp < 0x10000) {
      if (bmp_char_ids.empty()) bmp_char_ids.assign(0x10000, -1);
      bmp_char_ids[cp] = id;
    } else {
      char_ids.emplace(cp, id);
    }
  }
}

namespace {

const icu::Normalizer2* icu_normalizer(const std::string& type, const fs::path& file) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  if (type == "NFC") n = icu::Normalizer2::getNFCInstance(status);
  else if (type == "NFD") n = icu::Normalizer2::getNFDInstance(status);
  else if (type == "NFKC") n = icu::Normalizer2::getNFKCInstance(status);
  else if (type == "NFKD") n = icu::Normalizer2::getNFKDInstance(status);
  if (!n || U_FAILURE(status)) fail("{}: cannot load ICU normalizer {}", file.string(), type);
  return n;
}

std::string string_pattern(const json& pattern, const fs::path& file, const char* where) {
  if (pattern.contains("String")) return pattern["String"].get<std::string>();
  fail("{}: {} with a regex pattern is not supported (only {{\"String\": ...}})", file.string(), where);
}

void parse_normalizer(const json& j, std::vector<NormalizerStep>& out, const fs::path& file) {
  if (j.is_null()) return;
  std::string type = j.value("type", "");
  if (type == "Sequence") {
    for (const auto& n : j.at("normalizers")) parse_normalizer(n, out, file);
  } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    out.push_back({NormalizerStep::Kind::Unicode, icu_normalizer(type, file), "", ""});
  } else if (type == "Replace") {
    out.push_back({NormalizerStep::Kind::Replace, nullptr, string_pattern(j.at("pattern"), file, "Replace normalizer"),
                   j.at("content").get<std::string>()});
  } else if (type == "Prepend") {
    out.push_back({NormalizerStep::Kind::Prepend, nullptr, "", j.at("prepend").get<std::string>()});
  } else {
    fail("{}: normalizer type {} is not supported (strata reads NFC/NFD/NFKC/NFKD, Replace, Prepend, Sequence)",
         file.string(), shown_text(type));
  }
}

void parse_pre_tokenizer(const json& j, Tokenizer::Impl& m, const fs::path& file, bool first) {
  if (j.is_null()) return;
  std::string type = j.value("type", "");
  if (type == "Sequence") {
    bool is_first = first;
    for (const auto& p : j.at("pretokenizers")) parse_pre_tokenizer(p, m, file, is_first), is_first = false;
  } else if (type == "ByteLevel") {
    m.byte_level = true;
    if (j.value("add_prefix_space", false)) {
      if (!first) fail("{}: ByteLevel add_prefix_space is only supported as the first pre-tokenizer", file.string());
      m.prefix_space = true;
    }
    if (j.value("use_regex", true))
      m.pre_tokenizers.push_back({PreTokenizerStep::Kind::ByteLevel, std::make_shared<Regex>(kGpt2Pattern, file), true});
  } else if (type == "Split") {
    const auto& pattern = j.at("pattern");
    std::string regex = pattern.contains("Regex") ? pattern["Regex"].get<std::string>()
                                                  : escape_literal(pattern.at("String").get<std::string>());
    std::string behavior = j.value("behavior", "Isolated");
    if (j.value("invert", false) || (behavior != "Isolated" && behavior != "Removed"))
      fail("{}: Split pre-tokenizer with behavior {}{} is not supported (Isolated or Removed, not inverted)",
           file.string(), shown_text(behavior), j.value("invert", false) ? " inverted" : "");
    m.pre_tokenizers.push_back({PreTokenizerStep::Kind::Split, std::make_shared<Regex>(regex, file), behavior == "Isolated"});
  } else {
    fail("{}: pre-tokenizer type {} is not supported (strata reads ByteLevel, Split, Sequence)", file.string(), shown_text(type));
  }
}

void parse_decoder(const json& j, Tokenizer::Impl& m, const fs::path& file) {
  if (j.is_null()) return;
  m.has_decoder = true;
  std::string type = j.value("type", "");
  if (type == "Sequence") {
    for (const auto& d : j.at("decoders")) parse_decoder(d, m, file);
  } else if (type == "ByteLevel") {
    m.decoders.push_back({DecoderStep::Kind::ByteLevel});
  } else if (type == "Replace") {
    m.decoders.push_back({DecoderStep::Kind::Replace, string_pattern(j.at("pattern"), file, "Replace decoder"),
                          j.at("content").get<std::string>()});
  } else if (type == "ByteFallback") {
    m.decoders.push_back({DecoderStep::Kind::ByteFallback});
  } else if (type == "Fuse") {
    m.decoders.push_back({DecoderStep::Kind::Fuse});
  } else if (type == "Strip") {
    m.decoders.push_back({DecoderStep::Kind::Strip, "", j.at("content").get<std::string>(), j.value("start", 0),
                          j.value("stop", 0)});
  } else {
    fail("{}: decoder type {} is not supported (strata reads ByteLevel, Replace, ByteFallback, Fuse, Strip, Sequence)",
         file.string(), shown_text(type));
  }
}

std::optional<int32_t> find_token(const Tokenizer::Impl& m, std::string_view token) {
  for (const auto& a : m.added)
    if (a.content == token) return a.id;
  auto it = m.vocab.find(token);
  if (it == m.vocab.end()) return std::nullopt;
  return it->second;
}

std::optional<json> read_optional_json(const fs::path& file) {
  if (!fs::exists(file)) return std::nullopt;
  return parse_json(read_text_file(file), file);
}

// A special-token entry of tokenizer_config.json is a string or an {"content": ...} object.
std::optional<std::string> config_token(const json& config, const char* key) {
  if (!config.contains(key) || config[key].is_null()) return std::nullopt;
  const auto& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content")) return v["content"].get<std::string>();
  return std::nullopt;
}

void finish_pipeline(Tokenizer::Impl& m) {
  int32_t max_id = int32_t(m.tokens.size()) - 1;
  for (const auto& a : m.added) max_id = std::max(max_id, a.id);
  m.tokens.resize(max_id + 1);
  m.special.assign(max_id + 1, 0);
  for (const auto& a : m.added) {
    m.tokens[a.id] = a.content;
    m.special[a.id] = a.special ? 1 : 0;
    if (!a.normalized) {
      m.raw_added.add(a);
      continue;
    }
    // As HF does, a normalized added token is matched in its normalized form.
    Normalized content;
    content.text = a.content;
    for (const auto& step : m.normalizers) step.apply(content);
    AddedToken matched = a;
    matched.content = content.text;
    m.normalized_added.add(matched);
  }
}

}  // namespace

Tokenizer Tokenizer::load(const fs::path& dir_or_json) {
  auto m = std::make_shared<Impl>();
  fs::path dir = fs::is_directory(dir_or_json) ? dir_or_json : dir_or_json.parent_path();
  fs::path file;
  if (!fs::is_directory(dir_or_json)) {
    if (!fs::exists(dir_or_json)) fail("{}: tokenizer file not found", dir_or_json.string());
    file = dir_or_json;
  } else if (fs::exists(dir / "tokenizer.json")) {
    file = dir / "tokenizer.json";
  } else if (fs::exists(dir / "tokenizer.json.gz")) {
    file = dir / "tokenizer.json.gz";
  } else if (fs::exists(dir / "vocab.json") && fs::exists(dir / "merges.txt")) {
    file = dir / "vocab.json";
  } else {
    fail("{}: no tokenizer found (expected tokenizer.json, tokenizer.json.gz, or vocab.json + merges.txt)",
         dir_or_json.string());
  }
  m->source = file;
  auto config = read_optional_json(dir / "tokenizer_config.json");

  if (file.filename() == "vocab.json") {
    // GPT-2 style pair: byte-level BPE with GPT-2's pre-tokenizer and decoder.
    fs::path merges_file = dir / "merges.txt";
    m->sha = sha256_hex(sha256_file(file) + sha256_file(merges_file));
    json vocab = parse_json(read_text_file(file), file);
    if (!vocab.is_object()) fail("{}: expected a JSON object mapping tokens to ids", file.string());
    for (auto& [token, id] : vocab.items()) m->vocab.emplace(token, token_id(id, file, "token " + json_quoted(token)));
    std::vector<std::pair<std::string, std::string>> merges;
    std::istringstream lines(read_text_file(merges_file));
    std::string line;
    size_t line_no = 0;
    while (std::getline(lines, line)) {
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
      size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos)
        fail("{}:{}: expected two tokens separated by one space, got {}", merges_file.string(), line_no, shown_text(line));
      merges.emplace_back(line.substr(0, space), line.substr(space + 1));
    }
    m->tokens.resize(m->vocab.size());
    for (auto& [t, id] : m->vocab) {
      if (id < 0) fail("{}: negative id for {}", file.string(), shown_text(t));
      if (size_t(id) >= m->tokens.size()) m->tokens.resize(id + 1);
      m->tokens[id] = t;
    }
    m->finish_model(merges, merges_file);
    m->byte_level = true;
    m->pre_tokenizers.push_back({PreTokenizerStep::Kind::ByteLevel, std::make_shared<Regex>(kGpt2Pattern, file), true});
    m->has_decoder = true;
    m->decoders.push_back({DecoderStep::Kind::ByteLevel});
    if (auto it = m->vocab.find("<|endoftext|>"); it != m->vocab.end()) {
      m->added.push_back({it->second, "<|endoftext|>", true, false, false, false, false});
      m->eos = it->second;
    }
    if (auto extra = read_optional_json(dir / "added_tokens.json"))
      for (auto& [content, id] : extra->items())
        if (content != "<|endoftext|>")
          m->added.push_back({token_id(id, dir / "added_tokens.json", "token " + json_quoted(content)), content, false, false,
                              false, true, false});
    finish_pipeline(*m);
  } else {
    m->sha = sha256_file(file);
    json j = parse_json(read_maybe_gzipped(file), file);
    if (!j.is_object() || !j.contains("model") || !j["model"].is_object())
      fail("{}: no \"model\" section; not a Hugging Face tokenizer.json", file.string());
    try {
      const json& model = j["model"];
      std::string type = model.value("type", "");
      if (type.empty() && model.contains("merges")) type = "BPE";  // old files omit the type of a BPE model
      if (type != "BPE")
        fail("{}: model type {} is not supported (strata reads BPE tokenizers: GPT-2, GPT-NeoX, CodeGen, Gemma)",
             file.string(), shown_text(type));
      if (!model.contains("vocab") || !model["vocab"].is_object()) fail("{}: the BPE model has no \"vocab\" object", file.string());
      for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"})
        if (model.contains(affix) && model[affix].is_string() && !model[affix].get<std::string>().empty())
          fail("{}: BPE {} is not supported", file.string(), affix);
      if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() > 0)
        fail("{}: BPE dropout is not supported (it makes tokenization random)", file.string());
      m->vocab.reserve(model["vocab"].size());
      for (auto& [token, id] : model["vocab"].items()) m->vocab.emplace(token, token_id(id, file, "token " + json_quoted(token)));
      m->tokens.resize(m->vocab.size());
      for (auto& [t, id] : m->vocab) {
        if (id < 0) fail("{}: negative id for {}", file.string(), shown_text(t));
        if (size_t(id) >= m->tokens.size()) m->tokens.resize(id + 1);
        m->tokens[id] = t;
      }
      std::vector<std::pair<std::string, std::string>> merges;
      if (model.contains("merges")) {
        merges.reserve(model["merges"].size());
        for (const auto& entry : model["merges"]) {
          if (entry.is_array() && entry.size() == 2) {
            merges.emplace_back(entry[0].get<std::string>(), entry[1].get<std::string>());
          } else if (entry.is_string()) {
            const std::string& s = entry.get_ref<const std::string&>();
            size_t space = s.find(' ', 1);  // HF splits on the first space after the first character
            if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
              fail("{}: merge {} is not two tokens separated by one space", file.string(), shown_text(s));
            merges.emplace_back(s.substr(0, space), s.substr(space + 1));
          } else {
            fail("{}: a merge must be \"a b\" or [\"a\", \"b\"], got {}", file.string(), entry.dump());
          }
        }
      }
      m->finish_model(merges, file);
      m->byte_fallback = model.value("byte_fallback", false);
      m->fuse_unk = model.value("fuse_unk", false);
      m->ignore_merges = model.value("ignore_merges", false);
      if (model.contains("unk_token") && model["unk_token"].is_string())
        m->unk_id = m->id_of(model["unk_token"].get<std::string>(), file, "unk_token");

      if (j.contains("added_tokens") && j["added_tokens"].is_array())
        for (const auto& a : j["added_tokens"])
          m->added.push_back({token_id(a.at("id"), file, "added token " + json_quoted(a.at("content").get<std::string>())),
                              a.at("content").get<std::string>(), a.value("special", false),
                              a.value("lstrip", false), a.value("rstrip", false), a.value("normalized", false),
                              a.value("single_word", false)});
      parse_normalizer(j.value("normalizer", json()), m->normalizers, file);
      parse_pre_tokenizer(j.value("pre_tokenizer", json()), *m, file, true);
      parse_decoder(j.value("decoder", json()), *m, file);
      finish_pipeline(*m);

      // Default special tokens: the post-processor's template (ByteLevel / null add nothing).
      const json post = j.value("post_processor", json());
      auto resolve_special = [&](const std::string& name, const json& specials) -> std::vector<int32_t> {
        if (specials.contains(name) && specials[name].contains("ids")) {
          std::vector<int32_t> ids;
          for (const auto& id : specials[name]["ids"]) ids.push_back(token_id(id, file, "special token " + json_quoted(name)));
          return ids;
        }
        auto id = find_token(*m, name);
        if (!id) fail("{}: post-processor special token {} is unknown", file.string(), shown_text(name));
        return {*id};
      };
      std::function<void(const json&)> parse_post = [&](const json& p) {
        if (p.is_null()) return;
        std::string type = p.value("type", "");
        if (type == "Sequence") {
          for (const auto& q : p.at("processors")) parse_post(q);
        } else if (type == "TemplateProcessing") {
          bool seen_sequence = false;
          for (const auto& piece : p.at("single")) {
            if (piece.contains("Sequence")) {
              seen_sequence = true;
            } else if (piece.contains("SpecialToken")) {
              auto ids = resolve_special(piece["SpecialToken"].at("id").get<std::string>(), p.value("special_tokens", json::object()));
              auto& side = seen_sequence ? m->suffix : m->prefix;
              side.insert(side.end(), ids.begin(), ids.end());
            }
          }
        } else if (type == "BertProcessing" || type == "RobertaProcessing") {
          m->prefix = {token_id(p.at("cls").at(1), file, "the post-processor's cls token")};
          m->suffix = {token_id(p.at("sep").at(1), file, "the post-processor's sep token")};
        } else if (type != "ByteLevel") {
          fail("{}: post-processor type {} is not supported", file.string(), shown_text(type));
        }
      };
      parse_post(post);
      for (const auto* side : {&m->prefix, &m->suffix})
        for (int32_t id : *side)
          if (id < 0 || size_t(id) >= m->tokens.size())
            fail("{}: the post-processor adds token id {}, outside the vocabulary (size {})", file.string(), id,
                 m->tokens.size());
    } catch (const json::exception& e) {
      fail("{}: malformed tokenizer.json ({})", file.string(), e.what());
    }
  }

  // tokenizer_config.json: Llama/Gemma-style tokenizers rebuild their post-processor from
  // add_bos_token / add_eos_token; for the others those flags only affect the slow tokenizer.
  if (config) {
    std::string cls = config->value("tokenizer_class", "");
    bool rebuilds = cls.find("Llama") != std::string::npos || cls.find("Gemma") != std::string::npos;
    if (rebuilds) {
      auto bos = config_token(*config, "bos_token"), eos = config_token(*config, "eos_token");
      if (config->contains("add_bos_token") && (*config)["add_bos_token"].is_boolean()) {
        m->prefix.clear();
        if ((*config)["add_bos_token"].get<bool>() && bos)
          if (auto id = find_token(*m, *bos)) m->prefix = {*id};
      }
      if (config->contains("add_eos_token") && (*config)["add_eos_token"].is_boolean()) {
        m->suffix.clear();
        if ((*config)["add_eos_token"].get<bool>() && eos)
          if (auto id = find_token(*m, *eos)) m->suffix = {*id};
      }
    }
    if (!m->eos)
      if (auto eos = config_token(*config, "eos_token")) m->eos = find_token(*m, *eos);
  }
  if (!m->suffix.empty()) m->eos = m->suffix.back();
  if (!m->eos) {
    for (const char* name : {"<|endoftext|>", "<eos>", "</s>"})
      if (auto id = find_token(*m, name); id && m->special[*id]) {
        m->eos = id;
        break;
      }
  }
  Tokenizer tokenizer;
  tokenizer.impl_ = std::move(m);
  return tokenizer;
}

}  // namespace strata::text
