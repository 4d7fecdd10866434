// A small complete checkpoint for the capture tests: the gpt2-tiny fixture's weights (4 layers, hidden
// 32, vocab 512, 64 positions) plus a byte-level BPE tokenizer of exactly 512 ids trained on the
// synthetic dataset, so that real text can be run through it.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include "test_helpers.hpp"
#include "text/dataset.hpp"
#include "text/tokenizer.hpp"

namespace strata::testing {

// A complete tiny checkpoint in `dir`: a fixture's random weights (tests/data/models/<fixture>: 4 layers,
// hidden 32, vocab 512) plus a byte-level BPE tokenizer of exactly 512 ids trained on the first
// `vocab_texts` documents of the synthetic corpus.
inline std::filesystem::path tiny_checkpoint(const std::filesystem::path& dir, const std::string& fixture,
                                             int64_t vocab_texts) {
  namespace fs = std::filesystem;
  fs::create_directories(dir);
  for (const char* name : {"config.json", "model.safetensors"})
    fs::copy_file(data_dir() / "models" / fixture / name, dir / name, fs::copy_options::overwrite_existing);
  std::vector<std::string> texts;
  for (const auto& doc : text::load_dataset("synthetic", vocab_texts)) texts.push_back(doc.text);
  text::train_byte_level_bpe(texts, 512, dir / "tokenizer.json");
  return dir;
}

// The gpt2-tiny capture checkpoint, built once per test process.
inline std::filesystem::path tiny_capture_checkpoint() {
  static const std::filesystem::path dir = tiny_checkpoint(fresh_dir("capture-tiny-gpt2"), "gpt2-tiny", 300);
  return dir;
}

}  // namespace strata::testing
