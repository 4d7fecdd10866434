#define BOOST_TEST_MODULE text_data
#include <boost/test/unit_test.hpp>

#include <nlohmann/json.hpp>

#include <regex>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "test_helpers.hpp"
#include "text/dataset.hpp"
#include "text/tokenizer.hpp"

namespace fs = std::filesystem;
using namespace strata::text;

namespace {
fs::path tokenizer_dir(const std::string& name) { return strata::testing::data_dir() / "tokenizers" / name; }
}  // namespace

BOOST_AUTO_TEST_CASE(synthetic_problems_are_deterministic_and_correct) {
  auto a = synthetic_problems(7, 300), b = synthetic_problems(7, 300), c = synthetic_problems(8, 300);
  BOOST_REQUIRE_EQUAL(a.size(), 300u);
  std::set<std::string> distinct;
  for (size_t i = 0; i < a.size(); ++i) {
    BOOST_CHECK_EQUAL(a[i].question, b[i].question);
    BOOST_CHECK_EQUAL(a[i].solution, b[i].solution);
    distinct.insert(a[i].question);
  }
  BOOST_CHECK_GT(distinct.size(), 290u);
  BOOST_CHECK_NE(a[0].question, c[0].question);
  // Every worked step is correct arithmetic, and the last result is the answer.
  std::regex step(R"((\d+) ([-+*/]) (\d+) = (\d+))");
  for (const auto& p : a) {
    int64_t last = -1;
    int steps = 0;
    for (std::sregex_iterator it(p.solution.begin(), p.solution.end(), step), end; it != end; ++it, ++steps) {
      int64_t x = std::stoll((*it)[1]), y = std::stoll((*it)[3]), z = std::stoll((*it)[4]);
      char op = (*it)[2].str()[0];
      int64_t expected = op == '+' ? x + y : op == '-' ? x - y : op == '*' ? x * y : x / y;
      BOOST_CHECK_MESSAGE(z == expected && (op != '/' || x % y == 0), "wrong step " << (*it)[0] << " in " << p.solution);
      BOOST_CHECK_GE(z, 0);
      last = z;
    }
    BOOST_CHECK_GE(steps, 2);
    BOOST_CHECK_EQUAL(std::to_string(last), p.answer);
    std::string doc = format_problem(p);
    BOOST_CHECK(doc.rfind("Question: ", 0) == 0);
    BOOST_CHECK(doc.size() > p.answer.size() + 2 && doc.substr(doc.size() - p.answer.size() - 2) == " " + p.answer + "\n");
    std::string prompt = problem_prompt(p);
    BOOST_CHECK(doc.rfind(prompt, 0) == 0);
    BOOST_CHECK(prompt.size() >= 7 && prompt.substr(prompt.size() - 7) == kAnswerMarker);
  }
}

BOOST_AUTO_TEST_CASE(dataset_specs) {
  auto synthetic = load_dataset("synthetic");
  BOOST_CHECK_EQUAL(synthetic.size(), 2000u);
  BOOST_CHECK_EQUAL(synthetic[5].id, 5);
  BOOST_CHECK_EQUAL(load_dataset("synthetic:0", 10)[3].text, synthetic[3].text);
  BOOST_CHECK_NE(load_dataset("synthetic:1", 10)[3].text, synthetic[3].text);
  BOOST_CHECK_EQUAL(dataset_sha256(load_dataset("synthetic:3", 50)), dataset_sha256(load_dataset("synthetic:3", 50)));
  BOOST_CHECK_NE(dataset_sha256(load_dataset("synthetic:3", 50)), dataset_sha256(load_dataset("synthetic:4", 50)));

  auto dir = strata::testing::fresh_dir("text_datasets");
  strata::atomic_write_text(dir / "d.jsonl",
                            "{\"question\": \"1+1?\", \"answer\": \"2\", \"text\": \"t1\"}\n\n"
                            "{\"question\": \"caf\u00e9?\", \"answer\": 3, \"text\": \"t2\"}\n");
  auto by_text = load_dataset("jsonl:" + (dir / "d.jsonl").string());
  BOOST_REQUIRE_EQUAL(by_text.size(), 2u);
  BOOST_CHECK_EQUAL(by_text[1].text, "t2");
  auto by_field = load_dataset("jsonl:" + (dir / "d.jsonl").string() + ":question", 1);
  BOOST_REQUIRE_EQUAL(by_field.size(), 1u);
  BOOST_CHECK_EQUAL(by_field[0].text, "1+1?");
  auto templated = load_dataset("jsonl:" + (dir / "d.jsonl").string(), 0, "Q: {question}\nA: {answer}");
  BOOST_CHECK_EQUAL(templated[1].text, "Q: caf\u00e9?\nA: 3");
  BOOST_CHECK_THROW(load_dataset("jsonl:" + (dir / "d.jsonl").string() + ":missing"), strata::Error);

  strata::atomic_write_text(dir / "t.txt", "first para\nline two\n\n  \nsecond\n\n\nthird");
  auto text = load_dataset("text:" + (dir / "t.txt").string());
  BOOST_REQUIRE_EQUAL(text.size(), 3u);
  BOOST_CHECK_EQUAL(text[0].text, "first para\nline two");
  BOOST_CHECK_EQUAL(text[2].text, "third");
  BOOST_CHECK_THROW(load_dataset("csv:x"), strata::Error);
  BOOST_CHECK_THROW(load_dataset("synthetic:abc"), strata::Error);
  BOOST_CHECK_THROW(load_dataset("text:/nonexistent/file"), strata::Error);
  BOOST_CHECK(parse_packing_policy("pack") == PackingPolicy::Pack);
  BOOST_CHECK_EQUAL(to_string(PackingPolicy::Truncate), "truncate");
  BOOST_CHECK_THROW(parse_packing_policy("wrap"), strata::Error);
}

// A reader yields documents one at a time: a dataset of 10^12 documents costs nothing until read, and
// the first documents equal load_dataset's. The memory form keeps the order and renumbers from 0.
BOOST_AUTO_TEST_CASE(document_reader_streams) {
  DocumentReader huge("synthetic:7", 1'000'000'000'000);
  const auto first = load_dataset("synthetic:7", 3);
  Document doc;
  for (const auto& expected : first) {
    BOOST_REQUIRE(huge.next(doc));
    BOOST_CHECK_EQUAL(doc.id, expected.id);
    BOOST_CHECK_EQUAL(doc.text, expected.text);
  }
  BOOST_CHECK_EQUAL(huge.documents_read(), 3);

  DocumentReader limited("synthetic", 2);
  BOOST_CHECK(limited.next(doc) && limited.next(doc));
  BOOST_CHECK(!limited.next(doc));

  DocumentReader memory(std::vector<Document>{{5, "a"}, {9, "b"}});
  BOOST_REQUIRE(memory.next(doc));
  BOOST_CHECK_EQUAL(doc.id, 0);
  BOOST_REQUIRE(memory.next(doc));
  BOOST_CHECK_EQUAL(doc.text, "b");
  BOOST_CHECK(!memory.next(doc));

  DatasetHash hash;
  for (const auto& d : first) hash.add(d);
  BOOST_CHECK_EQUAL(hash.hex(), dataset_sha256(first));
}

BOOST_AUTO_TEST_CASE(sequences_keep_documents_and_byte_spans) {
  auto docs = load_dataset("synthetic:2", 20);
  auto gemma = Tokenizer::load(tokenizer_dir("gemma"));
  size_t total = 0;
  for (const auto& d : docs) total += gemma.encode(d.text, true).ids.size();

  auto packed = make_sequences(gemma, docs, 64, PackingPolicy::Pack, true);
  size_t packed_total = 0;
  int64_t last_doc = -1, bos = 0;
  for (size_t s = 0; s < packed.size(); ++s) {
    const auto& seq = packed[s];
    BOOST_CHECK(seq.ids.size() == 64 || s + 1 == packed.size());
    for (size_t i = 0; i < seq.ids.size(); ++i) {
      BOOST_CHECK_GE(seq.doc_id[i], last_doc);
      if (seq.doc_id[i] != last_doc) {  // a new document starts with its <bos>, empty span
        BOOST_CHECK_EQUAL(seq.ids[i], 2);
        BOOST_CHECK_EQUAL(seq.special[i], 1);
        BOOST_CHECK_EQUAL(seq.byte_begin[i], seq.byte_end[i]);
        ++bos;
      }
      last_doc = seq.doc_id[i];
      BOOST_CHECK_LE(seq.byte_end[i], int64_t(docs[last_doc].text.size()));
    }
    packed_total += seq.ids.size();
  }
  BOOST_CHECK_EQUAL(packed_total, total);
  BOOST_CHECK_EQUAL(bos, 20);

  auto truncated = make_sequences(gemma, docs, 16, PackingPolicy::Truncate, false);
  BOOST_REQUIRE_EQUAL(truncated.size(), 20u);
  for (size_t d = 0; d < truncated.size(); ++d) {
    BOOST_CHECK_EQUAL(truncated[d].ids.size(), 16u);
    BOOST_CHECK_EQUAL(truncated[d].doc_id.front(), int64_t(d));
    BOOST_CHECK_EQUAL(truncated[d].byte_begin.front(), 0);
    auto enc = gemma.encode(docs[d].text, false);
    BOOST_CHECK(std::equal(truncated[d].ids.begin(), truncated[d].ids.end(), enc.ids.begin()));
  }
  BOOST_CHECK_THROW(make_sequences(gemma, docs, 0, PackingPolicy::Pack, false), strata::Error);
}

BOOST_AUTO_TEST_CASE(trained_bpe_is_a_genuine_deterministic_tokenizer) {
  std::vector<std::string> texts;
  for (const auto& d : load_dataset("synthetic:5", 800)) texts.push_back(d.text);
  texts.push_back("Unicode too: caf\u00e9 \u00bd \xF0\x9F\x98\x80 and a tab\there.");
  auto dir = strata::testing::fresh_dir("text_bpe_train");
  train_byte_level_bpe(texts, 400, dir / "a" / "tokenizer.json");
  train_byte_level_bpe(texts, 400, dir / "b.json");
  BOOST_CHECK(strata::read_text_file(dir / "a" / "tokenizer.json") == strata::read_text_file(dir / "b.json"));

  auto j = nlohmann::json::parse(strata::read_text_file(dir / "b.json"));
  BOOST_CHECK_EQUAL(j["model"]["type"], "BPE");
  BOOST_CHECK_EQUAL(j["model"]["vocab"].size(), 400u);
  BOOST_CHECK_EQUAL(j["model"]["merges"].size(), 400u - 257u);
  BOOST_CHECK_EQUAL(j["pre_tokenizer"]["type"], "ByteLevel");
  BOOST_CHECK_EQUAL(j["added_tokens"][0]["content"], "<|endoftext|>");

  auto t = Tokenizer::load(dir / "a");
  BOOST_CHECK_EQUAL(t.vocab_size(), 400);
  BOOST_CHECK(t.is_special(0));
  BOOST_CHECK_EQUAL(t.eos_id().value(), 0);
  size_t bytes = 0, tokens = 0;
  for (const auto& text : texts) {
    auto enc = t.encode(text, true);
    BOOST_CHECK_EQUAL(t.decode(enc.ids), text);
    bytes += text.size();
    tokens += enc.ids.size();
  }
  BOOST_CHECK_GT(double(bytes) / double(tokens), 2.0);  // 143 merges more than halve the token count
  auto enc = t.encode("Mia has 3 apples.<|endoftext|>Leo", false);
  BOOST_CHECK(std::find(enc.ids.begin(), enc.ids.end(), 0) != enc.ids.end());
  // The first merge is the corpus' most frequent byte pair; frequent words become single tokens.
  BOOST_CHECK_EQUAL(t.encode(" has", false).ids.size(), 1u);
  BOOST_CHECK_THROW(train_byte_level_bpe(texts, 100, dir / "c.json"), strata::Error);
}
