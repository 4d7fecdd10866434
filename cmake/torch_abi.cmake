# LibTorch's C++ ABI must be the one of the system libraries strata links: Debian builds fmt, spdlog, Boost
# and ICU with the C++11 ABI. Debian's libtorch and pip torch >= 2.7 use it; older pip wheels and the
# "pre-cxx11" LibTorch zips do not, and would configure fine only to fail at link time with undefined
# std::__cxx11 symbols. strata_check_torch_abi stops at configure time instead, naming the fix.
#
# CMakeLists.txt calls it after find_package(Torch); tests run this file on its own:
#   cmake -DTORCH_CXX_FLAGS=-D_GLIBCXX_USE_CXX11_ABI=0 -DTorch_DIR=/some/where -P cmake/torch_abi.cmake
function(strata_check_torch_abi flags torch_dir)
  if(flags MATCHES "_GLIBCXX_USE_CXX11_ABI=0")
    message(FATAL_ERROR
      "The LibTorch found at ${torch_dir} uses the pre-C++11 ABI (TORCH_CXX_FLAGS: ${flags}), but fmt, spdlog "
      "and Boost from the system use the C++11 ABI, so strata would not link against it. Use Debian's libtorch "
      "(apt install libtorch-dev), a pip torch >= 2.7 (cmake -DCMAKE_PREFIX_PATH=$(python3 -c 'import torch; "
      "print(torch.utils.cmake_prefix_path)')), or a cxx11-ABI LibTorch zip from pytorch.org.")
  endif()
  message(STATUS "LibTorch at ${torch_dir}: C++11 ABI (TORCH_CXX_FLAGS: ${flags})")
endfunction()

if(CMAKE_SCRIPT_MODE_FILE)
  strata_check_torch_abi("${TORCH_CXX_FLAGS}" "${Torch_DIR}")
endif()
