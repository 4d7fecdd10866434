// `strata capture`: the residual stream of one model at several layers over a dataset, one activation
// store per layer (docs/capture.md).
#include "capture/capture.hpp"
#include "command.hpp"
#include "core/error.hpp"
#include "core/runtime.hpp"
#include "io/activation_store.hpp"
#include "io/checkpoint.hpp"
#include "text/dataset.hpp"

namespace {

struct CaptureArgs {
  std::string model, name, dataset, out, store_dtype = "f32", device = "cpu", tokenizer, packing = "truncate";
  std::vector<int> layers;
  std::vector<double> depths;
  int64_t batch_size = 32, num_batches = 50, tokens = 0, seq_len = 128, max_docs = 0;
  double norm_outlier = 0;
  double shard_size_mb = 512;
  bool keep_special = false;
};

// The store name of a checkpoint: its directory name, or the repository name of hf://org/name[@rev].
std::string default_model_name(const std::string& model_spec, const std::filesystem::path& resolved) {
  std::string spec = model_spec;
  if (spec.rfind("hf://", 0) == 0) {
    spec = spec.substr(spec.find_last_of('/') + 1);
    return spec.substr(0, spec.find('@'));
  }
  std::filesystem::path p = resolved;
  if (!p.has_filename()) p = p.parent_path();
  return p.filename().string();
}

int run(const CaptureArgs& a) {
  using namespace strata;
  runtime::apply_determinism();
  const std::filesystem::path checkpoint = io::resolve_checkpoint(a.model);
  capture::CaptureOptions options;
  options.layers = a.layers;
  options.depths = a.depths;
  options.batch_size = a.batch_size;
  options.num_batches = a.num_batches;
  options.max_tokens = a.tokens;
  options.seq_len = a.seq_len;
  options.store_dtype = io::parse_store_dtype(a.store_dtype);
  options.keep_special = a.keep_special;
  options.norm_outlier_factor = a.norm_outlier;
  options.shard_size_bytes = static_cast<int64_t>(a.shard_size_mb * 1024 * 1024);
  if (options.shard_size_bytes <= 0) fail("--shard-size-mb must be positive, got {}", a.shard_size_mb);
  options.device = runtime::parse_device(a.device);
  options.packing = text::parse_packing_policy(a.packing);
  options.tokenizer_dir = a.tokenizer;
  const std::string name = a.name.empty() ? default_model_name(a.model, checkpoint) : a.name;
  const capture::CaptureResult result = capture::capture_model(
      name, checkpoint, text::DocumentReader(a.dataset, a.max_docs), a.dataset, options, a.out);
  for (const auto& file : result.files) fmt::print("{}\n", file.string());
  return 0;
}

void setup(strata::cli::Commands& commands) {
  auto args = std::make_shared<CaptureArgs>();
  auto* cmd = commands.root().add_subcommand(
      "capture", "Residual-stream activations of a model at several layers over a dataset, one store per layer");
  cmd->add_option("--model", args->model, "Checkpoint directory or hf://org/name[@revision]")->required();
  auto* layers = cmd->add_option("--layers", args->layers,
                                 "Layers to capture, 1-based (L = output of block L; 0 = embeddings), e.g. 4,8,12")
                     ->delimiter(',');
  auto* depths = cmd->add_option("--depths", args->depths,
                                 "Relative depths in (0,1], mapped to layer round(d * n_layers) clamped to [1, n_layers]")
                     ->delimiter(',');
  layers->excludes(depths);
  cmd->add_option("--dataset", args->dataset, "synthetic[:SEED], jsonl:PATH[:FIELD] or text:PATH")->required();
  cmd->add_option("--out", args->out, "Output directory for the stores")->required();
  cmd->add_option("--name", args->name, "Model name in the store file names (default: the checkpoint's directory name)");
  cmd->add_option("--batch-size", args->batch_size, "Sequences per forward pass")->capture_default_str();
  auto* batches = cmd->add_option("--num-batches", args->num_batches, "Batches to capture")->capture_default_str();
  auto* tokens = cmd->add_option("--tokens", args->tokens, "Capture exactly this many input tokens instead of batches");
  batches->excludes(tokens);
  cmd->add_option("--seq-len", args->seq_len, "Tokens per sequence")->capture_default_str();
  cmd->add_option("--packing", args->packing, "truncate (one sequence per document) or pack")->capture_default_str();
  cmd->add_option("--max-docs", args->max_docs, "Read at most this many documents (0 = all)")->capture_default_str();
  cmd->add_option("--store-dtype", args->store_dtype, "f32, f16 or bf16")->capture_default_str();
  cmd->add_option("--device", args->device, "cpu or cuda:N")->capture_default_str();
  cmd->add_option("--tokenizer", args->tokenizer, "Tokenizer directory or tokenizer.json (default: the checkpoint's)");
  cmd->add_flag("--keep-special", args->keep_special, "Also store special tokens (BOS/EOS), excluded by default");
  cmd->add_option("--norm-outlier", args->norm_outlier,
                  "Drop positions whose norm exceeds K x the batch's median norm at any captured layer, from every layer (0 = off)")
      ->capture_default_str();
  cmd->add_option("--shard-size-mb", args->shard_size_mb, "Activation MiB per shard file")->capture_default_str();
  commands.bind(cmd, [args]() { return run(*args); });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
