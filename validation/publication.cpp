// Publication-ready checks: what a reviewer asks for (resolution, labels, p-values, seeds). Non-blocking.
#include "report/image_files.hpp"
#include "report/run_data.hpp"
#include "transfer/transfer.hpp"
#include "validation/gates.hpp"

namespace strata::validation {
namespace fs = std::filesystem;
using nlohmann::json;

std::vector<json> publication_checks(const fs::path& run_dir, const GateThresholds& t) {
  json dpi = make_check("figures_dpi", "Figures at >= min DPI", "publication_ready");
  json labels = make_check("figure_labels", "Figures labelled and captioned", "publication_ready");
  json pvalues = make_check("p_values", "p-values (BH) on every pair", "publication_ready");
  json seeds = make_check("seeds_documented", "Seeds documented", "publication_ready");

  const auto index = report::read_json_if_exists(run_dir / "figures" / "figures.json");
  if (!index) {
    finish_check(dpi, {"figures/figures.json missing"}, "no figures");
    finish_check(labels, {"figures/figures.json missing"}, "no figures");
  } else {
    std::vector<std::string> low, unlabelled;
    size_t n = 0;
    for (const auto& f : index->value("figures", json::array())) {
      ++n;
      const std::string name = f.value("name", "?");
      try {
        const auto info = report::read_png_info(run_dir / f.value("png", ""));
        const double stated = f.value("dpi", 0.0);
        const double embedded = info.dpi_x.value_or(0.0);
        if (stated < static_cast<double>(t.min_dpi) || std::lround(embedded) < t.min_dpi)
          low.push_back(fmt::format("{}: stated {} DPI, PNG pHYs {:.0f} DPI (min {})", name, stated, embedded, t.min_dpi));
      } catch (const std::exception& e) {
        low.push_back(fmt::format("{}: {}", name, e.what()));
      }
      for (const char* key : {"xlabel", "ylabel", "caption", "title"})
        if (f.value(key, "").empty()) unlabelled.push_back(fmt::format("{}: no {}", name, key));
    }
    finish_check(dpi, low, fmt::format("{} figures checked at >= {} DPI", n, t.min_dpi));
    finish_check(labels, unlabelled, fmt::format("{} figures with axis labels, title and caption", n - std::min(n, unlabelled.size())));
  }

  try {
    const auto results = report::load_transfer(run_dir);
    std::vector<std::string> missing;
    size_t with_p = 0;
    for (const auto& pair : results.pairs) {
      if (pair.source == pair.target) continue;  // a cell with itself has no test
      // metric() is nullopt for null: a p-value the transfer step did not compute is missing, not 1.
      if (pair.metric("p_adjusted") && pair.metric("cka_p")) ++with_p;
      else missing.push_back(transfer::pair_key(pair.source, pair.target));
    }
    std::vector<std::string> reasons;
    if (!missing.empty() && with_p == 0)
      reasons.push_back(fmt::format("p-values missing: no CKA permutation test ran ({} pairs without cka_p / p_adjusted); "
                                    "set [transfer] cka_permutations > 0 and re-run the transfer step",
                                    missing.size()));
    else if (!missing.empty())
      reasons.push_back(fmt::format("p-values missing on {} pairs (no cka_p / p_adjusted), e.g. {}", missing.size(),
                                    missing.front()));
    finish_check(pvalues, reasons, fmt::format("{} off-diagonal pairs with BH-adjusted p-values", with_p));
  } catch (const std::exception& e) {
    finish_check(pvalues, {e.what()}, "transfer results unavailable");
  }

  const auto manifest = report::read_json_if_exists(run_dir / "manifest.json");
  std::vector<std::string> seed_reasons;
  std::string seed_summary = "no manifest.json";
  if (!manifest) {
    seed_reasons.push_back("manifest.json missing");
  } else if (!manifest->contains("seeds") || !(*manifest)["seeds"].contains("master")) {
    seed_reasons.push_back("manifest.json has no seeds.master");
    seed_summary = "seeds not recorded";
  } else {
    const auto& s = (*manifest)["seeds"];
    seed_summary = fmt::format("master seed {}, {} derived seeds", s["master"].dump(),
                               s.contains("derived") && s["derived"].is_object() ? s["derived"].size() : 0);
  }
  finish_check(seeds, seed_reasons, seed_summary);
  return {dpi, labels, pvalues, seeds};
}

}  // namespace strata::validation
