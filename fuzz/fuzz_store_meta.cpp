// An activation store's meta.json on arbitrary bytes, beside three valid shards: shard names, row and
// width counts are checked against the shards before any read; then every row is read.
#include <torch/torch.h>

#include "core/error.hpp"
#include "fuzz_common.hpp"
#include "io/activation_store.hpp"

namespace {
const char* kBase = "m_layer1_activations";
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  strata::io::ActivationStoreWriter writer(strata::fuzz::scratch(), kBase, 4, torch::kFloat32, 64);
  strata::io::RowIndex index;
  for (auto* column : {&index.doc_id, &index.seq_id, &index.token_index, &index.byte_begin, &index.byte_end})
    *column = torch::arange(10, torch::kInt64);
  writer.append(torch::arange(40, torch::kFloat32).reshape({10, 4}), index);
  writer.finish(nlohmann::json::object());
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto meta = strata::fuzz::scratch() / (std::string(kBase) + ".meta.json");
  strata::fuzz::write_file(meta, {reinterpret_cast<const char*>(data), size});
  try {
    const auto store = strata::io::ActivationStore::open(meta);
    store.read_rows(0, store.rows());
    store.index_column("doc_id");
  } catch (const strata::Error&) {
  }
  return 0;
}
