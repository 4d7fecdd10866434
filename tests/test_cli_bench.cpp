#define BOOST_TEST_MODULE cli_bench
#include <boost/test/unit_test.hpp>

#include <nlohmann/json.hpp>

#include <fstream>

#include "test_helpers.hpp"

// `strata bench transfer` at toy sizes: the figures its JSON promises (bench/RESULTS.md and scripts read them)
// are there and agree with each other. Timings are not asserted (benchmarks, not timed tests).
BOOST_AUTO_TEST_CASE(bench_transfer_writes_consistent_figures) {
  const auto dir = strata::testing::fresh_dir("cli_bench");
  const std::string json_path = (dir / "bench.json").string();
  std::string out;
  const int rc = strata::testing::run_command(
      strata::testing::strata_binary().string() +
          " --threads 1 bench transfer --widths 16 24 --expansion 2 --l0 4 --layers 2 --fit-tokens 256"
          " --eval-tokens 256 --permutations 20 --cka-tokens 64 --bootstrap 5 --dir '" + (dir / "scratch").string() +
          "' --json '" + json_path + "'",
      &out);
  BOOST_TEST_MESSAGE(out);
  BOOST_REQUIRE_EQUAL(rc, 0);
  BOOST_TEST(out.find("% of the GEMM ceiling") != std::string::npos);
  BOOST_TEST(out.find("at 100 % of the GEMM ceiling") != std::string::npos);

  std::ifstream in(json_path);
  BOOST_REQUIRE(in.good());
  const auto j = nlohmann::json::parse(in);
  for (const char* key : {"phase5_4_hours", "phase5_4_hours_at_ceiling", "gemm_fraction", "gemm_gflops", "gemm_tflop",
                          "peak_rss_gb", "peak_anonymous_gb", "l0", "d_sae", "seconds_by_term", "planned_seconds_by_term",
                          "model_pair_seconds", "measured_seconds", "planned_seconds"})
    BOOST_TEST(j.contains(key), key);
  BOOST_TEST(j.at("l0").get<int>() == 4);
  BOOST_TEST(j.at("d_sae").get<int>() == 48);  // the larger model's: 24 x 2
  BOOST_TEST(j.at("d_sae_per_model").dump() == "[32,48]");

  // Every term of one model pair's work was timed, and the terms add up to the measured total ("other" is the
  // remainder by construction, so this checks that no term is negative or counted twice). The token selection
  // runs before the plan and is reported beside the total, not in it.
  const auto& by_term = j.at("seconds_by_term");
  double sum = 0;
  for (const auto& [term, seconds] : by_term.items()) {
    BOOST_TEST(seconds.get<double>() >= 0.0, term);
    if (term != "selection") sum += seconds.get<double>();
  }
  for (const char* term : {"maps", "sae_own", "sae_mapped", "sae_null", "cka_linear", "cka_permutations", "mmac",
                           "ceilings", "ridge", "decoder"})
    BOOST_TEST(by_term.contains(term), term);
  const double measured = j.at("measured_seconds").get<double>();
  BOOST_TEST(measured > 0.0);
  BOOST_TEST(sum == measured, boost::test_tools::tolerance(1e-9));

  // The extrapolation: 2 within- and 1 cross-model model pair here; phase5_4 has 4 and 6.
  const auto& pairs = j.at("model_pair_seconds");
  BOOST_REQUIRE_EQUAL(pairs.size(), 3u);
  const double within = pairs.at("bench0__bench0").get<double>() + pairs.at("bench1__bench1").get<double>();
  const double across = pairs.at("bench0__bench1").get<double>();
  const double hours = j.at("phase5_4_hours").get<double>();
  BOOST_TEST(hours == (4 * within / 2 + 6 * across) / 3600.0, boost::test_tools::tolerance(1e-12));

  // The fraction is the counted GEMM work over the measured time at the same run's ceiling, and the floor is the
  // same extrapolation at 100 % of it.
  const double fraction = j.at("gemm_fraction").get<double>();
  BOOST_TEST(fraction > 0.0);
  BOOST_TEST(fraction == j.at("gemm_tflop").get<double>() * 1e12 / measured / 1e9 / j.at("gemm_gflops").get<double>(),
             boost::test_tools::tolerance(1e-12));
  BOOST_TEST(j.at("phase5_4_hours_at_ceiling").get<double>() == hours * fraction, boost::test_tools::tolerance(1e-12));

  // The floor at each precision's own ceiling: the plan's fp64 FLOPs at the fp64 ceiling measured by the bench, the
  // rest at the fp32 ceiling, term by term.
  const double fp64_tflop = j.at("fp64_tflop").get<double>(), floor_seconds = j.at("floor_seconds").get<double>();
  BOOST_TEST(fp64_tflop > 0.0);  // maps, CKA, ridge and decoder run in fp64
  BOOST_TEST(fp64_tflop < j.at("gemm_tflop").get<double>());  // the SAE passes' GEMMs do not
  BOOST_TEST(j.at("fp64_gemm_gflops").get<double>() > 0.0);
  double floor_sum = 0;
  for (const auto& [term, seconds] : j.at("floor_seconds_by_term").items()) {
    BOOST_TEST(by_term.contains(term), term);
    BOOST_TEST(seconds.get<double>() >= 0.0, term);
    floor_sum += seconds.get<double>();
  }
  BOOST_TEST(floor_sum == floor_seconds, boost::test_tools::tolerance(1e-9));
  const double fp32_seconds = (j.at("gemm_tflop").get<double>() - fp64_tflop) * 1e12 / (j.at("gemm_gflops").get<double>() * 1e9);
  BOOST_TEST(floor_seconds == fp32_seconds + fp64_tflop * 1e12 / (j.at("fp64_gemm_gflops").get<double>() * 1e9),
             boost::test_tools::tolerance(1e-9));
  BOOST_TEST(j.at("gemm_fraction_at_precision_ceilings").get<double>() ==
                 j.at("gemm_tflop").get<double>() * 1e12 / floor_seconds / 1e9 / j.at("gemm_gflops").get<double>(),
             boost::test_tools::tolerance(1e-12));
  BOOST_TEST(j.at("phase5_4_hours_at_precision_ceilings").get<double>() == hours * floor_seconds / measured,
             boost::test_tools::tolerance(1e-12));

  // Issue 14's targets: at toy sizes none applies (1-2 are stated at phase5_4's sizes, 3 at L0 4000 with d_sae
  // 20480), so none is called met or missed; each still carries this run's figure.
  const auto& targets = j.at("targets");
  BOOST_REQUIRE_EQUAL(targets.size(), 3u);
  BOOST_TEST(targets.at("phase5_4_hours").at("value").get<double>() == hours);
  BOOST_TEST(targets.at("gemm_fraction").at("value").get<double>() == fraction);
  BOOST_TEST(targets.at("peak_rss_gb").at("value").get<double>() == j.at("peak_rss_gb").get<double>());
  for (const auto& [key, target] : targets.items()) {
    BOOST_TEST(!target.at("applies").get<bool>(), key);
    BOOST_TEST(target.at("met").is_null(), key);
  }
  for (const char* line : {"targets (issue 14", "1. phase5_4 <= 1.5 h extrapolated", "2. >= 60 % of the GEMM ceiling",
                           "3. peak RSS <= 12 GB", "4. the default run's transfer step"})
    BOOST_TEST(out.find(line) != std::string::npos, line);
  BOOST_TEST(out.find("does not apply") != std::string::npos);

  BOOST_TEST(j.at("peak_rss_gb").get<double>() > 0.0);
  BOOST_TEST(j.at("peak_anonymous_gb").get<double>() <= j.at("peak_rss_gb").get<double>());

  // System time and minor faults per term are differences of the process's counters over the same disjoint
  // intervals as the terms' wall time, all inside the work: every timed term has them, none is negative, and
  // together they cannot exceed the counters' difference over the work.
  BOOST_TEST(j.at("user_seconds").get<double>() > 0.0);
  for (const char* usage : {"system_seconds_by_term", "minor_faults_by_term"}) {
    const auto& per_term = j.at(usage);
    double total = 0;
    for (const auto& [term, seconds] : by_term.items())
      if (term != "other") BOOST_TEST(per_term.contains(term), usage << ": " << term);
    for (const auto& [term, value] : per_term.items()) {
      BOOST_TEST(by_term.contains(term), usage << ": " << term);
      BOOST_TEST(value.get<double>() >= 0.0, usage << ": " << term);
      if (term != "selection") total += value.get<double>();
    }
    const double over_work = j.at(std::string(usage) == "system_seconds_by_term" ? "system_seconds" : "minor_faults");
    BOOST_TEST(total <= over_work + 1e-9, usage << ": " << total << " > " << over_work);
  }
}

BOOST_AUTO_TEST_CASE(bench_transfer_rejects_an_l0_beyond_d_sae) {
  std::string out;
  const int rc = strata::testing::run_command(
      strata::testing::strata_binary().string() + " bench transfer --widths 16 16 --expansion 2 --l0 33", &out);
  BOOST_TEST(rc != 0);
  BOOST_TEST(out.find("--l0 must lie in [1, d_sae]") != std::string::npos, out);
}
