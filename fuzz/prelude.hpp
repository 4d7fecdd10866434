// What lib/pch.hpp gives every strata source, minus LibTorch: the parsers fuzzed here do not use it, and
// clang 14 cannot compile the LibTorch 1.13 headers in C++20 mode (incomplete c10::IValue in std::vector).
#pragma once
#include <nlohmann/json.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>
