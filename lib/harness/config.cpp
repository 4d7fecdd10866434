#include "harness/config.hpp"

#include <toml++/toml.h>

#include <cmath>
#include <regex>
#include <set>
#include <sstream>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/hash.hpp"
#include "strata_build_info.hpp"

namespace strata::harness {
namespace fs = std::filesystem;
using nlohmann::json;

fs::path repo_root() { return fs::path(STRATA_SOURCE_DIR); }

namespace {

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string type_name(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    default: return "a date/time";
  }
}

// Reads one TOML table, remembering every key it was asked about, so that whatever is left over is an
// unknown key. Every error names file:line:column and the dotted key.
class TableReader {
 public:
  TableReader(const toml::table& table, std::string prefix, std::string file)
      : table_(table), prefix_(std::move(prefix)), file_(std::move(file)) {}

  std::string dotted(std::string_view key) const { return prefix_.empty() ? std::string(key) : prefix_ + "." + std::string(key); }

  std::string where(const toml::source_region& region) const {
    if (region.begin.line == 0) return file_;
    return fmt::format("{}:{}:{}", file_, region.begin.line, region.begin.column);
  }

  [[noreturn]] void fail_at(const toml::node& node, std::string_view key, const std::string& message) const {
    fail("{}: '{}' {}", where(node.source()), dotted(key), message);
  }
  [[noreturn]] void fail_table(const std::string& message) const { fail("{}: {}", where(table_.source()), message); }

  const toml::node* find(std::string_view key) {
    known_.insert(std::string(key));
    return table_.get(key);
  }
  bool has(std::string_view key) {
    known_.insert(std::string(key));
    return table_.contains(key);
  }
  const toml::table& table() const { return table_; }

  void read(std::string_view key, std::string& out) {
    if (auto* node = find(key)) {
      if (!node->is_string()) fail_at(*node, key, "must be a string, got " + type_name(*node));
      out = node->as_string()->get();
    }
  }
  void read(std::string_view key, bool& out) {
    if (auto* node = find(key)) {
      if (!node->is_boolean()) fail_at(*node, key, "must be true or false, got " + type_name(*node));
      out = node->as_boolean()->get();
    }
  }
  void read(std::string_view key, int64_t& out) {
    if (auto* node = find(key)) out = integer(*node, key);
  }
  void read(std::string_view key, int& out) {
    if (auto* node = find(key)) {
      int64_t v = integer(*node, key);
      if (v < INT32_MIN || v > INT32_MAX) fail_at(*node, key, "is out of range");
      out = static_cast<int>(v);
    }
  }
  void read(std::string_view key, uint64_t& out) {
    if (auto* node = find(key)) {
      int64_t v = integer(*node, key);
      if (v < 0) fail_at(*node, key, "must be >= 0");
      out = static_cast<uint64_t>(v);
    }
  }
  void read(std::string_view key, double& out) {
    if (auto* node = find(key)) out = number(*node, key);
  }
  void read(std::string_view key, std::vector<int64_t>& out) {
    if (auto* node = find(key)) {
      auto* array = node->as_array();
      if (!array) fail_at(*node, key, "must be an array of integers, got " + type_name(*node));
      out.clear();
      for (const auto& element : *array) out.push_back(integer(element, key));
    }
  }
  void read(std::string_view key, std::vector<double>& out) {
    if (auto* node = find(key)) {
      auto* array = node->as_array();
      if (!array) fail_at(*node, key, "must be an array of numbers, got " + type_name(*node));
      out.clear();
      for (const auto& element : *array) out.push_back(number(element, key));
    }
  }

  // Checks a constraint on a key's value; the error points at the value (or the table if absent).
  void require(bool ok, std::string_view key, const std::string& message) const {
    if (ok) return;
    if (auto* node = table_.get(key)) fail_at(*node, key, message);
    fail("{}: '{}' {} (default value; set it explicitly)", where(table_.source()), dotted(key), message);
  }

  // Errors on the first key that no read()/find() asked about, suggesting the closest known key.
  void reject_unknown() const {
    for (const auto& [key, node] : table_) {
      if (known_.count(std::string(key.str()))) continue;
      std::string suggestion;
      size_t best = 3;
      for (const auto& candidate : known_) {
        size_t d = edit_distance(key.str(), candidate);
        if (d < best) best = d, suggestion = candidate;
      }
      std::string known_list;
      for (const auto& k : known_) known_list += (known_list.empty() ? "" : ", ") + k;
      fail("{}: unknown key '{}'{} (known keys{}: {})", where(key.source()), dotted(key.str()),
           suggestion.empty() ? "" : fmt::format(" (did you mean '{}'?)", suggestion),
           prefix_.empty() ? "" : " in [" + prefix_ + "]", known_list);
    }
  }

 private:
  int64_t integer(const toml::node& node, std::string_view key) const {
    if (!node.is_integer()) fail_at(node, key, "must be an integer, got " + type_name(node));
    return node.as_integer()->get();
  }
  double number(const toml::node& node, std::string_view key) const {
    if (node.is_integer()) return static_cast<double>(node.as_integer()->get());
    if (!node.is_floating_point()) fail_at(node, key, "must be a number, got " + type_name(node));
    double v = node.as_floating_point()->get();
    if (!std::isfinite(v)) fail_at(node, key, "must be finite");
    return v;
  }

  const toml::table& table_;
  std::string prefix_, file_;
  std::set<std::string> known_;
};

// A sub-table ([name]) of the root; an absent section reads as empty.
const toml::table& section_table(TableReader& root, std::string_view name, const toml::table& empty) {
  auto* node = root.find(name);
  if (!node) return empty;
  if (!node->is_table()) root.fail_at(*node, name, "must be a table ([" + std::string(name) + "]), got " + type_name(*node));
  return *node->as_table();
}

// A path as written in the config: absolute stays; relative is tried against the TOML file's directory,
// then the repository root; if neither exists, the TOML-relative path is kept (the step reports it).
fs::path resolve_path(const std::string& written, const fs::path& base_dir) {
  fs::path p(written);
  if (p.is_absolute()) return p.lexically_normal();
  fs::path near = (base_dir / p).lexically_normal();
  // error_code overloads: a name too long for the file system is "not there", not an exception.
  std::error_code ec;
  if (fs::exists(near, ec)) return near;
  fs::path in_repo = (repo_root() / p).lexically_normal();
  if (fs::exists(in_repo, ec)) return in_repo;
  return near;
}

// error_code overload: a name too long for the file system is "not there", not an exception.
bool is_existing_file(const fs::path& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

// Reads every key of an options struct's table from `r` (types checked by TableReader::read).
template <class Options>
void read_fields(TableReader& r, Options& o) {
  options::for_each_field(o, [&](const auto& f, auto& owner) { r.read(f.key, owner.*f.member); });
}

// Checks every rule of the table; the error points at the offending value (or the table for a default).
template <class Options>
void check_fields(const TableReader& r, const Options& o) {
  options::for_each_field(o, [&](const auto& f, const auto& owner) {
    const std::string message = f.check(owner);
    r.require(message.empty(), f.key, message);
  });
}

// A section that is exactly one options struct: read, reject unknown keys, check.
template <class Options>
void read_section(TableReader& r, Options& o) {
  read_fields(r, o);
  r.reject_unknown();
  check_fields(r, o);
}

void read_dataset(TableReader& r, DatasetConfig& d, const fs::path& base_dir) {
  read_section(r, d);
  // spec: synthetic[:SEED] | jsonl:PATH[:FIELD] | text:PATH
  static const std::regex synthetic_re("synthetic(:[0-9]+)?");
  if (std::regex_match(d.spec, synthetic_re)) {
    d.resolved_spec = d.spec;
  } else if (d.spec.rfind("jsonl:", 0) == 0) {
    std::string rest = d.spec.substr(6);
    std::string field;
    // The field is whatever follows the last ':' when that does not look like part of the path.
    if (auto colon = rest.rfind(':'); colon != std::string::npos && rest.find('/', colon) == std::string::npos) {
      field = rest.substr(colon + 1);
      rest = rest.substr(0, colon);
    }
    r.require(!rest.empty(), "spec", "jsonl needs a path: \"jsonl:PATH[:FIELD]\"");
    fs::path path = resolve_path(rest, base_dir);
    r.require(is_existing_file(path), "spec", fmt::format("names a file that does not exist: {}", path.string()));
    d.resolved_spec = "jsonl:" + path.string() + (field.empty() ? "" : ":" + field);
  } else if (d.spec.rfind("text:", 0) == 0) {
    r.require(d.spec.size() > 5, "spec", "text needs a path: \"text:PATH\"");
    fs::path path = resolve_path(d.spec.substr(5), base_dir);
    r.require(is_existing_file(path), "spec", fmt::format("names a file that does not exist: {}", path.string()));
    d.resolved_spec = "text:" + path.string();
  } else {
    r.require(false, "spec",
              fmt::format("must be \"synthetic[:SEED]\", \"jsonl:PATH[:FIELD]\" or \"text:PATH\", got \"{}\"", d.spec));
  }
  r.require(!(r.has("num_batches") && r.has("tokens")), "tokens", "and 'dataset.num_batches' are alternatives; set only one");
}

void read_model(TableReader& r, ModelConfig& m, const fs::path& base_dir) {
  r.read("name", m.name);
  r.read("checkpoint", m.checkpoint);
  r.read("layers", m.layers);
  r.read("depths", m.depths);
  r.read("tokenizer", m.tokenizer);
  r.read("dtype", m.dtype);
  r.read("control_of", m.control_of);
  const toml::node* saes = r.find("saes");
  r.reject_unknown();
  static const std::regex name_re("[A-Za-z0-9._-]+");
  if (!r.has("name")) r.fail_table("[[models]] entry needs a 'name'");
  r.require(std::regex_match(m.name, name_re), "name", "must use only letters, digits, '.', '_' and '-'");
  r.require(m.name != "." && m.name != "..", "name", "must not be '.' or '..' (names become file names)");
  if (!r.has("checkpoint")) r.fail_table(fmt::format("model '{}' needs a 'checkpoint' (local path or hf://org/name[@rev])", m.name));
  static const std::regex hf_re("hf://[A-Za-z0-9._-]+/[A-Za-z0-9._-]+(@[A-Za-z0-9._/-]+)?");
  if (m.is_hf()) {
    r.require(std::regex_match(m.checkpoint, hf_re), "checkpoint",
              fmt::format("must look like hf://org/name[@revision], got \"{}\"", m.checkpoint));
  } else {
    r.require(!m.checkpoint.empty(), "checkpoint", "must not be empty");
    m.checkpoint_path = resolve_path(m.checkpoint, base_dir);
  }
  if (!m.tokenizer.empty()) m.tokenizer_path = resolve_path(m.tokenizer, base_dir);
  bool has_layers = r.has("layers"), has_depths = r.has("depths");
  if (has_layers == has_depths)
    r.fail_table(fmt::format("model '{}' needs exactly one of 'layers' (1-based list) or 'depths' (relative, in (0, 1])", m.name));
  if (has_layers) {
    r.require(!m.layers.empty(), "layers", "must list at least one layer");
    for (int64_t l : m.layers) r.require(l >= 0, "layers", fmt::format("must be >= 0 (1-based blocks, 0 = embeddings), got {}", l));
    std::set<int64_t> unique(m.layers.begin(), m.layers.end());
    r.require(unique.size() == m.layers.size(), "layers", "lists a layer twice");
    m.layers.assign(unique.begin(), unique.end());
  } else {
    r.require(!m.depths.empty(), "depths", "must list at least one depth");
    for (double d : m.depths) r.require(d > 0 && d <= 1, "depths", fmt::format("must lie in (0, 1], got {}", d));
    std::set<double> unique(m.depths.begin(), m.depths.end());
    r.require(unique.size() == m.depths.size(), "depths", "lists a depth twice");
    m.depths.assign(unique.begin(), unique.end());
  }
  const std::string dtype_error = options::one_of({"f32", "f16", "bf16"})(m, m.dtype);
  r.require(dtype_error.empty(), "dtype", dtype_error);
  if (saes) {
    // saes = { "8" = "DIR or hf://org/name[@rev]/sub/dir" }: published SAEs the train step uses instead of
    // training those cells (checked against the captured layers and the SAE's hook by the train step).
    if (!saes->is_table()) r.fail_at(*saes, "saes", "must be a table of layer = \"DIR or hf://...\", got " + type_name(*saes));
    static const std::regex layer_re("[0-9]{1,6}");
    static const std::regex hf_path_re("hf://[A-Za-z0-9._-]+/[A-Za-z0-9._-]+(@[A-Za-z0-9._-]+)?(/[A-Za-z0-9._@+-]+)*");
    for (const auto& [key, node] : *saes->as_table()) {
      const std::string layer(key.str());
      if (!std::regex_match(layer, layer_re))
        r.fail_at(node, "saes", fmt::format("keys are layers (\"8\"), got \"{}\"", layer));
      if (!node.is_string() || node.as_string()->get().empty())
        r.fail_at(node, "saes", fmt::format("[\"{}\"] must be a non-empty string (DIR or hf://org/name/sub/dir)", layer));
      const std::string spec = node.as_string()->get();
      const int64_t l = std::stoll(layer);
      if (!m.layers.empty() && std::find(m.layers.begin(), m.layers.end(), l) == m.layers.end())
        r.fail_at(node, "saes", fmt::format("[\"{}\"]: layer {} is not in this model's layers", layer, l));
      if (spec.rfind("hf://", 0) == 0) {
        if (!std::regex_match(spec, hf_path_re))
          r.fail_at(node, "saes", fmt::format("[\"{}\"] must look like hf://org/name[@revision]/sub/dir, got \"{}\"", layer, spec));
        m.saes[l] = spec;
      } else {
        m.saes[l] = resolve_path(spec, base_dir).string();  // like checkpoints: the train step reports a missing one
      }
    }
  }
}

void read_sae(TableReader& r, SaeConfig& section, const std::string& file) {
  read_fields(r, section.options);
  const toml::node* overrides = r.find("overrides");
  r.reject_unknown();
  check_fields(r, section.options);
  if (!overrides) return;
  if (!overrides->is_array_of_tables())
    r.fail_at(*overrides, "overrides", "must be an array of tables ([[sae.overrides]]), got " + type_name(*overrides));
  for (const auto& element : *overrides->as_array()) {
    TableReader o(*element.as_table(), "sae.overrides", file);
    SaeOverride entry;
    o.read("min_depth", entry.min_depth);
    o.read("max_depth", entry.max_depth);
    sae::TrainOptions applied = section.options;
    read_fields(o, applied);
    o.reject_unknown();
    o.require(entry.min_depth >= 0 && entry.min_depth <= 1, "min_depth", "must lie in [0, 1]");
    o.require(entry.max_depth >= 0 && entry.max_depth <= 1, "max_depth", "must lie in [0, 1]");
    o.require(entry.min_depth <= entry.max_depth, "max_depth", "must be >= min_depth");
    check_fields(o, applied);
    json values = options::to_json(applied);
    entry.values = json::object();
    for (const auto& [key, node] : o.table())
      if (key.str() != "min_depth" && key.str() != "max_depth") entry.values[std::string(key.str())] = values.at(std::string(key.str()));
    if (entry.values.empty()) o.fail_table("a [[sae.overrides]] entry sets no [sae] key");
    section.overrides.push_back(std::move(entry));
  }
}

json section_json(const DatasetConfig& d) {
  json j = options::to_json(d);
  j["resolved_spec"] = d.resolved_spec;
  return j;
}

json section_json(const std::vector<ModelConfig>& models) {
  json out = json::array();
  for (const auto& m : models) {
    json j = {{"name", m.name}, {"checkpoint", m.checkpoint}, {"dtype", m.dtype}, {"tokenizer", m.tokenizer}};
    j["checkpoint_path"] = m.checkpoint_path.string();
    j["tokenizer_path"] = m.tokenizer_path.string();
    if (!m.layers.empty()) j["layers"] = m.layers;
    if (!m.depths.empty()) j["depths"] = m.depths;
    if (!m.control_of.empty()) j["control_of"] = m.control_of;  // only when set: other configs hash as before
    if (!m.saes.empty()) {
      json saes = json::object();
      for (const auto& [layer, spec] : m.saes) saes[std::to_string(layer)] = spec;
      j["saes"] = saes;
    }
    out.push_back(std::move(j));
  }
  return out;
}

json section_json(const SaeConfig& sae) {
  json j = options::to_json(sae.options);
  j["overrides"] = json::array();
  for (const auto& o : sae.overrides) {
    json entry = o.values;
    entry["min_depth"] = o.min_depth;
    entry["max_depth"] = o.max_depth;
    j["overrides"].push_back(std::move(entry));
  }
  return j;
}

// Every other section is one options struct.
template <class Options>
json section_json(const Options& o) {
  return options::to_json(o);
}

}  // namespace

sae::TrainOptions SaeConfig::for_depth(double relative_depth) const {
  sae::TrainOptions s = options;
  for (const auto& o : overrides)
    if (relative_depth >= o.min_depth - 1e-12 && relative_depth <= o.max_depth + 1e-12)
      options::apply_json(s, o.values, "[[sae.overrides]]");
  return s;
}

const ModelConfig& Experiment::model(const std::string& name) const {
  for (const auto& m : models)
    if (m.name == name) return m;
  fail("experiment '{}' has no model named '{}'", experiment.name, name);
}

json Experiment::to_json() const {
  json out = json::object();
  std::apply([&](const auto&... s) { ((out[s.first] = section_json(this->*s.second)), ...); }, sections());
  return out;
}

json Experiment::section(const std::string& name) const {
  json all = to_json();
  if (!all.contains(name)) fail("internal: unknown config section '{}'", name);
  return all.at(name);
}

std::string Experiment::sha256() const { return sha256_hex(to_json().dump()); }

Experiment parse_experiment(const std::string& toml_text, const std::string& display_name, const fs::path& base_dir) {
  toml::table root;
  try {
    root = toml::parse(toml_text, display_name);
  } catch (const toml::parse_error& e) {
    fail("{}:{}:{}: TOML syntax error: {}", display_name, e.source().begin.line, e.source().begin.column, e.description());
  }
  Experiment exp;
  exp.base_dir = base_dir;
  exp.experiment.name = fs::path(display_name).stem().string();
  const toml::table empty;
  TableReader r(root, "", display_name);

  TableReader experiment(section_table(r, "experiment", empty), "experiment", display_name);
  read_section(experiment, exp.experiment);
  TableReader dataset(section_table(r, "dataset", empty), "dataset", display_name);
  read_dataset(dataset, exp.dataset, base_dir);
  TableReader capture(section_table(r, "capture", empty), "capture", display_name);
  read_section(capture, exp.capture);

  const toml::node* models = r.find("models");
  if (!models) fail("{}: no [[models]] entries: an experiment needs at least one model", display_name);
  if (!models->is_array_of_tables())
    r.fail_at(*models, "models", "must be an array of tables ([[models]]), got " + type_name(*models));
  for (const auto& element : *models->as_array()) {
    TableReader m(*element.as_table(), "models", display_name);
    ModelConfig model;
    read_model(m, model, base_dir);
    for (const auto& other : exp.models)
      if (other.name == model.name) m.require(false, "name", fmt::format("\"{}\" is used by two models", model.name));
    exp.models.push_back(std::move(model));
  }
  // A positive control names another model, which is not itself a control.
  for (size_t i = 0; i < exp.models.size(); ++i) {
    const ModelConfig& model = exp.models[i];
    if (model.control_of.empty()) continue;
    TableReader m(*models->as_array()->get(i)->as_table(), "models", display_name);
    const auto twin = std::find_if(exp.models.begin(), exp.models.end(),
                                   [&](const ModelConfig& other) { return other.name == model.control_of; });
    m.require(model.control_of != model.name, "control_of", fmt::format("names the model itself (\"{}\"); name its twin", model.name));
    m.require(twin != exp.models.end(), "control_of",
              fmt::format("names \"{}\", which is not a [[models]] name of this experiment", model.control_of));
    m.require(twin->control_of.empty(), "control_of",
              fmt::format("names \"{}\", which is itself a control (of \"{}\"); name a model of the main matrix",
                          twin->name, twin->control_of));
  }

  TableReader sae(section_table(r, "sae", empty), "sae", display_name);
  read_sae(sae, exp.sae, display_name);
  TableReader transfer(section_table(r, "transfer", empty), "transfer", display_name);
  read_section(transfer, exp.transfer);
  TableReader figures(section_table(r, "figures", empty), "figures", display_name);
  read_section(figures, exp.figures);
  TableReader gates(section_table(r, "gates", empty), "gates", display_name);
  read_section(gates, exp.gates);
  // [executor]: how the run is executed, not what it computes, so it stays out of to_json() and sha256();
  // harness/executor_slurm.hpp validates it (parse_executor_table).
  if (const toml::node* executor = r.find("executor")) {
    if (!executor->is_table()) r.fail_at(*executor, "executor", "must be a table ([executor]), got " + type_name(*executor));
    std::ostringstream text;
    text << toml::json_formatter{*executor->as_table()};
    exp.executor = json::parse(text.str());
  }
  r.reject_unknown();
  return exp;
}

Experiment load_experiment(const fs::path& file, std::optional<fs::path> base_dir) {
  if (!fs::is_regular_file(file)) fail("experiment file {} does not exist", file.string());
  fs::path absolute = fs::absolute(file).lexically_normal();
  Experiment exp = parse_experiment(read_text_file(file), file.string(), base_dir.value_or(absolute.parent_path()));
  exp.source_file = absolute;
  return exp;
}

namespace {

void insert_json(toml::table& table, const std::string& key, const json& value);

toml::array json_array(const json& value) {
  toml::array out;
  for (const auto& element : value) {
    if (element.is_object()) {
      toml::table t;
      for (const auto& [k, v] : element.items()) insert_json(t, k, v);
      out.push_back(std::move(t));
    } else if (element.is_array()) {
      out.push_back(json_array(element));
    } else if (element.is_boolean()) {
      out.push_back(element.get<bool>());
    } else if (element.is_number_integer()) {
      out.push_back(element.get<int64_t>());
    } else if (element.is_number_float()) {
      out.push_back(element.get<double>());
    } else {
      out.push_back(element.get<std::string>());
    }
  }
  return out;
}

void insert_json(toml::table& table, const std::string& key, const json& value) {
  if (value.is_object()) {
    toml::table t;
    for (const auto& [k, v] : value.items()) insert_json(t, k, v);
    table.insert(key, std::move(t));
  } else if (value.is_array()) {
    table.insert(key, json_array(value));
  } else if (value.is_boolean()) {
    table.insert(key, value.get<bool>());
  } else if (value.is_number_integer()) {
    table.insert(key, value.get<int64_t>());
  } else if (value.is_number_float()) {
    table.insert(key, value.get<double>());
  } else if (value.is_string()) {
    table.insert(key, value.get<std::string>());
  }
}
}  // namespace

std::string to_toml(const json& resolved) {
  toml::table root;
  for (const auto& [k, v] : resolved.items()) insert_json(root, k, v);
  std::ostringstream out;
  out << toml::toml_formatter(root);
  return out.str();
}

}  // namespace strata::harness
