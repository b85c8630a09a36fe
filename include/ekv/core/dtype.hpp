#pragma once
// Element types ekv stores: the DType enum and DTypeTraits<T> (name, size, float
// conversions that host and device share, rounding to nearest even).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstddef>
#include <string>

#include "ekv/core/error.hpp"
#include "ekv/core/host_device.hpp"

namespace ekv {

enum class DType { kFloat32, kFloat16, kBFloat16, kFloat8E4M3 };

template <typename T>
struct DTypeTraits;

template <>
struct DTypeTraits<float> {
  static constexpr DType kDType = DType::kFloat32;
  static constexpr const char* kName = "float32";
  EKV_HOST_DEVICE static float to_float(float x) { return x; }
  EKV_HOST_DEVICE static float from_float(float x) { return x; }
};

template <>
struct DTypeTraits<__half> {
  static constexpr DType kDType = DType::kFloat16;
  static constexpr const char* kName = "float16";
  EKV_HOST_DEVICE static float to_float(__half x) { return __half2float(x); }
  EKV_HOST_DEVICE static __half from_float(float x) { return __float2half_rn(x); }
};

template <>
struct DTypeTraits<__nv_bfloat16> {
  static constexpr DType kDType = DType::kBFloat16;
  static constexpr const char* kName = "bfloat16";
  EKV_HOST_DEVICE static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  EKV_HOST_DEVICE static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};

template <>
struct DTypeTraits<__nv_fp8_e4m3> {
  static constexpr DType kDType = DType::kFloat8E4M3;
  static constexpr const char* kName = "float8_e4m3";
  EKV_HOST_DEVICE static float to_float(__nv_fp8_e4m3 x) { return static_cast<float>(x); }
  // Saturates to +-448 rather than producing NaN, as quantized KV storage wants.
  EKV_HOST_DEVICE static __nv_fp8_e4m3 from_float(float x) { return __nv_fp8_e4m3(x); }
};

template <typename T>
inline constexpr DType kDTypeOf = DTypeTraits<T>::kDType;

inline constexpr DType kAllDTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16,
                                       DType::kFloat8E4M3};

inline std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat16:
    case DType::kBFloat16: return 2;
    case DType::kFloat8E4M3: return 1;
  }
  throw Error("dtype_size: invalid DType value " + std::to_string(static_cast<int>(dtype)));
}

inline const char* to_string(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return DTypeTraits<float>::kName;
    case DType::kFloat16: return DTypeTraits<__half>::kName;
    case DType::kBFloat16: return DTypeTraits<__nv_bfloat16>::kName;
    case DType::kFloat8E4M3: return DTypeTraits<__nv_fp8_e4m3>::kName;
  }
  return "invalid";
}

// Accepts the canonical names and the short ones users type: fp32, fp16, half, bf16, fp8.
inline DType parse_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32" || name == "float") return DType::kFloat32;
  if (name == "float16" || name == "fp16" || name == "half") return DType::kFloat16;
  if (name == "bfloat16" || name == "bf16") return DType::kBFloat16;
  if (name == "float8_e4m3" || name == "fp8" || name == "e4m3") return DType::kFloat8E4M3;
  throw Error("unknown dtype '" + name + "'; supported: float32 (fp32), float16 (fp16, half), " +
              "bfloat16 (bf16), float8_e4m3 (fp8, e4m3)");
}

}  // namespace ekv
