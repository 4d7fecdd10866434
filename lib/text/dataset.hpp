// Datasets (synthetic reasoning corpus, JSONL, plain text) and their cut into fixed-length token
// sequences that remember, per token, which document and which bytes of it the token covers.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/hash.hpp"
#include "text/tokenizer.hpp"

namespace strata::text {

struct Document {
  int64_t id;  // 0-based position in the dataset
  std::string text;
};

// spec: "synthetic[:SEED]" (default seed 0, default count 2000), "jsonl:PATH[:FIELD]" (default field
// "text"), or "text:PATH" (one document per paragraph: paragraphs are separated by blank lines).
// jsonl_template: e.g. "{question}\n{answer}" formats several fields of each JSONL record instead of FIELD.
// max_docs: 0 = all (synthetic: the default count), otherwise the first max_docs documents.
class DocumentSource;
// Reads one document at a time, so a consumer that streams holds no more than it asks for.
class DocumentReader {
 public:
  explicit DocumentReader(const std::string& spec, int64_t max_docs = 0, const std::string& jsonl_template = "");
  explicit DocumentReader(std::vector<Document> documents);  // documents held in memory, in order
  ~DocumentReader();
  DocumentReader(DocumentReader&&) noexcept;
  bool next(Document& out);             // false at the end of the dataset (or after max_docs)
  int64_t documents_read() const { return read_; }

 private:
  std::unique_ptr<DocumentSource> source_;
  int64_t limit_ = 0, read_ = 0;
};
// Every document of a DocumentReader, in memory.
std::vector<Document> load_dataset(const std::string& spec, int64_t max_docs = 0,
                                   const std::string& jsonl_template = "");

// SHA-256 over (id, length, text) of each document added: identifies exactly what was tokenized.
class DatasetHash {
 public:
  void add(const Document& doc);
  std::string hex() { return hash_.hex(); }

 private:
  Sha256 hash_;
};
std::string dataset_sha256(const std::vector<Document>& docs);

// Synthetic multi-step arithmetic word problems with worked step-by-step solutions; deterministic from
// the seed (a fixed PRNG, independent of platform and standard library).
struct Problem {
  std::string question, solution, answer;  // answer: the final number as text, e.g. "42"
};
std::vector<Problem> synthetic_problems(uint64_t seed, int64_t count);
// The document text of a problem: "Question: ...\nSolution: ...\nAnswer: N\n".
// A model is scored on its greedy continuation after the prefix problem_prompt(p), i.e. up to and
// including kAnswerMarker.
inline constexpr const char* kAnswerMarker = "Answer:";
std::string format_problem(const Problem& p);
std::string problem_prompt(const Problem& p);  // format_problem(p) cut just after kAnswerMarker

enum class PackingPolicy {
  Truncate,  // one sequence per document, its first seq_len tokens; shorter ones stay short
  Pack       // documents concatenated in order and cut every seq_len tokens; the last may be short
};
PackingPolicy parse_packing_policy(const std::string& name);  // "truncate" | "pack"
std::string to_string(PackingPolicy policy);

// Per token: its document, its [byte_begin, byte_end) in that document's text, and whether it is special.
struct Sequence {
  std::vector<int32_t> ids;
  std::vector<int64_t> doc_id, byte_begin, byte_end;
  std::vector<uint8_t> special;
};
// Each document is encoded on its own (with the model's default special tokens when add_special_tokens),
// so Pack keeps the boundaries: a token never spans two documents.
std::vector<Sequence> make_sequences(const Tokenizer& tokenizer, const std::vector<Document>& docs,
                                     int64_t seq_len, PackingPolicy policy, bool add_special_tokens);

}  // namespace strata::text
