#define BOOST_TEST_MODULE core
#include <boost/test/unit_test.hpp>

#include <fstream>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/hash.hpp"
#include "test_helpers.hpp"

using namespace strata;

BOOST_AUTO_TEST_CASE(sha256_known_vector) {
  BOOST_TEST(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

BOOST_AUTO_TEST_CASE(atomic_write_leaves_nothing_on_failure) {
  auto dir = testing::fresh_dir("core_atomic");
  BOOST_CHECK_THROW(atomic_write(dir / "out.bin",
                                 [](const std::filesystem::path& tmp) {
                                   std::ofstream(tmp) << "partial";
                                   throw Error("simulated crash");
                                 }),
                    Error);
  BOOST_TEST(std::distance(std::filesystem::directory_iterator(dir), std::filesystem::directory_iterator()) == 0);
}
