#include <cstdio>

#include "command.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/runtime.hpp"
#include "strata_build_info.hpp"

namespace strata::cli {

static std::vector<Setup>& mutable_commands() {
  static std::vector<Setup> commands;
  return commands;
}
bool register_command(Setup setup) {
  mutable_commands().push_back(setup);
  return true;
}
const std::vector<Setup>& registered_commands() { return mutable_commands(); }

CLI::App* Commands::group(const std::string& name, const std::string& description) {
  for (CLI::App* sub : root_.get_subcommands({}))
    if (sub->get_name() == name) return sub;
  CLI::App* sub = root_.add_subcommand(name, description);
  sub->require_subcommand(1);
  return sub;
}

void Commands::bind(CLI::App* command, std::function<int()> action) { actions_.emplace_back(command, std::move(action)); }

std::function<int()> Commands::selected() const {
  for (const auto& [command, action] : actions_)
    if (command->parsed()) return action;
  return nullptr;
}

}  // namespace strata::cli

int main(int argc, char** argv) {
  strata::runtime::ensure_blas_core(argc, argv);
  strata::log::init();

  CLI::App app{"strata: how sparse-autoencoder features transfer across depth and across language models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("strata ") + STRATA_VERSION);
  int threads = 0;
  app.add_option("--threads", threads, "Compute threads (0 = all cores; a run's config may set its own)");

  strata::cli::Commands commands(app);
  for (auto setup : strata::cli::registered_commands()) setup(commands);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    strata::runtime::set_threads(threads);
    if (auto action = commands.selected()) return action();
    std::fprintf(stderr, "%s", app.help().c_str());
    return 2;
  } catch (const strata::Error& e) {
    std::fprintf(stderr, "strata: error: %s\n", e.what());
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "strata: LibTorch error: %s\n", e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "strata: error: %s\n", e.what());
  }
  return 1;
}
