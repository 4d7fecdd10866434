// Helpers of the executor suites (test_cli_executor.cpp: local processes; test_cli_slurm.cpp: Slurm job
// arrays): the tiny experiment's in-process run as the reference bytes, artifact comparison, and
// `strata status` parsing.
#pragma once
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/fs.hpp"
#include "core/hash.hpp"
#include "test_capture_fixture.hpp"
#include "test_helpers.hpp"
#include "test_tiny_experiment.hpp"

namespace strata::testing {

inline std::string quoted(const std::filesystem::path& p) { return "'" + p.string() + "'"; }
inline std::string strata_cmd() { return quoted(strata_binary()); }

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The tiny experiment (two tiny checkpoints beside it) and its in-process `strata run`: the reference.
struct TinyProject {
  std::filesystem::path dir;
  double local_seconds = 0;
  int local_code = -1;
  std::string local_output;
  explicit TinyProject(const std::string& name) {
    dir = fresh_dir(name);
    tiny_checkpoint(dir / "ckpt-gpt2", "gpt2-tiny", 200);
    tiny_checkpoint(dir / "ckpt-neox", "gpt-neox-tiny", 120);
    std::ofstream(dir / "tiny.toml") << kTinyExperiment;
    auto start = std::chrono::steady_clock::now();
    local_code = run_command(fmt::format("{} run {} --out {}", strata_cmd(), quoted(dir / "tiny.toml"), quoted(dir / "local")),
                             &local_output);
    local_seconds = seconds_since(start);
    BOOST_TEST_MESSAGE(local_output);
    if (std::filesystem::exists(reference() / "gates" / "gates.json"))
      verdict = nlohmann::json::parse(read_text_file(reference() / "gates" / "gates.json")).value("must_pass_ok", false) ? "GO" : "NO-GO";
  }
  // The tiny SAEs (3 epochs) miss Gate 2, so the tiny run ends NO-GO (exit status 2) by design; what the
  // executors must reproduce is that verdict and every byte.
  std::string verdict;
  bool reference_ok() const { return (local_code == 0 && verdict == "GO") || (local_code == 2 && verdict == "NO-GO"); }
  std::filesystem::path toml() const { return dir / "tiny.toml"; }
  std::filesystem::path reference() const { return dir / "local"; }
};

// path -> sha256 of every artifact a run's manifest records.
inline std::map<std::string, std::string> artifact_hashes(const std::filesystem::path& run) {
  std::map<std::string, std::string> out;
  const nlohmann::json manifest = nlohmann::json::parse(read_text_file(run / "manifest.json"));
  for (const auto& [path, record] : manifest.at("artifacts").items()) out[path] = record.at("sha256").get<std::string>();
  return out;
}

// The run records the same artifacts as the reference, and every one of them is on disk with the same bytes.
inline void expect_same_artifacts(const std::filesystem::path& run, const std::filesystem::path& reference) {
  const auto got = artifact_hashes(run), want = artifact_hashes(reference);
  BOOST_TEST(got.size() == want.size());
  BOOST_TEST(want.size() > 40u);  // stores, SAEs, ceiling SAEs, transfer, figures, report, gates
  for (const char* prefix : {"activations/", "saes/", "saes_ceiling/", "transfer/", "figures/", "report/", "gates/"}) {
    bool any = false;
    for (const auto& [path, sha] : want) any = any || path.rfind(prefix, 0) == 0;
    BOOST_TEST(any, "the reference records no artifact under " << prefix);
  }
  for (const auto& [path, sha] : want) {
    auto it = got.find(path);
    BOOST_TEST((it != got.end() && it->second == sha), path << (it == got.end() ? " is not recorded" : " is recorded with another hash"));
    BOOST_TEST(sha256_file(reference / path) == sha, path << " of the reference differs from its record");
    BOOST_TEST((std::filesystem::exists(run / path) && sha256_file(run / path) == sha), path << " differs on disk");
  }
  for (const auto& [path, sha] : got) BOOST_TEST(want.count(path) == 1u, path << " is recorded but not in the reference");
}

// `strata status RUN` until it stops saying "in progress" (exit status 3) or the timeout; returns its exit status.
inline int wait_for_run(const std::filesystem::path& run, std::string* output, double timeout_seconds = 600) {
  auto start = std::chrono::steady_clock::now();
  while (true) {
    const int code = run_command(fmt::format("{} status {}", strata_cmd(), quoted(run)), output);
    if (code != 3 || seconds_since(start) > timeout_seconds) return code;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
}

// The state `strata status` printed for one unit ("" when it has no line).
inline std::string unit_state(const std::string& status_output, const std::string& stage, int index) {
  const std::regex line("^" + stage + "\\s+" + std::to_string(index) + "\\s+\\S+\\s+(\\S+)");
  std::istringstream in(status_output);
  for (std::string text; std::getline(in, text);) {
    std::smatch m;
    if (std::regex_search(text, m, line)) return m[1];
  }
  return "";
}

}  // namespace strata::testing
