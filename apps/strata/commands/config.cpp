// `strata config check FILE`: validate an experiment and print it with every default filled in.
#include "command.hpp"
#include "core/error.hpp"
#include "harness/config.hpp"

namespace {

void setup(strata::cli::Commands& commands) {
  auto* config = commands.group("config", "Experiment configuration files");
  auto* check = config->add_subcommand("check", "Validate an experiment TOML and print the resolved config (all defaults)");
  auto file = std::make_shared<std::string>();
  auto format = std::make_shared<std::string>("toml");
  check->add_option("file", *file, "Experiment TOML file")->required();
  check->add_option("--format", *format, "Output format: toml or json")->check(CLI::IsMember({"toml", "json"}))->capture_default_str();
  commands.bind(check, [file, format]() {
    auto exp = strata::harness::load_experiment(*file);
    nlohmann::json resolved = exp.to_json();
    if (*format == "json") {
      fmt::print("{}\n", resolved.dump(2));
    } else {
      fmt::print("# Resolved experiment config of {} (sha256 {})\n", exp.source_file.string(), exp.sha256());
      fmt::print("{}\n", strata::harness::to_toml(resolved));
    }
    // A missing checkpoint is an error here, not a note: the run would otherwise fail only after capturing
    // the models listed before it.
    int missing = 0;
    for (const auto& m : exp.models)
      if (!m.is_hf() && !std::filesystem::is_directory(m.checkpoint_path)) {
        std::fprintf(stderr, "%s: model '%s': checkpoint directory %s does not exist; fix [[models]] checkpoint (a "
                     "directory with config.json and model.safetensors, or hf://org/name)\n",
                     exp.source_file.c_str(), m.name.c_str(), m.checkpoint_path.c_str());
        ++missing;
      }
    if (missing) {
      std::fprintf(stderr, "%s: FAILED (%d checkpoint%s missing)\n", file->c_str(), missing, missing == 1 ? "" : "s");
      return 1;
    }
    std::fprintf(stderr, "%s: OK (%zu models, %zu SAE overrides)\n", file->c_str(), exp.models.size(), exp.sae.overrides.size());
    return 0;
  });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
