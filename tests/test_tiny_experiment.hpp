// The tiny experiment of the pipeline suites: two tiny checkpoints (test_capture_fixture.hpp, written as
// ckpt-gpt2 and ckpt-neox beside the TOML file), three layers each, a few seconds end to end.
#pragma once

namespace strata::testing {

inline constexpr const char* kTinyExperiment = R"(
[experiment]
name = "tiny"
seed = 3
threads = 1

[dataset]
spec = "synthetic"
num_documents = 48
seq_len = 48
batch_size = 8
num_batches = 4

[[models]]
name = "gpt2"
checkpoint = "ckpt-gpt2"
layers = [1, 2, 4]

[[models]]
name = "neox"
checkpoint = "ckpt-neox"
depths = [0.25, 0.5, 1.0]

[sae]
expansion = 4
lr = 1e-3
epochs = 3
min_epochs = 1
batch_size = 128
lr_warmup_steps = 5
l1_warmup_steps = 5
b_dec_init_rows = 512
shuffle_buffer_rows = 512
dead_window_tokens = 2000
resample_interval_steps = 0
checkpoint_interval_steps = 0

[[sae.overrides]]
max_depth = 0.34
l1 = 1.5e-4

[transfer]
top_k = 16
cka_permutations = 50
cka_max_tokens = 256
bootstrap = 20
max_fit_tokens = 1024
max_eval_tokens = 512
batch_size = 256
ceiling = true
)";

}  // namespace strata::testing
