#include "sae/batch_stream.hpp"

#include <torch/torch.h>

#include "core/error.hpp"

namespace strata::sae {

BatchStream::BatchStream(const io::ActivationStore& store, std::vector<std::pair<int64_t, int64_t>> train,
                         int64_t batch_size, int64_t buffer_rows, uint64_t seed)
    : store_(store), train_(std::move(train)), batch_(batch_size), seed_(seed) {
  if (train_.size() != store_.num_shards()) fail("batch stream: one training range per shard is required");
  for (const auto& [b, e] : train_) total_rows_ += e - b;
  if (batch_ <= 0) fail("batch size must be positive (got {})", batch_);
  if (total_rows_ < batch_) fail("batch stream: {} training rows are fewer than one batch of {}", total_rows_, batch_);
  capacity_ = std::max(buffer_rows, 2 * batch_);
  capacity_ = std::min(capacity_, std::max(total_rows_, 2 * batch_));
}

void BatchStream::begin_epoch(int64_t epoch, int64_t skip) {
  rng_.seed(derive(seed_, "sae/batch-order", epoch));  // one independent order per epoch
  shard_order_.clear();
  for (size_t s = 0; s < train_.size(); ++s)
    if (train_[s].second > train_[s].first) shard_order_.push_back(s);
  shuffle(shard_order_, rng_);
  shard_pos_ = 0;
  incoming_.clear();
  incoming_pos_ = 0;
  open_shard_ = -1;
  shard_data_ = torch::Tensor();
  buffer_ids_.clear();
  buffer_slots_.clear();
  free_slots_.clear();
  for (int64_t s = capacity_ - 1; s >= 0; --s) free_slots_.push_back(s);
  emit_pos_ = emit_end_ = 0;
  if (!slots_.defined()) slots_ = torch::empty({capacity_, store_.dim()});

  std::vector<int64_t> ids;
  for (int64_t i = 0; i < skip; ++i)
    if (!next_ids(ids, /*materialize=*/false)) fail("data cursor: epoch {} has fewer than {} batches", epoch, skip);
  if (skip > 0) {
    // Bring the data in line with the replayed bookkeeping: the open shard and every buffered row.
    if (open_shard_ >= 0 && incoming_pos_ < incoming_.size()) load_shard_data();
    if (!buffer_ids_.empty()) {
      auto ids_t = torch::tensor(buffer_ids_, torch::kInt64);
      auto slots_t = torch::tensor(buffer_slots_, torch::kInt64);
      slots_.index_copy_(0, slots_t, store_.read_rows(ids_t));
    }
  }
}

void BatchStream::load_shard_data() {
  auto [b, e] = train_[size_t(open_shard_)];
  shard_data_ = store_.read_rows(b, e);
}

void BatchStream::refill(bool materialize) {
  while (int64_t(buffer_ids_.size()) < capacity_) {
    if (incoming_pos_ == incoming_.size()) {
      shard_data_ = torch::Tensor();
      if (shard_pos_ == shard_order_.size()) break;
      open_shard_ = int64_t(shard_order_[shard_pos_++]);
      auto [b, e] = train_[size_t(open_shard_)];
      incoming_.resize(size_t(e - b));
      for (int64_t i = 0; i < e - b; ++i) incoming_[size_t(i)] = b + i;
      shuffle(incoming_, rng_);
      incoming_pos_ = 0;
      if (materialize) load_shard_data();
      continue;
    }
    size_t n = std::min(size_t(capacity_) - buffer_ids_.size(), incoming_.size() - incoming_pos_);
    std::vector<int64_t> slots(n), local(n);
    const int64_t base = train_[size_t(open_shard_)].first;
    for (size_t i = 0; i < n; ++i) {
      slots[i] = free_slots_.back();
      free_slots_.pop_back();
      int64_t id = incoming_[incoming_pos_ + i];
      local[i] = id - base;
      buffer_ids_.push_back(id);
      buffer_slots_.push_back(slots[i]);
    }
    incoming_pos_ += n;
    if (materialize)
      slots_.index_copy_(0, torch::tensor(slots, torch::kInt64),
                         shard_data_.index_select(0, torch::tensor(local, torch::kInt64)));
  }
}

bool BatchStream::next_ids(std::vector<int64_t>& slots, bool materialize) {
  if (emit_pos_ + size_t(batch_) > emit_end_) {
    // The window is used up: free the emitted rows, top the buffer up, reshuffle, open a new window.
    for (size_t i = 0; i < emit_pos_; ++i) free_slots_.push_back(buffer_slots_[i]);
    buffer_ids_.erase(buffer_ids_.begin(), buffer_ids_.begin() + ptrdiff_t(emit_pos_));
    buffer_slots_.erase(buffer_slots_.begin(), buffer_slots_.begin() + ptrdiff_t(emit_pos_));
    emit_pos_ = emit_end_ = 0;
    refill(materialize);
    const size_t size = buffer_ids_.size();
    if (size < size_t(batch_)) return false;
    std::vector<size_t> perm(size);
    for (size_t i = 0; i < size; ++i) perm[i] = i;
    shuffle(perm, rng_);
    std::vector<int64_t> ids(size), sl(size);
    for (size_t i = 0; i < size; ++i) ids[i] = buffer_ids_[perm[i]], sl[i] = buffer_slots_[perm[i]];
    buffer_ids_.swap(ids);
    buffer_slots_.swap(sl);
    const bool exhausted = shard_pos_ == shard_order_.size() && incoming_pos_ == incoming_.size();
    emit_end_ = exhausted ? size - size % size_t(batch_)
                          : std::max<size_t>(size_t(batch_), size_t(capacity_ / 2 / batch_ * batch_));
  }
  slots.assign(buffer_slots_.begin() + ptrdiff_t(emit_pos_), buffer_slots_.begin() + ptrdiff_t(emit_pos_ + batch_));
  emit_pos_ += size_t(batch_);
  return true;
}

bool BatchStream::next(torch::Tensor& batch) {
  std::vector<int64_t> slots;
  if (!next_ids(slots, /*materialize=*/true)) return false;
  batch = slots_.index_select(0, torch::tensor(slots, torch::kInt64));
  return true;
}

}  // namespace strata::sae
