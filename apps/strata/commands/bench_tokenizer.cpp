// `strata bench tokenizer`: single-thread tokenization throughput (MB/s of UTF-8 text).
#include <chrono>

#include "command.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "text/dataset.hpp"
#include "text/tokenizer.hpp"

namespace {

struct Options {
  std::vector<std::string> tokenizers;
  std::string file;
  double megabytes = 10;
};

// Documents totalling at least `bytes`: the synthetic corpus, or a text file cut at line ends into
// ~4 KB documents (repeated if the file is shorter).
std::vector<std::string> bench_documents(const std::string& file, size_t bytes) {
  std::vector<std::string> docs;
  size_t total = 0;
  if (file.empty()) {
    for (uint64_t seed = 0; total < bytes; ++seed)
      for (const auto& p : strata::text::synthetic_problems(1000 + seed, 1000)) {
        docs.push_back(strata::text::format_problem(p));
        total += docs.back().size();
      }
    return docs;
  }
  const std::string text = strata::read_text_file(file);
  if (text.empty()) strata::fail("{}: empty file", file);
  while (total < bytes) {
    for (size_t pos = 0; pos < text.size() && total < bytes;) {
      size_t end = std::min(text.size(), pos + 4096);
      if (end < text.size()) {
        size_t nl = text.find('\n', end);
        end = nl == std::string::npos ? text.size() : nl + 1;
      }
      docs.push_back(text.substr(pos, end - pos));
      total += end - pos;
      pos = end;
    }
  }
  return docs;
}

void setup(strata::cli::Commands& commands) {
  auto opts = std::make_shared<Options>();
  auto* bench = commands.group("bench", "Benchmarks that print figures (GFLOP/s, tokens/s)");
  auto* cmd = bench->add_subcommand("tokenizer", "single-thread tokenizer throughput in MB/s of UTF-8 text");
  cmd->add_option("--tokenizer", opts->tokenizers, "tokenizer directories (one figure each)")->required();
  cmd->add_option("--file", opts->file, "UTF-8 text to tokenize (default: the synthetic corpus)");
  cmd->add_option("--mb", opts->megabytes, "megabytes of text to tokenize")->capture_default_str();
  commands.bind(cmd, [opts]() {
    auto docs = bench_documents(opts->file, size_t(opts->megabytes * 1e6));
    size_t bytes = 0;
    for (const auto& d : docs) bytes += d.size();
    for (const auto& dir : opts->tokenizers) {
      auto t0 = std::chrono::steady_clock::now();
      auto tokenizer = strata::text::Tokenizer::load(dir);
      auto t1 = std::chrono::steady_clock::now();
      size_t tokens = 0;
      for (const auto& d : docs) tokens += tokenizer.encode(d, false).ids.size();
      auto t2 = std::chrono::steady_clock::now();
      double load_s = std::chrono::duration<double>(t1 - t0).count();
      double encode_s = std::chrono::duration<double>(t2 - t1).count();
      fmt::print("tokenizer {}: {:.1f} MB in {} documents ({}) -> {} tokens in {:.2f} s: {:.2f} MB/s, {:.0f}k tokens/s "
                 "(1 thread, cold cache; load {:.2f} s)\n",
                 dir, bytes / 1e6, docs.size(), opts->file.empty() ? "synthetic corpus" : opts->file, tokens, encode_s,
                 bytes / 1e6 / encode_s, tokens / encode_s / 1e3, load_s);
    }
    return 0;
  });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
