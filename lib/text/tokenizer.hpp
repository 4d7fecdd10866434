// Hugging Face tokenizers, reimplemented exactly for the model families strata reads: byte-level BPE
// (GPT-2, GPT-NeoX/Pythia, CodeGen/phi-2) and SentencePiece-style BPE with byte fallback (Gemma), loaded
// from a `tokenizer.json` (optionally gzipped) or a GPT-2 style `vocab.json` + `merges.txt` pair.
// Every token carries its [begin, end) byte span in the ORIGINAL UTF-8 text, so that activations of
// different models can be paired by the prefix of text they have read (see text/alignment.hpp).
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace strata::text {

struct Encoding {
  std::vector<int32_t> ids;
  // Per token: [begin, end) byte offsets into the text given to encode(). Tokens inserted by the
  // post-processor (e.g. Gemma's <bos>) get an empty span at the position they were inserted.
  std::vector<std::pair<int64_t, int64_t>> offsets;
  std::vector<uint8_t> special;  // 1 for special added tokens (matched in the text or inserted)
};

class Tokenizer {
 public:
  // `dir_or_json`: a directory holding tokenizer.json, tokenizer.json.gz, or vocab.json + merges.txt;
  // or a path to a tokenizer.json / tokenizer.json.gz file. tokenizer_config.json beside it (if any)
  // refines the special-token defaults (add_bos_token / add_eos_token).
  // Throws strata::Error naming the file for malformed input.
  static Tokenizer load(const std::filesystem::path& dir_or_json);

  // add_special_tokens = the model's default post-processing (Gemma prepends <bos>; GPT-2, Pythia and
  // phi-2 add nothing). Special tokens written in the text are always matched as single tokens.
  Encoding encode(std::string_view text, bool add_special_tokens) const;
  std::string decode(const std::vector<int32_t>& ids) const;

  int64_t vocab_size() const;  // largest id + 1, added tokens included
  bool is_special(int32_t id) const;
  std::string sha256() const;  // SHA-256 of the source file(s) (decompressed bytes are not rehashed)

  std::optional<int32_t> token_to_id(std::string_view token) const;  // vocab or added token
  std::string id_to_token(int32_t id) const;                          // raw vocab string ("" if unknown)
  std::optional<int32_t> bos_id() const;  // the token add_special_tokens prepends, if any
  std::optional<int32_t> eos_id() const;  // the token add_special_tokens appends, if any; else the
                                          // end-of-text special (e.g. <|endoftext|>, <eos>) if known
  const std::filesystem::path& source() const;  // the file loaded (tokenizer.json[.gz] or vocab.json)

  struct Impl;

 private:
  std::shared_ptr<const Impl> impl_;
};

// Trains a byte-level BPE (GPT-2 pre-tokenizer regex, byte-to-unicode alphabet) on `texts` until the
// vocabulary holds `vocab_size` entries, and writes a genuine HF tokenizer.json that Tokenizer::load and
// HF tokenizers both read. Layout, as HF's BpeTrainer makes it: id 0 = <|endoftext|> (special, also the
// eos), ids 1..256 = the 256 byte characters in code-point order, then one id per merge in merge order.
// No BOS/EOS is added by default. Deterministic: the most frequent pair is merged first, ties going to
// the pair with the smallest (left id, right id), as in HF's trainer. Words are the GPT-2 regex pre-tokens.
void train_byte_level_bpe(const std::vector<std::string>& texts, int64_t vocab_size,
                          const std::filesystem::path& out_tokenizer_json);

}  // namespace strata::text
