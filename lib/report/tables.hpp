// One table, three renderings: GitHub markdown (in report.md), CSV (machine-readable, exact numbers)
// and LaTeX booktabs (for the paper).
#pragma once
#include <filesystem>
#include <string>
#include <vector>

namespace strata::report {

struct Table {
  std::string name;     // file stem under report/tables/
  std::string caption;  // LaTeX caption; markdown shows it above the table
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;

  std::string markdown() const;
  std::string csv() const;    // RFC 4180 quoting
  std::string latex() const;  // booktabs; needs \usepackage{booktabs}
  // Writes tables/<name>.csv and tables/<name>.tex atomically under `dir`.
  void write(const std::filesystem::path& dir) const;
};

// A value no step computed (e.g. a CKA p-value when no permutation test ran): printed as is in markdown
// and LaTeX, an empty cell in CSV.
inline constexpr const char* kNotComputed = "not computed";

// Numbers as printed in tables: fixed decimals, "n/a" for missing, p-values in scientific below 1e-3.
std::string fixed(double value, int decimals = 3);
std::string p_value(double p);

}  // namespace strata::report
