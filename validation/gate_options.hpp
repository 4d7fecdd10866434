// The thresholds of the go/no-go gates, declared once: the fields() table is the experiment's [gates]
// section (parsing, validation, the resolved config) and what the gates read back from a run.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>

#include "core/options.hpp"

namespace strata::validation {

// Defaults are the seed's.
struct GateThresholds {
  double max_fvu = 0.5;               // Gate 2: held-out FVU of every SAE below this
  bool stream_store_check = true;     // Gate 1: read every shard to look for NaN/Inf
  int64_t pixel_tolerance = 1;        // Gate 4: |PNG pixels - inches * dpi|
  double early_transfer = 0.8;        // should-pass: mean cross-model q_excess of early cells above this
  double early_max_depth = 0.34;      // relative depth up to which a cell counts as early
  double spread = 0.15;               // should-pass: per depth, max - min over models (q_excess units)
  double divergence_threshold = 0.6;  // divergence point: first depth where mean q_excess falls below
  double trend_alpha = 0.05;          // should-pass: one-sided Kendall trend test of the decline
  int64_t min_dpi = 300;              // Gate 4 and publication-ready: figure resolution
  double significance_alpha = 0.05;   // BH-adjusted p-values counted as significant below this
  double max_l0_fraction = 0.5;       // should-pass: every SAE's held-out L0 at most this fraction of d_in
  double max_dead_fraction = 0.2;     // should-pass: every SAE's dead-latent fraction at most this

  nlohmann::json to_json() const { return options::to_json(*this); }
  // A run's [gates] section: unknown keys and mistyped values are errors naming the key; missing keys
  // keep their defaults; null gives the defaults.
  static GateThresholds from_json(const nlohmann::json& gates_section) {
    GateThresholds t;
    if (!gates_section.is_null()) options::apply_json(t, gates_section, "[gates]");
    options::validate(t, "[gates]");
    return t;
  }

  static const auto& fields() {
    using O = GateThresholds;
    namespace o = options;
    static const auto table = std::make_tuple(
        o::field("max_fvu", &O::max_fvu, "Gate 2: every SAE's held-out FVU below this", o::above(0)),
        o::field("stream_store_check", &O::stream_store_check, "Gate 1: read every shard looking for NaN/Inf"),
        o::field("pixel_tolerance", &O::pixel_tolerance, "Gate 4: |PNG pixels - inches * dpi| allowed", o::at_least(0)),
        o::field("early_transfer", &O::early_transfer, "should-pass: mean cross-model q_excess of early layers above this",
                 o::within(0, 1)),
        o::field("early_max_depth", &O::early_max_depth, "relative depth up to which a layer counts as early",
                 o::within(0, 1, "(]")),
        o::field("spread", &O::spread, "should-pass: cross-model spread per layer below this", o::at_least(0)),
        o::field("divergence_threshold", &O::divergence_threshold,
                 "divergence point: first depth where q_excess falls below this", o::within(0, 1)),
        o::field("trend_alpha", &O::trend_alpha, "significance level of the monotonic-decline trend test",
                 o::within(0, 1, "()")),
        o::field("min_dpi", &O::min_dpi, "Gate 4 / publication-ready: figure resolution", o::at_least(1)),
        o::field("significance_alpha", &O::significance_alpha, "BH-adjusted p-values count as significant below this",
                 o::within(0, 1, "()")),
        o::field("max_l0_fraction", &O::max_l0_fraction,
                 "should-pass: every SAE's held-out L0 at most this fraction of d_in", o::above(0)),
        o::field("max_dead_fraction", &O::max_dead_fraction, "should-pass: every SAE's dead-latent fraction at most this",
                 o::within(0, 1)));
    return table;
  }
};

}  // namespace strata::validation
