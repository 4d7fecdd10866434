#define BOOST_TEST_MODULE cli_text
#include <boost/test/unit_test.hpp>

#include <nlohmann/json.hpp>

#include <sstream>

#include "core/fs.hpp"
#include "test_helpers.hpp"

namespace {

std::string tokenize(const std::string& args, int* status = nullptr) {
  std::string out;
  int rc = strata::testing::run_command(strata::testing::strata_binary().string() + " tokenize " + args, &out);
  if (status) *status = rc;
  else BOOST_CHECK_MESSAGE(rc == 0, "strata tokenize " << args << " failed: " << out);
  return out;
}

std::string quoted(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

}  // namespace

BOOST_AUTO_TEST_CASE(tokenize_prints_ids_and_offsets) {
  auto dir = strata::testing::data_dir() / "tokenizers";
  auto out = tokenize("--tokenizer " + quoted(dir / "gemma") + " --text 'Hello world' --special --offsets");
  auto j = nlohmann::json::parse(out);
  BOOST_CHECK_EQUAL(j["ids"].dump(), "[2,4521,2134]");
  BOOST_CHECK_EQUAL(j["offsets"].dump(), "[[0,0],[0,5],[5,11]]");

  out = tokenize("--tokenizer " + quoted(dir / "gpt2") + " --text 'Hello<|endoftext|>world'");
  j = nlohmann::json::parse(out);
  BOOST_CHECK_EQUAL(j["ids"].dump(), "[15496,50256,6894]");
  BOOST_CHECK(!j.contains("offsets"));

  auto tmp = strata::testing::fresh_dir("cli_text");
  strata::atomic_write_text(tmp / "in.jsonl", "{\"body\": \"Hello\"}\n{\"body\": \" world\"}\n");
  out = tokenize("--tokenizer " + quoted(dir / "gpt2") + " --jsonl " + quoted(tmp / "in.jsonl") + " --field body");
  std::istringstream lines(out);
  std::string first, second;
  std::getline(lines, first);
  std::getline(lines, second);
  BOOST_CHECK_EQUAL(nlohmann::json::parse(first)["ids"].dump(), "[15496]");
  BOOST_CHECK_EQUAL(nlohmann::json::parse(second)["ids"].dump(), "[995]");

  int status = 0;
  out = tokenize("--tokenizer " + quoted(tmp) + " --text x", &status);
  BOOST_CHECK_NE(status, 0);
  BOOST_CHECK(out.find("no tokenizer found") != std::string::npos);
}
