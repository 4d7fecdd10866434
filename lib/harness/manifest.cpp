#include "harness/manifest.hpp"

#include <cstdio>
#include <ctime>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "strata_build_info.hpp"

namespace strata::harness {
namespace fs = std::filesystem;
using nlohmann::json;

json ArtifactRecord::to_json() const {
  return {{"size", size}, {"sha256", sha256}, {"step", step}, {"inputs", inputs}, {"recorded_at", recorded_at}};
}

ArtifactRecord ArtifactRecord::from_json(const std::string& path, const json& j) {
  ArtifactRecord r;
  r.path = path;
  r.size = j.at("size").get<uint64_t>();
  r.sha256 = j.at("sha256").get<std::string>();
  r.step = j.at("step").get<std::string>();
  r.inputs = j.value("inputs", std::map<std::string, std::string>{});
  r.recorded_at = j.value("recorded_at", "");
  return r;
}

json StepRecord::to_json() const {
  json j = {{"status", status},           {"config_sha256", config_sha256}, {"inputs_sha256", inputs_sha256},
            {"build", build},
            {"started_at", started_at},   {"finished_at", finished_at},     {"seconds", seconds},
            {"failures", failures},       {"summary", summary}};
  if (!error.empty()) j["error"] = error;
  return j;
}

StepRecord StepRecord::from_json(const std::string& name, const json& j) {
  StepRecord r;
  r.name = name;
  r.status = j.at("status").get<std::string>();
  r.config_sha256 = j.value("config_sha256", "");
  r.inputs_sha256 = j.value("inputs_sha256", "");
  r.build = j.value("build", "");
  r.started_at = j.value("started_at", "");
  r.finished_at = j.value("finished_at", "");
  r.seconds = j.value("seconds", 0.0);
  r.error = j.value("error", "");
  r.failures = j.value("failures", json::array());
  r.summary = j.value("summary", json::object());
  return r;
}

Manifest::Manifest() {
  header_["format"] = kManifestFormat;
  header_["strata_version"] = STRATA_VERSION;
  header_["created_at"] = now_iso8601();
}

const json& Manifest::section(const std::string& name) const {
  static const json null_json;
  auto it = header_.find(name);
  return it == header_.end() ? null_json : *it;
}

void Manifest::record_artifact(ArtifactRecord record) {
  std::string path = record.path;
  artifacts_[path] = std::move(record);
}

const ArtifactRecord* Manifest::artifact(const std::string& path) const {
  auto it = artifacts_.find(path);
  return it == artifacts_.end() ? nullptr : &it->second;
}

std::vector<ArtifactRecord> Manifest::artifacts_of(const std::string& step) const {
  std::vector<ArtifactRecord> out;
  for (const auto& [path, record] : artifacts_)
    if (record.step == step) out.push_back(record);
  return out;
}

void Manifest::remove_artifacts_of(const std::string& step) {
  std::erase_if(artifacts_, [&](const auto& entry) { return entry.second.step == step; });
}

const StepRecord* Manifest::step(const std::string& name) const {
  auto it = steps_.find(name);
  return it == steps_.end() ? nullptr : &it->second;
}

std::string valid_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = bytes[i];
    // The length of a well-formed sequence at i (Unicode Table 3-7), or 0 when it is ill-formed.
    size_t len = 0;
    auto cont = [&](size_t k, unsigned char lo = 0x80, unsigned char hi = 0xBF) {
      return i + k < n && bytes[i + k] >= lo && bytes[i + k] <= hi;
    };
    if (c < 0x80) len = 1;
    else if (c >= 0xC2 && c <= 0xDF) len = cont(1) ? 2 : 0;
    else if (c == 0xE0) len = cont(1, 0xA0) && cont(2) ? 3 : 0;
    else if (c == 0xED) len = cont(1, 0x80, 0x9F) && cont(2) ? 3 : 0;  // no surrogates
    else if (c >= 0xE1 && c <= 0xEF) len = cont(1) && cont(2) ? 3 : 0;
    else if (c == 0xF0) len = cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0;
    else if (c >= 0xF1 && c <= 0xF3) len = cont(1) && cont(2) && cont(3) ? 4 : 0;
    else if (c == 0xF4) len = cont(1, 0x80, 0x8F) && cont(2) && cont(3) ? 4 : 0;
    if (len == 0) {
      out += fmt::format("\\x{:02X}", c);
      ++i;
    } else {
      out.append(text.substr(i, len));
      i += len;
    }
  }
  return out;
}

namespace {

// Every string (and key) of `j` made valid UTF-8, so that the manifest can always be written.
json valid_utf8_json(const json& j) {
  if (j.is_string()) return valid_utf8(j.get_ref<const std::string&>());
  if (j.is_array()) {
    json out = json::array();
    for (const auto& v : j) out.push_back(valid_utf8_json(v));
    return out;
  }
  if (j.is_object()) {
    json out = json::object();
    for (const auto& [key, value] : j.items()) out[valid_utf8(key)] = valid_utf8_json(value);
    return out;
  }
  return j;
}

}  // namespace

void Manifest::set_step(StepRecord record) {
  // Errors quote their input (a dataset line, a file name), which need not be UTF-8; JSON must be, and a
  // failure that cannot be recorded would leave the step marked "running" forever.
  record.error = valid_utf8(record.error);
  record.failures = valid_utf8_json(record.failures);
  record.summary = valid_utf8_json(record.summary);
  std::string name = record.name;
  steps_[name] = std::move(record);
}

bool is_run_relative_path(std::string_view path) {
  if (path.empty() || path.front() == '/' || path.back() == '/') return false;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    std::string_view part = path.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    for (char c : part)
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F || c == '\\') return false;
    start = end + 1;
  }
  return true;
}

json Manifest::to_json() const {
  json j = header_;
  json derived = json::object();
  for (const auto& [key, seed] : seeds_) derived[key] = seed;
  j["seeds"] = {{"master", master_seed_}, {"derived", derived}};
  json steps = json::object();
  for (const auto& [name, record] : steps_) steps[name] = record.to_json();
  j["steps"] = steps;
  json artifacts = json::object();
  for (const auto& [path, record] : artifacts_) artifacts[path] = record.to_json();
  j["artifacts"] = artifacts;
  j["invocations"] = invocations_;
  return j;
}

Manifest Manifest::from_json(const json& j, const std::string& source_for_errors) {
  if (!j.is_object() || j.value("format", "") != kManifestFormat)
    fail("{} is not a strata run manifest (expected \"format\": \"{}\")", source_for_errors, kManifestFormat);
  Manifest m;
  try {
    m.header_ = json::object();
    for (const auto& [key, value] : j.items())
      if (key != "seeds" && key != "steps" && key != "artifacts" && key != "invocations") m.header_[key] = value;
    // Named copies: iterating items() of a temporary would outlive it.
    const json seeds = j.value("seeds", json::object());
    m.master_seed_ = seeds.value("master", uint64_t{0});
    const json derived = seeds.value("derived", json::object());
    for (const auto& [key, seed] : derived.items()) m.seeds_[key] = seed.get<uint64_t>();
    const json steps = j.value("steps", json::object());
    for (const auto& [name, step] : steps.items()) m.steps_[name] = StepRecord::from_json(name, step);
    const json artifacts = j.value("artifacts", json::object());
    for (const auto& [path, artifact] : artifacts.items()) {
      // Readers open run-dir / path: a recorded "../../etc/passwd" or "/etc/passwd" must never be followed.
      if (!is_run_relative_path(path))
        fail("{}: artifact path {} is not a plain path inside the run directory (absolute, '..', '.', empty "
             "part or control character); the manifest was edited or damaged",
             source_for_errors, json(path).dump(-1, ' ', false, json::error_handler_t::replace));
      m.artifacts_[path] = ArtifactRecord::from_json(path, artifact);
    }
    m.invocations_ = j.value("invocations", json::array());
  } catch (const json::exception& e) {
    fail("{}: malformed manifest: {}", source_for_errors, e.what());
  }
  return m;
}

Manifest Manifest::load(const fs::path& file) {
  json j;
  try {
    j = json::parse(read_text_file(file));
  } catch (const json::parse_error& e) {
    fail("{}: invalid JSON ({}); the run directory's manifest is damaged", file.string(), e.what());
  }
  return from_json(j, file.string());
}

void Manifest::save(const fs::path& file) {
  header_["updated_at"] = now_iso8601();
  atomic_write_text(file, to_json().dump(2) + "\n");
}

std::string now_iso8601() {
  std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return buffer;
}

namespace {
// stdout of a shell command, trailing whitespace stripped; nullopt when it fails.
std::optional<std::string> command_output(const std::string& command) {
  FILE* pipe = popen((command + " 2>/dev/null").c_str(), "r");
  if (!pipe) return std::nullopt;
  std::string out;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof buffer, pipe)) out.append(buffer, n);
  if (pclose(pipe) != 0) return std::nullopt;
  while (!out.empty() && std::isspace(static_cast<unsigned char>(out.back()))) out.pop_back();
  return out;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}
}  // namespace

json git_state() {
  std::string dir = STRATA_SOURCE_DIR;
  std::string git = "git -C " + shell_quote(dir);
  json state = {{"source_dir", dir}, {"build_commit", STRATA_BUILD_COMMIT}};
  auto commit = command_output(git + " rev-parse HEAD");
  if (!commit) {
    state["commit"] = "unknown";
    state["dirty"] = nullptr;
    return state;
  }
  state["commit"] = *commit;
  // Tracked files only: build directories and run outputs inside the tree do not make it dirty.
  auto status = command_output(git + " status --porcelain --untracked-files=no");
  state["dirty"] = status ? json(!status->empty()) : json(nullptr);
  return state;
}

}  // namespace strata::harness
