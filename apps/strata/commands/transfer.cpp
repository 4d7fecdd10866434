// `strata transfer`: the (model, layer) x (model, layer) transfer matrix (lib/transfer, docs/transfer.md).
#include <regex>

#include "command.hpp"
#include "core/runtime.hpp"
#include "option_flags.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/log.hpp"
#include "io/activation_store.hpp"
#include "sae/formats.hpp"
#include "transfer/transfer.hpp"

namespace {

namespace fs = std::filesystem;

struct TransferArgs {
  std::vector<std::string> saes, activations, ceilings;
  bool aligned = false;
  std::string out;
  std::vector<std::string> sources;  // a split run's unit: only these source cells, into a partial file
  std::string partial;
  uint64_t seed = 0;
  std::string device = "cpu";
  strata::transfer::TransferOptions options;
};

std::map<std::string, std::string> parse_pairs(const std::vector<std::string>& values, const char* flag) {
  std::map<std::string, std::string> out;
  for (const std::string& value : values) {
    auto eq = value.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == value.size())
      strata::fail("{} expects NAME=PATH, got '{}'", flag, value);
    if (!out.emplace(value.substr(0, eq), value.substr(eq + 1)).second)
      strata::fail("{}: name '{}' given twice", flag, value.substr(0, eq));
  }
  return out;
}

// The directory transfer loads for `--sae NAME=SPEC` (a directory or hf://org/name[@rev]/sub/dir, SAELens
// or sparsify format): checked against the cell's layer when the SAE names its hook; an
// expected_average_only_in SAE gets its scaling factor estimated from the cell's activations (evenly
// spaced rows, as SAELens estimates it) and is written, folded, to OUT/saes/NAME/.
fs::path prepare_sae(const std::string& spec, const strata::transfer::Cell& cell, const std::string& out) {
  strata::sae::LoadedSae loaded = strata::sae::load_sae(strata::sae::resolve_sae_source(spec));
  strata::sae::check_hook_layer(loaded, cell.layer, cell.name);
  if (loaded.sae.normalize_activations != "expected_average_only_in") return loaded.dir;
  auto store = strata::io::ActivationStore::open(cell.store);
  const int64_t want = std::min<int64_t>(store.rows(), 16384);
  auto ids = torch::linspace(0, double(store.rows() - 1), want, torch::kFloat64).round().to(torch::kInt64);
  loaded.sae.fold_norm_scaling_factor(strata::sae::Sae::estimate_norm_scaling_factor(store.read_rows(ids)));
  const fs::path folded = fs::path(out) / "saes" / cell.name;
  loaded.sae.save(folded);
  strata::log::info("--sae {}: folded the estimated norm scaling factor {} into {}", cell.name,
                    loaded.sae.cfg["folded_norm_scaling_factor"].get<double>(), folded.string());
  return folded;
}

// model, layer and n_layers of a cell: from the store's meta.json when it has them, else from the NAME
// "<model>_layer<L>" (n_layers = the largest layer given for that model).
std::vector<strata::transfer::Cell> build_cells(const TransferArgs& args) {
  auto saes = parse_pairs(args.saes, "--sae");
  auto stores = parse_pairs(args.activations, "--activations");
  auto ceilings = parse_pairs(args.ceilings, "--ceiling-sae");
  if (saes.empty()) strata::fail("transfer: give at least one --sae NAME=DIR and --activations NAME=PATH");
  for (auto& [name, _] : saes)
    if (!stores.count(name)) strata::fail("transfer: --sae {} has no matching --activations {}=PATH", name, name);
  for (auto& [name, _] : stores)
    if (!saes.count(name)) strata::fail("transfer: --activations {} has no matching --sae {}=DIR", name, name);
  for (auto& [name, _] : ceilings)
    if (!saes.count(name)) strata::fail("transfer: --ceiling-sae {} names no cell", name);
  std::vector<strata::transfer::Cell> cells;
  std::map<std::string, int> max_layer;
  const std::regex pattern(R"((.+)_layer(\d+))");
  for (auto& [name, store] : stores) {
    strata::transfer::Cell cell;
    cell.name = name;
    cell.store = store;
    if (ceilings.count(name)) cell.ceiling_sae_dir = fs::path(ceilings.at(name));
    const nlohmann::json meta = strata::io::ActivationStore::open(cell.store).meta();  // {} for a plain file
    std::smatch match;
    bool named = std::regex_match(name, match, pattern);
    if (meta.is_object() && meta.contains("model") && meta.contains("layer")) {
      cell.model = meta["model"].get<std::string>();
      cell.layer = meta["layer"].get<int>();
      cell.n_layers = meta.value("n_layers", 0);
    } else if (named) {
      cell.model = match[1];
      cell.layer = std::stoi(match[2]);
    } else {
      strata::fail("transfer: cannot tell the model and layer of '{}': name it <model>_layer<L> or give a store "
                   "with meta.json",
                   name);
    }
    max_layer[cell.model] = std::max(max_layer[cell.model], cell.layer);
    cells.push_back(cell);
  }
  for (auto& cell : cells)
    if (cell.n_layers <= 0) cell.n_layers = max_layer[cell.model];
  for (auto& cell : cells) cell.sae_dir = prepare_sae(saes.at(cell.name), cell, args.out);
  std::sort(cells.begin(), cells.end(), [](const auto& a, const auto& b) {
    return a.model != b.model ? a.model < b.model : a.layer < b.layer;
  });
  return cells;
}

void setup(strata::cli::Commands& commands) {
  auto args = std::make_shared<TransferArgs>();
  auto* cmd = commands.root().add_subcommand("transfer", "Transfer matrix: every cell's SAE on every cell's activations");
  cmd->add_option("--sae", args->saes, "NAME=DIR of an SAE, one per cell: SAELens or sparsify format (DIR or hf://org/name[@rev]/sub/dir)")->required();
  cmd->add_option("--activations", args->activations, "NAME=PATH of the cell's activation store")->required();
  cmd->add_option("--ceiling-sae", args->ceilings, "NAME=DIR of a second-seed SAE of a cell (seed-to-seed ceiling)");
  cmd->add_flag("--aligned", args->aligned, "all activation files hold the same tokens in the same row order");
  cmd->add_option("--out", args->out, "output directory (not with --partial)");
  cmd->add_option("--sources", args->sources, "split run: compute only the pairs whose source is one of these cells")
      ->delimiter(',');
  cmd->add_option("--partial", args->partial, "split run: write the --sources pairs to this partial file (merge "
                                              "them with `strata transfer-merge`)");
  cmd->add_option("--seed", args->seed, "seed of the split, nulls, permutations and bootstrap")->capture_default_str();
  cmd->add_option("--device", args->device, "cpu or cuda[:N] (the kernel path follows it; STRATA_KERNELS overrides)")
      ->capture_default_str();
  strata::cli::add_option_flags(cmd, args->options);  // every [transfer] key of transfer::TransferOptions
  commands.bind(cmd, [args]() {
    strata::cli::check_option_flags(args->options);
    args->options.aligned_rows = args->aligned;
    args->options.device = strata::runtime::parse_device(args->device);
    if (args->sources.empty() != args->partial.empty())
      strata::fail("transfer: --sources and --partial go together (a unit of a split run)");
    if (args->partial.empty() == args->out.empty())
      strata::fail("transfer: give --out DIR (whole matrix) or --sources A,B --partial FILE (one unit of a split run)");
    auto cells = build_cells(*args);
    if (!args->partial.empty()) {
      strata::transfer::compute_transfer_partial(cells, args->options, args->seed, args->sources, args->partial);
      fmt::print("{}\n", args->partial);
      return 0;
    }
    auto result = strata::transfer::run_transfer(cells, args->options, args->seed, args->out);
    for (const auto& file : result.files) fmt::print("{}\n", file.string());
    return 0;
  });

  auto merge_files = std::make_shared<std::vector<std::string>>();
  auto merge_out = std::make_shared<std::string>();
  auto* merge = commands.root().add_subcommand(
      "transfer-merge", "Merge the partial files of a split transfer run into the four matrix files");
  merge->add_option("--partial", *merge_files, "partial files (`strata transfer --sources ... --partial FILE`)")
      ->required();
  merge->add_option("--out", *merge_out, "output directory")->required();
  commands.bind(merge, [merge_files, merge_out]() {
    std::vector<fs::path> files(merge_files->begin(), merge_files->end());
    auto result = strata::transfer::merge_transfer(files, *merge_out);
    for (const auto& file : result.files) fmt::print("{}\n", file.string());
    return 0;
  });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
