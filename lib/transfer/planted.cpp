#include "transfer/planted.hpp"

#include <torch/torch.h>

#include "core/error.hpp"
#include "io/activation_store.hpp"
#include "sae/sae.hpp"
#include "stats/linalg.hpp"

namespace strata::transfer {

PlantedData make_planted(const PlantedSpec& spec, uint64_t seed, const std::filesystem::path& dir) {
  const int64_t models = int64_t(spec.widths.size());
  for (int64_t w : spec.widths)
    if (w < spec.shared_dim) fail("make_planted: width {} is below the shared dimension {}", w, spec.shared_dim);
  const int64_t pool = (spec.layers - 1) * spec.layer_shift + (models - 1) * spec.model_shift + spec.features_per_cell;
  const int64_t n = spec.sequences * spec.tokens_per_sequence;
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto f32 = torch::dtype(torch::kFloat32);
  torch::Tensor directions = torch::randn({pool, spec.shared_dim}, generator, f32);
  directions = directions / directions.norm(2, 1, true);
  torch::Tensor fires = torch::rand({n, pool}, generator, f32) < spec.firing_probability;
  torch::Tensor codes = fires.to(torch::kFloat32) * (1 + torch::rand({n, pool}, generator, f32));
  torch::Tensor doc = torch::arange(n, torch::kInt64).div(spec.tokens_per_sequence, "floor");
  torch::Tensor position = torch::arange(n, torch::kInt64).remainder(spec.tokens_per_sequence);

  PlantedData out;
  std::vector<int64_t> starts;
  for (int64_t m = 0; m < models; ++m) {
    std::string model = "planted" + std::to_string(m);
    torch::Tensor placement = stats::random_orthonormal(spec.widths[m], spec.shared_dim, generator).t().to(torch::kFloat32);
    torch::Tensor keep = torch::ones({n}, torch::kBool);
    if (m > 0 && spec.drop_fraction > 0) keep = torch::rand({n}, generator, f32) >= spec.drop_fraction;
    torch::Tensor rows = keep.nonzero().squeeze(1);
    for (int layer = 1; layer <= spec.layers; ++layer) {
      int64_t start = (layer - 1) * spec.layer_shift + m * spec.model_shift;
      starts.push_back(start);
      torch::Tensor window = torch::arange(start, start + spec.features_per_cell, torch::kInt64);
      torch::Tensor dictionary = torch::mm(directions.index_select(0, window), placement);  // [w, d_m], unit rows
      torch::Tensor x = torch::mm(codes.index_select(1, window), dictionary) +
                        spec.noise * torch::randn({n, spec.widths[m]}, generator, f32);
      x = x.index_select(0, rows);
      std::string base = io::store_base_name(model, layer);
      io::ActivationStoreWriter writer(dir / "activations", base, spec.widths[m], torch::kFloat32, int64_t(1) << 28);
      io::RowIndex index{doc.index_select(0, rows), doc.index_select(0, rows), position.index_select(0, rows),
                         position.index_select(0, rows), position.index_select(0, rows) + 1};
      writer.append(x, index);
      writer.finish({{"model", model}, {"layer", layer}, {"n_layers", spec.layers}});
      sae::Sae sae;
      sae.W_dec = dictionary.contiguous();
      sae.W_enc = dictionary.t().contiguous();
      sae.b_enc = torch::full({spec.features_per_cell}, -spec.threshold, f32);
      sae.b_dec = torch::zeros({spec.widths[m]}, f32);
      std::string name = model + "_layer" + std::to_string(layer);
      sae.save(dir / "saes" / name);
      out.cells.push_back(Cell{name, model, layer, spec.layers, dir / "activations" / (base + ".meta.json"),
                               dir / "saes" / name, std::nullopt});
    }
  }
  const int64_t cells = int64_t(out.cells.size());
  out.overlap = torch::zeros({cells, cells}, torch::kFloat64);
  for (int64_t i = 0; i < cells; ++i)
    for (int64_t j = 0; j < cells; ++j) {
      int64_t shared = std::max<int64_t>(0, spec.features_per_cell - std::abs(starts[i] - starts[j]));
      out.overlap[i][j] = double(shared) / double(spec.features_per_cell);
    }
  return out;
}

}  // namespace strata::transfer
