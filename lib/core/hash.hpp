// SHA-256 through OpenSSL EVP, as lowercase hex.
#pragma once
#include <filesystem>
#include <string>
#include <string_view>

namespace strata {

std::string sha256_hex(std::string_view bytes);
std::string sha256_file(const std::filesystem::path& file);

// Incremental hashing for data produced piecewise.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, size_t size);
  void update(std::string_view s) { update(s.data(), s.size()); }
  std::string hex();

 private:
  void* ctx_;
};

}  // namespace strata
