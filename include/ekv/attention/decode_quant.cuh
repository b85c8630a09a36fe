#pragma once
// Decode attention over quantized storage (QuantKVView: FP8 E4M3, Q8_0, Q4_0) on tensor
// cores, for half and bfloat16 queries: plan_quant_decode and run_decode's QuantKVView
// overload, with run_decode's semantics (split KV, merge in the last CTA, graphs).
//
// Where the conversion happens, and why there: K and V are staged in shared memory as
// stored, codes and scales (the fewer bytes are what the step reads from DRAM, and the
// cp.async pipeline keeps them in flight, four stages deep as they are smaller). Once a
// warp's copies of a tile land, it converts in registers, never through a dequantized
// copy in global memory, and rounds no value: every code is exact in T, and the scales
// are applied in float or to P.
// - K goes from its codes straight into the score MMAs' B fragments (each lane's one load
//   of code bytes gives its fragments for a 32-wide block, the query fragments loaded in
//   the same permuted order: detail::q_pair). For Q8_0 and Q4_0 with half queries a value
//   is its byte or nibble under the exponent of 1024, one PRMT or LOP3 a pair with no
//   subtraction: each group's two MMAs start from minus the query's dot product with that
//   offset (detail::group_code_starts), so they sum q . codes, and the token's group scale
//   multiplies that sum in float (detail::group_scores). FP8's head scale joins the
//   softmax scale.
// - V, which the MMA wants transposed, is converted 8 code values a lane into a T tile in
//   the dense kernel's padded layout while the score MMAs run. Q8_0's and Q4_0's group
//   scales multiply P instead, per 32 dimensions (detail::GroupScaledP: P x d rounded to
//   T, the one rounding dense decode does not take), FP8's head scale the output.
// The online softmax, P V and the merges are the dense kernel's (decode_tc_fold).

#include <cstdint>
#include <string>
#include <type_traits>

#include "ekv/attention/decode.cuh"
#include "ekv/attention/decode_kernel.cuh"
#include "ekv/attention/decode_tc_block.cuh"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/core/dispatch.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/kernels/dependent_launch.cuh"
#include "ekv/kernels/async_copy.cuh"
#include "ekv/kernels/tile_pipeline.cuh"

namespace ekv {

// The formats this kernel reads; the float formats are dense decode's.
inline constexpr KVStorage kQuantDecodeStorages[] = {KVStorage::kFp8E4M3, KVStorage::kQ8_0, KVStorage::kQ4_0};

template <typename T, int HeadDim, KVStorage S>
struct DecodeQuantTraits {
  using Dense = DecodeTcTraits<T, HeadDim>;
  static constexpr int kWarps = Dense::kWarps;
  static constexpr int kWarpTokens = Dense::kWarpTokens;
  static constexpr int kCodeBytes = HeadDim * (S == KVStorage::kQ4_0 ? 4 : 8) / 8;  // one row's codes
  static constexpr int kGroups = S == KVStorage::kFp8E4M3 ? 0 : HeadDim / kQuantGroup;
  static constexpr int kScaleBytes = kGroups * 2;  // one row's float16 scales
  static constexpr int kStages = 4;
  // a staged code row's pitch: 32 bytes of padding (16 for Q4_0) put the rows that one
  // K fragment load reads in distinct banks (detail::quant_scores)
  static constexpr int kCodePitch = kCodeBytes + (S == KVStorage::kQ4_0 ? 16 : 32);
  // per warp and stage: K's then V's codes [16][kCodePitch], then K's then V's scales
  static constexpr int kWarpStageBytes = 2 * kWarpTokens * (kCodePitch + kScaleBytes);
  static constexpr int kPipelineBytes = kStages * kWarps * kWarpStageBytes;
  // each warp's dequantized V [16][Dense::kRowElems], after the pipeline (K goes from its
  // codes to the MMAs' registers)
  static constexpr int kWarpTileElems = kWarpTokens * Dense::kRowElems;
  static constexpr int kSmemBytes = kPipelineBytes + kWarps * kWarpTileElems * static_cast<int>(sizeof(T));
  static_assert(kCodeBytes % 16 == 0, "code rows are whole 16-byte copies");
  static_assert(kScaleBytes % 4 == 0, "scale rows are whole 4-byte copies");
  static_assert(kWarpStageBytes % 16 == 0, "every stage starts 16-byte aligned");
  static_assert(sizeof(DecodeWarpStates<kWarps, Dense::kHeads, HeadDim>) <= kSmemBytes,
                "the merge fits in the kernel's shared memory");
};

namespace detail {

// Four code bytes b0..b3 of `w` (Q8_0: as int8 + 128, Q4_0: as nibbles n) made T pairs
// (b0, b1), (b2, b3) of the codes' values, the byte minus `bias` (128 or 8), exactly: a
// byte under a half's or a float's exponent is that power of two plus the byte, from
// which the power and the bias are subtracted without rounding (|value| <= 128 is exact
// in bfloat16 too).
template <typename T>
__device__ __forceinline__ void unbiased_pairs(std::uint32_t w, float bias, std::uint32_t (&out)[2]) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 offset = __float2half2_rn(1024.0f + bias);  // 0x64 over a byte: the half 1024 + byte
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      const std::uint32_t bits = __byte_perm(w, 0x64646464u, p == 0 ? 0x4140u : 0x4342u);
      const __half2 x = __hsub2(*reinterpret_cast<const __half2*>(&bits), offset);
      out[p] = *reinterpret_cast<const std::uint32_t*>(&x);
    }
  } else {
    float x[4];  // 0x4B000000 over a byte: the float 2^23 + byte
#pragma unroll
    for (int b = 0; b < 4; ++b) x[b] = __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7440u | b)) - (8388608.0f + bias);
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      const __nv_bfloat162 y = __floats2bfloat162_rn(x[2 * p], x[2 * p + 1]);
      out[p] = *reinterpret_cast<const std::uint32_t*>(&y);
    }
  }
}

// Eight code values as four T pairs v, in byte order, from two words of code bytes: FP8
// codes as stored, Q8_0's as int8 + 128, Q4_0's as nibbles; all exact in T (E4M3 is a
// subset of half and of bfloat16). Scales are applied elsewhere: FP8's head scale to the
// scores and the output, Q8_0's and Q4_0's group scales to the scores and to P.
template <typename T, KVStorage S>
__device__ __forceinline__ void code_pairs(const std::uint32_t (&words)[2], std::uint32_t (&v)[4]) {
  if constexpr (S == KVStorage::kFp8E4M3) {
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const auto pair = static_cast<__nv_fp8x2_storage_t>(words[p / 2] >> (16 * (p % 2)));
      const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(pair, __NV_E4M3);
      if constexpr (std::is_same_v<T, __half>) {
        v[p] = static_cast<std::uint32_t>(h.x) | static_cast<std::uint32_t>(h.y) << 16;
      } else {
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&h));
        const __nv_bfloat162 b = __floats2bfloat162_rn(f.x, f.y);
        v[p] = *reinterpret_cast<const std::uint32_t*>(&b);
      }
    }
  } else {
    const float bias = S == KVStorage::kQ8_0 ? 128.0f : 8.0f;
    unbiased_pairs<T>(words[0], bias, reinterpret_cast<std::uint32_t(&)[2]>(v[0]));
    unbiased_pairs<T>(words[1], bias, reinterpret_cast<std::uint32_t(&)[2]>(v[2]));
  }
}

// Eight bytes of FP8 or Q8_0 codes at `p` (8-byte aligned) as two words in code_pairs'
// form (Q8_0's sign bits flipped: int8 + 128).
template <KVStorage S>
__device__ __forceinline__ void load_code_words(const std::uint8_t* p, std::uint32_t (&words)[2]) {
  const uint2 w = *reinterpret_cast<const uint2*>(p);
  const std::uint32_t flip = S == KVStorage::kQ8_0 ? 0x80808080u : 0u;
  words[0] = w.x ^ flip;
  words[1] = w.y ^ flip;
}

// Eight values of a stored row, from its codes (in shared memory), as T into out (16-byte
// aligned, shared memory): values 8 c .. 8 c + 7 of a group (c = 0..3) whose codes start at
// `group`; code_pairs' values.
template <typename T, KVStorage S>
__device__ __forceinline__ void codes_chunk_to(const std::uint8_t* group, int c, T* out) {
  std::uint32_t words[2], v[4];
  if constexpr (S == KVStorage::kQ4_0) {
    // values 0..15 are the low nibbles of the group's 16 bytes, 16..31 the high
    const uint2 w = *reinterpret_cast<const uint2*>(group + 8 * (c % 2));
    const int shift = c < 2 ? 0 : 4;
    words[0] = (w.x >> shift) & 0x0F0F0F0Fu;
    words[1] = (w.y >> shift) & 0x0F0F0F0Fu;
  } else {
    load_code_words<S>(group + 8 * c, words);
  }
  code_pairs<T, S>(words, v);
  *reinterpret_cast<uint4*>(out) = make_uint4(v[0], v[1], v[2], v[3]);
}

// The K dimension as the quantized kernel feeds it to the MMAs. S = Q K^T sums over the
// head dimension in any order, so each lane's B fragments for the two k16 steps of a
// 32-wide block c (one Q8_0 or Q4_0 group) are values its one load of code bytes gives:
// 8 contiguous codes 32 c + 8 t .. + 7 for FP8 and Q8_0 (t = lane % 4), the 4 bytes at
// 16 c + 4 t for Q4_0 (values 32 c + 4 t .. + 3 in their low nibbles, + 16 in the high).
// q_pair(c, step, half) gives the head-dimension columns of the pair that the MMA's k
// rows 2 t, 2 t + 1 (half 0) or 2 t + 8, 2 t + 9 (half 1) of step `step` (0, 1) of block
// c hold; the query's A fragments are loaded with the same map.
template <KVStorage S>
__device__ __forceinline__ int2 q_pair(int c, int step, int half) {
  const int t = threadIdx.x % 4;
  if constexpr (S == KVStorage::kQ4_0) {
    // nibble pairs of bytes (j, j + 2): low nibbles in step 0, high in step 1 (group_codes)
    const int first = 32 * c + 16 * step + 4 * t + half;
    return make_int2(first, first + 2);
  }
  const int first = 32 * c + 8 * t + 4 * step + 2 * half;
  return make_int2(first, first + 1);
}

// How Q8_0's and Q4_0's K codes enter the score MMAs (group_codes): each value is its
// code plus code_offset(step), exact in T, against the query scaled by q_scale(step).
// Half: a byte or a nibble under the exponent of 1024 (one PRMT or LOP3 per pair, no
// subtraction); Q4_0's high nibbles stay in place, 16 x n, against q / 16. Bfloat16: the
// codes themselves (Q8_0, as code_pairs makes them) or 128 + n (Q4_0).
template <typename T, KVStorage S>
struct GroupCodes {
  static constexpr bool kHalf = std::is_same_v<T, __half>;
  static constexpr bool kQ4 = S == KVStorage::kQ4_0;
  __device__ static constexpr float code_offset(int step) {
    if constexpr (kHalf) return kQ4 && step == 0 ? 1032.0f : 1152.0f;
    return kQ4 ? 136.0f : 0.0f;
  }
  __device__ static constexpr float q_scale(int step) { return kHalf && kQ4 && step == 1 ? 0.0625f : 1.0f; }
};

// A lane's B fragments b[0..3] (step 0: b[0], b[1]; step 1: b[2], b[3]) of one Q8_0 or
// Q4_0 group of K, from the group's codes in shared memory (`codes`: the group's first
// byte of the lane's token), in q_pair's order, as GroupCodes says.
template <typename T, KVStorage S>
__device__ __forceinline__ void group_codes(const std::uint8_t* codes, std::uint32_t (&b)[4]) {
  const int t = threadIdx.x % 4;
  if constexpr (S == KVStorage::kQ4_0) {
    const std::uint32_t w = *reinterpret_cast<const std::uint32_t*>(codes + 4 * t), w8 = w >> 8;
    if constexpr (std::is_same_v<T, __half>) {
      b[0] = (w & 0x000F000Fu) | 0x64006400u;  // 1024 + n of bytes 0 and 2
      b[1] = (w8 & 0x000F000Fu) | 0x64006400u;
      b[2] = (w & 0x00F000F0u) | 0x64006400u;  // 1024 + 16 n of the high nibbles
      b[3] = (w8 & 0x00F000F0u) | 0x64006400u;
    } else {
      b[0] = (w & 0x000F000Fu) | 0x43004300u;  // bfloat16 128 + n
      b[1] = (w8 & 0x000F000Fu) | 0x43004300u;
      b[2] = ((w >> 4) & 0x000F000Fu) | 0x43004300u;
      b[3] = ((w >> 12) & 0x000F000Fu) | 0x43004300u;
    }
  } else {
    std::uint32_t words[2];
    load_code_words<S>(codes + 8 * t, words);
    if constexpr (std::is_same_v<T, __half>) {
#pragma unroll
      for (int p = 0; p < 4; ++p) b[p] = __byte_perm(words[p / 2], 0x64646464u, p % 2 == 0 ? 0x4140u : 0x4342u);
    } else {
      code_pairs<T, S>(words, b);
    }
  }
}

// Query fragments (A operand, 16 heads x HeadDim) of heads first_head .. + heads in
// q_pair's order, Q4_0's half step-1 columns scaled as GroupCodes says (by 1/16: exact);
// rows past `heads` are zero.
template <typename T, int HeadDim, KVStorage S>
__device__ __forceinline__ void load_q_fragments_for(const T* q_rows, int heads,
                                                     std::uint32_t (&qa)[HeadDim / 16][4]) {
  const int row = threadIdx.x % 32 / 4;
  auto pair = [&](int r, int2 c, float scale) -> std::uint32_t {
    if (r >= heads) return 0u;
    const float lo = DTypeTraits<T>::to_float(q_rows[r * HeadDim + c.x]) * scale;
    const float hi = DTypeTraits<T>::to_float(q_rows[r * HeadDim + c.y]) * scale;
    return pack2<T>(lo, hi);
  };
#pragma unroll
  for (int k = 0; k < HeadDim / 16; ++k) {
    const float scale = S == KVStorage::kFp8E4M3 ? 1.0f : GroupCodes<T, S>::q_scale(k % 2);
    const int2 lo = q_pair<S>(k / 2, k % 2, 0), hi = q_pair<S>(k / 2, k % 2, 1);
    qa[k][0] = pair(row, lo, scale);
    qa[k][1] = pair(row + 8, lo, scale);
    qa[k][2] = pair(row, hi, scale);
    qa[k][3] = pair(row + 8, hi, scale);
  }
}

// The score MMAs' start for each group c of Q8_0 and Q4_0: minus the dot product of the
// query's group (as its fragments hold it) with GroupCodes' offsets, for the rows this
// lane's accumulators hold (lane / 4: elements 0, 1; + 8: elements 2, 3), so that the
// MMAs' sum is q . codes.
template <typename T, int HeadDim, KVStorage S>
__device__ __forceinline__ void group_code_starts(const std::uint32_t (&qa)[HeadDim / 16][4],
                                                  float (&start)[HeadDim / 32][4]) {
  auto sum2 = [](std::uint32_t pair) {
    const T* v = reinterpret_cast<const T*>(&pair);
    return DTypeTraits<T>::to_float(v[0]) + DTypeTraits<T>::to_float(v[1]);
  };
#pragma unroll
  for (int c = 0; c < HeadDim / 32; ++c) {
    float rows[2] = {0.0f, 0.0f};
#pragma unroll
    for (int step = 0; step < 2; ++step) {
      const std::uint32_t(&a)[4] = qa[2 * c + step];
      const float offset = GroupCodes<T, S>::code_offset(step);
      rows[0] += offset * (sum2(a[0]) + sum2(a[2]));
      rows[1] += offset * (sum2(a[1]) + sum2(a[3]));
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {  // the four lanes of a row hold its columns
      rows[r] += __shfl_xor_sync(0xFFFFFFFFu, rows[r], 1);
      rows[r] += __shfl_xor_sync(0xFFFFFFFFu, rows[r], 2);
    }
    start[c][0] = start[c][1] = -rows[0];
    start[c][2] = start[c][3] = -rows[1];
  }
}

// FP8's S = Q K^T for one warp's 16 staged tokens, K straight from its codes (k_codes:
// row 0 of the stage, rows Pitch bytes apart) into the MMAs' B fragments, in q_pair's
// order; the head's scale is the caller's.
template <typename T, int HeadDim, int Pitch>
__device__ __forceinline__ void fp8_scores(const std::uint8_t* k_codes, const std::uint32_t (&qa)[HeadDim / 16][4],
                                           float (&s)[2][4]) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int n = 0; n < 2; ++n) {
    const int row = n * 8 + g;  // the token this lane's B fragments hold
#pragma unroll
    for (int c = 0; c < HeadDim / 32; ++c) {
      std::uint32_t words[2], b[4];
      load_code_words<KVStorage::kFp8E4M3>(k_codes + row * Pitch + 32 * c + 8 * t, words);
      code_pairs<T, KVStorage::kFp8E4M3>(words, b);
      mma_16816<T>(s[n], qa[2 * c], b[0], b[1]);
      mma_16816<T>(s[n], qa[2 * c + 1], b[2], b[3]);
    }
  }
}

// Groups float16 scales at p (4-byte aligned) as floats.
template <int Groups>
__device__ __forceinline__ void load_group_scales(const __half* p, float (&d)[Groups]) {
  static_assert(Groups % 2 == 0, "scales are read in pairs");
#pragma unroll
  for (int i = 0; i < Groups / 2; ++i) {
    const float2 f = __half22float2(reinterpret_cast<const __half2*>(p)[i]);
    d[2 * i] = f.x;
    d[2 * i + 1] = f.y;
  }
}

// Q8_0's and Q4_0's S = Q K^T for one warp's 16 staged tokens: per group c, two MMAs from
// the group's codes (group_codes) onto start[c] give q . codes exactly summed in float,
// which the token's group scale multiplies into the score (k_scales: the rows' scales,
// Groups a row). No value is rounded: the scores are those of the dequantized values.
template <typename T, int HeadDim, KVStorage S, int Pitch, int Groups>
__device__ __forceinline__ void group_scores(const std::uint8_t* k_codes, const __half* k_scales,
                                             const std::uint32_t (&qa)[HeadDim / 16][4],
                                             const float (&start)[HeadDim / 32][4], float (&s)[2][4]) {
  constexpr int kGroupBytes = S == KVStorage::kQ4_0 ? kQuantGroup / 2 : kQuantGroup;  // one group's codes
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int n = 0; n < 2; ++n) {
    const int row = n * 8 + g;  // the token this lane's B fragments hold
    float d[2][Groups];         // the scales of the tokens its accumulators hold
    load_group_scales<Groups>(k_scales + (n * 8 + 2 * t) * Groups, d[0]);
    load_group_scales<Groups>(k_scales + (n * 8 + 2 * t + 1) * Groups, d[1]);
#pragma unroll
    for (int c = 0; c < Groups; ++c) {
      std::uint32_t b[4];
      group_codes<T, S>(k_codes + row * Pitch + c * kGroupBytes, b);
      float acc[4];
      mma_16816<T>(acc, qa[2 * c], b[0], b[1], start[c]);
      mma_16816<T>(acc, qa[2 * c + 1], b[2], b[3]);
      s[n][0] = fmaf(d[0][c], acc[0], s[n][0]);
      s[n][1] = fmaf(d[1][c], acc[1], s[n][1]);
      s[n][2] = fmaf(d[0][c], acc[2], s[n][2]);
      s[n][3] = fmaf(d[1][c], acc[3], s[n][3]);
    }
  }
}

// decode_tc_fold's P map for Q8_0 and Q4_0: V's tile holds the codes' values, so each
// span of 32 dimensions (one group) takes P times its tokens' group scales, rounded to T
// (v_scales: the warp's 16 staged rows of V's scales, Groups a row). This lane's P
// fragments hold tokens 2 t, 2 t + 1 (registers 0, 1) and 2 t + 8, 2 t + 9 (2, 3).
template <typename T, int Groups>
struct GroupScaledP {
  static constexpr int kGroups = Groups;
  const __half* v_scales;

  __device__ void operator()(const std::uint32_t (&pa)[4], std::uint32_t (&out)[Groups][4]) const {
    using T2 = std::conditional_t<std::is_same_v<T, __half>, __half2, __nv_bfloat162>;
    const int t = threadIdx.x % 4;
    float d[4][Groups];
#pragma unroll
    for (int j = 0; j < 4; ++j) load_group_scales<Groups>(v_scales + (2 * t + j % 2 + 8 * (j / 2)) * Groups, d[j]);
#pragma unroll
    for (int c = 0; c < Groups; ++c) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {  // tokens 2 t, 2 t + 1, then 2 t + 8, 2 t + 9
        const std::uint32_t dp = pack2<T>(d[2 * half][c], d[2 * half + 1][c]);
        const T2 scale = *reinterpret_cast<const T2*>(&dp);
#pragma unroll
        for (int r = 0; r < 2; ++r) {  // rows lane / 4 and lane / 4 + 8
          const T2 p = __hmul2(*reinterpret_cast<const T2*>(&pa[2 * half + r]), scale);
          out[c][2 * half + r] = *reinterpret_cast<const std::uint32_t*>(&p);
        }
      }
    }
  }
};

// Stages a warp's 16 rows of K then of V (RowBytes each, Pitch bytes apart in dst) from
// pools k and v, Piece bytes (16 or 4) a lane: each lane copies fixed pieces of every few
// rows. row_offset(token) is the byte offset in the pool of the slice's token `token`
// (K and V share positions); tokens at or past `valid` are zero-filled.
template <int RowBytes, int Pitch, int Piece, typename RowOffset>
__device__ __forceinline__ void stage_quant_rows(std::uint8_t* dst, const std::uint8_t* k, const std::uint8_t* v,
                                                 RowOffset&& row_offset, int valid) {
  static_assert(Piece == 16 || Piece == 4, "cp.async pieces of 16 or 4 bytes");
  constexpr int kRows = 16, kPieces = RowBytes / Piece, kRowStep = 32 / kPieces;
  static_assert(RowBytes % Piece == 0 && 32 % kPieces == 0, "a row's pieces fit a warp");
  const int lane = threadIdx.x % 32, piece = lane % kPieces, row0 = lane / kPieces;
#pragma unroll
  for (int r = 0; r < 2 * kRows; r += kRowStep) {
    const int row = row0 + r, token = row % kRows;
    const std::uint8_t* src = (row < kRows ? k : v) + row_offset(token) + piece * Piece;
    std::uint8_t* to = dst + row * Pitch + piece * Piece;
    const int bytes = token < valid ? Piece : 0;
    if constexpr (Piece == 16) {
      async_copy_16_zfill(to, src, bytes);
    } else {
      async_copy_4_zfill(to, src, bytes);
    }
  }
}

}  // namespace detail

// decode_tc_tiles over a quantized view: each warp stages its 16 tokens' codes and scales
// (zeros past `end`, which give scores and P of 0), takes its scores from K's codes,
// converts V's codes into its own T tile, and folds the tile as dense decode does (V's
// group scales through P). `smem` is Traits::kSmemBytes, 16-byte aligned.
template <typename T, int HeadDim, KVStorage S>
__device__ __forceinline__ void decode_tc_quant_tiles(const QuantKVView& kv, int seq, int kv_head,
                                                      const TokenTiles& tiles, const T* q_rows, int heads,
                                                      float scale_log2, DecodeTcState<T, HeadDim>& state,
                                                      unsigned char* smem) {
  using Traits = DecodeQuantTraits<T, HeadDim, S>;
  using Dense = typename Traits::Dense;
  constexpr int kRows = Traits::kWarpTokens;
  constexpr bool kGrouped = Traits::kGroups > 0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  std::uint32_t qa[HeadDim / 16][4];
  float start[kGrouped ? HeadDim / 32 : 1][4];
  auto stage_bytes = [&](int slot) { return smem + (slot * Traits::kWarps + warp) * Traits::kWarpStageBytes; };
  T* v_tile = reinterpret_cast<T*>(smem + Traits::kPipelineBytes) + warp * Traits::kWarpTileElems;
  auto warp_first = [&](int i) { return tiles.first(i) + warp * kRows; };
  // FP8's tiles hold the codes' values: K's head scale joins the softmax scale, V's
  // multiplies the output (below)
  const float k_scale_log2 = S == KVStorage::kFp8E4M3 ? scale_log2 * kv.head_scale(false, kv_head) : scale_log2;
  // a warp's 16 tokens start on a multiple of 16 (splits start on tile boundaries): where
  // blocks are whole multiples of 16 tokens (or the view is contiguous) they lie in one
  // block, rows token_stride apart, and one lookup serves them all
  const bool one_block = kv.codes.block_table == nullptr || kv.codes.block_len % kRows == 0;

  auto stage = [&](int i, int slot) {
    const int first = warp_first(i);
    if (first >= tiles.end) return;
    std::uint8_t* codes = stage_bytes(slot);
    std::uint8_t* scales = codes + 2 * kRows * Traits::kCodePitch;
    const int valid = tiles.end - first;
    auto stage_rows = [&](auto code_offset, auto scale_offset) {
      detail::stage_quant_rows<Traits::kCodeBytes, Traits::kCodePitch, 16>(codes, kv.codes.k, kv.codes.v,
                                                                           code_offset, valid);
      if constexpr (kGrouped) {
        detail::stage_quant_rows<Traits::kScaleBytes, Traits::kScaleBytes, 4>(
            scales, reinterpret_cast<const std::uint8_t*>(kv.scales.k),
            reinterpret_cast<const std::uint8_t*>(kv.scales.v), scale_offset, valid);
      }
    };
    if (one_block) {
      const KVView<std::uint8_t>::PoolRow at = kv.codes.pool_row(seq, kv_head, first);
      const std::int64_t code_base = kv.codes.row_offset(at, kv_head);
      const std::int64_t scale_base = kGrouped ? kv.scales.row_offset({at.block, at.within}, kv_head) : 0;
      stage_rows([&](int token) { return code_base + token * kv.codes.token_stride; },
                 [&](int token) { return (scale_base + token * kv.scales.token_stride) * sizeof(__half); });
    } else {
      // each lane looks up token lane % 16 once and hands the offsets to the lanes copying it
      const int my_token = lane % kRows;
      std::int64_t my_code = 0, my_scale = 0;
      if (my_token < valid) {
        const KVView<std::uint8_t>::PoolRow at = kv.codes.pool_row(seq, kv_head, first + my_token);
        my_code = kv.codes.row_offset(at, kv_head);
        if constexpr (kGrouped) my_scale = kv.scales.row_offset({at.block, at.within}, kv_head) * sizeof(__half);
      }
      stage_rows([&](int token) { return __shfl_sync(0xFFFFFFFFu, my_code, token); },
                 [&](int token) { return __shfl_sync(0xFFFFFFFFu, my_scale, token); });
    }
  };
  auto consume = [&](int i, int slot) {
    const int first = warp_first(i);
    if (first >= tiles.end) return;
    const std::uint8_t* codes = stage_bytes(slot);
    const auto* scales = reinterpret_cast<const __half*>(codes + 2 * kRows * Traits::kCodePitch);
    float sc[2][4] = {};
    if constexpr (kGrouped) {
      detail::group_scores<T, HeadDim, S, Traits::kCodePitch, Traits::kGroups>(codes, scales, qa, start, sc);
    } else {
      detail::fp8_scores<T, HeadDim, Traits::kCodePitch>(codes, qa, sc);
    }
    // V: 8 values of a row a lane, into the warp's tile, while the MMAs run: a row's chunks
    // on consecutive lanes, so that the code loads (8 bytes) and the 16-byte stores are
    // conflict-free; each lane keeps its chunk and steps over the rows, so that every
    // address is a base and an immediate offset
    constexpr int kLanesPerRow = HeadDim / 8, kRowStep = 32 / kLanesPerRow;
    constexpr int kGroupCodeBytes = Traits::kCodeBytes / (HeadDim / kQuantGroup);
    static_assert(kLanesPerRow <= 32 && 32 % kLanesPerRow == 0, "a row's chunks fit a warp");
    const int chunk = lane % kLanesPerRow, row0 = lane / kLanesPerRow;
    const std::uint8_t* src = codes + (kRows + row0) * Traits::kCodePitch + chunk / 4 * kGroupCodeBytes;
    T* dst = v_tile + row0 * Dense::kRowElems + chunk * 8;
#pragma unroll
    for (int r = 0; r < kRows; r += kRowStep) {
      detail::codes_chunk_to<T, S>(src + r * Traits::kCodePitch, chunk % 4, dst + r * Dense::kRowElems);
    }
    __syncwarp();  // the warp's V tile is whole before ldmatrix reads it
    if constexpr (kGrouped) {
      const detail::GroupScaledP<T, Traits::kGroups> p_map{scales + kRows * Traits::kGroups};
      decode_tc_fold<T, HeadDim>(sc, v_tile, first, tiles.end, k_scale_log2, state, p_map);
    } else {
      decode_tc_fold<T, HeadDim>(sc, v_tile, first, tiles.end, k_scale_log2, state);
    }
    __syncwarp();  // and read by every lane before the next tile overwrites it
  };
  pipeline_prologue<Traits::kStages>(tiles.count, stage);
  detail::load_q_fragments_for<T, HeadDim, S>(q_rows, heads, qa);
  if constexpr (kGrouped) detail::group_code_starts<T, HeadDim, S>(qa, start);
  pipeline_run<Traits::kStages, TileOwner::kWarp>(tiles.count, stage, consume);
  if constexpr (S == KVStorage::kFp8E4M3) {
    const float v_s = kv.head_scale(true, kv_head);
#pragma unroll
    for (int n = 0; n < Dense::kDimTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) state.o[n][e] *= v_s;
    }
  }
}
template <typename T, int HeadDim, KVStorage S>
__global__ void __launch_bounds__(DecodeTcTraits<T, HeadDim>::kCtaThreads)
    decode_tc_quant_kernel(const __grid_constant__ DecodeParams<T, QuantKVView> p) {
  using Traits = DecodeTcTraits<T, HeadDim>;
  extern __shared__ __align__(16) unsigned char smem[];
  wait_for_prior_grids();  // launched by launch_dependent
  let_dependents_launch();
  const DecodeCta c = decode_cta(p, Traits::kHeads, Traits::kTileTokens);
  DecodeTcState<T, HeadDim> state;
  state.init();
  decode_tc_quant_tiles<T, HeadDim, S>(p.kv, c.seq, c.kv_head, c.tiles,
                                       p.q + (static_cast<std::int64_t>(c.seq) * p.q_heads + c.first_head) * HeadDim,
                                       c.heads, p.scale_log2, state, smem);
  finish_tc_cta<T, HeadDim>(state, p, c, smem);
}

namespace detail {

// Calls f(kernel, cta_threads, dynamic_smem_bytes) for the quantized decode kernel of
// (T, HeadDim, storage).
template <typename T, int HeadDim, typename F>
void with_quant_decode_kernel(KVStorage storage, F&& f) {
  dispatch<kQuantDecodeStorages>("kv storage", "quantized decode", storage, [&](auto s) {
    constexpr KVStorage kS = decltype(s)::value;
    f(decode_tc_quant_kernel<T, HeadDim, kS>, DecodeTcTraits<T, HeadDim>::kCtaThreads,
      DecodeQuantTraits<T, HeadDim, kS>::kSmemBytes);
  });
}

}  // namespace detail

// A plan for decode over `storage` (FP8, Q8_0 or Q4_0; q and o in problem.dtype, half or
// bfloat16): plan_decode's split count and workspace, the quantized kernel's shared
// memory opted into. Throws ekv::Error for an unsupported problem or storage.
inline DecodePlan plan_quant_decode(const DecodeProblem& problem, KVStorage storage, const DeviceInfo& device,
                                    int num_splits = 0) {
  if (problem.dtype != DType::kFloat16 && problem.dtype != DType::kBFloat16) {
    throw Error(std::string("plan_quant_decode: dtype=") + to_string(problem.dtype) +
                " not supported; supported: float16, bfloat16 (the tensor-core kernel)");
  }
  if (Support s = check_supported<kQuantDecodeStorages>("kv storage", "quantized decode", storage); !s) {
    throw Error("plan_quant_decode: " + s.why);
  }
  if (Support s = kv_storage_supports(storage, problem.head_dim); !s) throw Error("plan_quant_decode: " + s.why);
  DecodePlan plan = plan_decode(problem, device, num_splits, DecodeCopy::kCpAsync);
  plan.kv_storage = storage;
  detail::dispatch_decode(problem.dtype, problem.head_dim, [&](auto type, auto dim) {
    using T = typename decltype(type)::type;
    if constexpr (kDecodeOnTensorCores<T>) {
      detail::with_quant_decode_kernel<T, decltype(dim)::value>(storage, [&](auto kernel, int, int smem) {
        EKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
                       "plan_quant_decode: cannot give the decode kernel " + std::to_string(smem) +
                           " bytes of shared memory");
      });
    }
  });
  return plan;
}

// run_decode over a quantized view, for a plan from plan_quant_decode: one launch, never
// allocates or synchronises. Throws ekv::Error where the view disagrees with the plan.
template <typename T>
void run_decode(const DecodePlan& plan, const QuantKVView& kv, const T* q, T* o, float* lse, void* workspace,
                const Stream& stream) {
  static_assert(kDecodeOnTensorCores<T>, "quantized decode: T must be half or bfloat16");
  const DecodeProblem& p = plan.problem;
  if (plan.kv_storage != kv.storage) {
    const char* planned = is_quantized(plan.kv_storage) ? to_string(plan.kv_storage) : "dense storage";
    throw Error(std::string("run_decode: the view stores ") + to_string(kv.storage) + ", the plan is for " + planned +
                " (plan_quant_decode)");
  }
  if (kDTypeOf<T> != p.dtype) {
    throw Error(std::string("run_decode: the plan is for ") + to_string(p.dtype) + " queries, not " +
                to_string(kDTypeOf<T>));
  }
  if (kv.batch() != p.batch || kv.kv_heads() != p.kv_heads || kv.head_dim != p.head_dim) {
    throw Error("run_decode: the view's batch, kv_heads or head_dim differ from the plan's");
  }
  if (kv.capacity() < p.max_seq_len) {
    throw Error("run_decode: the view holds " + std::to_string(kv.capacity()) + " tokens per sequence, the plan " +
                std::to_string(p.max_seq_len));
  }
  if (!kv.has_rows() || !kv.codes.has_lengths() || q == nullptr ||
      o == nullptr || lse == nullptr) {
    throw Error("run_decode: null K or V codes, scales, lengths, q, o or lse");
  }
  if (!is_aligned<16>(kv.codes.k) || !is_aligned<16>(kv.codes.v) || !is_aligned<16>(q) ||
      (kv.scales.k != nullptr && (!is_aligned<4>(kv.scales.k) || !is_aligned<4>(kv.scales.v)))) {
    throw Error("run_decode: codes and q must be 16-byte aligned, scales 4-byte aligned");
  }
  DecodeParams<T, QuantKVView> params = detail::decode_params<T, QuantKVView>(plan, q, o, lse, workspace);
  params.kv = kv;
  const dim3 grid(plan.num_splits, p.kv_heads * plan.head_tiles, p.batch);
  dispatch<kDecodeHeadDims>("head_dim", "quantized decode", p.head_dim, [&](auto dim) {
    detail::with_quant_decode_kernel<T, decltype(dim)::value>(kv.storage, [&](auto kernel, int threads, int smem) {
      launch_dependent(kernel, grid, threads, smem, stream.get(), params);
    });
  });
  check_launch("quantized decode", stream.get());
}

}  // namespace ekv
