#define BOOST_TEST_MODULE cli_harness
#include <boost/test/unit_test.hpp>

#include <fstream>

#include "harness/config.hpp"
#include "test_helpers.hpp"

namespace fs = std::filesystem;
using namespace strata;

namespace {
std::string strata_cmd(const std::string& args) { return testing::strata_binary().string() + " " + args; }
bool contains(const std::string& haystack, const std::string& needle) { return haystack.find(needle) != std::string::npos; }
}  // namespace

BOOST_AUTO_TEST_CASE(config_check_prints_the_resolved_phase5_4_experiment) {
  std::string out;
  fs::path file = harness::repo_root() / "experiments" / "phase5_4.toml";
  BOOST_TEST_REQUIRE(testing::run_command(strata_cmd("config check " + file.string()), &out) == 0, out);
  BOOST_TEST(contains(out, "hf://google/gemma-2b"));
  BOOST_TEST(contains(out, "[[sae.overrides]]"));
  BOOST_TEST(contains(out, "max_fvu = 0.5"));
  BOOST_TEST(contains(out, "stream_store_check = true"));  // a default the file does not set

  BOOST_TEST_REQUIRE(testing::run_command(strata_cmd("config check --format json " + file.string()), &out) == 0, out);
  BOOST_TEST(contains(out, "\"layers\": ["));

  BOOST_TEST(testing::run_command(strata_cmd("config check " + (harness::repo_root() / "experiments" / "default.toml").string()), &out) == 0, out);
}

BOOST_AUTO_TEST_CASE(config_check_names_file_and_line_of_errors) {
  fs::path dir = testing::fresh_dir("cli_harness_config");
  std::ofstream(dir / "typo.toml") << "[experiment]\nseed = 1\n[sae]\nl11 = 1e-4\n[[models]]\nname = \"m\"\ncheckpoint = \"c\"\nlayers = [1]\n";
  std::ofstream(dir / "type.toml") << "[experiment]\nseed = \"one\"\n[[models]]\nname = \"m\"\ncheckpoint = \"c\"\nlayers = [1]\n";
  std::string out;
  BOOST_TEST(testing::run_command(strata_cmd("config check " + (dir / "typo.toml").string()), &out) == 1);
  BOOST_TEST(contains(out, "typo.toml:4:1: unknown key 'sae.l11'"), out);
  BOOST_TEST(testing::run_command(strata_cmd("config check " + (dir / "type.toml").string()), &out) == 1);
  BOOST_TEST(contains(out, "type.toml:2:8: 'experiment.seed' must be an integer, got a string"), out);
}

BOOST_AUTO_TEST_CASE(run_records_a_failed_step_and_verify_checks_the_run) {
  fs::path dir = testing::fresh_dir("cli_harness_run");
  std::ofstream(dir / "exp.toml") << "[experiment]\nname = \"x\"\nthreads = 1\n[[models]]\nname = \"m\"\ncheckpoint = \"no-such-model\"\nlayers = [1]\n";
  std::string out;
  // capture cannot find the checkpoint: the run fails with the reason, and the run directory is recorded.
  BOOST_TEST(testing::run_command(strata_cmd("run " + (dir / "exp.toml").string() + " --steps capture --out " + (dir / "run").string()), &out) == 1);
  BOOST_TEST(contains(out, "step capture failed"), out);
  BOOST_TEST(contains(out, "Run directory: " + (dir / "run").string()), out);
  BOOST_TEST(fs::exists(dir / "run" / "logs" / "strata.log"));

  BOOST_TEST(testing::run_command(strata_cmd("verify " + (dir / "run").string()), &out) == 0, out);
  BOOST_TEST(contains(out, "2 artifacts checked, 0 missing, 0 mismatched: OK"), out);
  {  // one flipped byte
    std::fstream f(dir / "run" / "config.resolved.json", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(0);
    f.put('[');
  }
  BOOST_TEST(testing::run_command(strata_cmd("verify " + (dir / "run").string()), &out) == 1, out);
  BOOST_TEST(contains(out, "MISMATCH   config.resolved.json"), out);
  fs::remove(dir / "run" / "config.toml");
  BOOST_TEST(testing::run_command(strata_cmd("verify " + (dir / "run").string()), &out) == 1, out);
  BOOST_TEST(contains(out, "MISSING    config.toml"), out);
}
