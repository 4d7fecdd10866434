#define BOOST_TEST_MODULE io_checkpoint
#include <boost/test/unit_test.hpp>

#include <cstdlib>
#include <fstream>

#include "core/error.hpp"
#include "io/checkpoint.hpp"
#include "io/safetensors.hpp"
#include "test_helpers.hpp"

// Bad input to the safetensors reader and checkpoint resolution: each case must be a strata::Error
// whose message names the defect, never a crash or a LibTorch error.

using namespace strata;
namespace fs = std::filesystem;

namespace {

// A safetensors file from a raw header text and data bytes (header padded to a multiple of 8).
void write_raw(const fs::path& file, std::string header, const std::string& data, int64_t declared_length = -1) {
  while (header.size() % 8) header.push_back(' ');
  const uint64_t length = declared_length >= 0 ? static_cast<uint64_t>(declared_length) : header.size();
  std::ofstream out(file, std::ios::binary);
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((length >> (8 * i)) & 0xff));
  out << header << data;
}

void write_text(const fs::path& file, const std::string& text) { std::ofstream(file) << text; }


std::string floats(int n) { return std::string(static_cast<size_t>(4 * n), '\0'); }

struct EnvVar {  // sets an environment variable for one scope
  std::string name;
  std::optional<std::string> old;
  EnvVar(std::string n, const std::string& value) : name(std::move(n)) {
    if (const char* v = std::getenv(name.c_str())) old = v;
    ::setenv(name.c_str(), value.c_str(), 1);
  }
  ~EnvVar() { old ? (void)::setenv(name.c_str(), old->c_str(), 1) : (void)::unsetenv(name.c_str()); }
};

}  // namespace

BOOST_AUTO_TEST_CASE(file_shorter_than_the_length_prefix) {
  auto dir = testing::fresh_dir("io_ckpt_short");
  write_text(dir / "a.safetensors", "abc");
  testing::expect_error([&] { io::SafetensorsFile f(dir / "a.safetensors"); }, {"a.safetensors", "truncated"});
}

BOOST_AUTO_TEST_CASE(header_length_past_end_of_file) {
  auto dir = testing::fresh_dir("io_ckpt_header_past_eof");
  write_raw(dir / "a.safetensors", R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", floats(2), 4096);
  testing::expect_error([&] { io::SafetensorsFile f(dir / "a.safetensors"); }, {"header length 4096", "past the end"});
}

BOOST_AUTO_TEST_CASE(huge_header_length) {
  auto dir = testing::fresh_dir("io_ckpt_huge_header");
  write_raw(dir / "a.safetensors", "{}", "", int64_t{1} << 40);
  testing::expect_error([&] { io::SafetensorsFile f(dir / "a.safetensors"); }, {"exceeds"});
}

BOOST_AUTO_TEST_CASE(truncated_data_section) {
  auto dir = testing::fresh_dir("io_ckpt_truncated");
  io::save_safetensors(dir / "full.safetensors", {{"a", torch::randn({4, 4})}, {"b", torch::randn({8})}});
  const auto size = fs::file_size(dir / "full.safetensors");
  fs::copy_file(dir / "full.safetensors", dir / "cut.safetensors");
  fs::resize_file(dir / "cut.safetensors", size - 10);
  testing::expect_error([&] { io::SafetensorsFile f(dir / "cut.safetensors"); }, {"cut.safetensors", "truncated"});
}

BOOST_AUTO_TEST_CASE(header_is_not_json) {
  auto dir = testing::fresh_dir("io_ckpt_bad_json");
  write_raw(dir / "a.safetensors", R"({"x": {"dtype": "F32", )", floats(2));
  testing::expect_error([&] { io::SafetensorsFile f(dir / "a.safetensors"); }, {"not valid JSON"});
}

BOOST_AUTO_TEST_CASE(overlapping_offsets) {
  auto dir = testing::fresh_dir("io_ckpt_overlap");
  write_raw(dir / "a.safetensors",
            R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
            floats(6));
  testing::expect_error([&] { io::SafetensorsFile f(dir / "a.safetensors"); }, {"overlap"});
}

BOOST_AUTO_TEST_CASE(shape_and_byte_length_disagree) {
  auto dir = testing::fresh_dir("io_ckpt_length");
  write_raw(dir / "a.safetensors", R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", floats(3));
  testing::expect_error([&] { io::SafetensorsFile f(dir / "a.safetensors"); }, {"'a'", "12 bytes", "need 16"});
}

BOOST_AUTO_TEST_CASE(dtype_and_byte_length_disagree) {
  auto dir = testing::fresh_dir("io_ckpt_dtype_length");
  // 4 elements of BF16 are 8 bytes, not 16.
  write_raw(dir / "a.safetensors", R"({"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,16]}})", floats(4));
  testing::expect_error([&] { io::SafetensorsFile f(dir / "a.safetensors"); }, {"BF16", "need 8"});
}

BOOST_AUTO_TEST_CASE(unknown_dtype_and_bad_fields) {
  auto dir = testing::fresh_dir("io_ckpt_dtype");
  write_raw(dir / "a.safetensors", R"({"a":{"dtype":"F8_E4M3X","shape":[4],"data_offsets":[0,4]}})", floats(1));
  testing::expect_error([&] { io::SafetensorsFile f(dir / "a.safetensors"); }, {"unsupported dtype"});
  write_raw(dir / "b.safetensors", R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", floats(1));
  testing::expect_error([&] { io::SafetensorsFile f(dir / "b.safetensors"); }, {"negative"});
  write_raw(dir / "c.safetensors", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", floats(1));
  testing::expect_error([&] { io::SafetensorsFile f(dir / "c.safetensors"); }, {"reversed"});
  write_raw(dir / "d.safetensors", R"({"a":{"dtype":"F32","shape":[1]}})", floats(1));
  testing::expect_error([&] { io::SafetensorsFile f(dir / "d.safetensors"); }, {"data_offsets"});
}

BOOST_AUTO_TEST_CASE(metadata_skipped_and_zero_dim_tensors_read) {
  auto dir = testing::fresh_dir("io_ckpt_meta");
  std::string data(4, '\0');
  const float value = 2.5f;
  std::memcpy(data.data(), &value, 4);
  write_raw(dir / "a.safetensors",
            R"({"__metadata__":{"format":"pt"},"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})", data);
  io::SafetensorsFile f(dir / "a.safetensors");
  BOOST_TEST(f.names() == std::vector<std::string>{"s"});
  BOOST_TEST(f.load("s").dim() == 0);
  BOOST_TEST(f.load("s").item<float>() == 2.5f);
}

BOOST_AUTO_TEST_CASE(sharded_checkpoint_reads_through_the_index) {
  auto dir = testing::fresh_dir("io_ckpt_sharded");
  torch::Tensor a = torch::randn({3, 2}), b = torch::randn({5}).to(torch::kBFloat16);
  io::save_safetensors(dir / "model-00001-of-00002.safetensors", {{"a", a}});
  io::save_safetensors(dir / "model-00002-of-00002.safetensors", {{"b", b}});
  write_text(dir / "model.safetensors.index.json",
             R"({"metadata":{"total_size":34},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})");
  io::CheckpointWeights weights(dir);
  BOOST_TEST(weights.names() == (std::vector<std::string>{"a", "b"}));
  BOOST_TEST(weights.files().size() == 2u);
  BOOST_TEST(torch::equal(weights.load("a"), a));
  BOOST_TEST(torch::equal(weights.load("b", torch::kFloat32), b.to(torch::kFloat32)));  // exact upcast
}

BOOST_AUTO_TEST_CASE(shard_named_in_index_but_missing) {
  auto dir = testing::fresh_dir("io_ckpt_missing_shard");
  io::save_safetensors(dir / "model-00001-of-00002.safetensors", {{"a", torch::randn({2})}});
  write_text(dir / "model.safetensors.index.json",
             R"({"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})");
  testing::expect_error([&] { io::CheckpointWeights w(dir); }, {"model-00002-of-00002.safetensors", "missing", "'b'"});
}

BOOST_AUTO_TEST_CASE(index_names_a_tensor_its_shard_lacks) {
  auto dir = testing::fresh_dir("io_ckpt_index_lies");
  io::save_safetensors(dir / "model-00001-of-00001.safetensors", {{"a", torch::randn({2})}});
  write_text(dir / "model.safetensors.index.json",
             R"({"weight_map":{"a":"model-00001-of-00001.safetensors","zz":"model-00001-of-00001.safetensors"}})");
  testing::expect_error([&] { io::CheckpointWeights w(dir); }, {"'zz'", "does not hold"});
  write_text(dir / "model.safetensors.index.json", R"({"weight_map":{"a":"../elsewhere.safetensors"}})");
  testing::expect_error([&] { io::CheckpointWeights w(dir); }, {"not a plain file name"});
}

BOOST_AUTO_TEST_CASE(pickle_checkpoints_are_refused) {
  auto dir = testing::fresh_dir("io_ckpt_pickle");
  write_text(dir / "config.json", R"({"model_type":"gpt2"})");
  write_text(dir / "pytorch_model.bin", "PK\x03\x04 not really a zip");
  testing::expect_error([&] { io::CheckpointWeights w(dir); }, {"pytorch_model.bin", "pickle", "arbitrary code", "safetensors"});
  testing::expect_error([&] { io::resolve_checkpoint((dir / "pytorch_model.bin").string()); }, {"pickle", "arbitrary code"});
  write_text(dir / "model.ckpt", "x");
  fs::remove(dir / "pytorch_model.bin");
  testing::expect_error([&] { io::CheckpointWeights w(dir); }, {"model.ckpt", "pickle"});
}

BOOST_AUTO_TEST_CASE(directory_without_weights_or_config) {
  auto dir = testing::fresh_dir("io_ckpt_empty");
  testing::expect_error([&] { io::CheckpointWeights w(dir); }, {"no model.safetensors"});
  testing::expect_error([&] { io::resolve_checkpoint(dir.string()); }, {"no config.json"});
  testing::expect_error([&] { io::resolve_checkpoint((dir / "nope").string()); }, {"not found"});
  testing::expect_error([&] { io::resolve_checkpoint("EleutherAI/pythia-1.4b"); }, {"hf://EleutherAI/pythia-1.4b"});
}

BOOST_AUTO_TEST_CASE(hf_cache_resolution) {
  auto cache = testing::fresh_dir("io_ckpt_hf_cache");
  const std::string hash = "0123456789abcdef0123456789abcdef01234567", other = "fedcba9876543210fedcba9876543210fedcba98";
  auto repo = cache / "models--EleutherAI--pythia-tiny";
  fs::create_directories(repo / "refs");
  fs::create_directories(repo / "snapshots" / hash);
  fs::create_directories(repo / "snapshots" / other);
  write_text(repo / "refs" / "main", hash + "\n");
  write_text(repo / "refs" / "step1000", other);
  write_text(repo / "snapshots" / hash / "config.json", "{}");
  write_text(repo / "snapshots" / other / "config.json", "{}");
  EnvVar hub("HF_HUB_CACHE", cache.string());
  BOOST_TEST(io::resolve_checkpoint("hf://EleutherAI/pythia-tiny") == repo / "snapshots" / hash);
  BOOST_TEST(io::resolve_checkpoint("hf://EleutherAI/pythia-tiny@main") == repo / "snapshots" / hash);
  BOOST_TEST(io::resolve_checkpoint("hf://EleutherAI/pythia-tiny@step1000") == repo / "snapshots" / other);
  BOOST_TEST(io::resolve_checkpoint("hf://EleutherAI/pythia-tiny@" + other) == repo / "snapshots" / other);

  testing::expect_error([&] { io::resolve_checkpoint("hf://EleutherAI/pythia-huge"); },
               {"not in the offline Hugging Face cache", cache.string(), "models--EleutherAI--pythia-huge", "HF_HUB_CACHE"});
  testing::expect_error([&] { io::resolve_checkpoint("hf://EleutherAI/pythia-tiny@v9"); },
               {"revision 'v9'", (repo / "refs" / "v9").string(), (repo / "snapshots" / "v9").string()});
  testing::expect_error([&] { io::resolve_checkpoint("hf://a/b/c"); }, {"hf://org/name"});
}

BOOST_AUTO_TEST_CASE(hf_home_fallback) {
  auto home = testing::fresh_dir("io_ckpt_hf_home");
  auto snapshot = home / "hub" / "models--gpt2" / "snapshots" / "abc";
  fs::create_directories(snapshot);
  fs::create_directories(home / "hub" / "models--gpt2" / "refs");
  write_text(home / "hub" / "models--gpt2" / "refs" / "main", "abc");
  write_text(snapshot / "config.json", "{}");
  ::unsetenv("HF_HUB_CACHE");
  EnvVar hf_home("HF_HOME", home.string());
  BOOST_TEST(io::resolve_checkpoint("hf://gpt2") == snapshot);
}
