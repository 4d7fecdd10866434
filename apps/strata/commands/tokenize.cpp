// `strata tokenize`: ids (and byte offsets) exactly as the model's Hugging Face tokenizer gives them.
#include <iostream>

#include <nlohmann/json.hpp>

#include "command.hpp"
#include "core/error.hpp"
#include "text/dataset.hpp"
#include "text/tokenizer.hpp"

namespace {

struct Options {
  std::string tokenizer, text, jsonl, field = "text";
  bool special = false, offsets = false;
};

void print_encoding(const strata::text::Encoding& enc, bool offsets) {
  nlohmann::json out;
  out["ids"] = enc.ids;
  if (offsets) {
    auto spans = nlohmann::json::array();
    for (auto [b, e] : enc.offsets) spans.push_back({b, e});
    out["offsets"] = std::move(spans);
  }
  std::cout << out.dump() << '\n';
}

void setup(strata::cli::Commands& commands) {
  auto opts = std::make_shared<Options>();
  auto* cmd = commands.root().add_subcommand(
      "tokenize", "Tokenize text as the model's Hugging Face tokenizer does; one JSON object per input");
  cmd->add_option("--tokenizer", opts->tokenizer, "directory with tokenizer.json(.gz) or vocab.json + merges.txt, "
                                                  "or a tokenizer.json file")
      ->required();
  auto* text = cmd->add_option("--text", opts->text, "the text to tokenize");
  auto* jsonl = cmd->add_option("--jsonl", opts->jsonl, "a JSONL file: one output line per record");
  text->excludes(jsonl);
  cmd->add_option("--field", opts->field, "the JSONL field holding the text")->capture_default_str();
  cmd->add_flag("--special", opts->special, "add the model's default special tokens (e.g. Gemma's <bos>)");
  cmd->add_flag("--offsets", opts->offsets, "also print each token's [begin, end) byte offsets");
  commands.bind(cmd, [opts, text, jsonl]() {
    if (text->count() == 0 && jsonl->count() == 0) strata::fail("tokenize: give --text TEXT or --jsonl FILE");
    auto tokenizer = strata::text::Tokenizer::load(opts->tokenizer);
    if (text->count()) {
      print_encoding(tokenizer.encode(opts->text, opts->special), opts->offsets);
      return 0;
    }
    // The records are read as `strata capture` reads a jsonl:PATH:FIELD dataset.
    strata::text::DocumentReader records("jsonl:" + opts->jsonl + ":" + opts->field);
    for (strata::text::Document doc; records.next(doc);)
      print_encoding(tokenizer.encode(doc.text, opts->special), opts->offsets);
    return 0;
  });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
