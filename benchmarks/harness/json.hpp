#pragma once
// JSON forms of what benchmarks report (nlohmann-json): `nlohmann::json j = stats;`.

#include <nlohmann/json.hpp>

#include <cuda_runtime_api.h>

#include <string>

#include "ekv/core/device.hpp"
#include "ekv/core/version.hpp"
#include "harness/statistics.hpp"

namespace ekv::bench {

inline void to_json(nlohmann::json& j, const Stats& s) {
  j = nlohmann::json{{"count", s.count}, {"mean", s.mean},     {"median", s.median},
                     {"p5", s.p5},       {"p95", s.p95},       {"min", s.min},
                     {"max", s.max},     {"stddev", s.stddev}, {"cv", s.cv},
                     {"trim", s.trim},   {"trimmed_mean", s.trimmed_mean}};
}

// The compiler of this translation unit, by name and version: "GCC 12.2.0", or under
// nvcc "nvcc 13.0 (host GCC 12.2.0)".
inline std::string compiler_name() {
#if defined(__clang__)
  const std::string host = std::string("Clang ") + __clang_version__;
#elif defined(__GNUC__)
  const std::string host = "GCC " + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__) + "." +
                           std::to_string(__GNUC_PATCHLEVEL__);
#else
  const std::string host = "unknown";
#endif
#if defined(__CUDACC_VER_MAJOR__)
  return "nvcc " + std::to_string(__CUDACC_VER_MAJOR__) + "." + std::to_string(__CUDACC_VER_MINOR__) + " (host " +
         host + ")";
#else
  return host;
#endif
}

// What built the numbers: ekv's version, its git commit where the build defined
// EKV_GIT_COMMIT (CMake reads it at configure time; null otherwise), the compiler, and the
// CUDA toolkit and runtime (0 where no driver answers).
inline nlohmann::json build_json() {
  int runtime = 0;
  if (cudaRuntimeGetVersion(&runtime) != cudaSuccess) cudaGetLastError();
  return nlohmann::json{{"ekv_version", kVersion},
#if defined(EKV_GIT_COMMIT)
                        {"git_commit", EKV_GIT_COMMIT},
#else
                        {"git_commit", nullptr},
#endif
                        {"cuda_runtime", runtime},
                        {"cuda_toolkit", CUDART_VERSION},
                        {"compiler", compiler_name()},
                        {"cplusplus", __cplusplus}};
}

}  // namespace ekv::bench

// DeviceInfo belongs to the library, which knows no JSON: its form lives here, where ADL
// (which looks in namespace ekv) would not find a to_json.
template <>
struct nlohmann::adl_serializer<ekv::DeviceInfo> {
  static void to_json(nlohmann::json& j, const ekv::DeviceInfo& d) {
    j = nlohmann::json{{"ordinal", d.ordinal},
                       {"name", d.name},
                       {"compute_capability", d.compute_capability()},
                       {"arch_family", ekv::to_string(d.family)},
                       {"sm_count", d.sm_count},
                       {"global_memory_bytes", d.global_memory_bytes},
                       {"l2_cache_bytes", d.l2_cache_bytes},
                       {"shared_memory_per_cta_optin_bytes", d.shared_memory_per_cta_optin_bytes},
                       {"memory_bus_width_bits", d.memory_bus_width_bits}};
  }
};
