#include "models/spec.hpp"

#include <fmt/ranges.h>

#include <cmath>
#include <limits>

#include "core/error.hpp"
#include "models/architecture.hpp"

namespace strata::models {
namespace {

// Upper bounds on the sizes parse_config accepts from config.json. They are far above any released model
// (the deepest has ~130 layers, the widest ~30k hidden units, the largest vocabulary ~260k tokens).
constexpr int64_t kMaxLayers = 1024, kMaxHeads = 4096, kMaxHiddenSize = 1 << 17, kMaxIntermediateSize = 1 << 20,
                  kMaxVocabSize = 1 << 22, kMaxPositions = 1 << 24;

}  // namespace

namespace detail {

const std::vector<const Architecture*>& architectures() {
  static const std::vector<const Architecture*> all{&kGpt2, &kGptNeox, &kPhi, &kGemma};
  return all;
}

const Architecture& architecture_for(const std::string& model_type, const std::string& source) {
  for (const Architecture* arch : architectures())
    if (model_type == arch->model_type) return *arch;
  fail("{}: model_type '{}' is not supported; supported model types: {}", source, model_type,
       fmt::join(supported_model_types(), ", "));
}

const nlohmann::json* ConfigReader::find(const std::string& key) const {
  auto it = config_.find(key);
  if (it == config_.end() || it->is_null()) return nullptr;
  return &*it;
}

bool ConfigReader::has(const std::string& key) const { return find(key) != nullptr; }

int64_t ConfigReader::integer(const std::string& key, int64_t fallback) const {
  const auto* v = find(key);
  if (!v) return fallback;
  // config.json integers are sizes and token ids. One beyond 2^53 (where JSON numbers stop being exact in
  // Python and JavaScript) is refused rather than wrapped or truncated, which also keeps arithmetic on the
  // defaults (n_inner = 4 * n_embd) far from int64 overflow.
  constexpr double kLimit = 9007199254740992.0;  // 2^53
  double as_double = 0;
  if (v->is_number_unsigned()) as_double = static_cast<double>(v->get<uint64_t>());
  else if (v->is_number_integer()) as_double = static_cast<double>(v->get<int64_t>());
  else if (v->is_number_float() && v->get<double>() == std::floor(v->get<double>())) as_double = v->get<double>();
  else fail("{}: '{}' must be an integer, got {}", source_, key, v->dump());
  if (!(std::fabs(as_double) <= kLimit))
    fail("{}: '{}' = {} is out of range (config integers must lie within +-2^53)", source_, key, v->dump());
  return v->is_number_float() ? static_cast<int64_t>(as_double) : v->get<int64_t>();
}

int64_t ConfigReader::integer(const std::string& key) const {
  if (!find(key)) fail("{}: required key '{}' is missing", source_, key);
  return integer(key, 0);
}

double ConfigReader::number(const std::string& key, double fallback) const {
  const auto* v = find(key);
  if (!v) return fallback;
  if (!v->is_number()) fail("{}: '{}' must be a number, got {}", source_, key, v->dump());
  const double d = v->get<double>();
  if (!(std::fabs(d) <= 1e15)) fail("{}: '{}' = {} is out of range", source_, key, v->dump());
  return d;
}

bool ConfigReader::boolean(const std::string& key, bool fallback) const {
  const auto* v = find(key);
  if (!v) return fallback;
  if (!v->is_boolean()) fail("{}: '{}' must be true or false, got {}", source_, key, v->dump());
  return v->get<bool>();
}

std::string ConfigReader::string(const std::string& key, const std::string& fallback) const {
  const auto* v = find(key);
  if (!v) return fallback;
  if (!v->is_string()) fail("{}: '{}' must be a string, got {}", source_, key, v->dump());
  return v->get<std::string>();
}

Activation ConfigReader::activation(const std::string& key, const std::string& fallback) const {
  const std::string name = string(key, fallback);
  // HF ACT2FN: gelu = exact erf GELU; gelu_new / gelu_pytorch_tanh / gelu_fast are the tanh approximation
  // (gelu_fast is the same formula, rearranged).
  if (name == "gelu") return Activation::GeluExact;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return Activation::GeluTanh;
  if (name == "relu") return Activation::Relu;
  if (name == "silu" || name == "swish") return Activation::Silu;
  fail("{}: activation '{}' ('{}') is not supported; supported: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, "
       "silu",
       source_, name, key);
}

void ConfigReader::require_absent(const std::string& key, const std::string& why) const {
  if (const auto* v = find(key); v && !(v->is_boolean() && !v->get<bool>()))
    fail("{}: '{}' = {} is not supported ({})", source_, key, v->dump(), why);
}

}  // namespace detail

std::vector<std::string> supported_model_types() {
  std::vector<std::string> out;
  for (const auto* arch : detail::architectures()) out.push_back(arch->model_type);
  return out;
}

ModelSpec parse_config(const nlohmann::json& config, const std::string& source) {
  if (!config.is_object()) fail("{}: config must be a JSON object", source);
  if (!config.contains("model_type") || !config["model_type"].is_string())
    fail("{}: no 'model_type' string; supported model types: {}", source, fmt::join(supported_model_types(), ", "));
  const auto& arch = detail::architecture_for(config["model_type"].get<std::string>(), source);
  detail::ConfigReader reader(config, source);
  ModelSpec spec;
  spec.model_type = arch.model_type;
  arch.parse(reader, spec);
  spec.config = config;

  // Sizes come from an untrusted file and drive allocations and loops (one block per layer, tables of
  // vocab x hidden), so each is bounded before use.
  auto bounded = [&](int64_t value, const char* what, int64_t cap) {
    if (value <= 0) fail("{}: {} must be positive, got {}", source, what, value);
    if (value > cap)
      fail("{}: {} = {} exceeds strata's limit of {}; the config.json is corrupt or not a model strata can load",
           source, what, value, cap);
  };
  bounded(spec.hidden_size, "hidden size", kMaxHiddenSize);
  bounded(spec.n_layers, "number of layers", kMaxLayers);
  bounded(spec.n_heads, "number of attention heads", kMaxHeads);
  bounded(spec.n_kv_heads, "number of key/value heads", kMaxHeads);
  bounded(spec.head_dim, "head dim", kMaxHiddenSize);
  bounded(spec.intermediate_size, "intermediate size", kMaxIntermediateSize);
  bounded(spec.vocab_size, "vocab size", kMaxVocabSize);
  bounded(spec.max_positions, "max positions", kMaxPositions);
  if (spec.n_heads % spec.n_kv_heads != 0)
    fail("{}: {} attention heads are not a multiple of {} key/value heads", source, spec.n_heads, spec.n_kv_heads);
  if (spec.positions == PositionKind::Rotary) {
    if (spec.rotary_dims < 0 || spec.rotary_dims > spec.head_dim || spec.rotary_dims % 2 != 0)
      fail("{}: rotary dims {} must be even and at most head_dim {}", source, spec.rotary_dims, spec.head_dim);
    if (!(spec.rotary_base > 0)) fail("{}: rotary base must be positive", source);
  }
  if (!(spec.norm_eps > 0)) fail("{}: norm epsilon must be positive", source);
  return spec;
}

}  // namespace strata::models
