// `strata train-sae`: train one SAE from an activation store or any safetensors file holding a 2-D
// float tensor, and write it in the SAELens layout (cfg.json + sae_weights.safetensors).
#include "command.hpp"
#include "option_flags.hpp"
#include "core/error.hpp"
#include "core/runtime.hpp"
#include "io/activation_store.hpp"
#include "sae/train.hpp"

namespace {

// Established short names of two [sae] keys; every other flag is --<key with dashes>.
const strata::cli::FlagNames kFlagNames = {{"architecture", "--architecture,--arch"},
                                           {"shuffle_buffer_rows", "--shuffle-buffer-rows,--shuffle-buffer"}};

struct TrainSaeArgs {
  std::string activations, tensor, out, device = "cpu";
  strata::sae::TrainOptions options;
  uint64_t seed = 0;
};

void setup(strata::cli::Commands& commands) {
  auto* cmd = commands.root().add_subcommand("train-sae", "Train one sparse autoencoder on stored activations");
  auto args = std::make_shared<TrainSaeArgs>();
  auto& o = args->options;
  cmd->add_option("--activations", args->activations, "a store's meta.json / .safetensors, or any safetensors file")
      ->required();
  cmd->add_option("--tensor", args->tensor, "which 2-D tensor of a plain safetensors file holds the activations");
  strata::cli::add_option_flags(cmd, o, kFlagNames);
  cmd->add_option("--seed", args->seed, "random seed")->capture_default_str();
  cmd->add_option("--stop-after-steps", o.stop_after_steps,
                  "checkpoint and stop after this many steps (rerun the same command to resume)");
  cmd->add_option("--out", args->out, "output directory of this SAE")->required();
  cmd->add_option("--device", args->device,
                  "cpu or cuda[:N]; the kernel path follows it (native on cpu, portable elsewhere; STRATA_KERNELS "
                  "overrides)")
      ->capture_default_str();
  commands.bind(cmd, [args]() {
    strata::cli::check_option_flags(args->options, kFlagNames);
    strata::runtime::apply_determinism();
    auto store = strata::io::ActivationStore::open(args->activations, args->tensor);
    auto options = args->options;
    options.device = strata::runtime::parse_device(args->device);
    nlohmann::json provenance = nlohmann::json::object();
    const auto& meta = store.meta();
    for (const char* key : {"model", "layer", "n_layers", "relative_depth", "checkpoint_sha256", "dataset_sha256"})
      if (meta.contains(key)) provenance[key] = meta[key];
    if (meta.contains("layer") && meta["layer"].is_number_integer()) {
      provenance["hook_name"] = strata::sae::hook_name(meta["layer"].get<int64_t>());
    }
    provenance["activations"] = args->activations;
    auto result = strata::sae::train_sae(store, options, args->seed, args->out, provenance);
    if (result.interrupted) {
      fmt::print("{}\n", result.error);
      return 0;
    }
    if (!result.ok) throw strata::Error(result.error);
    fmt::print("{}\n", result.metrics.dump(2));
    return 0;
  });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
