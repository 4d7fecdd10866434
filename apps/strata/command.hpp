// The strata CLI is thin: each subcommand lives in commands/<name>.cpp, declares its options on a
// CLI11 sub-app and binds the function that runs it. Registration is static, so adding a command
// touches no other file.
#pragma once
#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace strata::cli {

class Commands {
 public:
  explicit Commands(CLI::App& root) : root_(root) {}
  CLI::App& root() { return root_; }
  // A group such as `bench` or `zoo` shared by several command files; created on first use.
  CLI::App* group(const std::string& name, const std::string& description);
  // Runs `action` (its return value is the exit code) when `command` was selected.
  void bind(CLI::App* command, std::function<int()> action);
  // The action of the selected command, or nullptr.
  std::function<int()> selected() const;

 private:
  CLI::App& root_;
  std::vector<std::pair<CLI::App*, std::function<int()>>> actions_;
};

using Setup = void (*)(Commands&);
bool register_command(Setup setup);
const std::vector<Setup>& registered_commands();

}  // namespace strata::cli

#define STRATA_CONCAT_INNER(a, b) a##b
#define STRATA_CONCAT(a, b) STRATA_CONCAT_INNER(a, b)
#define STRATA_REGISTER_COMMAND(setup_fn) \
  static const bool STRATA_CONCAT(strata_command_registered_, __LINE__) = ::strata::cli::register_command(setup_fn)
