#pragma once
// Element types ekv stores: the DType enum and DTypeTraits<T> (name, size, float
// conversions that host and device share, rounding to nearest even). kQ8_0 and kQ4_0 are
// GGML's block formats (groups of 32 values sharing a float16 scale, core/quant.hpp's
// layout): a KV cache's storage type (KVCacheConfig::kv_type, KTransformers' GGMLType)
// with no element type of their own and no dtype_size; a tensor of them is a cache's
// stored rows, kv_row_bytes(head_dim) bytes each.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstddef>
#include <string>

#include "ekv/core/error.hpp"
#include "ekv/core/host_device.hpp"

namespace ekv {

enum class DType { kFloat32, kFloat16, kBFloat16, kFloat8E4M3, kQ8_0, kQ4_0 };

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
                                       DType::kFloat8E4M3, DType::kQ8_0, DType::kQ4_0};

// Whether dtype is a block format (kQ8_0, kQ4_0): values in groups with a shared scale.
inline constexpr bool is_block_dtype(DType dtype) { return dtype == DType::kQ8_0 || dtype == DType::kQ4_0; }

inline std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat16:
    case DType::kBFloat16: return 2;
    case DType::kFloat8E4M3: return 1;
    case DType::kQ8_0:
    case DType::kQ4_0:
      throw Error(std::string("dtype_size: ") + (dtype == DType::kQ8_0 ? "q8_0" : "q4_0") +
                  " is a block format (32 values share a scale) with no size per element; a row's bytes are "
                  "kv_row_bytes (core/quant.hpp)");
  }
  throw Error("dtype_size: invalid DType value " + std::to_string(static_cast<int>(dtype)));
}

inline const char* to_string(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return DTypeTraits<float>::kName;
    case DType::kFloat16: return DTypeTraits<__half>::kName;
    case DType::kBFloat16: return DTypeTraits<__nv_bfloat16>::kName;
    case DType::kFloat8E4M3: return DTypeTraits<__nv_fp8_e4m3>::kName;
    case DType::kQ8_0: return "q8_0";
    case DType::kQ4_0: return "q4_0";
  }
  return "invalid";
}

// Accepts the canonical names and the short ones users type: fp32, fp16, half, bf16, fp8.
inline DType parse_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32" || name == "float") return DType::kFloat32;
  if (name == "float16" || name == "fp16" || name == "half") return DType::kFloat16;
  if (name == "bfloat16" || name == "bf16") return DType::kBFloat16;
  if (name == "float8_e4m3" || name == "fp8" || name == "e4m3") return DType::kFloat8E4M3;
  if (name == "q8_0") return DType::kQ8_0;
  if (name == "q4_0") return DType::kQ4_0;
  throw Error("unknown dtype '" + name + "'; supported: float32 (fp32), float16 (fp16, half), " +
              "bfloat16 (bf16), float8_e4m3 (fp8, e4m3), q8_0, q4_0");
}

}  // namespace ekv
