#include "text/dataset.hpp"

#include <nlohmann/json.hpp>

#include <array>
#include <fstream>
#include <sstream>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/hash.hpp"
#include "core/random.hpp"
#include "core/read_bounded.hpp"

namespace strata::text {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kDefaultSyntheticCount = 2000;

// The corpus generator: a Mersenne Twister (its output sequence is fixed by the standard, unlike std::
// distributions) seeded through strata::derive, with unbiased draws (uniform_below).
class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(derive(seed, "text/synthetic")) {}
  uint64_t below(uint64_t n) { return uniform_below(engine_, n); }                         // [0, n)
  int64_t uniform(int64_t lo, int64_t hi) { return lo + int64_t(below(uint64_t(hi - lo + 1))); }  // [lo, hi]
  template <class T, size_t N>
  const T& pick(const std::array<T, N>& items) { return items[below(N)]; }

 private:
  std::mt19937_64 engine_;
};

struct Person {
  const char* name;
  const char* pronoun;  // subject pronoun, capitalised
};
constexpr std::array<Person, 16> kPeople{{{"Mia", "She"},   {"Leo", "He"},    {"Ava", "She"},  {"Noah", "He"},
                                           {"Emma", "She"},  {"Liam", "He"},   {"Zoe", "She"},  {"Omar", "He"},
                                           {"Nina", "She"},  {"Sam", "He"},    {"Ivy", "She"},  {"Ben", "He"},
                                           {"Lucy", "She"},  {"Ravi", "He"},   {"Iris", "She"}, {"Tom", "He"}}};
constexpr std::array<const char*, 14> kItems{"apples",  "marbles", "stickers", "books",   "pencils",
                                             "cookies", "shells",  "coins",    "cards",   "stamps",
                                             "eggs",    "flowers", "buttons",  "crayons"};
constexpr std::array<const char*, 6> kGainVerbs{"buys", "finds", "gets", "receives", "picks up", "wins"};
constexpr std::array<const char*, 4> kLoseVerbs{"gives", "sells", "hands", "lends"};

std::string step_word(int k) {
  static const std::array<const char*, 6> words{"First", "Next", "Then", "After that", "Then", "Finally"};
  return words[std::min<size_t>(k, words.size() - 1)];
}

// A shopping problem: a price times a quantity, taken from a budget, sometimes with money earned.
Problem make_shopping_problem(Rng& rng) {
  static constexpr std::array<const char*, 8> kGoods{"pens", "notebooks", "tickets", "candles",
                                                      "mugs", "plants", "kites", "puzzles"};
  const Person& who = rng.pick(kPeople);
  const std::string goods = rng.pick(kGoods);
  int64_t price = rng.uniform(2, 9), count = rng.uniform(2, 6);
  int64_t cost = price * count;
  int64_t money = cost + rng.uniform(1, 40);
  std::string question = fmt::format("{} has {} dollars. Each of the {} costs {} dollars, and {} buys {} {}.", who.name,
                                     money, goods, price, who.pronoun == std::string("She") ? "she" : "he", count, goods);
  std::string solution = fmt::format("The {} cost {} * {} = {} dollars. {} has {} - {} = {} dollars left.", goods, count,
                                     price, cost, who.name, money, cost, money - cost);
  int64_t value = money - cost;
  if (rng.below(2) == 1) {
    int64_t earned = rng.uniform(1, 20);
    question += fmt::format(" Then {} earns {} dollars.", who.pronoun == std::string("She") ? "she" : "he", earned);
    solution += fmt::format(" After earning {}, {} has {} + {} = {} dollars.", earned, who.name, value, earned, value + earned);
    value += earned;
  }
  question += fmt::format(" How many dollars does {} have now?", who.name);
  return {question, solution, std::to_string(value)};
}

Problem make_problem(Rng& rng) {
  if (rng.below(4) == 0) return make_shopping_problem(rng);
  const Person& who = rng.pick(kPeople);
  Person friend_ = rng.pick(kPeople);
  while (std::string(friend_.name) == who.name) friend_ = rng.pick(kPeople);
  const std::string items = rng.pick(kItems);
  int64_t value = rng.uniform(2, 30);
  const int steps = int(rng.uniform(2, 4));

  std::string question = fmt::format("{} has {} {}.", who.name, value, items);
  std::string solution = fmt::format("{} starts with {} {}.", who.name, value, items);
  for (int k = 0; k < steps; ++k) {
    // Keep numbers small enough for tiny models: multiply only small values, divide only exactly.
    std::vector<int> ops{0, 1};  // 0 add, 1 subtract, 2 multiply, 3 divide
    if (value <= 20) ops.push_back(2);
    for (int d = 2; d <= 5; ++d)
      if (value % d == 0 && value >= 2 * d) {
        ops.push_back(3);
        break;
      }
    if (value < 2) ops = {0};
    int op = ops[rng.below(ops.size())];
    int64_t before = value;
    std::string sentence, work;
    if (op == 0) {
      int64_t b = rng.uniform(1, 20);
      value = before + b;
      sentence = fmt::format("{} {} {} more {}.", who.pronoun, rng.pick(kGainVerbs), b, items);
      work = fmt::format("{} + {} = {}", before, b, value);
    } else if (op == 1) {
      int64_t b = rng.uniform(1, before - 1);
      value = before - b;
      sentence = fmt::format("{} {} {} {} to {}.", who.pronoun, rng.pick(kLoseVerbs), b, items, friend_.name);
      work = fmt::format("{} - {} = {}", before, b, value);
    } else if (op == 2) {
      int64_t k2 = rng.uniform(2, 4);
      value = before * k2;
      static const std::array<const char*, 5> times{"", "", "doubles", "triples", "quadruples"};
      sentence = fmt::format("{} {} the number of {}.", who.pronoun, times[k2], items);
      work = fmt::format("{} * {} = {}", before, k2, value);
    } else {
      std::vector<int64_t> divisors;
      for (int64_t d = 2; d <= 5; ++d)
        if (before % d == 0 && before >= 2 * d) divisors.push_back(d);
      int64_t d = divisors[rng.below(divisors.size())];
      value = before / d;
      sentence = fmt::format("{} shares the {} equally among {} friends and keeps one share.", who.pronoun, items, d);
      work = fmt::format("{} / {} = {}", before, d, value);
    }
    question += " " + sentence;
    solution += fmt::format(" {}, {}, so {} has {}.", step_word(k == steps - 1 ? 5 : k), work, who.name, value);
  }
  question += fmt::format(" How many {} does {} have now?", items, who.name);
  return {question, solution, std::to_string(value)};
}

std::string field_text(const nlohmann::json& record, const std::string& field, const fs::path& file, int64_t line) {
  if (!record.is_object() || !record.contains(field))
    fail("{}:{}: the record has no field {} (choose one with jsonl:PATH:FIELD)", file.string(), line, shown_text(field));
  const auto& v = record[field];
  return v.is_string() ? v.get<std::string>() : v.dump();
}

std::string apply_template(const std::string& tmpl, const nlohmann::json& record, const fs::path& file, int64_t line) {
  std::string out;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl[i] == '{') {
      size_t close = tmpl.find('}', i);
      if (close == std::string::npos) fail("jsonl template {}: unclosed '{{'", shown_text(tmpl));
      out += field_text(record, tmpl.substr(i + 1, close - i - 1), file, line);
      i = close;
    } else {
      out += tmpl[i];
    }
  }
  return out;
}

}  // namespace

// One source of documents, read one at a time so that memory does not grow with the dataset.
class DocumentSource {
 public:
  virtual ~DocumentSource() = default;
  virtual bool next(std::string& text) = 0;
};

namespace {

class SyntheticSource : public DocumentSource {
 public:
  explicit SyntheticSource(uint64_t seed) : rng_(seed) {}
  bool next(std::string& text) override {
    text = format_problem(make_problem(rng_));
    return true;
  }

 private:
  Rng rng_;
};

// A dataset file without a single document is an error here, where the file is known, instead of a
// capture that ends with no rows and blames the mask.
[[noreturn]] void fail_empty(const fs::path& path, const char* kind) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  fail("{}: the {} dataset holds no documents ({}); point [dataset] spec at a file with at least one document",
       path.string(), kind, !ec && size == 0 ? "the file is empty, 0 bytes" : "only blank lines");
}

class JsonlSource : public DocumentSource {
 public:
  JsonlSource(const std::string& rest, std::string tmpl) : tmpl_(std::move(tmpl)) {
    path_ = rest;
    if (!fs::exists(path_)) {
      size_t colon = rest.rfind(':');
      if (colon != std::string::npos) path_ = rest.substr(0, colon), field_ = rest.substr(colon + 1);
    }
    in_.open(path_);
    if (!in_) fail("{}: cannot open the JSONL dataset", path_.string());
  }
  bool next(std::string& text) override {
    std::string line;
    while (std::getline(in_, line)) {
      ++line_no_;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json record;
      try {
        record = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        fail("{}:{}: invalid JSON ({})", path_.string(), line_no_, e.what());
      }
      text = tmpl_.empty() ? field_text(record, field_, path_, line_no_) : apply_template(tmpl_, record, path_, line_no_);
      produced_ = true;
      return true;
    }
    if (in_.bad()) fail("{}: read error after line {}", path_.string(), line_no_);
    if (!produced_) fail_empty(path_, "JSONL");
    return false;
  }

 private:
  fs::path path_;
  std::string field_ = "text", tmpl_;
  std::ifstream in_;
  int64_t line_no_ = 0;
  bool produced_ = false;
};

// One document per paragraph; paragraphs are separated by blank lines.
class TextSource : public DocumentSource {
 public:
  explicit TextSource(const fs::path& path) : path_(path), in_(path) {
    if (!fs::exists(path) || !in_) fail("{}: cannot open the text dataset", path.string());
  }
  bool next(std::string& text) override {
    text.clear();
    std::string line;
    while (std::getline(in_, line)) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) {
        if (!text.empty()) return true;
        continue;
      }
      if (!text.empty()) text += '\n';
      text += line;
    }
    if (in_.bad()) fail("{}: read error", path_.string());
    if (text.empty() && !produced_) fail_empty(path_, "text");
    produced_ |= !text.empty();
    return !text.empty();
  }

 private:
  fs::path path_;
  std::ifstream in_;
  bool produced_ = false;
};

class MemorySource : public DocumentSource {
 public:
  explicit MemorySource(std::vector<Document> documents) : documents_(std::move(documents)) {}
  bool next(std::string& text) override {
    if (next_ == documents_.size()) return false;
    text = std::move(documents_[next_++].text);
    return true;
  }

 private:
  std::vector<Document> documents_;
  size_t next_ = 0;
};

std::unique_ptr<DocumentSource> open_source(const std::string& spec, const std::string& jsonl_template) {
  if (spec == "synthetic" || spec.rfind("synthetic:", 0) == 0) {
    uint64_t seed = 0;
    if (spec.size() > 10) {
      const std::string s = spec.substr(10);
      size_t used = 0;
      try {
        seed = std::stoull(s, &used);
      } catch (...) {
        used = 0;
      }
      if (used != s.size() || s.empty()) fail("dataset {}: the seed must be a non-negative integer", shown_text(spec));
    }
    return std::make_unique<SyntheticSource>(seed);
  }
  if (spec.rfind("jsonl:", 0) == 0) return std::make_unique<JsonlSource>(spec.substr(6), jsonl_template);
  if (spec.rfind("text:", 0) == 0) return std::make_unique<TextSource>(spec.substr(5));
  fail("dataset {} is not understood: use synthetic[:SEED], jsonl:PATH[:FIELD] or text:PATH", shown_text(spec));
}

}  // namespace

std::vector<Problem> synthetic_problems(uint64_t seed, int64_t count) {
  Rng rng(seed);
  std::vector<Problem> out;
  out.reserve(count);
  for (int64_t i = 0; i < count; ++i) out.push_back(make_problem(rng));
  return out;
}

std::string format_problem(const Problem& p) {
  return "Question: " + p.question + "\nSolution: " + p.solution + "\n" + kAnswerMarker + " " + p.answer + "\n";
}

std::string problem_prompt(const Problem& p) {
  std::string text = format_problem(p);
  return text.substr(0, text.rfind(kAnswerMarker) + std::string_view(kAnswerMarker).size());
}

DocumentReader::DocumentReader(const std::string& spec, int64_t max_docs, const std::string& jsonl_template)
    : source_(open_source(spec, jsonl_template)) {
  if (max_docs < 0) fail("dataset {}: max_docs must be >= 0", shown_text(spec));
  limit_ = max_docs > 0 ? max_docs : (spec.rfind("synthetic", 0) == 0 ? kDefaultSyntheticCount : 0);
}

DocumentReader::DocumentReader(std::vector<Document> documents)
    : source_(std::make_unique<MemorySource>(std::move(documents))) {}

DocumentReader::~DocumentReader() = default;
DocumentReader::DocumentReader(DocumentReader&&) noexcept = default;

bool DocumentReader::next(Document& out) {
  if (limit_ > 0 && read_ >= limit_) return false;
  if (!source_->next(out.text)) return false;
  out.id = read_++;
  return true;
}

std::vector<Document> load_dataset(const std::string& spec, int64_t max_docs, const std::string& jsonl_template) {
  DocumentReader reader(spec, max_docs, jsonl_template);
  std::vector<Document> docs;
  for (Document d; reader.next(d);) docs.push_back(std::move(d));
  return docs;
}

void DatasetHash::add(const Document& doc) {
  hash_.update(fmt::format("{}\t{}\n", doc.id, doc.text.size()));
  hash_.update(doc.text);
}

std::string dataset_sha256(const std::vector<Document>& docs) {
  DatasetHash hash;
  for (const auto& d : docs) hash.add(d);
  return hash.hex();
}

PackingPolicy parse_packing_policy(const std::string& name) {
  if (name == "truncate") return PackingPolicy::Truncate;
  if (name == "pack") return PackingPolicy::Pack;
  fail("packing policy {} is not understood: use truncate or pack", shown_text(name));
}

std::string to_string(PackingPolicy policy) { return policy == PackingPolicy::Truncate ? "truncate" : "pack"; }

std::vector<Sequence> make_sequences(const Tokenizer& tokenizer, const std::vector<Document>& docs, int64_t seq_len,
                                     PackingPolicy policy, bool add_special_tokens) {
  if (seq_len <= 0) fail("make_sequences: seq_len must be positive, got {}", seq_len);
  std::vector<Sequence> out;
  auto append = [](Sequence& s, const Document& d, const Encoding& e, size_t i) {
    s.ids.push_back(e.ids[i]);
    s.doc_id.push_back(d.id);
    s.byte_begin.push_back(e.offsets[i].first);
    s.byte_end.push_back(e.offsets[i].second);
    s.special.push_back(e.special[i]);
  };
  Sequence current;
  for (const auto& doc : docs) {
    Encoding enc = tokenizer.encode(doc.text, add_special_tokens);
    if (enc.ids.empty()) continue;
    if (policy == PackingPolicy::Truncate) {
      Sequence s;
      for (size_t i = 0; i < enc.ids.size() && int64_t(i) < seq_len; ++i) append(s, doc, enc, i);
      out.push_back(std::move(s));
    } else {
      for (size_t i = 0; i < enc.ids.size(); ++i) {
        append(current, doc, enc, i);
        if (int64_t(current.ids.size()) == seq_len) out.push_back(std::exchange(current, Sequence{}));
      }
    }
  }
  if (!current.ids.empty()) out.push_back(std::move(current));
  return out;
}

}  // namespace strata::text
