// evaluate_gates, the expected cells of a run, the printed table and gates.json.
#include "validation/gates.hpp"

#include "core/error.hpp"
#include "core/fs.hpp"
#include "report/run_data.hpp"

namespace strata::validation {
namespace fs = std::filesystem;
using nlohmann::json;

std::string ExpectedCell::name() const { return report::cell_name(model, layer); }

GateThresholds thresholds_for_run(const fs::path& run_dir) {
  std::optional<json> resolved = report::read_json_if_exists(run_dir / "config.resolved.json");
  if (!resolved) {
    if (auto manifest = report::read_json_if_exists(run_dir / "manifest.json");
        manifest && manifest->contains("config") && (*manifest)["config"].contains("resolved"))
      resolved = (*manifest)["config"]["resolved"];
  }
  if (!resolved || !resolved->contains("gates")) return {};
  return GateThresholds::from_json((*resolved)["gates"]);
}

namespace {

std::optional<int64_t> config_int(const json& config, std::initializer_list<const char*> keys) {
  for (const char* key : keys) {
    if (config.contains(key) && config[key].is_number_integer()) return config[key].get<int64_t>();
    // Multimodal configs nest the language model's settings.
    if (config.contains("text_config") && config["text_config"].contains(key) && config["text_config"][key].is_number_integer())
      return config["text_config"][key].get<int64_t>();
  }
  return std::nullopt;
}

}  // namespace

std::vector<ExpectedCell> expected_cells(const fs::path& run_dir) {
  std::optional<json> resolved = report::read_json_if_exists(run_dir / "config.resolved.json");
  if (!resolved) {
    if (auto manifest = report::read_json_if_exists(run_dir / "manifest.json");
        manifest && manifest->contains("config") && (*manifest)["config"].contains("resolved"))
      resolved = (*manifest)["config"]["resolved"];
  }
  if (!resolved || !resolved->contains("models") || !(*resolved)["models"].is_array())
    fail("{}: cannot tell which cells to expect: neither config.resolved.json nor manifest.json config.resolved "
         "lists models[]; pass the expected cells explicitly",
         run_dir.string());
  std::vector<ExpectedCell> cells;
  for (const auto& model : (*resolved)["models"]) {
    const std::string name = model.value("name", model.value("id", ""));
    if (name.empty()) fail("{}: a models[] entry has no name", (run_dir / "config.resolved.json").string());
    json checkpoint_config;
    if (model.contains("checkpoint_path") && model["checkpoint_path"].is_string()) {
      const fs::path config_file = fs::path(model["checkpoint_path"].get<std::string>()) / "config.json";
      if (auto c = report::read_json_if_exists(config_file)) checkpoint_config = *c;
    }
    const std::optional<int64_t> hidden = checkpoint_config.is_object()
                                              ? config_int(checkpoint_config, {"hidden_size", "n_embd", "d_model"})
                                              : std::nullopt;
    std::vector<int64_t> layers;
    if (model.contains("layers") && model["layers"].is_array() && !model["layers"].empty()) {
      layers = model["layers"].get<std::vector<int64_t>>();
    } else if (model.contains("depths") && model["depths"].is_array()) {
      auto n_layers = checkpoint_config.is_object()
                          ? config_int(checkpoint_config, {"num_hidden_layers", "n_layer", "num_layers"})
                          : std::nullopt;
      if (!n_layers)
        fail("model '{}' is configured by depths but its checkpoint config.json (n_layers) is not readable; pass the "
             "expected cells explicitly",
             name);
      for (double d : model["depths"].get<std::vector<double>>())
        layers.push_back(std::max<int64_t>(1, std::llround(d * static_cast<double>(*n_layers))));
    }
    for (int64_t layer : layers) cells.push_back({name, static_cast<int>(layer), hidden});
  }
  if (cells.empty()) fail("{}: the resolved config lists no layers", run_dir.string());
  return cells;
}

json make_check(const std::string& name, const std::string& title, const std::string& tier) {
  return {{"name", name}, {"title", title}, {"tier", tier}, {"passed", false}, {"status", "FAIL"},
          {"summary", ""}, {"reasons", json::array()}};
}

void finish_check(json& check, const std::vector<std::string>& reasons, const std::string& summary) {
  check["reasons"] = reasons;
  check["passed"] = reasons.empty();
  check["status"] = reasons.empty() ? "PASS" : "FAIL";
  check["summary"] = summary;
}

json evaluate_gates(const fs::path& run_dir, const GateThresholds& thresholds,
                    const std::optional<std::vector<ExpectedCell>>& explicit_cells) {
  if (!fs::is_directory(run_dir)) fail("run directory {} does not exist", run_dir.string());
  // No run_dir path: gates.json lives in the run directory, and a reproduced run must write the same bytes.
  json gates = {{"thresholds", thresholds.to_json()}};
  std::vector<ExpectedCell> cells;
  json must = json::array();
  try {
    cells = explicit_cells ? *explicit_cells : expected_cells(run_dir);
  } catch (const Error& e) {
    json check = make_check("expected_cells", "Expected cells (config)", "must_pass");
    finish_check(check, {e.what()}, "expected cells unknown");
    must.push_back(check);
  }
  gates["expected_cells"] = json::array();
  for (const auto& c : cells) gates["expected_cells"].push_back(c.name());
  if (!cells.empty()) {
    must.push_back(gate1_stores(run_dir, cells, thresholds));
    must.push_back(gate2_saes(run_dir, cells, thresholds));
    must.push_back(gate3_pairs(run_dir, cells, thresholds));
  }
  must.push_back(gate4_figures(run_dir, thresholds));
  bool ok = std::all_of(must.begin(), must.end(), [](const json& c) { return c.value("passed", false); });
  gates["must_pass"] = must;
  gates["should_pass"] = should_pass_checks(run_dir, thresholds);
  gates["publication_ready"] = publication_checks(run_dir, thresholds);
  gates["must_pass_ok"] = ok;
  gates["verdict"] = ok ? "GO" : "NO-GO";
  return gates;
}

std::string format_gate_table(const json& gates) {
  std::string out = fmt::format("{:<18} {:<44} {:<6} {}\n", "tier", "check", "result", "summary");
  out += std::string(100, '-') + "\n";
  for (const char* tier : {"must_pass", "should_pass", "publication_ready"}) {
    for (const auto& check : gates.value(tier, json::array())) {
      out += fmt::format("{:<18} {:<44} {:<6} {}\n", tier, check.value("title", check.value("name", "")),
                         check.value("status", "?"), check.value("summary", ""));
      int shown = 0;
      const auto& reasons = check.value("reasons", json::array());
      for (const auto& reason : reasons) {
        if (shown++ == 8) {
          out += fmt::format("{:<18}   ... and {} more (see gates/gates.json)\n", "", reasons.size() - 8);
          break;
        }
        out += fmt::format("{:<18}   - {}\n", "", reason.get<std::string>());
      }
    }
  }
  out += std::string(100, '-') + "\n";
  out += fmt::format("verdict: {} ({})\n", gates.value("verdict", "?"),
                     gates.value("must_pass_ok", false) ? "every must-pass check holds" : "a must-pass check failed");
  return out;
}

void write_gates(const fs::path& run_dir, const json& gates) {
  atomic_write_text(run_dir / "gates" / "gates.json", gates.dump(2) + "\n");
}

}  // namespace strata::validation
