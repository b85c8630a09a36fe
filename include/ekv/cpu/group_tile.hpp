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
// the first is, and tests/cpu/group_tile_test.cpp compares them. Where the AVX2 kernels
// are compiled, AVX-512 ones are too (function attribute), chosen at run time on CPUs with
// AVX512 F, BW, DQ and VL for head_dims that are multiples of 16 (-DEKV_CPU_NO_AVX512
// leaves them out); EKV_CPU_ISA=avx2 or portable caps the choice at run time.
// Rows hold d values, d a multiple of 8; a tile has at most kAttendTileTokens rows. Each
// kernel takes `ahead`, rows of a later tile to ask for while it computes (TilePrefetch,
// row_ops.hpp): a share at each step of its loop.

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>
#include <type_traits>

#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
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

// The AVX-512 kernels: compiled wherever the AVX2 ones are (function attribute, as theirs),
// chosen at run time by the CPU's features, unless -DEKV_CPU_NO_AVX512
#if defined(EKV_CPU_GROUP_TILE_AVX2) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(EKV_CPU_NO_AVX512)
#define EKV_CPU_GROUP_TILE_AVX512 1
#define EKV_CPU_AVX512_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl")))
#endif

namespace ekv {

// The tile kernels by instruction set, narrowest first.
enum class CpuTileIsa { portable, avx2, avx512 };

inline constexpr const char* kCpuTileIsaNames[] = {"portable", "avx2", "avx512"};

// The widest tile kernels this process may run: the environment's EKV_CPU_ISA (portable,
// avx2 or avx512) caps them, to measure what each gains or to rule one out; unset or
// empty, no cap. Read once; another value throws ekv::Error naming the supported ones.
inline CpuTileIsa cpu_tile_isa_cap() {
  static const CpuTileIsa cap = [] {
    const char* value = std::getenv("EKV_CPU_ISA");
    if (value == nullptr || *value == '\0') return CpuTileIsa::avx512;
    std::string supported;
    for (std::size_t i = 0; i < std::size(kCpuTileIsaNames); ++i) {
      if (std::strcmp(value, kCpuTileIsaNames[i]) == 0) return static_cast<CpuTileIsa>(i);
      supported += (i > 0 ? ", " : "") + std::string(kCpuTileIsaNames[i]);
    }
    throw Error("EKV_CPU_ISA=" + std::string(value) + " not supported; supported: [" + supported + "]");
  }();
  return cap;
}

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

#if defined(EKV_CPU_GROUP_TILE_AVX512)
namespace detail {

// The same products in 512-bit registers, 16 values a piece, for head_dims that are
// multiples of 16. Zen 4 executes a 512-bit multiply-add as two 256-bit halves, so the
// gain there is not in the arithmetic but in the 32 registers: 16 sums per block, so each
// load of q (or of a weight) serves twice the rows (or columns) the AVX2 kernels reach with
// 16 registers, and fewer instructions per value. HeadDim, where not 0, is d known at
// compile time (64, 128 and 256), so that the loop over a row's pieces unrolls.
EKV_CPU_AVX512_TARGET inline __m512 load16_wide(const float* p) { return _mm512_loadu_ps(p); }

EKV_CPU_AVX512_TARGET inline __m512 load16_wide(const __half* p) {
  return _mm512_maskz_cvtph_ps(0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

EKV_CPU_AVX512_TARGET inline __m512 load16_wide(const __nv_bfloat16* p) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xffff, _mm512_maskz_cvtepu16_epi32(0xffff, bits), 16));
}

// a's low and high eight lanes, added. Zero-masked extracts: g++ 12's plain extracts and
// casts warn of an undefined source register (GCC bug 105593), as do its _mm512_cvtph_ps,
// _mm512_cvtepu16_epi32 and _mm512_slli_epi32, used zero-masked above for that.
EKV_CPU_AVX512_TARGET inline __m256 fold_halves(__m512 a) {
  return _mm256_add_ps(_mm512_maskz_extractf32x8_ps(0xff, a, 0), _mm512_maskz_extractf32x8_ps(0xff, a, 1));
}

// G heads x R rows of scores, as scores_block
template <int G, int R, int HeadDim, typename T>
EKV_CPU_AVX512_TARGET void scores_block16(const float* q, int d, const T* const* rows, float* s, int stride) {
  constexpr int kSums = G * R;
  static_assert(kSums <= 16, "16 sums in registers");
  if constexpr (HeadDim != 0) d = HeadDim;
  __m512 acc[kSums];
  #pragma GCC unroll 16
  for (__m512& a : acc) a = _mm512_setzero_ps();
  #pragma GCC unroll 4
  for (int i = 0; i < d; i += 16) {
    __m512 x[R];
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) x[r] = load16_wide(rows[r] + i);
    #pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      const __m512 qg = _mm512_loadu_ps(q + static_cast<std::size_t>(g) * d + i);
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[g * R + r] = _mm512_fmadd_ps(qg, x[r], acc[g * R + r]);
    }
  }
  // eight sums at a time through sum_lanes8, the last eight padded with zeros
  #pragma GCC unroll 2
  for (int b = 0; b < (kSums + 7) / 8; ++b) {
    __m256 halves[8];
    #pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) halves[j] = b * 8 + j < kSums ? fold_halves(acc[b * 8 + j]) : _mm256_setzero_ps();
    alignas(32) float sums[8];
    _mm256_store_ps(sums, sum_lanes8(halves));
    #pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      if (b * 8 + j < kSums) s[static_cast<std::ptrdiff_t>((b * 8 + j) / R) * stride + (b * 8 + j) % R] = sums[j];
    }
  }
}

// Rows per block of scores_block16 for G heads: 16 sums, at most 8 rows (8 rows and a
// piece of q already take 9 more registers)
template <int G>
inline constexpr int kScoreRows16 = G <= 2 ? 8 : 16 / G;

template <int G, int HeadDim, typename T>
EKV_CPU_AVX512_TARGET void scores_heads16(const float* q, int d, const T* const* rows, int n, float* s, int stride,
                                          const TilePrefetch& ahead) {
  constexpr int kRows = kScoreRows16<G>;
  const int blocks = n / kRows + n % kRows;
  int t = 0, block = 0;
  for (; t + kRows <= n; t += kRows) {
    ahead.part(block++, blocks);
    scores_block16<G, kRows, HeadDim>(q, d, rows + t, s + t, stride);
  }
  for (; t < n; ++t) {
    ahead.part(block++, blocks);
    scores_block16<G, 1, HeadDim>(q, d, rows + t, s + t, stride);
  }
}

// G heads x C pieces of 16 columns from column i, as accumulate_block
// `ahead`: part first + t / 8 of `parts` before row t, t a multiple of 8 (two blocks cover
// a row of 128 values: a share per block asked for at once stalled paged attention)
template <int G, int C, typename T>
EKV_CPU_AVX512_TARGET void accumulate_block16(float* acc, int d, int i, const float* rescale, const float* p,
                                              int stride, const T* const* rows, int n, const TilePrefetch& ahead,
                                              int first, int parts) {
  static_assert(G * C <= 16, "16 sums in registers");
  __m512 a[G][C];
  #pragma GCC unroll 4
  for (int g = 0; g < G; ++g) {
    const __m512 r = _mm512_set1_ps(rescale[g]);
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      a[g][c] = _mm512_mul_ps(_mm512_loadu_ps(acc + static_cast<std::size_t>(g) * d + i + 16 * c), r);
    }
  }
  for (int t = 0; t < n; ++t) {
    if (t % 8 == 0) ahead.part(first + t / 8, parts);
    __m512 x[C];
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) x[c] = load16_wide(rows[t] + i + 16 * c);
    #pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      const __m512 w = _mm512_set1_ps(p[static_cast<std::ptrdiff_t>(g) * stride + t]);
      #pragma GCC unroll 8
      for (int c = 0; c < C; ++c) a[g][c] = _mm512_fmadd_ps(w, x[c], a[g][c]);
    }
  }
  #pragma GCC unroll 4
  for (int g = 0; g < G; ++g) {
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(acc + static_cast<std::size_t>(g) * d + i + 16 * c, a[g][c]);
  }
}

// Pieces of 16 columns per block of accumulate_block16 for G heads: 16 sums, at most 8
// pieces (as kScoreRows16)
template <int G>
inline constexpr int kAccumulatePieces16 = G <= 2 ? 8 : 16 / G;

template <int G, int HeadDim, typename T>
EKV_CPU_AVX512_TARGET void accumulate_heads16(float* acc, int d, const float* rescale, const float* p, int stride,
                                              const T* const* rows, int n, const TilePrefetch& ahead) {
  constexpr int kPieces = kAccumulatePieces16<G>;
  if constexpr (HeadDim != 0) d = HeadDim;
  const int blocks = d / (16 * kPieces) + d % (16 * kPieces) / 16;
  const int per_block = (n + 7) / 8, parts = blocks * per_block;
  int i = 0, block = 0;
  #pragma GCC unroll 4
  for (; i + 16 * kPieces <= d; i += 16 * kPieces) {
    accumulate_block16<G, kPieces>(acc, d, i, rescale, p, stride, rows, n, ahead, per_block * block++, parts);
  }
  for (; i < d; i += 16) {
    accumulate_block16<G, 1>(acc, d, i, rescale, p, stride, rows, n, ahead, per_block * block++, parts);
  }
}

// Calls f(std::integral_constant<int, HeadDim>) for d among kCpuTileHeadDims, else with 0.
template <typename F>
void with_head_dim(int d, F&& f) {
  switch (d) {
    case 64: f(std::integral_constant<int, 64>{}); break;
    case 128: f(std::integral_constant<int, 128>{}); break;
    case 256: f(std::integral_constant<int, 256>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;
  }
}

}  // namespace detail

// Whether this CPU runs the AVX-512 kernels (AVX512 F, BW, DQ and VL, with the OS saving
// the 512-bit registers, as __builtin_cpu_supports checks): asked once.
inline bool cpu_runs_avx512_tiles() {
  static const bool runs = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  return runs;
}

// Whether the AVX-512 kernels take rows of d values: d a multiple of 16.
inline bool avx512_tiles_take(int d) { return d % 16 == 0; }

// tile_scores_avx2's result in 512-bit registers; d a multiple of 16
template <typename T>
EKV_CPU_AVX512_TARGET void tile_scores_avx512(const float* q, int group, const T* const* rows, int n, int d,
                                              float* scores, int stride, const TilePrefetch& ahead = {}) {
  detail::with_head_dim(d, [&](auto head_dim) {
    detail::for_head_blocks(group, [&](auto heads, int g) {
      detail::scores_heads16<decltype(heads)::value, decltype(head_dim)::value>(
          q + static_cast<std::size_t>(g) * d, d, rows, n, scores + static_cast<std::ptrdiff_t>(g) * stride, stride,
          g == 0 ? ahead : TilePrefetch{});
    });
  });
}

// tile_accumulate_avx2's result in 512-bit registers; d a multiple of 16
template <typename T>
EKV_CPU_AVX512_TARGET void tile_accumulate_avx512(float* acc, const float* rescale, const float* p, int stride,
                                                  int group, const T* const* rows, int n, int d,
                                                  const TilePrefetch& ahead = {}) {
  detail::with_head_dim(d, [&](auto head_dim) {
    detail::for_head_blocks(group, [&](auto heads, int g) {
      detail::accumulate_heads16<decltype(heads)::value, decltype(head_dim)::value>(
          acc + static_cast<std::size_t>(g) * d, d, rescale + g, p + static_cast<std::ptrdiff_t>(g) * stride, stride,
          rows, n, g == 0 ? ahead : TilePrefetch{});
    });
  });
}
#endif

// The kernels tile_scores and tile_accumulate run for rows of d values: AVX-512 where the
// CPU has it and d is a multiple of 16, else AVX2 where it has that, else portable, each
// within cpu_tile_isa_cap().
inline CpuTileIsa cpu_tile_isa(int d) {
  const CpuTileIsa cap = cpu_tile_isa_cap();
#if defined(EKV_CPU_GROUP_TILE_AVX512)
  if (cap >= CpuTileIsa::avx512 && avx512_tiles_take(d) && cpu_runs_avx512_tiles()) return CpuTileIsa::avx512;
#endif
#if defined(EKV_CPU_GROUP_TILE_AVX2)
  if (cap >= CpuTileIsa::avx2 && cpu_runs_avx2_tiles()) return CpuTileIsa::avx2;
#endif
  (void)cap;
  (void)d;
  return CpuTileIsa::portable;
}

// The kernels attend_range runs, as cpu_tile_isa(d) says.
template <typename T>
void tile_scores(const float* q, int group, const T* const* rows, int n, int d, float* scores, int stride,
                 float* wide, const TilePrefetch& ahead = {}) {
  switch (cpu_tile_isa(d)) {
#if defined(EKV_CPU_GROUP_TILE_AVX512)
    case CpuTileIsa::avx512: tile_scores_avx512(q, group, rows, n, d, scores, stride, ahead); return;
#endif
#if defined(EKV_CPU_GROUP_TILE_AVX2)
    case CpuTileIsa::avx2: tile_scores_avx2(q, group, rows, n, d, scores, stride, ahead); return;
#endif
    default: tile_scores_portable(q, group, rows, n, d, scores, stride, wide, ahead); return;
  }
}

template <typename T>
void tile_accumulate(float* acc, const float* rescale, const float* p, int stride, int group, const T* const* rows,
                     int n, int d, float* wide, const TilePrefetch& ahead = {}) {
  switch (cpu_tile_isa(d)) {
#if defined(EKV_CPU_GROUP_TILE_AVX512)
    case CpuTileIsa::avx512: tile_accumulate_avx512(acc, rescale, p, stride, group, rows, n, d, ahead); return;
#endif
#if defined(EKV_CPU_GROUP_TILE_AVX2)
    case CpuTileIsa::avx2: tile_accumulate_avx2(acc, rescale, p, stride, group, rows, n, d, ahead); return;
#endif
    default: tile_accumulate_portable(acc, rescale, p, stride, group, rows, n, d, wide, ahead); return;
  }
}

}  // namespace ekv

#if defined(__CUDACC__)
#pragma nv_diagnostic pop
#endif
