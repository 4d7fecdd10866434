// Shuffled training batches from a streaming activation store, with memory bounded by one shard plus
// the shuffle buffer. Per epoch: the shard order is shuffled; each shard's training rows enter in a
// shuffled order; the buffer is filled to capacity, shuffled, and its first half leaves as batches.
// The order is a pure function of (seed, epoch), so the data cursor is just (epoch, batches taken): a
// resumed run replays the bookkeeping on row ids only, then loads the buffer's rows directly.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <random>
#include <vector>

#include "core/random.hpp"
#include "io/activation_store.hpp"

namespace strata::sae {

class BatchStream {
 public:
  // `train` holds one [begin, end) range per shard (empty ranges allowed), all within that shard.
  BatchStream(const io::ActivationStore& store, std::vector<std::pair<int64_t, int64_t>> train, int64_t batch_size,
              int64_t buffer_rows, uint64_t seed);

  int64_t batches_per_epoch() const { return total_rows_ / batch_; }
  int64_t batch_size() const { return batch_; }
  // Positions the stream at batch `skip` of `epoch` (0 = its start).
  void begin_epoch(int64_t epoch, int64_t skip = 0);
  // The next batch [batch_size, dim] fp32, or false at the end of the epoch (the last total % batch_size
  // rows of every epoch are dropped; which ones changes from epoch to epoch).
  bool next(torch::Tensor& batch);

 private:
  bool next_ids(std::vector<int64_t>& ids, bool materialize);  // the id-level state machine
  void refill(bool materialize);
  void load_shard_data();

  const io::ActivationStore& store_;
  std::vector<std::pair<int64_t, int64_t>> train_;
  int64_t batch_, capacity_, total_rows_ = 0;
  uint64_t seed_;

  std::mt19937_64 rng_;
  std::vector<size_t> shard_order_;
  size_t shard_pos_ = 0;            // next position in shard_order_ to open
  std::vector<int64_t> incoming_;   // shuffled ids of the open shard
  size_t incoming_pos_ = 0;
  int64_t open_shard_ = -1;         // shard whose rows are in shard_data_, or -1
  torch::Tensor shard_data_;        // fp32 rows of the open shard's training range
  std::vector<int64_t> buffer_ids_, buffer_slots_;  // buffered rows in their current order, and their slots
  std::vector<int64_t> free_slots_;
  torch::Tensor slots_;             // fp32 [capacity, dim]
  size_t emit_pos_ = 0, emit_end_ = 0;  // batches leave from buffer positions [emit_pos_, emit_end_)
};


}  // namespace strata::sae
