#include "core/hash.hpp"

#include <openssl/evp.h>

#include <fstream>
#include <memory>
#include <vector>

#include "core/error.hpp"

namespace strata {

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (!ctx_ || EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), EVP_sha256(), nullptr) != 1)
    fail("OpenSSL: cannot initialise SHA-256");
}

Sha256::~Sha256() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }

void Sha256::update(const void* data, size_t size) {
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data, size);
}

std::string Sha256::hex() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), digest, &length);
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < length; ++i) {
    out.push_back(digits[digest[i] >> 4]);
    out.push_back(digits[digest[i] & 15]);
  }
  return out;
}

std::string sha256_hex(std::string_view bytes) {
  Sha256 h;
  h.update(bytes);
  return h.hex();
}

std::string sha256_file(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("cannot open {} for hashing", file.string());
  Sha256 h;
  // 64 KiB, not zero-filled: hashing is bound by SHA-256 itself beyond that, and many small files (configs,
  // tokenizers, the fuzzers' inputs) are hashed, each of which paid for a fresh zeroed 1 MiB buffer before.
  constexpr size_t kChunk = size_t(1) << 16;
  std::unique_ptr<char[]> buffer(new char[kChunk]);
  while (in) {
    in.read(buffer.get(), static_cast<std::streamsize>(kChunk));
    h.update(buffer.get(), static_cast<size_t>(in.gcount()));
  }
  return h.hex();
}

}  // namespace strata
