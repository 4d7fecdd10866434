// One declaration per option set. A layer's options struct lists its fields once, in a static fields()
// table: key, member, one-line doc and the rules a value must satisfy. Everything else is derived from
// that table: TOML parsing and its file:line errors (harness/config.cpp), validation (the layer calls
// validate() itself, so a library caller and an experiment file are held to the same rules), the
// resolved config that `strata config check` prints and the manifest records (to_json), overrides and
// records read back (apply_json) and CLI flags (apps/strata/option_flags.hpp).
//
//   struct FooOptions {
//     int64_t top_k = 100;
//     static const auto& fields() {
//       static const auto table = std::make_tuple(
//           options::field("top_k", &FooOptions::top_k, "latents compared", options::at_least(1)));
//       return table;
//     }
//   };
//
// Adding an option is one line in the table. A struct may extend another's table (std::tuple_cat of the
// base's fields() and its own): the experiment's [transfer] section is transfer::TransferOptions plus two
// keys other steps read.
#pragma once
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include "core/error.hpp"

namespace strata::options {

// A rule on one field: "" when the value is acceptable, else what it must be ("must lie in (0, 1)").
// It sees the whole struct, so a rule may relate fields (min_epochs <= epochs).
template <class Owner, class T>
using Rule = std::function<std::string(const Owner&, const T&)>;

template <class Owner, class T>
struct Field {
  using owner_type = Owner;
  using value_type = T;
  std::string_view key;
  T Owner::*member;
  std::string_view doc;
  std::vector<Rule<Owner, T>> rules;

  // The first broken rule's message, "" when every rule holds.
  std::string check(const Owner& owner) const {
    for (const auto& rule : rules)
      if (std::string message = rule(owner, owner.*member); !message.empty()) return message;
    return "";
  }
};

template <class Owner, class T, class... Rules>
Field<Owner, T> field(std::string_view key, T Owner::*member, std::string_view doc, Rules&&... rules) {
  return Field<Owner, T>{key, member, doc, {Rule<Owner, T>(std::forward<Rules>(rules))...}};
}

// ---------------------------------------------------------------- rules

// value >= lo; `note` is appended to the message (e.g. " (0 = never)").
inline auto at_least(double lo, std::string note = "") {
  return [lo, note](const auto&, const auto& v) {
    return static_cast<double>(v) >= lo ? std::string() : fmt::format("must be >= {}{}", lo, note);
  };
}
inline auto above(double lo) {
  return [lo](const auto&, const auto& v) {
    return static_cast<double>(v) > lo ? std::string() : fmt::format("must be > {}", lo);
  };
}
// value in an interval; `bounds` is "[]", "[)", "(]" or "()".
inline auto within(double lo, double hi, std::string_view bounds = "[]") {
  const bool lo_closed = bounds[0] == '[', hi_closed = bounds[1] == ']';
  return [=](const auto&, const auto& v) {
    const double x = static_cast<double>(v);
    const bool ok = (lo_closed ? x >= lo : x > lo) && (hi_closed ? x <= hi : x < hi);
    return ok ? std::string() : fmt::format("must lie in {}{}, {}{}", bounds[0], lo, hi, bounds[1]);
  };
}
inline auto one_of(std::vector<std::string> choices) {
  return [choices](const auto&, const std::string& v) {
    for (const auto& c : choices)
      if (v == c) return std::string();
    std::string list;
    for (const auto& c : choices) list += (list.empty() ? "\"" : ", \"") + c + "\"";
    return fmt::format("must be one of {}, got \"{}\"", list, v);
  };
}
// Any predicate of (owner, value) with its message.
template <class Predicate>
auto rule(Predicate predicate, std::string message) {
  return [predicate, message](const auto& owner, const auto& v) { return predicate(owner, v) ? std::string() : message; };
}

// ---------------------------------------------------------------- visiting

// Calls fn(field, owner) for every field of Owner's table, in declaration order (owner may be const).
template <class Owner, class Fn>
void for_each_field(Owner& owner, Fn&& fn) {
  std::apply([&](const auto&... field) { (fn(field, owner), ...); }, std::remove_const_t<Owner>::fields());
}

template <class Options>
std::vector<std::string> keys() {
  std::vector<std::string> out;
  const Options defaults{};
  for_each_field(defaults, [&](const auto& f, const auto&) { out.emplace_back(f.key); });
  return out;
}

// Every field, by key (the resolved config, the manifest, a record to read back with apply_json).
template <class Options>
nlohmann::json to_json(const Options& options) {
  nlohmann::json out = nlohmann::json::object();
  for_each_field(options, [&](const auto& f, const auto& owner) { out[std::string(f.key)] = owner.*f.member; });
  return out;
}

struct Violation {
  std::string key, message;
};

// The first field (in table order) whose rules do not hold.
template <class Options>
std::optional<Violation> first_violation(const Options& options) {
  std::optional<Violation> out;
  for_each_field(options, [&](const auto& f, const auto& owner) {
    if (out) return;
    if (std::string message = f.check(owner); !message.empty()) out = Violation{std::string(f.key), message};
  });
  return out;
}

// Throws strata::Error "<where>: '<key>' <message>" for the first field that breaks a rule.
template <class Options>
void validate(const Options& options, std::string_view where) {
  if (auto v = first_violation(options)) fail("{}: '{}' {}", where, v->key, v->message);
}

namespace detail {
template <class T>
void read_json_value(const nlohmann::json& value, T& out, std::string_view where, std::string_view key) {
  bool ok;
  if constexpr (std::is_same_v<T, bool>) ok = value.is_boolean();
  else if constexpr (std::is_integral_v<T>) ok = value.is_number_integer() && (std::is_signed_v<T> || value.get<int64_t>() >= 0);
  else if constexpr (std::is_floating_point_v<T>) ok = value.is_number();
  else if constexpr (std::is_same_v<T, std::string>) ok = value.is_string();
  else ok = value.is_array();
  if (!ok) fail("{}: '{}' has the wrong type: {}", where, key, value.dump());
  try {
    value.get_to(out);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: '{}': {}", where, key, e.what());
  }
}
}  // namespace detail

// Sets the fields named in `values` (a JSON object); the others keep their values. An unknown key or a
// value of the wrong type is an error naming `where` and the key. With require_all, a missing key is one too.
template <class Options>
void apply_json(Options& options, const nlohmann::json& values, std::string_view where, bool require_all = false) {
  if (!values.is_object()) fail("{}: expected an object of options, got {}", where, values.dump());
  const std::vector<std::string> known = keys<Options>();
  for (auto it = values.begin(); it != values.end(); ++it)
    if (std::find(known.begin(), known.end(), it.key()) == known.end())
      fail("{}: unknown key '{}' (known: {})", where, it.key(), fmt::join(known, ", "));
  for_each_field(options, [&](const auto& f, auto& owner) {
    const std::string key(f.key);
    if (values.contains(key)) detail::read_json_value(values.at(key), owner.*f.member, where, key);
    else if (require_all) fail("{}: missing key '{}'", where, key);
  });
}

template <class Options>
Options from_json(const nlohmann::json& values, std::string_view where, bool require_all = false) {
  Options options;
  apply_json(options, values, where, require_all);
  return options;
}

}  // namespace strata::options
