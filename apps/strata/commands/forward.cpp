// `strata forward`: one forward pass of a checkpoint over given token ids, writing every block's
// residual stream, the final norm and the logits (fp32) under the names of the HF reference fixtures.
#include "command.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/log.hpp"
#include "core/runtime.hpp"
#include "io/safetensors.hpp"
#include "models/transformer.hpp"

namespace {

struct Options {
  std::string model, ids, out, device = "cpu", dtype = "f32";
};

// {"input_ids": [[...], ...], "attention_mask": [[...], ...]} (mask optional). Rows of unequal length
// without a mask are right-padded with id 0 and masked.
std::pair<torch::Tensor, torch::Tensor> read_ids(const std::string& file) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(strata::read_text_file(file));
  } catch (const nlohmann::json::exception& e) {
    strata::fail("{}: not valid JSON ({})", file, e.what());
  }
  auto rows_of = [&](const char* key) {
    std::vector<std::vector<int64_t>> rows;
    if (!doc.is_object() || !doc.contains(key)) return rows;
    const auto& value = doc[key];
    if (!value.is_array() || value.empty()) strata::fail("{}: '{}' must be a non-empty list of lists", file, key);
    for (const auto& row : value) {
      if (!row.is_array() || row.empty()) strata::fail("{}: every row of '{}' must be a non-empty list", file, key);
      std::vector<int64_t> r;
      for (const auto& v : row) {
        if (!v.is_number_integer()) strata::fail("{}: '{}' holds a non-integer {}", file, key, v.dump());
        r.push_back(v.get<int64_t>());
      }
      rows.push_back(std::move(r));
    }
    return rows;
  };
  auto ids = rows_of("input_ids");
  if (ids.empty()) strata::fail("{}: needs \"input_ids\": [[...], ...]", file);
  auto mask = rows_of("attention_mask");
  size_t width = 0;
  for (const auto& r : ids) width = std::max(width, r.size());
  if (!mask.empty()) {
    if (mask.size() != ids.size()) strata::fail("{}: attention_mask has {} rows, input_ids {}", file, mask.size(), ids.size());
    for (size_t b = 0; b < ids.size(); ++b)
      if (ids[b].size() != width || mask[b].size() != width)
        strata::fail("{}: with an attention_mask every row of input_ids and attention_mask must have {} entries", file,
                     width);
  }
  const auto B = static_cast<int64_t>(ids.size()), T = static_cast<int64_t>(width);
  torch::Tensor id_tensor = torch::zeros({B, T}, torch::kInt64), mask_tensor = torch::zeros({B, T}, torch::kInt64);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < static_cast<int64_t>(ids[b].size()); ++t) {
      id_tensor[b][t] = ids[b][t];
      mask_tensor[b][t] = mask.empty() ? 1 : mask[b][t];
    }
  if (!mask.empty() && !(mask_tensor.eq(0) | mask_tensor.eq(1)).all().item<bool>())
    strata::fail("{}: attention_mask values must be 0 or 1", file);
  return {id_tensor, mask_tensor};
}

int run(const Options& o) {
  const torch::Device device = strata::runtime::parse_device(o.device);
  const torch::ScalarType dtype = strata::models::parse_compute_dtype(o.dtype, "forward --dtype");
  auto model = strata::models::Transformer::load(o.model, dtype, device);
  auto [ids, mask] = read_ids(o.ids);
  strata::models::ForwardRequest request;
  for (int i = 0; i < model.spec().n_layers; ++i) request.blocks.push_back(i);
  request.embed = request.final_norm = request.logits = true;
  strata::models::ForwardOutput out;
  {
    torch::NoGradGuard no_grad;
    out = model.forward(ids, mask, request);
  }
  auto f32 = [](const torch::Tensor& t) { return t.to(torch::kCPU, torch::kFloat32); };
  std::map<std::string, torch::Tensor> tensors{{"input_ids", ids},
                                               {"attention_mask", mask},
                                               {"embed", f32(out.embed)},
                                               {"final_norm", f32(out.final_norm)},
                                               {"logits", f32(out.logits)}};
  for (const auto& [block, t] : out.resid_post) tensors[fmt::format("resid_post.{}", block)] = f32(t);
  strata::io::save_safetensors(o.out, tensors,
                               {{"format", "pt"},
                                {"model", o.model},
                                {"model_type", model.spec().model_type},
                                {"compute_dtype", o.dtype},
                                {"device", device.str()},
                                {"checkpoint_sha256", model.checkpoint_sha256()}});
  strata::log::info("forward: {} x {} tokens through {} ({} blocks) -> {}", ids.size(0), ids.size(1), o.model,
                    model.spec().n_layers, o.out);
  return 0;
}

void setup(strata::cli::Commands& commands) {
  auto options = std::make_shared<Options>();
  auto* cmd = commands.root().add_subcommand(
      "forward", "Run a checkpoint over token ids; write embed, resid_post.{i}, final_norm, logits (fp32)");
  cmd->add_option("--model", options->model, "checkpoint directory or hf://org/name[@revision]")->required();
  cmd->add_option("--ids", options->ids,
                  "JSON {\"input_ids\": [[...]], \"attention_mask\": [[...]]} (mask optional; right padding)")
      ->required();
  cmd->add_option("--out", options->out, "output .safetensors")->required();
  cmd->add_option("--device", options->device, "cpu or cuda[:N]")->capture_default_str();
  cmd->add_option("--dtype", options->dtype, "compute dtype: f32, bf16 or f16 (outputs are written in fp32)")
      ->capture_default_str();
  commands.bind(cmd, [options] { return run(*options); });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
