// Command-line flags from a layer's options table (core/options.hpp): one --flag per field, named after
// its key with '-' for '_', described by its doc, showing its default; after parsing, the same rules as
// an experiment file, with errors naming the flag. A new field in the table is a new flag, no edit here.
#pragma once
#include <CLI/CLI.hpp>

#include <map>
#include <string>

#include "core/error.hpp"
#include "core/options.hpp"

namespace strata::cli {

// `names` gives a field other CLI11 names, e.g. {"architecture", "--architecture,--arch"} to keep an
// established short flag.
using FlagNames = std::map<std::string, std::string>;

inline std::string flag_names(std::string_view key, const FlagNames& names) {
  if (auto it = names.find(std::string(key)); it != names.end()) return it->second;
  std::string flag = "--" + std::string(key);
  for (char& c : flag)
    if (c == '_') c = '-';
  return flag;
}

template <class Options>
void add_option_flags(CLI::App* command, Options& options, const FlagNames& names = {}) {
  options::for_each_field(options, [&](const auto& f, auto& owner) {
    command->add_option(flag_names(f.key, names), owner.*f.member, std::string(f.doc))->capture_default_str();
  });
}

// The table's rules on the parsed values; the error names the (first) flag.
template <class Options>
void check_option_flags(const Options& options, const FlagNames& names = {}) {
  if (auto violation = options::first_violation(options)) {
    const std::string flags = flag_names(violation->key, names);
    fail("{} {}", flags.substr(0, flags.find(',')), violation->message);
  }
}

}  // namespace strata::cli
