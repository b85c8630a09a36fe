#pragma once
// Rows of half and bfloat16 widened to float: CPU attention reads K and V in their stored
// type and computes in float, like the GPU kernels. Bit operations without branches, in
// loops that -O3 vectorizes for any target; F16C's conversion where the target has it.

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "ekv/core/dtype.hpp"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace ekv {
namespace detail {

inline float float_from_bits(std::uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

inline std::uint32_t bits_from_float(float x) {
  std::uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}

// The stored bits of 16-bit types: their one member is the first, so the pointers convert.
template <typename T>
const std::uint16_t* bits_of(const T* p) {
  static_assert(sizeof(T) == 2 && std::is_standard_layout_v<T>, "a 16-bit value type");
  return reinterpret_cast<const std::uint16_t*>(p);
}

}  // namespace detail

// Exact for every half, subnormals, infinities and NaN included. A normal value's bits,
// shifted into float position, are a float 2^112 too small: one multiply rebiases the
// exponent (and keeps infinity and NaN). A subnormal's mantissa is placed under the
// exponent of 0.5, and subtracting 0.5 leaves exactly its value.
inline float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t w = std::uint32_t{h} << 16;
  const std::uint32_t sign = w & 0x80000000u;
  const std::uint32_t two_w = w + w;  // the sign shifted out
  const std::uint32_t normal =
      detail::bits_from_float(detail::float_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f);
  const std::uint32_t subnormal = detail::bits_from_float(detail::float_from_bits((two_w >> 17) | (126u << 23)) - 0.5f);
  // a mask, not a branch or ?:, so that the loop vectorizes
  const std::uint32_t is_subnormal = 0u - static_cast<std::uint32_t>(two_w < (1u << 27));
  return detail::float_from_bits(sign | (subnormal & is_subnormal) | (normal & ~is_subnormal));
}

inline float bfloat16_bits_to_float(std::uint16_t b) { return detail::float_from_bits(std::uint32_t{b} << 16); }

// dst [n] = src [n] as float. Where the target has F16C (x86-64-v3), one instruction
// widens 8 halves: the bit operations cost a third of CPU attention's time on fp16 (AMD
// EPYC, 2 cores, cpu_bench).
inline void to_float_row(const __half* src, float* __restrict dst, int n) {
  const std::uint16_t* bits = detail::bits_of(src);
  int i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bits + i))));
  }
#endif
  for (; i < n; ++i) dst[i] = half_bits_to_float(bits[i]);
}

inline void to_float_row(const __nv_bfloat16* src, float* __restrict dst, int n) {
  const std::uint16_t* bits = detail::bits_of(src);
  for (int i = 0; i < n; ++i) dst[i] = bfloat16_bits_to_float(bits[i]);
}

// A row of n values as float: a float row is read in place, others are widened into
// `buffer` [n].
template <typename T>
const float* row_as_float(const T* src, float* buffer, int n) {
  if constexpr (std::is_same_v<T, float>) {
    return src;
  } else {
    to_float_row(src, buffer, n);
    return buffer;
  }
}

}  // namespace ekv
