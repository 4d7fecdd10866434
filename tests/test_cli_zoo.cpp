// `strata zoo train --jobs N` trains members in parallel processes; the weights must be the bytes that
// one process gives, and zoo.json must record every option so that `zoo verify` can retrain from it.
#define BOOST_TEST_MODULE cli_zoo
#include <boost/test/unit_test.hpp>

#include "core/fs.hpp"
#include "test_helpers.hpp"
#include "zoo/zoo.hpp"

namespace fs = std::filesystem;
using namespace strata;

BOOST_AUTO_TEST_CASE(parallel_member_processes_give_the_weights_of_one_process) {
  const fs::path dir = testing::fresh_dir("cli-zoo-jobs");
  auto train = [&](int jobs) {
    const fs::path out = dir / fmt::format("jobs{}", jobs);
    std::string output;
    const int code = testing::run_command(
        fmt::format("'{}' zoo train --out '{}' --steps 20 --jobs {} --only zoo-gemma zoo-neox",
                    testing::strata_binary().string(), out.string(), jobs),
        &output);
    BOOST_TEST_REQUIRE(code == 0, output);
    return out;
  };
  const fs::path one = train(1), two = train(2);
  const auto summary = nlohmann::json::parse(read_text_file(two / "zoo.json"));
  BOOST_TEST(summary["jobs"] == 2);
  BOOST_TEST(summary["models"].size() == 2u);
  BOOST_TEST(summary["models"][0]["name"] == "zoo-gemma");  // the order asked for, not completion order
  BOOST_TEST(zoo::options_from_json(summary["options"]).steps == 20);
  for (const auto& entry : fs::directory_iterator(two))  // no work directory left behind
    BOOST_TEST(entry.path().filename().string().rfind(".zoo-train", 0) != 0, entry.path());
  const auto comparison = zoo::verify_zoo(one, two);
  BOOST_TEST(comparison["bit_identical"].get<bool>(), comparison.dump());
}
