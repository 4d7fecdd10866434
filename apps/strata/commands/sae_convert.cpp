// `strata sae-convert SRC DST --to saelens|sparsify`: rewrites an SAE (any format sae/formats.hpp reads)
// in another published format, e.g. to use a strata-trained SAE as a sparsify or SAELens source.
#include "command.hpp"
#include "sae/formats.hpp"

namespace {

void setup(strata::cli::Commands& commands) {
  struct Args {
    std::string source, out, to, hook_name;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = commands.root().add_subcommand("sae-convert", "Rewrite an SAE in the SAELens or sparsify format");
  cmd->add_option("source", args->source, "SAE directory (SAELens/strata or sparsify) or hf://org/name/sub/dir")->required();
  cmd->add_option("out", args->out, "output directory")->required();
  cmd->add_option("--to", args->to, "saelens or sparsify")->required()->check(CLI::IsMember({"saelens", "sparsify"}));
  cmd->add_option("--hook-name", args->hook_name, "hook_name to record (SAELens)");
  commands.bind(cmd, [args]() {
    auto loaded = strata::sae::load_sae(strata::sae::resolve_sae_source(args->source));
    strata::sae::save_sae(loaded.sae, args->out, args->to, args->hook_name);
    fmt::print("{}\n", args->out);
    return 0;
  });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
