#pragma once
// What decode attention supports, in one place: dispatch (decode.cuh), supports() and
// the tests all read these arrays, so they cannot drift.

#include <cmath>
#include <cstddef>
#include <string>

#include "ekv/core/dispatch.hpp"
#include "ekv/core/dtype.hpp"

namespace ekv {

inline constexpr DType kDecodeDTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
inline constexpr int kDecodeHeadDims[] = {64, 128, 256};
// Query heads one CTA carries in registers on the CUDA-core path (float); a group of
// more heads uses several CTAs per kv head, each re-reading K and V (untuned for groups
// above 8). Half and bfloat16 run on tensor cores with 16 heads per CTA.
inline constexpr int kDecodeHeadTiles[] = {1, 2, 4, 8};
inline constexpr int kDecodeMaxGroup = 16;

// How the decode kernel stages K and V in shared memory. kCpAsync: 16-byte cp.async per
// lane and row (sm_80+). kBulk: one bulk copy per row, completing on an mbarrier (sm_90+,
// half and bfloat16). kAuto: plan_decode picks (DecodePlan::copy says which).
enum class DecodeCopy { kAuto, kCpAsync, kBulk };

inline const char* to_string(DecodeCopy c) {
  switch (c) {
    case DecodeCopy::kAuto: return "auto";
    case DecodeCopy::kCpAsync: return "cp.async";
    case DecodeCopy::kBulk: return "bulk";
  }
  return "?";
}

// One decode step's shapes: one query token per sequence.
struct DecodeProblem {
  DType dtype = DType::kFloat16;
  int batch = 1;
  int q_heads = 32;
  int kv_heads = 8;
  int head_dim = 128;
  int max_seq_len = 0;  // the longest sequence the plan must cover (its capacity is enough)
  float scale = 0.0f;   // softmax scale; 0 means 1 / sqrt(head_dim)

  int group() const { return kv_heads > 0 ? q_heads / kv_heads : 0; }
};

// The smallest listed head tile that holds min(group, 8) heads.
inline int decode_head_tile(int group) {
  for (int tile : kDecodeHeadTiles) {
    if (tile >= group) return tile;
  }
  return kDecodeHeadTiles[sizeof(kDecodeHeadTiles) / sizeof(int) - 1];
}

inline Support supports(const DecodeProblem& p) {
  if (Support s = check_supported<kDecodeDTypes>("dtype", "decode", p.dtype); !s) return s;
  if (Support s = check_supported<kDecodeHeadDims>("head_dim", "decode", p.head_dim); !s) return s;
  if (p.batch < 1 || p.batch > 65535) {
    return {false, "batch=" + std::to_string(p.batch) + " not supported by decode; supported: 1 to 65535"};
  }
  if (p.kv_heads < 1 || p.q_heads < 1 || p.q_heads % p.kv_heads != 0) {
    return {false, "q_heads=" + std::to_string(p.q_heads) + ", kv_heads=" + std::to_string(p.kv_heads) +
                       " not supported by decode; q_heads must be a positive multiple of kv_heads"};
  }
  if (p.group() > kDecodeMaxGroup) {
    return {false, "group size " + std::to_string(p.group()) + " not supported by decode; supported: 1 to " +
                       std::to_string(kDecodeMaxGroup)};
  }
  if (p.max_seq_len < 0) {
    return {false, "max_seq_len=" + std::to_string(p.max_seq_len) + " not supported by decode; it must be >= 0"};
  }
  if (!(p.scale >= 0.0f && p.scale < INFINITY)) {
    return {false, "scale=" + std::to_string(p.scale) +
                       " not supported by decode; supported: finite and positive, or 0 for 1/sqrt(head_dim)"};
  }
  // the grid's y dimension is kv heads x head tiles, at most ceil(group / 8) tiles
  const int most_kv_heads = 65535 / ((p.group() + 7) / 8);
  if (p.kv_heads > most_kv_heads) {
    return {false, "kv_heads=" + std::to_string(p.kv_heads) + " not supported by decode with group size " +
                       std::to_string(p.group()) + "; supported: 1 to " + std::to_string(most_kv_heads)};
  }
  return {};
}

}  // namespace ekv
