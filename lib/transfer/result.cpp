#include "transfer/result.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>

#include "core/error.hpp"

namespace strata::transfer {
namespace {

using json = nlohmann::json;

// Every optional scalar metric with its member, so that parsing and metric() share one list.
const std::vector<std::pair<std::string, std::optional<double> PairResult::*>>& optional_metrics() {
  static const std::vector<std::pair<std::string, std::optional<double> PairResult::*>> list = {
      {"transfer_recon_ratio", &PairResult::transfer_recon_ratio},
      {"fvu_source", &PairResult::fvu_source},
      {"fvu_target", &PairResult::fvu_target},
      {"fvu_null", &PairResult::fvu_null},
      {"q", &PairResult::q},
      {"q_null", &PairResult::q_null},
      {"q_excess", &PairResult::q_excess},
      {"feature_variance_ratio", &PairResult::feature_variance_ratio},
      {"top_k_spearman", &PairResult::top_k_spearman},
      {"top_k_spearman_p", &PairResult::top_k_spearman_p},
      {"decoder_similarity", &PairResult::decoder_similarity},
      {"cka", &PairResult::cka},
      {"cka_p", &PairResult::cka_p},
      {"map_r2", &PairResult::map_r2},
      {"mmac", &PairResult::mmac},
      {"mmac_weighted", &PairResult::mmac_weighted},
      {"mmac_random", &PairResult::mmac_random},
      {"p_adjusted", &PairResult::p_adjusted}};
  return list;
}

std::optional<double> optional_number(const json& entry, const std::string& key, const std::string& where) {
  auto it = entry.find(key);
  if (it == entry.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) fail("{}: \"{}\" must be a number or null, got {}", where, key, it->dump());
  const double v = it->get<double>();
  return std::isfinite(v) ? std::optional<double>(v) : std::nullopt;
}

template <class T>
T required(const json& entry, const std::string& key, const std::string& where) {
  auto it = entry.find(key);
  if (it == entry.end()) fail("{}: missing \"{}\"; re-run the transfer step", where, key);
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    fail("{}: \"{}\" has the wrong type ({}); re-run the transfer step", where, key, it->dump());
  }
}

}  // namespace

std::optional<double> PairResult::metric(const std::string& name) const {
  for (const auto& [key, member] : optional_metrics())
    if (key == name) return this->*member;
  if (name == "retained_fraction") return retained_fraction;
  if (name == "source_l0") return source_l0;
  return std::nullopt;
}

PairResult pair_from_json(const json& entry, const std::string& where) {
  if (!entry.is_object()) fail("{}: a pair entry must be an object", where);
  PairResult p;
  p.source = required<std::string>(entry, "source", where);
  p.target = required<std::string>(entry, "target", where);
  p.source_model = required<std::string>(entry, "source_model", where);
  p.target_model = required<std::string>(entry, "target_model", where);
  p.source_layer = required<int>(entry, "source_layer", where);
  p.target_layer = required<int>(entry, "target_layer", where);
  p.source_relative_depth = entry.value("source_relative_depth", 0.0);
  p.target_relative_depth = entry.value("target_relative_depth", 0.0);
  p.same_model = required<bool>(entry, "same_model", where);
  p.map = entry.value("map", std::string());
  p.evaluation = entry.value("evaluation", std::string());
  p.top_k = entry.value("top_k", int64_t(0));
  p.aligned_tokens = entry.value("aligned_tokens", int64_t(0));
  p.eval_tokens = entry.value("eval_tokens", int64_t(0));
  p.cka_tokens = entry.value("cka_tokens", int64_t(0));
  p.cka_permutation_tokens = entry.value("cka_permutation_tokens", int64_t(0));
  p.source_l0 = entry.value("source_l0", 0.0);
  p.retained_fraction = entry.value("retained_fraction", 0.0);
  for (const auto& [key, member] : optional_metrics()) p.*member = optional_number(entry, key, where);
  for (auto [key, member] : {std::pair{"q_excess_ci", &PairResult::q_excess_ci}, std::pair{"cka_ci", &PairResult::cka_ci}}) {
    auto it = entry.find(key);
    if (it == entry.end() || it->is_null()) continue;
    if (!it->is_array() || it->size() != 2) fail("{}: \"{}\" must be [lo, hi]", where, key);
    for (size_t i = 0; i < 2; ++i)
      (p.*member)[i] = (*it)[i].is_number() && std::isfinite((*it)[i].get<double>())
                           ? std::optional<double>((*it)[i].get<double>())
                           : std::nullopt;
  }
  return p;
}

const PairResult* TransferMatrix::find(const std::string& source, const std::string& target) const {
  for (const PairResult& p : pairs)
    if (p.source == source && p.target == target) return &p;
  return nullptr;
}

TransferMatrix transfer_matrix_from_json(const json& document, const std::string& where) {
  TransferMatrix out;
  if (!document.is_object()) fail("{}: not a JSON object", where);
  out.config = document.value("config", json::object());
  const json pairs = document.value("transfer_matrix", json::object());
  if (!pairs.is_object() || pairs.empty()) fail("{} has no \"transfer_matrix\" pairs; re-run the transfer step", where);
  std::map<std::string, size_t> order;
  if (out.config.contains("cells") && out.config["cells"].is_array())
    for (const json& cell : out.config["cells"]) {
      const std::string name = cell.is_object() ? cell.value("name", std::string()) : cell.is_string() ? cell.get<std::string>() : "";
      if (!name.empty() && order.emplace(name, out.cells.size()).second) out.cells.push_back(name);
    }
  for (const auto& [key, entry] : pairs.items()) {
    PairResult p = pair_from_json(entry, where + ": pair " + key);
    for (const std::string* name : {&p.source, &p.target})
      if (order.emplace(*name, out.cells.size()).second) out.cells.push_back(*name);
    out.pairs.push_back(std::move(p));
  }
  std::stable_sort(out.pairs.begin(), out.pairs.end(), [&](const PairResult& a, const PairResult& b) {
    return std::make_pair(order.at(a.source), order.at(a.target)) < std::make_pair(order.at(b.source), order.at(b.target));
  });
  return out;
}

TransferMatrix read_transfer_matrix(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) fail("{}: cannot read; run the transfer step (strata transfer / strata run) first", file.string());
  json document;
  try {
    document = json::parse(in);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON ({}); re-run the transfer step", file.string(), e.what());
  }
  return transfer_matrix_from_json(document, file.string());
}

}  // namespace strata::transfer
