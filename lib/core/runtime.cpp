#include "core/runtime.hpp"

#include <dlfcn.h>
#include <link.h>
#include <malloc.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <mutex>
#include <set>
#include <thread>

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "core/error.hpp"
#include "strata_build_info.hpp"

namespace strata::runtime {
namespace {

template <class Fn>
Fn find_symbol(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, name));
}

std::string read_cpu_field(const std::string& key) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) {
      auto pos = line.find(':');
      if (pos != std::string::npos) return line.substr(pos + 2);
    }
  }
  return "";
}

std::string library_containing(const char* symbol) {
  void* address = dlsym(RTLD_DEFAULT, symbol);
  if (!address) return "";
  Dl_info info;
  if (dladdr(address, &info) && info.dli_fname) {
    std::error_code ec;
    auto resolved = std::filesystem::canonical(info.dli_fname, ec);
    return ec ? std::string(info.dli_fname) : resolved.string();
  }
  return "";
}

// 0 = SSE only, 1 = AVX, 2 = AVX2, 3 = AVX-512. Unknown names count as capable (never downgrade).
int core_level(const std::string& core) {
  static const std::pair<const char*, int> levels[] = {
      {"Prescott", 0}, {"Core2", 0},       {"Penryn", 0},    {"Dunnington", 0}, {"Nehalem", 0},
      {"Atom", 0},     {"Katmai", 0},      {"Coppermine", 0}, {"Northwood", 0},  {"Banias", 0},
      {"Sandybridge", 1}, {"Bulldozer", 1}, {"Piledriver", 1}, {"Steamroller", 1}, {"Excavator", 1},
      {"Haswell", 2},  {"Zen", 2},         {"SkylakeX", 3},  {"Cooperlake", 3}, {"SapphireRapids", 3}};
  for (const auto& [name, level] : levels)
    if (core == name) return level;
  return 3;
}

std::string env_or_empty(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

}  // namespace

BlasInfo blas_info() {
  BlasInfo info;
  info.library = library_containing("sgemm_");
  using NameFn = char* (*)();
  if (auto corename = find_symbol<NameFn>("openblas_get_corename")) info.core = corename();
  else info.core = "n/a";
  if (auto config = find_symbol<NameFn>("openblas_get_config")) info.config = config();
  std::string flags = read_cpu_field("flags");
  info.avx512 = flags.find("avx512f") != std::string::npos;
  info.avx2 = flags.find("avx2") != std::string::npos;
  info.cpu_model = read_cpu_field("model name");
  return info;
}

void ensure_blas_core(int /*argc*/, char** argv) {
  // STRATA_BLAS_REEXEC marks the child, so a core that OpenBLAS refuses cannot cause a loop.
  if (std::getenv("STRATA_NO_REEXEC") || std::getenv("STRATA_BLAS_REEXEC")) return;
  BlasInfo info = blas_info();
  if (info.core == "n/a") return;
  int cpu_level = info.avx512 ? 3 : info.avx2 ? 2 : 0;
  if (core_level(info.core) >= cpu_level) return;
  const char* target = cpu_level == 3 ? "SkylakeX" : "Haswell";
  if (const char* previous = std::getenv("OPENBLAS_CORETYPE")) setenv("STRATA_OPENBLAS_CORETYPE_WAS", previous, 1);
  setenv("OPENBLAS_CORETYPE", target, 1);
  setenv("STRATA_BLAS_REEXEC", "1", 1);
  execv("/proc/self/exe", argv);
  // exec failed: carry on with the slower core rather than not at all.
}

void set_threads(int n) {
  if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(n);
  using SetFn = void (*)(int);
  if (auto openblas_set = find_symbol<SetFn>("openblas_set_num_threads")) openblas_set(n);
}

int threads() { return torch::get_num_threads(); }

int parallel_loop_threads() {
  std::mutex mutex;
  std::set<std::thread::id> seen;
  // One task per thread, each long enough that no thread can finish its own and take another's.
  at::parallel_for(0, threads(), 1, [&](int64_t, int64_t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::lock_guard<std::mutex> lock(mutex);
    seen.insert(std::this_thread::get_id());
  });
  return int(seen.size());
}

torch::Device parse_device(const std::string& spec) {
  if (spec == "cpu") return torch::Device(torch::kCPU);
  if (spec.rfind("cuda", 0) == 0) {
    int index = 0;
    if (spec.size() > 4) {
      if (spec[4] != ':') fail("device '{}' is not valid: use cpu or cuda:N", spec);
      try {
        index = std::stoi(spec.substr(5));
      } catch (...) {
        fail("device '{}' is not valid: use cpu or cuda:N", spec);
      }
    }
    if (!torch::cuda::is_available())
      fail("device '{}' requested, but this LibTorch has no CUDA support (or no GPU is visible). "
           "Use --device cpu, or rebuild strata against a CUDA-enabled LibTorch (see README, 'GPU').",
           spec);
    if (index >= static_cast<int>(torch::cuda::device_count()))
      fail("device '{}' requested, but only {} CUDA device(s) are visible", spec, torch::cuda::device_count());
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  fail("device '{}' is not valid: use cpu or cuda:N", spec);
}

KernelPath kernel_path(const torch::Device& device) {
  const std::string choice = env_or_empty("STRATA_KERNELS");
  if (choice.empty()) return device.is_cpu() ? KernelPath::native : KernelPath::portable;
  if (choice == "portable") return KernelPath::portable;
  if (choice == "native") {
    if (!device.is_cpu())
      fail("STRATA_KERNELS=native: the native kernels run on the CPU only, but the device is {}; unset "
           "STRATA_KERNELS or set it to portable",
           device.str());
    return KernelPath::native;
  }
  fail("STRATA_KERNELS='{}' is not valid: use native (CPU kernels) or portable (LibTorch ops, any device), or "
       "unset it",
       choice);
}

void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

const char* to_string(KernelPath path) { return path == KernelPath::native ? "native" : "portable"; }

namespace {
constexpr const char* kCublasWorkspaceConfig = ":4096:8";
}

void apply_determinism() {
  // Before any CUDA call: cuBLAS reads the variable when it creates its first handle. A value the user
  // set is kept (it is recorded either way).
  setenv("CUBLAS_WORKSPACE_CONFIG", kCublasWorkspaceConfig, /*overwrite=*/0);
  // Deterministic algorithms; warn-only so that ops without a deterministic variant still run.
  at::globalContext().setDeterministicAlgorithms(true, /*warn_only=*/true);
}

nlohmann::json determinism_json() {
  return {{"deterministic_algorithms", at::globalContext().deterministicAlgorithms()},
          {"cublas_workspace_config", env_or_empty("CUBLAS_WORKSPACE_CONFIG")}};
}

nlohmann::json environment_json() {
  BlasInfo blas = blas_info();
  utsname un{};
  uname(&un);
  std::string os = std::string(un.sysname) + " " + un.release;
  std::ifstream release("/etc/os-release");
  std::string line;
  while (std::getline(release, line))
    if (line.rfind("PRETTY_NAME=", 0) == 0) os = line.substr(13, line.size() - 14) + " (" + os + ")";
  return {
      {"strata_version", STRATA_VERSION},
      {"build_commit", STRATA_BUILD_COMMIT},
      {"build_dirty", STRATA_BUILD_DIRTY},
      {"compiler", STRATA_COMPILER},
      {"libtorch_version", TORCH_VERSION},
      {"os", os},
      {"cpu_model", blas.cpu_model},
      {"hardware_threads", std::thread::hardware_concurrency()},
      {"threads", threads()},
      {"blas_library", blas.library},
      {"blas_core", blas.core},
      {"blas_config", blas.config},
      {"openblas_coretype_env", env_or_empty("OPENBLAS_CORETYPE")},
      {"openblas_coretype_before_reexec", env_or_empty("STRATA_OPENBLAS_CORETYPE_WAS")},
      {"strata_kernels_env", env_or_empty("STRATA_KERNELS")},
  };
}

std::string build_id() {
  return std::string(STRATA_BUILD_COMMIT) + (std::string_view(STRATA_BUILD_DIRTY) == "true" ? "+modified" : "");
}

void release_free_memory() { ::malloc_trim(0); }

ProcessUsage process_usage() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return double(t.tv_sec) + 1e-6 * double(t.tv_usec); };
  return {seconds(usage.ru_utime), seconds(usage.ru_stime), int64_t(usage.ru_minflt),
          int64_t(usage.ru_maxrss) * 1024};  // Linux: ru_maxrss in kilobytes
}

namespace {
constexpr int kKeepThreshold = std::numeric_limits<int>::max();  // mallopt takes an int: 2 GiB - 1
// glibc's defaults (malloc(3)): 128 KiB for both; setting them turns off the dynamic mmap threshold, which
// only matters for allocations between 128 KiB and 32 MiB.
constexpr int kDefaultMmapThreshold = 128 * 1024, kDefaultTrimThreshold = 128 * 1024;
}  // namespace

KeepFreedMemory::KeepFreedMemory() {
  ::mallopt(M_MMAP_THRESHOLD, kKeepThreshold);
  ::mallopt(M_TRIM_THRESHOLD, kKeepThreshold);
}

KeepFreedMemory::~KeepFreedMemory() {
  ::mallopt(M_MMAP_THRESHOLD, kDefaultMmapThreshold);
  ::mallopt(M_TRIM_THRESHOLD, kDefaultTrimThreshold);
  ::malloc_trim(0);
}

}  // namespace strata::runtime
