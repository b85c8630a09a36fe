#pragma once
// dequantize_kv_rows: a quantized view's K and V rows as float for the CPU tile kernels,
// the values quant.hpp's dequantize_row gives, bit for bit (NaN as a NaN). Where the CPU
// runs the AVX2 tile kernels (group_tile.hpp's choice), FP8, Q8_0 and Q4_0 rows are
// widened 8 values an instruction: Q8_0 sign-extended and converted, Q4_0's nibbles split
// and unbiased in bytes first, FP8 assembled into float bits (E4M3's exponent and mantissa
// under float's, the exponent raised by 120; subnormal codes as mantissa x 2^-9; NaN
// kept), each times its scale in one rounding as dequantize_row does; elsewhere, and for
// the float formats, dequantize_row.

#include <cstddef>
#include <cstdint>
#include <limits>

#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/cpu/group_tile.hpp"

#if defined(__CUDACC__)
#pragma nv_diagnostic push
#pragma nv_diag_suppress 1675
#endif

namespace ekv {

namespace detail {

#if defined(EKV_CPU_GROUP_TILE_AVX2)
// 8 E4M3 codes (the low 8 bytes of c) as float, times s.
EKV_CPU_AVX2_TARGET inline __m256 fp8_values8(__m128i c, __m256 s) {
  const __m256i x = _mm256_cvtepu8_epi32(c);
  const __m256i magnitude = _mm256_and_si256(x, _mm256_set1_epi32(0x7F));
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x80)), 24);
  // normal codes: exponent e (bias 7) and mantissa m under float's (bias 127), the
  // exponent raised by 120 in the integer bits (never a float subnormal, even where the
  // code is one and this lane is discarded)
  const __m256 normal =
      _mm256_castsi256_ps(_mm256_add_epi32(_mm256_slli_epi32(magnitude, 20), _mm256_set1_epi32(120 << 23)));
  // subnormal codes (e = 0): m x 2^-9, exact, without a float subnormal anywhere
  const __m256 subnormal = _mm256_mul_ps(_mm256_cvtepi32_ps(magnitude), _mm256_set1_ps(1.0f / 512.0f));
  const __m256i is_subnormal = _mm256_cmpgt_epi32(_mm256_set1_epi32(8), magnitude);
  __m256 v = _mm256_blendv_ps(normal, subnormal, _mm256_castsi256_ps(is_subnormal));
  v = _mm256_or_ps(v, _mm256_castsi256_ps(sign));
  const __m256i is_nan = _mm256_cmpeq_epi32(magnitude, _mm256_set1_epi32(0x7F));
  v = _mm256_blendv_ps(v, _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN()), _mm256_castsi256_ps(is_nan));
  return _mm256_mul_ps(v, s);
}

// dequantize_row's result for FP8, Q8_0 and Q4_0 rows of d values (d a multiple of 32).
EKV_CPU_AVX2_TARGET inline void dequantize_row_avx2(KVStorage storage, const std::uint8_t* codes,
                                                    const __half* scales, int d, float* out, float s) {
  if (storage == KVStorage::kFp8E4M3) {
    const __m256 scale = _mm256_set1_ps(s);
    for (int i = 0; i < d; i += 8) {
      const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + i));
      _mm256_storeu_ps(out + i, fp8_values8(c, scale));
    }
    return;
  }
  for (int g = 0; g < d / kQuantGroup; ++g) {
    const __m256 scale = _mm256_set1_ps(__half2float(scales[g]));
    float* o = out + g * kQuantGroup;
    if (storage == KVStorage::kQ8_0) {
      const std::uint8_t* c = codes + g * kQuantGroup;
      for (int j = 0; j < kQuantGroup; j += 8) {
        const __m256i x = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + j)));
        _mm256_storeu_ps(o + j, _mm256_mul_ps(_mm256_cvtepi32_ps(x), scale));
      }
    } else {
      // 16 bytes: values 0..15 in the low nibbles, 16..31 in the high, minus 8
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + g * (kQuantGroup / 2)));
      const __m128i mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
      const __m128i lo = _mm_sub_epi8(_mm_and_si128(b, mask), eight);
      const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), mask), eight);
      const __m128i halves[2] = {lo, hi};
      for (int h = 0; h < 2; ++h) {
        const __m256i first = _mm256_cvtepi8_epi32(halves[h]);
        const __m256i second = _mm256_cvtepi8_epi32(_mm_srli_si128(halves[h], 8));
        _mm256_storeu_ps(o + 16 * h, _mm256_mul_ps(_mm256_cvtepi32_ps(first), scale));
        _mm256_storeu_ps(o + 16 * h + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(second), scale));
      }
    }
  }
}
#endif

}  // namespace detail

// Row `pos` of (seq, head) of K and of V as float into k_out and v_out [head_dim]: one
// block lookup for both rows' codes and scales.
inline void dequantize_kv_rows(const QuantKVView& kv, int seq, int head, int pos, float* k_out, float* v_out) {
  const KVView<std::uint8_t>::PoolRow at = kv.codes.pool_row(seq, head, pos);
  const std::int64_t code_offset = kv.codes.row_offset(at, head);
  const bool scaled = kv.scales.k != nullptr;
  const std::int64_t scale_offset = scaled ? kv.scales.row_offset({at.block, at.within}, head) : 0;
  const std::uint8_t* codes[2] = {kv.codes.k + code_offset, kv.codes.v + code_offset};
  const __half* scales[2] = {scaled ? kv.scales.k + scale_offset : nullptr,
                             scaled ? kv.scales.v + scale_offset : nullptr};
  float* out[2] = {k_out, v_out};
  for (int r = 0; r < 2; ++r) {
    const float s = kv.head_scale(r == 1, head);
#if defined(EKV_CPU_GROUP_TILE_AVX2)
    if (is_quantized(kv.storage) && cpu_runs_avx2_tiles()) {
      detail::dequantize_row_avx2(kv.storage, codes[r], scales[r], kv.head_dim, out[r], s);
      continue;
    }
#endif
    dequantize_row(kv.storage, codes[r], scales[r], kv.head_dim, out[r], s);
  }
}

}  // namespace ekv

#if defined(__CUDACC__)
#pragma nv_diagnostic pop
#endif
