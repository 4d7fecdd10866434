// A small complete checkpoint for the capture tests: the gpt2-tiny fixture's weights (4 layers, hidden
// 32, vocab 512, 64 positions) plus a byte-level BPE tokenizer of exactly 512 ids trained on the
// synthetic dataset, so that real text can be run through it.
#pragma once
#include <filesystem>

#include "test_helpers.hpp"
#include "text/dataset.hpp"
#include "text/tokenizer.hpp"

namespace strata::testing {

inline std::filesystem::path tiny_capture_checkpoint() {
  namespace fs = std::filesystem;
  static const fs::path dir = [] {
    fs::path d = fresh_dir("capture-tiny-gpt2");
    const fs::path source = data_dir() / "models" / "gpt2-tiny";
    for (const char* name : {"config.json", "model.safetensors"}) fs::copy_file(source / name, d / name);
    std::vector<std::string> texts;
    for (const auto& doc : text::load_dataset("synthetic", 300)) texts.push_back(doc.text);
    text::train_byte_level_bpe(texts, 512, d / "tokenizer.json");
    return d;
  }();
  return dir;
}

}  // namespace strata::testing
