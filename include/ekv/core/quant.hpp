#pragma once
// Quantized KV storage formats: what a stored row of K or V is, bit by bit, and the
// quantize / dequantize functions host and device share (EKV_HOST_DEVICE), so that a row
// quantized by a GPU kernel at append and the same row quantized by the CPU backend are
// the same bytes. IEEE float arithmetic with every rounding step written out (division,
// roundf, an explicit fmaf, float16 rounding give the same result on both); device code
// built with --use_fast_math would approximate the divisions and is not supported here.
//
// A row is one token's head_dim values of one kv head. Its codes are contiguous, and its
// scales are a separate array (where a cache keeps them is the cache's layout; a block of
// the cache stores every code row first, then every scale row, so code rows stay 16-byte
// aligned for vector loads). Per format:
//
//   kFloat16, kBFloat16, kFloat32   the values themselves; no scales.
//   kQ8_0   GGML's Q8_0: groups of 32 consecutive values (head_dim a multiple of 32), each
//           with one float16 scale d = max|x| / 127. Code q (int8, -127 .. 127) =
//           roundf(x / d) (as x * (1 / d)); value = q * d. Codes: head_dim bytes, byte i
//           the code of value i; scales: head_dim / 32 float16.
//   kQ4_0   GGML's Q4_0: groups of 32, one float16 scale d = m / -8 each, m the value of
//           largest magnitude with its sign. Code q (4 bits, 0 .. 15) =
//           min(15, int(fma(x, 1 / d, 8.5))) (GGML rounds x * (1 / d) before adding 8.5:
//           a code can differ from GGML's where that sum lands on an integer boundary);
//           value = (q - 8) * d. Codes: head_dim / 2 bytes;
//           byte j of a group holds the code of value j in its low nibble and of value
//           j + 16 in its high nibble (GGML's order); scales: head_dim / 32 float16.
//   kFp8E4M3  one float8 E4M3 code per value, code = e4m3(x / s) rounded to nearest even
//           and saturated to +-448 (never to NaN); value = float(code) * s, with s a float
//           scale per kv head set by the cache (1 unless given: vLLM's k_scale, v_scale).
//           Codes: head_dim bytes; no per-row scales.
//
// Values Q8_0 and Q4_0 cannot hold: the scale comes from the group's finite values only;
// NaN codes as 0 (the value 0) and +-inf saturates to the group's extreme code, so a bad
// value never spreads to its neighbours' scale. FP8 keeps NaN as NaN.

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "ekv/core/dispatch.hpp"
#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/host_device.hpp"

namespace ekv {

enum class KVStorage { kFloat16, kBFloat16, kFloat32, kFp8E4M3, kQ8_0, kQ4_0 };

inline constexpr KVStorage kAllKVStorages[] = {KVStorage::kFloat16, KVStorage::kBFloat16, KVStorage::kFloat32,
                                               KVStorage::kFp8E4M3, KVStorage::kQ8_0,     KVStorage::kQ4_0};

// Values per scale of the GGML formats.
inline constexpr int kQuantGroup = 32;

inline const char* to_string(KVStorage s) {
  switch (s) {
    case KVStorage::kFloat16: return "fp16";
    case KVStorage::kBFloat16: return "bf16";
    case KVStorage::kFloat32: return "fp32";
    case KVStorage::kFp8E4M3: return "fp8";
    case KVStorage::kQ8_0: return "q8_0";
    case KVStorage::kQ4_0: return "q4_0";
  }
  return "invalid";
}

// The text forms to_string writes (ekv-bench's --kv-dtype), case as written.
inline KVStorage parse_kv_storage(const std::string& text) {
  for (KVStorage s : kAllKVStorages) {
    if (text == to_string(s)) return s;
  }
  throw Error("kv storage '" + text + "' not supported; supported: fp16, bf16, fp32, fp8, q8_0, q4_0");
}

// The storage that holds values of `dtype` as they are (float32, float16, bfloat16).
inline KVStorage dense_storage(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return KVStorage::kFloat16;
    case DType::kBFloat16: return KVStorage::kBFloat16;
    case DType::kFloat32: return KVStorage::kFloat32;
    case DType::kFloat8E4M3:
    case DType::kQ8_0:
    case DType::kQ4_0: break;
  }
  throw Error(std::string("dense_storage: dtype=") + to_string(dtype) +
              " is not a dense kv storage; supported: float32, float16, bfloat16");
}

// The storage a KV cache of kv_type `dtype` keeps (KVCacheConfig::kv_type): the dense
// formats as they are, float8_e4m3 as FP8 (a scale per kv head, 1 unless set), q8_0 and
// q4_0 as GGML's.
inline KVStorage kv_storage_of(DType dtype) {
  switch (dtype) {
    case DType::kFloat8E4M3: return KVStorage::kFp8E4M3;
    case DType::kQ8_0: return KVStorage::kQ8_0;
    case DType::kQ4_0: return KVStorage::kQ4_0;
    default: return dense_storage(dtype);
  }
}

inline bool is_quantized(KVStorage s) {
  return s == KVStorage::kFp8E4M3 || s == KVStorage::kQ8_0 || s == KVStorage::kQ4_0;
}

// Whether rows of head_dim values can be stored as s: the GGML formats need whole groups.
inline Support kv_storage_supports(KVStorage s, int head_dim) {
  if (head_dim < 1) return {false, "head_dim=" + std::to_string(head_dim) + " not supported; it must be >= 1"};
  if ((s == KVStorage::kQ8_0 || s == KVStorage::kQ4_0) && head_dim % kQuantGroup != 0) {
    return {false, std::string("head_dim=") + std::to_string(head_dim) + " not supported by kv storage " +
                       to_string(s) + "; it must be a multiple of " + std::to_string(kQuantGroup)};
  }
  return {};
}

// Bits of code per value (0 for an invalid value).
EKV_HOST_DEVICE inline int kv_code_bits(KVStorage s) {
  switch (s) {
    case KVStorage::kFloat16:
    case KVStorage::kBFloat16: return 16;
    case KVStorage::kFloat32: return 32;
    case KVStorage::kFp8E4M3:
    case KVStorage::kQ8_0: return 8;
    case KVStorage::kQ4_0: return 4;
  }
  return 0;
}

// Bytes of one row's codes, of its scales, and both: what a step reads per token and kv
// head for K (and again for V). FP8's per-head scale is not per row and not counted here.
inline std::size_t kv_code_bytes(KVStorage s, int head_dim) {
  if (kv_code_bits(s) == 0) {
    throw Error("kv_code_bytes: invalid KVStorage value " + std::to_string(static_cast<int>(s)));
  }
  return static_cast<std::size_t>(head_dim) * kv_code_bits(s) / 8;
}

inline std::size_t kv_scale_bytes(KVStorage s, int head_dim) {
  if (s == KVStorage::kQ8_0 || s == KVStorage::kQ4_0) {
    return static_cast<std::size_t>(head_dim / kQuantGroup) * sizeof(__half);
  }
  return 0;
}

inline std::size_t kv_row_bytes(KVStorage s, int head_dim) {
  return kv_code_bytes(s, head_dim) + kv_scale_bytes(s, head_dim);
}

namespace detail {

EKV_HOST_DEVICE inline bool quant_finite(float x) { return x - x == 0.0f; }  // false for NaN and +-inf

}  // namespace detail

// Q8_0: one group of 32 values x into 32 codes and one scale.
EKV_HOST_DEVICE inline void quantize_q8_0_group(const float* x, std::int8_t* codes, __half* scale) {
  float amax = 0.0f;
  for (int j = 0; j < kQuantGroup; ++j) {
    if (detail::quant_finite(x[j])) amax = fmaxf(amax, fabsf(x[j]));
  }
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  *scale = __float2half_rn(d);
  for (int j = 0; j < kQuantGroup; ++j) {
    const float x0 = x[j] * id;
    // NaN (and inf * 0) codes as 0; +-inf saturates
    codes[j] = x0 == x0 ? static_cast<std::int8_t>(fminf(127.0f, fmaxf(-127.0f, roundf(x0)))) : std::int8_t{0};
  }
}

EKV_HOST_DEVICE inline float dequantize_q8_0(std::int8_t code, __half scale) {
  return static_cast<float>(code) * __half2float(scale);
}

// Q4_0: one group of 32 values x into 16 bytes of codes and one scale.
EKV_HOST_DEVICE inline void quantize_q4_0_group(const float* x, std::uint8_t* codes, __half* scale) {
  float amax = 0.0f, m = 0.0f;
  for (int j = 0; j < kQuantGroup; ++j) {
    if (detail::quant_finite(x[j]) && amax < fabsf(x[j])) {
      amax = fabsf(x[j]);
      m = x[j];
    }
  }
  const float d = m / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  *scale = __float2half_rn(d);
  auto code = [&](float v) -> std::uint8_t {
    // one fused multiply-add, written out: left to the compiler, x * id + 8.5 contracts to
    // an fma on one side and not the other, and a code across a rounding boundary differs
    const float x0 = fmaf(v, id, 8.5f);
    if (!(x0 == x0)) return 8;  // NaN: the value 0
    // GGML: min(15, (int8_t)(x0)); x0 >= 0.5 for finite input, the clamp below 0 is for -inf
    return static_cast<std::uint8_t>(fminf(15.0f, fmaxf(0.0f, truncf(x0))));
  };
  for (int j = 0; j < kQuantGroup / 2; ++j) {
    codes[j] = static_cast<std::uint8_t>(code(x[j]) | (code(x[j + kQuantGroup / 2]) << 4));
  }
}

// Value i (0 .. 31) of a Q4_0 group from its 16 code bytes.
EKV_HOST_DEVICE inline float dequantize_q4_0(const std::uint8_t* codes, int i, __half scale) {
  const int half_group = kQuantGroup / 2;
  const int nibble = i < half_group ? codes[i] & 0x0F : codes[i - half_group] >> 4;
  return static_cast<float>(nibble - 8) * __half2float(scale);
}

// FP8 E4M3 with a per-head scale s > 0.
EKV_HOST_DEVICE inline __nv_fp8_e4m3 quantize_fp8(float x, float s) {
  return DTypeTraits<__nv_fp8_e4m3>::from_float(x / s);
}

EKV_HOST_DEVICE inline float dequantize_fp8(__nv_fp8_e4m3 code, float s) {
  return DTypeTraits<__nv_fp8_e4m3>::to_float(code) * s;
}

// A whole row of head_dim values: codes (kv_code_bytes) and scales (kv_scale_bytes; may be
// null for formats without them); s is FP8's per-head scale (ignored otherwise). The
// float formats round to nearest even. head_dim must pass kv_storage_supports.
EKV_HOST_DEVICE inline void quantize_row(KVStorage storage, const float* x, int head_dim, void* codes, __half* scales,
                                         float s = 1.0f) {
  switch (storage) {
    case KVStorage::kFloat16:
      for (int i = 0; i < head_dim; ++i) static_cast<__half*>(codes)[i] = __float2half_rn(x[i]);
      return;
    case KVStorage::kBFloat16:
      for (int i = 0; i < head_dim; ++i) static_cast<__nv_bfloat16*>(codes)[i] = __float2bfloat16_rn(x[i]);
      return;
    case KVStorage::kFloat32:
      for (int i = 0; i < head_dim; ++i) static_cast<float*>(codes)[i] = x[i];
      return;
    case KVStorage::kFp8E4M3:
      for (int i = 0; i < head_dim; ++i) static_cast<__nv_fp8_e4m3*>(codes)[i] = quantize_fp8(x[i], s);
      return;
    case KVStorage::kQ8_0:
      for (int g = 0; g < head_dim / kQuantGroup; ++g) {
        quantize_q8_0_group(x + g * kQuantGroup, static_cast<std::int8_t*>(codes) + g * kQuantGroup, scales + g);
      }
      return;
    case KVStorage::kQ4_0:
      for (int g = 0; g < head_dim / kQuantGroup; ++g) {
        quantize_q4_0_group(x + g * kQuantGroup, static_cast<std::uint8_t*>(codes) + g * kQuantGroup / 2,
                            scales + g);
      }
      return;
  }
}

// Value i of a stored row.
EKV_HOST_DEVICE inline float dequantize_value(KVStorage storage, const void* codes, const __half* scales, int i,
                                              float s = 1.0f) {
  switch (storage) {
    case KVStorage::kFloat16: return __half2float(static_cast<const __half*>(codes)[i]);
    case KVStorage::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(codes)[i]);
    case KVStorage::kFloat32: return static_cast<const float*>(codes)[i];
    case KVStorage::kFp8E4M3: return dequantize_fp8(static_cast<const __nv_fp8_e4m3*>(codes)[i], s);
    case KVStorage::kQ8_0:
      return dequantize_q8_0(static_cast<const std::int8_t*>(codes)[i], scales[i / kQuantGroup]);
    case KVStorage::kQ4_0:
      return dequantize_q4_0(static_cast<const std::uint8_t*>(codes) + i / kQuantGroup * (kQuantGroup / 2),
                             i % kQuantGroup, scales[i / kQuantGroup]);
  }
  return 0.0f;
}

namespace detail {

#if !defined(__CUDA_ARCH__)
// Every E4M3 code's value, for the host: cuda_fp8's host conversion is emulated bit by bit
// per value, a table of the same values is one load.
inline const float* fp8_e4m3_values() {
  static const auto table = [] {
    struct Table {
      float v[256];
    } t{};
    for (int c = 0; c < 256; ++c) {
      __nv_fp8_e4m3 code;
      code.__x = static_cast<__nv_fp8_storage_t>(c);
      t.v[c] = DTypeTraits<__nv_fp8_e4m3>::to_float(code);
    }
    return t;
  }();
  return table.v;
}
#endif

}  // namespace detail

// A whole stored row as float, into out [head_dim] (not overlapping the codes: byte codes
// could alias it otherwise, and the loops would not vectorize): the values
// dequantize_value gives, a group's scale converted once.
EKV_HOST_DEVICE inline void dequantize_row(KVStorage storage, const void* codes, const __half* scales, int head_dim,
                                           float* __restrict__ out, float s = 1.0f) {
  switch (storage) {
    case KVStorage::kFloat16:
      for (int i = 0; i < head_dim; ++i) out[i] = __half2float(static_cast<const __half*>(codes)[i]);
      return;
    case KVStorage::kBFloat16:
      for (int i = 0; i < head_dim; ++i) out[i] = __bfloat162float(static_cast<const __nv_bfloat16*>(codes)[i]);
      return;
    case KVStorage::kFloat32:
      for (int i = 0; i < head_dim; ++i) out[i] = static_cast<const float*>(codes)[i];
      return;
    case KVStorage::kFp8E4M3: {
#if defined(__CUDA_ARCH__)
      for (int i = 0; i < head_dim; ++i) out[i] = dequantize_fp8(static_cast<const __nv_fp8_e4m3*>(codes)[i], s);
#else
      const float* values = detail::fp8_e4m3_values();
      const auto* c = static_cast<const std::uint8_t*>(codes);
      for (int i = 0; i < head_dim; ++i) out[i] = values[c[i]] * s;
#endif
      return;
    }
    case KVStorage::kQ8_0:
      for (int g = 0; g < head_dim / kQuantGroup; ++g) {
        const float d = __half2float(scales[g]);
        const auto* c = static_cast<const std::int8_t*>(codes) + g * kQuantGroup;
        for (int j = 0; j < kQuantGroup; ++j) out[g * kQuantGroup + j] = static_cast<float>(c[j]) * d;
      }
      return;
    case KVStorage::kQ4_0:
      for (int g = 0; g < head_dim / kQuantGroup; ++g) {
        const float d = __half2float(scales[g]);
        const auto* c = static_cast<const std::uint8_t*>(codes) + g * (kQuantGroup / 2);
        float* o = out + g * kQuantGroup;
        for (int j = 0; j < kQuantGroup / 2; ++j) o[j] = static_cast<float>((c[j] & 0x0F) - 8) * d;
        for (int j = 0; j < kQuantGroup / 2; ++j) o[j + kQuantGroup / 2] = static_cast<float>((c[j] >> 4) - 8) * d;
      }
      return;
  }
}

// A row of head_dim values of type T (float, half, bfloat16) quantized in chunks of 32
// (a GGML group each; the float formats and FP8 are per value, so any chunking gives the
// same bytes), each widened to float on the stack first: the one function both appends,
// GPU and CPU, call, so their bytes agree by construction. Q8_0 and Q4_0 need head_dim a
// multiple of 32; the others take a shorter last chunk.
template <typename T>
EKV_HOST_DEVICE inline void quantize_row_from(KVStorage storage, const T* src, int head_dim, void* codes,
                                              __half* scales, float s = 1.0f) {
  float x[kQuantGroup];
  for (int c = 0; c < head_dim; c += kQuantGroup) {
    const int n = head_dim - c < kQuantGroup ? head_dim - c : kQuantGroup;
    for (int i = 0; i < n; ++i) x[i] = DTypeTraits<T>::to_float(src[c + i]);
    quantize_row(storage, x, n, static_cast<unsigned char*>(codes) + c * kv_code_bits(storage) / 8,
                 scales == nullptr ? nullptr : scales + c / kQuantGroup, s);
  }
}

}  // namespace ekv
