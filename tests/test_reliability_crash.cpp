#define BOOST_TEST_MODULE reliability_crash
#include <boost/test/unit_test.hpp>

#include <fstream>
#include <map>
#include <set>

#include "core/fs.hpp"
#include "core/hash.hpp"
#include "harness/manifest.hpp"
#include "harness/verify.hpp"
#include "test_capture_fixture.hpp"
#include "test_helpers.hpp"

// Crash anywhere, resume to the same bytes (issue 17): the tiny pipeline run by the CLI is killed with
// SIGKILL at write N (STRATA_ABORT_AT_WRITE, core/fs.hpp) for N spread over every step, or has its N-th
// write fail with ENOSPC (STRATA_FAIL_WRITE); each time `strata run --resume` finishes the run, and every
// artifact must equal, byte for byte, the artifact of an uninterrupted run.

using namespace strata;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The tiny pipeline of test_pipeline.cpp, smaller still: every step runs, in about a second.
const char* kCrashExperiment = R"(
[experiment]
name = "crash"
seed = 5
threads = 1

[dataset]
spec = "synthetic"
num_documents = 24
seq_len = 32
batch_size = 8
num_batches = 2

[[models]]
name = "gpt2"
checkpoint = "ckpt-gpt2"
layers = [1, 4]

[[models]]
name = "neox"
checkpoint = "ckpt-neox"
layers = [2, 4]

[sae]
expansion = 2
lr = 1e-3
epochs = 1
min_epochs = 1
batch_size = 128
lr_warmup_steps = 2
l1_warmup_steps = 2
b_dec_init_rows = 128
shuffle_buffer_rows = 256
dead_window_tokens = 500
resample_interval_steps = 0
checkpoint_interval_steps = 0

[transfer]
top_k = 8
cka_permutations = 10
cka_max_tokens = 128
bootstrap = 5
max_fit_tokens = 256
max_eval_tokens = 128
batch_size = 128
ceiling = true
)";

std::string strata_run(const std::string& args, const std::string& env = "") {
  return fmt::format("{} '{}' run {}", env, testing::strata_binary().string(), args);
}

// path -> sha256 of every artifact the manifest records, each re-hashed from the file on disk.
std::map<std::string, std::string> artifacts_on_disk(const fs::path& run) {
  std::map<std::string, std::string> out;
  // The manifest must outlive the loop: artifacts() refers into it (a range-for over a temporary's member
  // would read freed memory).
  const harness::Manifest manifest = harness::Manifest::load(run / "manifest.json");
  for (const auto& [path, record] : manifest.artifacts())
    out[path] = fs::is_regular_file(run / path) ? sha256_file(run / path) : "missing";
  return out;
}

// Files under a final name (not the harness's own, not logs, not the dot-named temporaries) whose bytes
// differ from the uninterrupted run's: a crash or a full disk must never leave one.
std::vector<std::string> wrong_final_files(const fs::path& run, const std::map<std::string, std::string>& reference) {
  std::vector<std::string> out;
  for (const auto& entry : fs::recursive_directory_iterator(run)) {
    if (!entry.is_regular_file()) continue;
    const std::string rel = fs::relative(entry.path(), run).generic_string();
    if (rel == "manifest.json" || rel == "run.lock" || rel.rfind("logs/", 0) == 0) continue;
    if (entry.path().filename().string().front() == '.') continue;
    auto it = reference.find(rel);
    if (it == reference.end() || it->second != sha256_file(entry.path())) out.push_back(rel);
  }
  return out;
}

std::string step_in(const fs::path& run, const std::string& status) {
  const harness::Manifest manifest = harness::Manifest::load(run / "manifest.json");
  for (const auto& [name, step] : manifest.steps())
    if (step.status == status) return name;
  return "";
}

struct Fixture {
  fs::path dir = testing::fresh_dir("reliability_crash");
  std::map<std::string, std::string> reference;
  Fixture() {
    testing::tiny_checkpoint(dir / "ckpt-gpt2", "gpt2-tiny", 200);
    testing::tiny_checkpoint(dir / "ckpt-neox", "gpt-neox-tiny", 120);
    std::ofstream(dir / "crash.toml") << kCrashExperiment;
    std::string out;
    const int code = testing::run_command(strata_run(fmt::format("'{}' --out '{}'", (dir / "crash.toml").string(),
                                                                 (dir / "reference").string())), &out);
    BOOST_TEST_REQUIRE((code == 0 || code == 2), out);  // 0 GO, 2 NO-GO: the run itself completed
    reference = artifacts_on_disk(dir / "reference");
    BOOST_TEST_REQUIRE(reference.size() > 20u);
  }
  // Resumes `run` to the end and compares it with the reference, artifact by artifact.
  // A kill before the first manifest was saved leaves only the lock and the log: then the same command
  // starts the run again in that directory.
  void resume_and_compare(const fs::path& run, const std::string& what) {
    std::string out;
    const std::string args = fs::exists(run / "manifest.json")
                                 ? fmt::format("--resume '{}'", run.string())
                                 : fmt::format("'{}' --out '{}'", (dir / "crash.toml").string(), run.string());
    const int code = testing::run_command(strata_run(args), &out);
    BOOST_TEST_REQUIRE((code == 0 || code == 2), what << ": resume failed: " << out);
    const auto resumed = artifacts_on_disk(run);
    BOOST_TEST(resumed.size() == reference.size(), what);
    for (const auto& [path, sha] : reference) {
      auto it = resumed.find(path);
      BOOST_TEST((it != resumed.end() && it->second == sha), what << ": " << path << " differs after resume");
    }
    BOOST_TEST(harness::verify_run(run).ok(), what);
  }
};

}  // namespace

BOOST_AUTO_TEST_CASE(kill_9_at_writes_over_every_step_then_resume_gives_the_same_bytes) {
  Fixture f;
  std::set<std::string> interrupted_steps;
  int kills = 0;
  // Runs the experiment killed at write n; false if the run ended first (n is past its last write).
  // Otherwise checks what the kill left and that --resume finishes it to the reference's bytes.
  auto killed_at = [&](int n) {
    const fs::path run = f.dir / fmt::format("killed-{}", n);
    std::string out;
    const int code = testing::run_command(
        strata_run(fmt::format("'{}' --out '{}'", (f.dir / "crash.toml").string(), run.string()),
                   fmt::format("STRATA_ABORT_AT_WRITE={}", n)),
        &out);
    if (code != 137 && code != -1) {
      BOOST_TEST((code == 0 || code == 2), out);
      fs::remove_all(run);
      return false;
    }
    ++kills;
    // What the kill left: a manifest whose artifacts are all intact, and no file under a final name that
    // differs from the uninterrupted run's.
    if (fs::exists(run / "manifest.json")) {
      BOOST_TEST(harness::verify_run(run).ok(), "write " << n);
      interrupted_steps.insert(step_in(run, "running"));
    }
    const auto wrong = wrong_final_files(run, f.reference);
    BOOST_TEST(wrong.empty(), "write " << n << " left " << (wrong.empty() ? "" : wrong.front()));
    f.resume_and_compare(run, fmt::format("killed at write {}", n));
    fs::remove_all(run);
    return true;
  };
  // Every artifact is one write plus one manifest save; steps add their own saves. Points every `stride`
  // writes cover the run until the first n past its last write; then a bisection finds the last write
  // itself (the gates step's final manifest save), so that the short last step is interrupted too.
  const int stride = std::max<int>(1, static_cast<int>(f.reference.size()) * 2 / 12);
  int last_killed = 0, first_past = 1;
  for (;; first_past += stride) {
    if (!killed_at(first_past)) break;
    last_killed = first_past;
  }
  while (first_past - last_killed > 1) {
    const int middle = (last_killed + first_past) / 2;
    (killed_at(middle) ? last_killed : first_past) = middle;
  }
  // The run's last writes are its closing manifest saves; the gates step's own writes lie just before.
  for (int n = last_killed - 1; n > last_killed - 8 && !interrupted_steps.count("gates"); --n) killed_at(n);
  BOOST_TEST_MESSAGE("the run makes " << last_killed << " writes; " << kills << " kills");
  BOOST_TEST(kills >= 10);
  for (const char* step : {"capture", "train", "transfer", "figures", "report", "gates"})
    BOOST_TEST(interrupted_steps.count(step) == 1u, "no kill landed in step " << step);
}

BOOST_AUTO_TEST_CASE(disk_full_in_every_step_is_named_and_resume_gives_the_same_bytes) {
  Fixture f;
  const int stride = std::max<int>(1, static_cast<int>(f.reference.size()) * 2 / 6);
  std::set<std::string> failed_steps;
  for (int n = stride / 2 + 1;; n += stride) {
    const fs::path run = f.dir / fmt::format("full-{}", n);
    std::string out;
    const int code = testing::run_command(
        strata_run(fmt::format("'{}' --out '{}'", (f.dir / "crash.toml").string(), run.string()),
                   fmt::format("STRATA_FAIL_WRITE={}", n)),
        &out);
    if (code == 0 || code == 2) break;  // N is past the last write
    BOOST_TEST(code == 1, out);
    BOOST_TEST(out.find("No space left on device (ENOSPC)") != std::string::npos, out);
    BOOST_TEST(out.find("bytes free on the file system holding") != std::string::npos, out);
    BOOST_TEST(out.find(run.string()) != std::string::npos, out);  // the path that could not be written
    BOOST_TEST(harness::verify_run(run).ok(), "write " << n);
    BOOST_TEST(wrong_final_files(run, f.reference).empty(), "write " << n);
    const std::string failed = step_in(run, "failed");
    failed_steps.insert(failed);
    f.resume_and_compare(run, fmt::format("ENOSPC at write {} (step {})", n, failed));
    fs::remove_all(run);
  }
  for (const char* step : {"capture", "train", "transfer", "figures", "report"})
    BOOST_TEST(failed_steps.count(step) == 1u, "no injected ENOSPC landed in step " << step);
}
