#pragma once
// device_count() and DeviceInfo: what the code runs on, read from the driver.

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>

#include "ekv/core/error.hpp"

namespace ekv {

enum class ArchFamily { kUnknown, kVolta, kTuring, kAmpere, kAda, kHopper, kBlackwell };

inline const char* to_string(ArchFamily family) {
  switch (family) {
    case ArchFamily::kVolta: return "Volta";
    case ArchFamily::kTuring: return "Turing";
    case ArchFamily::kAmpere: return "Ampere";
    case ArchFamily::kAda: return "Ada";
    case ArchFamily::kHopper: return "Hopper";
    case ArchFamily::kBlackwell: return "Blackwell";
    case ArchFamily::kUnknown: break;
  }
  return "unknown";
}

inline ArchFamily arch_family(int major, int minor) {
  if (major == 7) return minor < 5 ? ArchFamily::kVolta : ArchFamily::kTuring;
  if (major == 8) return minor == 9 ? ArchFamily::kAda : ArchFamily::kAmpere;
  if (major == 9) return ArchFamily::kHopper;
  if (major == 10 || major == 11 || major == 12) return ArchFamily::kBlackwell;
  return ArchFamily::kUnknown;
}

// Number of CUDA devices; 0 (never an exception) where there is no driver or no GPU, so
// callers can choose the CPU backend or skip GPU tests.
inline int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int cc_major = 0;
  int cc_minor = 0;
  ArchFamily family = ArchFamily::kUnknown;
  int sm_count = 0;
  std::size_t global_memory_bytes = 0;
  std::size_t l2_cache_bytes = 0;
  std::size_t shared_memory_per_cta_bytes = 0;     // without opting in
  std::size_t shared_memory_per_cta_optin_bytes = 0;  // after cudaFuncSetAttribute
  std::size_t shared_memory_per_sm_bytes = 0;
  int max_threads_per_sm = 0;
  int memory_bus_width_bits = 0;

  // Throws ekv::Error if `device` does not exist.
  static DeviceInfo query(int device) {
    cudaDeviceProp p{};
    EKV_CUDA_CHECK(cudaGetDeviceProperties(&p, device),
                   "DeviceInfo::query: cannot read the properties of device " +
                       std::to_string(device) + " (" + std::to_string(device_count()) +
                       " devices visible)");
    DeviceInfo info;
    info.ordinal = device;
    info.name = p.name;
    info.cc_major = p.major;
    info.cc_minor = p.minor;
    info.family = arch_family(p.major, p.minor);
    info.sm_count = p.multiProcessorCount;
    info.global_memory_bytes = p.totalGlobalMem;
    info.l2_cache_bytes = static_cast<std::size_t>(p.l2CacheSize);
    info.shared_memory_per_cta_bytes = p.sharedMemPerBlock;
    info.shared_memory_per_cta_optin_bytes = p.sharedMemPerBlockOptin;
    info.shared_memory_per_sm_bytes = p.sharedMemPerMultiprocessor;
    info.max_threads_per_sm = p.maxThreadsPerMultiProcessor;
    info.memory_bus_width_bits = p.memoryBusWidth;
    return info;
  }

  // The current device of the calling thread.
  static DeviceInfo current() {
    int device = 0;
    EKV_CUDA_CHECK(cudaGetDevice(&device), "DeviceInfo::current: no usable CUDA device");
    return query(device);
  }

  std::string compute_capability() const {
    return std::to_string(cc_major) + "." + std::to_string(cc_minor);
  }
};

}  // namespace ekv
