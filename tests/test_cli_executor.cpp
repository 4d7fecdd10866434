// The local executor (`strata run --jobs N`: units of work as child processes, harness/executor.hpp) and
// the Slurm executor's scripts (`--dry-run`, which needs no Slurm): the tiny pipeline run as units ends with
// the verdict and the artifact bytes of an in-process run; an injected unit failure stops the run before the
// reduce, shows in `strata status`, and `--resume` runs only that unit and what depends on it.
// The same against a real Slurm: test_cli_slurm.cpp.
#define BOOST_TEST_MODULE cli_executor
#include <boost/test/unit_test.hpp>

#include "test_executor_helpers.hpp"

namespace fs = std::filesystem;
using namespace strata;
using namespace strata::testing;
using nlohmann::json;

namespace {

const TinyProject& project() {
  static const TinyProject p("cli_executor");
  return p;
}

json read_json(const fs::path& file) { return json::parse(read_text_file(file)); }

}  // namespace

BOOST_AUTO_TEST_CASE(jobs_2_makes_the_bytes_of_an_in_process_run_and_ends_go) {
  const TinyProject& p = project();
  BOOST_TEST_REQUIRE(p.reference_ok(), "the in-process tiny run must end with a verdict:\n" << p.local_output);

  std::string output;
  auto start = std::chrono::steady_clock::now();
  const fs::path run = p.dir / "jobs2";
  int code = run_command(fmt::format("{} run {} --out {} --jobs 2", strata_cmd(), quoted(p.toml()), quoted(run)), &output);
  const double jobs2_seconds = seconds_since(start);
  BOOST_TEST_MESSAGE(output);
  BOOST_TEST_REQUIRE(code == p.local_code, output);  // the same verdict: 0 GO, 2 NO-GO
  BOOST_TEST(output.find("Verdict: " + p.verdict + (p.verdict == "GO" ? "\n" : " ")) != std::string::npos, output);
  expect_same_artifacts(run, p.reference());

  // Every unit left its record: 2 capture units, 6 cells + 2 ceiling SAEs, 2 transfer units (one block of
  // source cells per model), the reduce.
  for (auto [stage, n] : std::initializer_list<std::pair<const char*, int>>{{"capture", 2}, {"train", 8}, {"transfer", 2}, {"reduce", 1}}) {
    for (int i = 0; i < n; ++i) {
      const fs::path file = run / "units" / stage / (std::to_string(i) + ".json");
      BOOST_TEST_REQUIRE(fs::exists(file), file);
      const json record = read_json(file);
      BOOST_TEST(record.at("status") == "complete", file);
      BOOST_TEST(record.at("exit_status") == 0, file);
      BOOST_TEST(!record.at("host").get<std::string>().empty(), file);
      BOOST_TEST(record.at("seconds").get<double>() > 0.0, file);
    }
    BOOST_TEST(!fs::exists(run / "units" / stage / (std::to_string(n) + ".json")), stage << " has more units than planned");
  }
  // Units record only what they made: a train unit, its SAE directory and seed.
  const json train1 = read_json(run / "units" / "train" / "1.json");
  BOOST_TEST(train1.at("name") == "gpt2:layer2");
  for (const auto& [path, artifact] : train1.at("artifacts").items()) {
    BOOST_TEST(path.rfind("saes/gpt2_layer2/", 0) == 0u, path);
    BOOST_TEST(artifact.at("step") == "train");
  }
  BOOST_TEST(train1.at("artifacts").size() >= 2u);
  BOOST_TEST((train1.at("seeds").size() == 1u && train1.at("seeds").contains("train/gpt2/2")), train1.at("seeds").dump());

  // A transfer unit writes only its partial result (scratch, not an artifact); the reduce merged them.
  const json transfer1 = read_json(run / "units" / "transfer" / "1.json");
  BOOST_TEST(transfer1.at("name") == "neox:depth0.25..neox:depth1");
  BOOST_TEST(transfer1.at("artifacts").empty(), transfer1.at("artifacts").dump());
  BOOST_TEST(transfer1.at("scratch") == "units/transfer/1.partial.json");
  BOOST_TEST(fs::exists(run / "units" / "transfer" / "1.partial.json"));

  // The merged manifest is the in-process one: same seeds and cells, one complete record per step.
  const json merged = read_json(run / "manifest.json"), reference = read_json(p.reference() / "manifest.json");
  BOOST_TEST(merged.at("seeds") == reference.at("seeds"));
  BOOST_TEST(merged.at("cells") == reference.at("cells"));
  for (const char* step : {"capture", "train", "transfer", "figures", "report", "gates"}) {
    BOOST_TEST(merged.at("steps").at(step).at("status") == "complete", step);
    BOOST_TEST(merged.at("steps").at(step).at("inputs_sha256") == reference.at("steps").at(step).at("inputs_sha256"), step);
    BOOST_TEST(merged.at("steps").at(step).at("config_sha256") == reference.at("steps").at(step).at("config_sha256"), step);
  }
  BOOST_TEST(merged.at("steps").at("train").at("summary").at("saes") == reference.at("steps").at("train").at("summary").at("saes"));
  BOOST_TEST(merged.at("steps").at("capture").at("summary").at("input_tokens") ==
             reference.at("steps").at("capture").at("summary").at("input_tokens"));
  BOOST_TEST(merged.at("executor").at("units").at("train").size() == 8u);

  code = run_command(fmt::format("{} status {}", strata_cmd(), quoted(run)), &output);
  BOOST_TEST(code == 0, output);
  BOOST_TEST(output.find("Run: complete") != std::string::npos, output);
  BOOST_TEST(unit_state(output, "train", 7) == "done", output);
  BOOST_TEST(unit_state(output, "reduce", 0) == "done", output);
  BOOST_TEST(output.find("verdict " + p.verdict) != std::string::npos, output);

  // Nothing left to do: a resume through the executor runs no unit and repeats the verdict.
  code = run_command(fmt::format("{} run --resume {} --jobs 2", strata_cmd(), quoted(run)), &output);
  BOOST_TEST(code == p.local_code, output);
  BOOST_TEST(output.find("Nothing to run: every unit and the reduce are done (verdict " + p.verdict + ")") != std::string::npos, output);
  BOOST_TEST(read_json(run / "units" / "train" / "1.json").at("pid") == train1.at("pid"));
  BOOST_TEST_MESSAGE(fmt::format("tiny pipeline: in-process {:.1f} s, --jobs 2 {:.1f} s", p.local_seconds, jobs2_seconds));
}

// Blocks that cut across models (4 source cells: gpt2's three and neox's first) merge to the same bytes;
// a failed transfer block leaves no transfer artifact, and resume runs only that block and the reduce.
BOOST_AUTO_TEST_CASE(transfer_blocks_across_models_make_the_same_bytes_and_a_failed_block_resumes_alone) {
  const TinyProject& p = project();
  BOOST_TEST_REQUIRE(p.reference_ok());
  const fs::path toml = p.dir / "tiny-blocks.toml";
  std::ofstream(toml) << read_text_file(p.toml()) << "\n[executor]\ntransfer_block = 4\n";
  // The reference is the in-process run of the same file: config.toml (and the report, which lists its
  // hash) holds the [executor] table, which changes how the run executes, not what it computes.
  const fs::path reference = p.dir / "blocks-local", run = p.dir / "blocks";
  std::string output;
  BOOST_TEST_REQUIRE(run_command(fmt::format("{} run {} --out {}", strata_cmd(), quoted(toml), quoted(reference)), &output) ==
                         p.local_code, output);
  for (const char* same : {"transfer/transfer_matrix.json", "transfer/transfer_matrices.safetensors", "gates/gates.json"})
    BOOST_TEST(sha256_file(reference / same) == sha256_file(p.reference() / same), same);
  int code = run_command(fmt::format("STRATA_FAIL_UNIT=transfer:1 {} run {} --out {} --jobs 2", strata_cmd(), quoted(toml),
                                     quoted(run)), &output);
  BOOST_TEST_MESSAGE(output);
  BOOST_TEST(code == 1, output);
  BOOST_TEST(output.find("1 unit(s) of stage transfer failed") != std::string::npos, output);
  BOOST_TEST(!fs::exists(run / "transfer" / "transfer_matrix.json"));
  const json block0 = read_json(run / "units" / "transfer" / "0.json");
  BOOST_TEST(block0.at("status") == "complete");
  BOOST_TEST(block0.at("name") == "gpt2:layer1..neox:depth0.25");
  BOOST_TEST(read_json(run / "units" / "transfer" / "1.json").at("status") == "failed");

  code = run_command(fmt::format("{} run --resume {} --jobs 2", strata_cmd(), quoted(run)), &output);
  BOOST_TEST_MESSAGE(output);
  BOOST_TEST_REQUIRE(code == p.local_code, output);
  BOOST_TEST(read_json(run / "units" / "transfer" / "0.json").at("pid") == block0.at("pid"));  // not run again
  BOOST_TEST(read_json(run / "units" / "transfer" / "1.json").at("name") == "neox:depth0.5..neox:depth1");
  expect_same_artifacts(run, reference);
}

BOOST_AUTO_TEST_CASE(a_failed_unit_stops_the_run_before_the_reduce_and_resume_runs_only_what_is_missing) {
  const TinyProject& p = project();
  BOOST_TEST_REQUIRE(p.reference_ok());
  const fs::path run = p.dir / "failing";
  std::string output;
  int code = run_command(fmt::format("STRATA_FAIL_UNIT=train:4 {} run {} --out {} --jobs 2", strata_cmd(), quoted(p.toml()),
                                     quoted(run)), &output);
  BOOST_TEST_MESSAGE(output);
  BOOST_TEST(code == 1, output);
  BOOST_TEST(output.find("1 unit(s) of stage train failed") != std::string::npos, output);
  BOOST_TEST(!fs::exists(run / "units" / "transfer" / "0.json"));
  BOOST_TEST(!fs::exists(run / "units" / "reduce" / "0.json"));
  BOOST_TEST(!fs::exists(run / "report" / "report.md"));
  const json failed = read_json(run / "units" / "train" / "4.json");
  BOOST_TEST(failed.at("status") == "failed");
  BOOST_TEST(failed.at("exit_status") == 1);
  BOOST_TEST(failed.at("error").get<std::string>().find("injected failure") != std::string::npos);
  const json kept = read_json(run / "units" / "train" / "3.json"), captured = read_json(run / "units" / "capture" / "1.json");
  BOOST_TEST(kept.at("status") == "complete");

  code = run_command(fmt::format("{} status {}", strata_cmd(), quoted(run)), &output);
  BOOST_TEST_MESSAGE(output);
  BOOST_TEST(code == 1, output);  // stopped, not in progress
  BOOST_TEST(unit_state(output, "train", 4) == "failed", output);
  BOOST_TEST(output.find("injected failure") != std::string::npos, output);
  BOOST_TEST(unit_state(output, "train", 3) == "done", output);
  BOOST_TEST(unit_state(output, "capture", 1) == "done", output);
  BOOST_TEST(unit_state(output, "transfer", 0) == "pending", output);
  BOOST_TEST(unit_state(output, "reduce", 0) == "pending", output);

  code = run_command(fmt::format("{} run --resume {} --jobs 2", strata_cmd(), quoted(run)), &output);
  BOOST_TEST_MESSAGE(output);
  BOOST_TEST_REQUIRE(code == p.local_code, output);
  BOOST_TEST(output.find("Verdict: " + p.verdict) != std::string::npos, output);
  // Only the failed unit ran again: the others kept their records.
  BOOST_TEST(read_json(run / "units" / "train" / "3.json").at("pid") == kept.at("pid"));
  BOOST_TEST(read_json(run / "units" / "capture" / "1.json").at("pid") == captured.at("pid"));
  BOOST_TEST(read_json(run / "units" / "train" / "4.json").at("status") == "complete");
  expect_same_artifacts(run, p.reference());
  BOOST_TEST(run_command(fmt::format("{} status {}", strata_cmd(), quoted(run)), &output) == 0, output);
}

BOOST_AUTO_TEST_CASE(dry_run_prints_the_scripts_with_cli_options_over_the_executor_table) {
  const fs::path dir = fresh_dir("cli_executor_dry_run");
  std::ofstream(dir / "table.toml") << kTinyExperiment << R"(
[executor]
kind = "slurm"

[executor.slurm]
partition = "gpu"
gpus_per_task = 1
time = "02:00:00"
array_parallelism = 3
setup = ["module load cuda/12.2"]

[executor.slurm.reduce]
partition = "cpu"
gpus_per_task = 0
)";
  std::string output;
  const fs::path out = dir / "never-made";
  int code = run_command(fmt::format("{} run {} --out {} --dry-run --slurm-account lab --slurm-qos high --slurm-mem 8G "
                                     "--slurm-cpus-per-task 4 --slurm-constraint a100 --slurm-extra=--exclusive "
                                     "--slurm-setup 'source venv/bin/activate' --max-retries 2",
                                     strata_cmd(), quoted(dir / "table.toml"), quoted(out)),
                         &output);
  BOOST_TEST_MESSAGE(output);
  BOOST_TEST_REQUIRE(code == 0, output);
  BOOST_TEST(!fs::exists(out));  // nothing written
  // The output: per stage a "# ---- STAGE (N unit(s)): sbatch ..." line, then the script.
  std::map<std::string, std::string> scripts, commands;
  std::string current;
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (std::regex_search(line, m, std::regex("^# ---- (\\w+) \\(\\d+ unit\\(s\\)\\): (.*)$"))) {
      current = m[1];
      commands[current] = m[2];
    } else if (!current.empty()) {
      scripts[current] += line + "\n";
    }
  }
  BOOST_TEST_REQUIRE(scripts.size() == 4u, output);
  BOOST_TEST(scripts["capture"].find("#SBATCH --array=0-1%3\n") != std::string::npos, output);
  BOOST_TEST(scripts["train"].find("#SBATCH --array=0-7%3\n") != std::string::npos, output);
  BOOST_TEST(scripts["transfer"].find("#SBATCH --array=0-1%3\n") != std::string::npos, output);
  for (const char* stage : {"capture", "train", "transfer"}) {
    BOOST_TEST(scripts[stage].find("#SBATCH --partition=gpu\n") != std::string::npos, stage);
    BOOST_TEST(scripts[stage].find("#SBATCH --gpus-per-task=1\n") != std::string::npos, stage);
    BOOST_TEST(scripts[stage].find(fmt::format("run-unit '{}' --step {} --index \"$SLURM_ARRAY_TASK_ID\"",
                                               fs::absolute(out).string(), stage)) != std::string::npos, scripts[stage]);
    BOOST_TEST(scripts[stage].find("for attempt in $(seq 0 2)") != std::string::npos, scripts[stage]);
  }
  BOOST_TEST(scripts["reduce"].find("#SBATCH --partition=cpu\n") != std::string::npos, output);
  BOOST_TEST(scripts["reduce"].find("--gpus-per-task") == std::string::npos, output);  // 0 overrides the table's 1
  BOOST_TEST(scripts["reduce"].find("--array") == std::string::npos, output);
  BOOST_TEST(scripts["reduce"].find("--reduce") != std::string::npos, output);
  for (const auto& [stage, script] : scripts) {
    BOOST_TEST(script.rfind("#!/bin/bash\n", 0) == 0u, stage);
    BOOST_TEST(script.find("#SBATCH --account=lab\n") != std::string::npos, stage);
    BOOST_TEST(script.find("#SBATCH --qos=high\n") != std::string::npos, stage);
    BOOST_TEST(script.find("#SBATCH --time=02:00:00\n") != std::string::npos, stage);
    BOOST_TEST(script.find("#SBATCH --mem=8G\n") != std::string::npos, stage);
    BOOST_TEST(script.find("#SBATCH --cpus-per-task=4\n") != std::string::npos, stage);
    BOOST_TEST(script.find("#SBATCH --constraint=a100\n") != std::string::npos, stage);
    BOOST_TEST(script.find("#SBATCH --exclusive\n") != std::string::npos, stage);
    BOOST_TEST(script.find("module load cuda/12.2\nsource venv/bin/activate\n") != std::string::npos, stage);
  }
  BOOST_TEST(commands["capture"].find("--dependency") == std::string::npos, commands["capture"]);
  for (const char* stage : {"train", "transfer", "reduce"})
    BOOST_TEST(commands[stage].find("sbatch --parsable --dependency=afterok:<job id of the previous stage> --kill-on-invalid-dep=yes") == 0u,
               commands[stage]);

  // A misspelt key is an error naming the file and the key.
  std::ofstream(dir / "typo.toml") << kTinyExperiment << "\n[executor.slurm]\npartiton = \"gpu\"\n";
  code = run_command(fmt::format("{} run {} --dry-run", strata_cmd(), quoted(dir / "typo.toml")), &output);
  BOOST_TEST(code == 1, output);
  BOOST_TEST(output.find("typo.toml") != std::string::npos, output);
  BOOST_TEST(output.find("unknown key 'executor.slurm.partiton'") != std::string::npos, output);
  // --dry-run is for Slurm only.
  code = run_command(fmt::format("{} run {} --dry-run --executor local", strata_cmd(), quoted(dir / "table.toml")), &output);
  BOOST_TEST(code == 1, output);
  BOOST_TEST(output.find("--dry-run prints Slurm scripts") != std::string::npos, output);
}
