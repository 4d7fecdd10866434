// `strata tokenize`: ids (and byte offsets) exactly as the model's Hugging Face tokenizer gives them.
#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>

#include "command.hpp"
#include "core/error.hpp"
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
    std::ifstream in(opts->jsonl);
    if (!in) strata::fail("{}: cannot open", opts->jsonl);
    std::string line;
    int64_t line_no = 0;
    while (std::getline(in, line)) {
      ++line_no;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json record;
      try {
        record = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        strata::fail("{}:{}: invalid JSON ({})", opts->jsonl, line_no, e.what());
      }
      if (!record.is_object() || !record.contains(opts->field) || !record[opts->field].is_string())
        strata::fail("{}:{}: no string field {:?} (choose one with --field)", opts->jsonl, line_no, opts->field);
      print_encoding(tokenizer.encode(record[opts->field].get<std::string>(), opts->special), opts->offsets);
    }
    return 0;
  });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
