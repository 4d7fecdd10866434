// The numerics backend: which BLAS LibTorch really calls, with which kernel core and how many threads.
// Debian's libtorch calls the system libblas.so.3; OpenBLAS 0.3.21 misdetects recent Intel CPUs as
// Prescott (SSE3, ~5x slower) and only honours OPENBLAS_CORETYPE when it is set before the process
// starts, so strata re-executes itself with the right value when needed.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include <torch/types.h>

namespace strata::runtime {

struct BlasInfo {
  std::string library;    // resolved path of the libblas in use
  std::string core;       // openblas_get_corename(), or "n/a" for other BLAS
  std::string config;     // openblas_get_config(), when available
  std::string cpu_model;  // /proc/cpuinfo model name
  bool avx512 = false, avx2 = false;
};

BlasInfo blas_info();

// Call first thing in main(). If OpenBLAS runs a core below what the CPU supports and
// OPENBLAS_CORETYPE is unset, re-executes argv with it set (SkylakeX for AVX-512, Haswell for AVX2).
// Returns normally when no re-exec is needed. STRATA_NO_REEXEC=1 disables it.
void ensure_blas_core(int argc, char** argv);

// threads <= 0 means all cores. Applies to LibTorch intra-op threads and OpenBLAS.
void set_threads(int threads);
int threads();
// How many threads strata's own at::parallel_for loops really run on (ATen's header template splits work only
// where the including code is compiled with OpenMP; a GCC build without it ran every such loop serially).
int parallel_loop_threads();

// Parses "cpu" or "cuda[:N]"; cuda on a CPU-only LibTorch is a clear error.
torch::Device parse_device(const std::string& spec);

// Which implementation runs the heavy numerics (SAE training, attention):
//   native   hand-written CPU kernels working on host pointers (x86 SIMD, per-head attention); CPU only
//   portable LibTorch ops only, so the same code runs on any device (CUDA, CPU)
// Default: native on the CPU, portable on any other device. STRATA_KERNELS=native|portable overrides it
// (tests and comparisons run the portable path on the CPU); native on a non-CPU device is an error.
enum class KernelPath { native, portable };
KernelPath kernel_path(const torch::Device& device);
const char* to_string(KernelPath path);

// Waits for the work queued on `device` (CUDA kernels run asynchronously); a no-op on the CPU. Timings
// of device work call it before reading the clock.
void synchronize(const torch::Device& device);

// Deterministic algorithms on, fixed thread count; called by every step. Also sets
// CUBLAS_WORKSPACE_CONFIG=:4096:8 (unless the user set it) while no CUDA call has happened yet: cuBLAS
// reads it once, when its first handle is created, and without it cuBLAS GEMMs may pick
// non-deterministic reduction splits.
void apply_determinism();
// The determinism settings in force, for the manifest: deterministic_algorithms, cublas_workspace_config.
nlohmann::json determinism_json();

// Environment description for the manifest: OS, CPU, compiler, LibTorch, BLAS, threads.
nlohmann::json environment_json();

// The build this binary was made from: its git commit, with "+modified" when tracked files differed
// from that commit at build time. Two binaries with the same id are taken to compute the same results.
std::string build_id();

// Hands the allocator's free pages back to the kernel. glibc's heap keeps freed blocks of a loop whose
// tensor sizes vary from step to step (batch shapes) resident and fragmented, so without this the RSS of
// a long capture grows with the tokens processed although live memory stays flat. Costs a few page
// faults per call: call it once per batch, not per op.
void release_free_memory();

// The process's CPU time and minor page faults so far, all threads, and its peak RSS (the kernel's high-water
// mark, which writing 5 to /proc/self/clear_refs resets) (getrusage(RUSAGE_SELF)).
struct ProcessUsage {
  double user_seconds = 0, system_seconds = 0;
  int64_t minor_faults = 0, peak_rss_bytes = 0;
};
ProcessUsage process_usage();

// While alive, large allocations come from the heap and freed memory stays with the process (glibc's
// M_MMAP_THRESHOLD and M_TRIM_THRESHOLD raised to 2 GiB), so a loop that allocates and frees the same big
// tensors (the transfer step's [batch, d_sae] codes, fitting rows, mapped rows) reuses pages instead of mapping,
// faulting in and zeroing fresh ones every time: 1.3x faster on `bench transfer` at d_sae 8192 for ~30 % more
// peak RSS (bench/RESULTS.md). Memory handed back is dear to take again where the kernel runs in a VM that
// reports free pages to its host: 2-5 s per GB faulted in again, against 0.03 s to write a GB (measured on the
// Firecracker machines here), so do not call release_free_memory() inside the scope. On destruction the
// defaults' thresholds come back and free memory is returned.
class KeepFreedMemory {
 public:
  KeepFreedMemory();
  ~KeepFreedMemory();
  KeepFreedMemory(const KeepFreedMemory&) = delete;
  KeepFreedMemory& operator=(const KeepFreedMemory&) = delete;
};

}  // namespace strata::runtime
