#pragma once
// The two products of CPU attention over one tile of K and V rows for the query heads of
// a GQA group: scores = q . k for every (head, row), and acc = acc * rescale + p . v.
// Where the CPU has AVX2, FMA and F16C (x86-64-v3), register-blocked kernels load and
// widen each 8-value piece of a K or V row once, in a register, for up to four heads, and
// keep their sums in registers across the piece's rows or heads. Elsewhere, portable
// kernels widen the tile's rows to float first (to_float.hpp) and use row_ops.hpp.
// With g++ or clang on x86-64 the AVX2 kernels are always compiled (function attribute
// target("avx2,fma,f16c"), no -march needed) and chosen at run time by the CPU's features,
// so a consumer's default flags get them; a target built for x86-64-v3 calls them without
// the check; -DEKV_CPU_PORTABLE_ONLY leaves only the portable ones. Both are compiled where
// the first is, and tests/cpu/group_tile_test.cpp compares them.
// Rows hold d values, d a multiple of 8; a tile has at most kAttendTileTokens rows. Each
// kernel takes `ahead`, rows of a later tile to ask for while it computes (TilePrefetch,
// row_ops.hpp): a share at each step of its loop.

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "ekv/core/dtype.hpp"
#include "ekv/cpu/row_ops.hpp"
#include "ekv/cpu/to_float.hpp"

// nvcc's front end does not know g++'s unroll pragma, which it hands on to g++ (the host
// code of .cu files that run cpu_decode): its "unrecognized pragma" warning is silenced here.
#if defined(__CUDACC__)
#pragma nv_diagnostic push
#pragma nv_diag_suppress 1675
#endif

#if defined(EKV_CPU_PORTABLE_ONLY)
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define EKV_CPU_GROUP_TILE_AVX2 1
#define EKV_CPU_AVX2_TARGET
#elif defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#define EKV_CPU_GROUP_TILE_AVX2 1
#define EKV_CPU_GROUP_TILE_DISPATCH 1  // chosen by the CPU's features at run time
#define EKV_CPU_AVX2_TARGET __attribute__((target("avx2,fma,f16c")))
#endif

namespace ekv {

// Rows per tile, K and V each: 16, 32 and 64 were within 5% (AMD EPYC, one thread, fp16,
// group 4, head_dim 128; 32 best).
inline constexpr int kAttendTileTokens = 32;

// scores [g * stride + t] = q [g] . rows [t] for g < group, t < n; q: float [group][d].
// `wide`: float [n][d], where half and bfloat16 rows are widened.
template <typename T>
void tile_scores_portable(const float* q, int group, const T* const* rows, int n, int d, float* scores, int stride,
                          float* wide, const TilePrefetch& ahead = {}) {
  const float* k[kAttendTileTokens];
  for (int t = 0; t < n; ++t) k[t] = row_as_float(rows[t], wide + static_cast<std::size_t>(t) * d, d);
  for (int g = 0; g < group; ++g) {
    ahead.part(g, group);
    float* s = scores + static_cast<std::ptrdiff_t>(g) * stride;
    const float* qg = q + static_cast<std::size_t>(g) * d;
    int t = 0;
    for (; t + 4 <= n; t += 4) dot_rows4(qg, k + t, d, s + t);
    for (; t < n; ++t) s[t] = dot_row(qg, k[t], d);
  }
}

// acc [g] = acc [g] * rescale [g] + sum over t < n of p [g * stride + t] * rows [t], for
// g < group; acc: float [group][d]. `wide`: float [n][d], as for tile_scores_portable.
template <typename T>
void tile_accumulate_portable(float* acc, const float* rescale, const float* p, int stride, int group,
                              const T* const* rows, int n, int d, float* wide, const TilePrefetch& ahead = {}) {
  const float* v[kAttendTileTokens];
  for (int t = 0; t < n; ++t) v[t] = row_as_float(rows[t], wide + static_cast<std::size_t>(t) * d, d);
  for (int g = 0; g < group; ++g) {
    ahead.part(g, group);
    float* a = acc + static_cast<std::size_t>(g) * d;
    if (rescale[g] != 1.0f) {
      for (int i = 0; i < d; ++i) a[i] *= rescale[g];
    }
    accumulate_rows(a, p + static_cast<std::ptrdiff_t>(g) * stride, v, n, d);
  }
}

#if defined(EKV_CPU_GROUP_TILE_AVX2)
namespace detail {

// The fixed-count loops below are unrolled by pragma: unrolled late, g++ 12 kept the arrays
// of accumulators in memory, a store per multiply-add (attention 1.6x slower, one thread).
EKV_CPU_AVX2_TARGET inline __m256 load8_wide(const float* p) { return _mm256_loadu_ps(p); }

EKV_CPU_AVX2_TARGET inline __m256 load8_wide(const __half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// bfloat16 is the high half of a float: widen to 32 bits, shift into place
EKV_CPU_AVX2_TARGET inline __m256 load8_wide(const __nv_bfloat16* p) {
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}

// Lane j of the result is the sum of a [j]'s eight lanes: 9 instructions for eight sums,
// where one horizontal sum at a time takes 5 each.
EKV_CPU_AVX2_TARGET inline __m256 sum_lanes8(const __m256 (&a)[8]) {
  const __m256 s01 = _mm256_hadd_ps(a[0], a[1]);
  const __m256 s23 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 s45 = _mm256_hadd_ps(a[4], a[5]);
  const __m256 s67 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 s0123 = _mm256_hadd_ps(s01, s23);  // [a0..a3 low 128 | a0..a3 high 128]
  const __m256 s4567 = _mm256_hadd_ps(s45, s67);
  return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

// G heads x R rows of scores, G * R sums in registers: each piece of a row serves G heads,
// each piece of q serves R rows.
template <int G, int R, typename T>
EKV_CPU_AVX2_TARGET void scores_block(const float* q, int d, const T* const* rows, float* s, int stride) {
  static_assert(G * R <= 8, "eight accumulators: sum_lanes8 reduces them together");
  __m256 acc[8];
  #pragma GCC unroll 8
  for (__m256& a : acc) a = _mm256_setzero_ps();
  for (int i = 0; i < d; i += 8) {
    __m256 x[R];
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) x[r] = load8_wide(rows[r] + i);
    #pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      const __m256 qg = _mm256_loadu_ps(q + static_cast<std::size_t>(g) * d + i);
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[g * R + r] = _mm256_fmadd_ps(qg, x[r], acc[g * R + r]);
    }
  }
  alignas(32) float sums[8];
  _mm256_store_ps(sums, sum_lanes8(acc));
  #pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) s[static_cast<std::ptrdiff_t>(g) * stride + r] = sums[g * R + r];
  }
}

// `ahead` a share at each block of rows
template <int G, typename T>
EKV_CPU_AVX2_TARGET void scores_heads(const float* q, int d, const T* const* rows, int n, float* s, int stride,
                                      const TilePrefetch& ahead) {
  constexpr int kRows = 8 / G;
  const int blocks = n / kRows + n % kRows;
  int t = 0, block = 0;
  for (; t + kRows <= n; t += kRows) {
    ahead.part(block++, blocks);
    scores_block<G, kRows>(q, d, rows + t, s + t, stride);
  }
  for (; t < n; ++t) {
    ahead.part(block++, blocks);
    scores_block<G, 1>(q, d, rows + t, s + t, stride);
  }
}

// G heads x C pieces of 8 columns from column i, G * C sums in registers across all n
// rows: each piece of a row serves G heads, each weight C pieces; acc is read and written
// once per tile.
template <int G, int C, typename T>
EKV_CPU_AVX2_TARGET void accumulate_block(float* acc, int d, int i, const float* rescale, const float* p,
                                          int stride, const T* const* rows, int n) {
  __m256 a[G][C];
  #pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    const __m256 r = _mm256_set1_ps(rescale[g]);
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      a[g][c] = _mm256_mul_ps(_mm256_loadu_ps(acc + static_cast<std::size_t>(g) * d + i + 8 * c), r);
    }
  }
  for (int t = 0; t < n; ++t) {
    __m256 x[C];
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) x[c] = load8_wide(rows[t] + i + 8 * c);
    #pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      const __m256 w = _mm256_broadcast_ss(p + static_cast<std::ptrdiff_t>(g) * stride + t);
      #pragma GCC unroll 8
      for (int c = 0; c < C; ++c) a[g][c] = _mm256_fmadd_ps(w, x[c], a[g][c]);
    }
  }
  #pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) _mm256_storeu_ps(acc + static_cast<std::size_t>(g) * d + i + 8 * c, a[g][c]);
  }
}

// `ahead` a share at each block of columns
template <int G, typename T>
EKV_CPU_AVX2_TARGET void accumulate_heads(float* acc, int d, const float* rescale, const float* p, int stride,
                                          const T* const* rows, int n, const TilePrefetch& ahead) {
  constexpr int kPieces = 8 / G;
  const int blocks = d / (8 * kPieces) + d % (8 * kPieces) / 8;
  int i = 0, block = 0;
  for (; i + 8 * kPieces <= d; i += 8 * kPieces) {
    ahead.part(block++, blocks);
    accumulate_block<G, kPieces>(acc, d, i, rescale, p, stride, rows, n);
  }
  for (; i < d; i += 8) {
    ahead.part(block++, blocks);
    accumulate_block<G, 1>(acc, d, i, rescale, p, stride, rows, n);
  }
}

// Calls f's template for the next block of at most four heads, from head g on.
template <typename F>
void for_head_blocks(int group, F&& f) {
  for (int g = 0; g < group; g += 4) {
    switch (std::min(4, group - g)) {
      case 1: f(std::integral_constant<int, 1>{}, g); break;
      case 2: f(std::integral_constant<int, 2>{}, g); break;
      case 3: f(std::integral_constant<int, 3>{}, g); break;
      default: f(std::integral_constant<int, 4>{}, g); break;
    }
  }
}

}  // namespace detail

// Whether this CPU runs the AVX2 kernels: always where the target has them, else asked
// once (cpuid: AVX2 and FMA through the compiler's runtime, F16C from leaf 1 itself, as
// clang before 16 has no "f16c" for __builtin_cpu_supports).
inline bool cpu_runs_avx2_tiles() {
#if defined(EKV_CPU_GROUP_TILE_DISPATCH)
  static const bool runs = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  }();
  return runs;
#else
  return true;
#endif
}

// tile_scores_portable's result, rows read in their stored type (no scratch); `ahead`
// spread over the first block of heads
template <typename T>
EKV_CPU_AVX2_TARGET void tile_scores_avx2(const float* q, int group, const T* const* rows, int n, int d,
                                          float* scores, int stride, const TilePrefetch& ahead = {}) {
  detail::for_head_blocks(group, [&](auto heads, int g) {
    detail::scores_heads<decltype(heads)::value>(q + static_cast<std::size_t>(g) * d, d, rows, n,
                                                 scores + static_cast<std::ptrdiff_t>(g) * stride, stride,
                                                 g == 0 ? ahead : TilePrefetch{});
  });
}

// tile_accumulate_portable's result, rows read in their stored type (no scratch); `ahead`
// spread over the first block of heads
template <typename T>
EKV_CPU_AVX2_TARGET void tile_accumulate_avx2(float* acc, const float* rescale, const float* p, int stride,
                                              int group, const T* const* rows, int n, int d,
                                              const TilePrefetch& ahead = {}) {
  detail::for_head_blocks(group, [&](auto heads, int g) {
    detail::accumulate_heads<decltype(heads)::value>(acc + static_cast<std::size_t>(g) * d, d, rescale + g,
                                                     p + static_cast<std::ptrdiff_t>(g) * stride, stride, rows, n,
                                                     g == 0 ? ahead : TilePrefetch{});
  });
}
#endif

// The kernels attend_range runs: AVX2 where the CPU has it, else portable.
template <typename T>
void tile_scores(const float* q, int group, const T* const* rows, int n, int d, float* scores, int stride,
                 float* wide, const TilePrefetch& ahead = {}) {
#if defined(EKV_CPU_GROUP_TILE_AVX2)
  if (cpu_runs_avx2_tiles()) {
    tile_scores_avx2(q, group, rows, n, d, scores, stride, ahead);
    return;
  }
#endif
  tile_scores_portable(q, group, rows, n, d, scores, stride, wide, ahead);
}

template <typename T>
void tile_accumulate(float* acc, const float* rescale, const float* p, int stride, int group, const T* const* rows,
                     int n, int d, float* wide, const TilePrefetch& ahead = {}) {
#if defined(EKV_CPU_GROUP_TILE_AVX2)
  if (cpu_runs_avx2_tiles()) {
    tile_accumulate_avx2(acc, rescale, p, stride, group, rows, n, d, ahead);
    return;
  }
#endif
  tile_accumulate_portable(acc, rescale, p, stride, group, rows, n, d, wide, ahead);
}

}  // namespace ekv

#if defined(__CUDACC__)
#pragma nv_diagnostic pop
#endif
