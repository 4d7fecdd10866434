// The Slurm executor against a real single-node Slurm (tests/slurm/cluster.sh: munged, slurmctld and slurmd
// on 127.0.0.1, every file under a temp dir, started once for this suite and stopped at its end, jobs
// cancelled first): the tiny pipeline submitted as job arrays chained by afterok ends with the same verdict
// (NO-GO: its 3-epoch SAEs miss Gate 2) and the same artifact bytes as an in-process run; an injected unit failure shows in `strata status`, the reduce never
// runs, and `--resume` resubmits only that unit (and the stages after it) and completes.
//
// Needs root and Debian's slurmctld slurmd slurm-client munge (scripts/install-deps.sh installs them).
// Without them the suite exits 77, which ctest reports as skipped with the reason; with
// STRATA_REQUIRE_SLURM=1 (scripts/test.sh, so CI) a missing Slurm fails the suite instead.
#define BOOST_TEST_MODULE cli_slurm
#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "test_executor_helpers.hpp"

namespace fs = std::filesystem;
using namespace strata;
using namespace strata::testing;
using nlohmann::json;

namespace {

fs::path cluster_script() { return fs::path(STRATA_SOURCE_DIR) / "tests" / "slurm" / "cluster.sh"; }

// Why the test cluster cannot run here ("" when it can).
std::string missing_slurm() {
  std::string missing;
  for (const char* tool : {"munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "scancel"})
    if (run_command(fmt::format("command -v {} >/dev/null", tool)) != 0) missing += std::string(missing.empty() ? "" : " ") + tool;
  if (!missing.empty())
    return "Slurm is not installed (missing: " + missing + "); scripts/install-deps.sh installs slurmctld slurmd slurm-client munge";
  if (::geteuid() != 0) return "the test Slurm cluster runs its daemons as root, and this test is not root";
  return "";
}

// The test cluster, for the whole module.
struct SlurmCluster {
  fs::path dir;
  SlurmCluster() {
    if (const std::string why = missing_slurm(); !why.empty()) {
      const char* require = std::getenv("STRATA_REQUIRE_SLURM");
      if (require && std::string(require) == "1") throw std::runtime_error(why + " (STRATA_REQUIRE_SLURM=1: failing, not skipping)");
      std::printf("SKIPPED test_cli_slurm: %s\n", why.c_str());
      std::fflush(stdout);
      std::_Exit(77);  // ctest: SKIP_RETURN_CODE (tests/CMakeLists.txt)
    }
    char pattern[] = "/tmp/strata-slurm-XXXXXX";  // short: the munge socket path must fit in sun_path
    if (!::mkdtemp(pattern)) throw std::runtime_error("mkdtemp failed");
    dir = pattern;
    std::string output;
    const auto start = std::chrono::steady_clock::now();
    const int code = run_command("bash " + quoted(cluster_script()) + " start " + quoted(dir), &output);
    if (code != 0) throw std::runtime_error("the test Slurm cluster did not start:\n" + output);
    BOOST_TEST_MESSAGE(fmt::format("test Slurm cluster up in {:.1f} s: {}", seconds_since(start), output));
    ::setenv("SLURM_CONF", (dir / "etc" / "slurm.conf").c_str(), 1);
  }
  ~SlurmCluster() {
    if (dir.empty()) return;
    std::string output;
    run_command("bash " + quoted(cluster_script()) + " stop " + quoted(dir), &output);
  }
};
BOOST_TEST_GLOBAL_FIXTURE(SlurmCluster);

const TinyProject& project() {
  static const TinyProject p("cli_slurm");
  return p;
}

json read_json(const fs::path& file) { return json::parse(read_text_file(file)); }

}  // namespace

BOOST_AUTO_TEST_CASE(slurm_job_arrays_make_the_bytes_of_an_in_process_run_and_end_go) {
  const TinyProject& p = project();
  BOOST_TEST_REQUIRE(p.reference_ok(), "the in-process tiny run must end with a verdict:\n" << p.local_output);
  const fs::path run = p.dir / "slurm";

  // Submit, return at once, watch with `strata status` until complete.
  std::string output;
  const auto start = std::chrono::steady_clock::now();
  int code = run_command(fmt::format("{} run {} --out {} --executor slurm --slurm-time 00:20:00 --slurm-array-parallelism 4",
                                     strata_cmd(), quoted(p.toml()), quoted(run)),
                         &output);
  const double submit_seconds = seconds_since(start);
  BOOST_TEST_MESSAGE(output);
  BOOST_TEST_REQUIRE(code == 0, output);
  for (const char* stage : {"capture", "train", "transfer", "reduce"})
    BOOST_TEST(output.find(fmt::format("Submitted {}: job", stage)) != std::string::npos, output);
  BOOST_TEST(!fs::exists(run / "units" / "reduce" / "0.json"), "strata run must return before the run ends");
  code = wait_for_run(run, &output);
  const double slurm_seconds = seconds_since(start);
  BOOST_TEST_MESSAGE(output);
  BOOST_TEST_REQUIRE(code == 0, output);
  BOOST_TEST(output.find("Run: complete") != std::string::npos, output);
  BOOST_TEST(output.find("verdict " + p.verdict + "\n") != std::string::npos, output);
  expect_same_artifacts(run, p.reference());

  // The submission: one array per stage, each after the previous one (afterok, kill-on-invalid-dep); the
  // job ids are in the manifest, and every unit ran as an array task of its stage's job.
  const json manifest = read_json(run / "manifest.json");
  const json& stages = manifest.at("executor").at("submissions").at(0).at("stages");
  BOOST_TEST_REQUIRE(stages.size() == 4u);
  for (size_t i = 0; i < stages.size(); ++i) {
    const std::string command = stages.at(i).at("command");
    if (i == 0) BOOST_TEST(command.find("--dependency") == std::string::npos, command);
    else
      BOOST_TEST(command.find(fmt::format("--dependency=afterok:{} --kill-on-invalid-dep=yes",
                                          stages.at(i - 1).at("job_id").get<std::string>())) != std::string::npos, command);
  }
  BOOST_TEST((stages.at(1).at("indexes").get<std::vector<int>>() == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}));
  BOOST_TEST(read_text_file(stages.at(1).at("script").get<std::string>()).find("#SBATCH --array=0-7%4\n") != std::string::npos);
  for (int i = 0; i < 8; ++i) {
    const json unit = read_json(run / "units" / "train" / (std::to_string(i) + ".json"));
    BOOST_TEST(unit.at("slurm").at("SLURM_ARRAY_JOB_ID") == stages.at(1).at("job_id"));
    BOOST_TEST(unit.at("slurm").at("SLURM_ARRAY_TASK_ID") == std::to_string(i));
  }
  const json reduce = read_json(run / "units" / "reduce" / "0.json");
  BOOST_TEST(reduce.at("slurm").at("SLURM_JOB_ID") == stages.at(3).at("job_id"));
  BOOST_TEST(reduce.at("verdict") == p.verdict);
  BOOST_TEST(manifest.at("steps").at("train").at("status") == "complete");
  BOOST_TEST(manifest.at("executor").at("units").at("train").size() == 8u);
  BOOST_TEST_MESSAGE(fmt::format("tiny pipeline: in-process {:.1f} s; Slurm: submit {:.1f} s, submit to verdict {:.1f} s",
                                 p.local_seconds, submit_seconds, slurm_seconds));
}

BOOST_AUTO_TEST_CASE(a_failed_unit_shows_in_status_stops_the_reduce_and_resume_resubmits_only_it) {
  const TinyProject& p = project();
  BOOST_TEST_REQUIRE(p.reference_ok());
  const fs::path run = p.dir / "failing";
  std::string output;
  // The jobs inherit the submitting environment, so the hook reaches the array task.
  int code = run_command(fmt::format("STRATA_FAIL_UNIT=train:1 {} run {} --out {} --executor slurm", strata_cmd(),
                                     quoted(p.toml()), quoted(run)),
                         &output);
  BOOST_TEST_MESSAGE(output);
  BOOST_TEST_REQUIRE(code == 0, output);
  code = wait_for_run(run, &output);
  BOOST_TEST_MESSAGE(output);
  BOOST_TEST(code == 1, output);
  BOOST_TEST(unit_state(output, "train", 1) == "failed", output);
  BOOST_TEST(output.find("injected failure") != std::string::npos, output);
  BOOST_TEST(unit_state(output, "train", 0) == "done", output);
  BOOST_TEST(unit_state(output, "train", 7) == "done", output);
  BOOST_TEST(unit_state(output, "capture", 1) == "done", output);
  BOOST_TEST(unit_state(output, "transfer", 0) == "failed", output);  // cancelled: its dependency failed
  BOOST_TEST(unit_state(output, "reduce", 0) == "failed", output);
  BOOST_TEST(output.find("CANCELLED") != std::string::npos, output);
  BOOST_TEST(!fs::exists(run / "units" / "transfer" / "0.json"));  // neither ran
  BOOST_TEST(!fs::exists(run / "units" / "reduce" / "0.json"));
  BOOST_TEST(!fs::exists(run / "report" / "report.md"));
  const json kept = read_json(run / "units" / "train" / "0.json");
  // Where Slurm does not answer, a job without a record is unknown, not failed (a failed record still says so).
  code = run_command(fmt::format("SLURM_CONF=/nonexistent/slurm.conf {} status {}", strata_cmd(), quoted(run)), &output);
  BOOST_TEST(code == 4, output);
  BOOST_TEST(unit_state(output, "transfer", 0) == "unknown", output);
  BOOST_TEST(unit_state(output, "train", 1) == "failed", output);
  BOOST_TEST(output.find("Slurm did not answer") != std::string::npos, output);

  code = run_command(fmt::format("{} run --resume {} --executor slurm", strata_cmd(), quoted(run)), &output);
  BOOST_TEST_MESSAGE(output);
  BOOST_TEST_REQUIRE(code == 0, output);
  BOOST_TEST(output.find("Submitted capture") == std::string::npos, output);
  BOOST_TEST(output.find("Submitted train: job") != std::string::npos, output);
  BOOST_TEST(output.find("(units 1)") != std::string::npos, output);
  const json submissions = read_json(run / "executor" / "submissions.json");
  BOOST_TEST_REQUIRE(submissions.size() == 2u);
  const json& again = submissions.at(1).at("stages");
  BOOST_TEST_REQUIRE(again.size() == 3u);  // train [1], then transfer (cancelled before) and a new reduce
  BOOST_TEST(again.at(0).at("stage") == "train");
  BOOST_TEST((again.at(0).at("indexes").get<std::vector<int>>() == std::vector<int>{1}));
  BOOST_TEST(again.at(1).at("stage") == "transfer");
  BOOST_TEST(again.at(2).at("stage") == "reduce");
  BOOST_TEST(again.at(0).at("command").get<std::string>().find("--dependency") == std::string::npos);
  const std::string script = read_text_file(again.at(0).at("script").get<std::string>());
  BOOST_TEST(script.find("#SBATCH --array=1\n") != std::string::npos, script);

  code = wait_for_run(run, &output);
  BOOST_TEST_MESSAGE(output);
  BOOST_TEST_REQUIRE(code == 0, output);
  BOOST_TEST(output.find("verdict " + p.verdict + "\n") != std::string::npos, output);
  BOOST_TEST(read_json(run / "units" / "train" / "0.json").at("pid") == kept.at("pid"));  // not run again
  BOOST_TEST(read_json(run / "units" / "train" / "1.json").at("slurm").at("SLURM_ARRAY_JOB_ID") == again.at(0).at("job_id"));
  expect_same_artifacts(run, p.reference());
}
