#pragma once
// Launch constants of the decode kernel, shared by plan, run and tests.

#include <algorithm>

namespace ekv {

template <typename T, int HeadDim>
struct DecodeTraits {
  // 16-byte loads, and one token's head never spans more than a warp
  static constexpr int kLanes = std::min<int>(32, HeadDim * static_cast<int>(sizeof(T)) / 16);
  static constexpr int kVec = HeadDim / kLanes;  // elements per lane
  static constexpr int kVecBytes = kVec * static_cast<int>(sizeof(T));
  static_assert(kVecBytes % 16 == 0, "lanes issue whole 16-byte loads");
  static constexpr int kWarps = 4;   // untuned
  // tokens per lane group per tile (untuned); 32-byte lanes (float, head_dim 256) take
  // half as many to keep a tile at 16 KB
  static constexpr int kUnroll = kVecBytes == 16 ? 4 : 2;
  static constexpr int kCtaThreads = kWarps * 32;
  static constexpr int kGroups = kCtaThreads / kLanes;  // token groups in the CTA
  static constexpr int kTileTokens = kGroups * kUnroll;
  // K and V tiles staged in shared memory; kStages - 1 of them in flight while one is
  // consumed (three stages: 48 KB for 16-byte lanes, the static shared-memory limit)
  static constexpr int kStages = 3;
  static constexpr int kTileBytes = 2 * kTileTokens * HeadDim * static_cast<int>(sizeof(T));
  static constexpr int kChunksPerToken = HeadDim * static_cast<int>(sizeof(T)) / 16;
  static_assert(kCtaThreads % kChunksPerToken == 0, "each thread copies one 16-byte column of a tile");
  static constexpr int kPipelineBytes = kStages * kTileBytes;
};

// Split-KV ranges start on multiples of this (a multiple of every decode kernel's tile),
// so only a range's last tile can be partial and pay for per-token bounds checks. It is
// also the shortest split: 256 left 1 x 4K at 0.18 of the read ceiling on the H100
// (too few bytes in flight), and the tensor-core tile is 128 tokens.
inline constexpr int kDecodeSplitAlign = 128;

}  // namespace ekv
