#pragma once
// The tile pipeline both decode inner loops share: tiles of K and V stream from global
// to shared memory with cp.async, Stages deep, so Stages - 1 tiles are in flight while
// the CTA computes on the oldest one.

#include "ekv/kernels/async_copy.cuh"

namespace ekv {

// The tokens one CTA attends to, as tiles: tile i holds tokens
// [first(i), min(first(i) + tile, end)).
struct TokenTiles {
  int begin = 0;   // first token of tile 0
  int end = 0;     // one past the last token
  int tile = 0;  // tokens per tile
  int count = 0;

  __device__ int first(int i) const { return begin + i * tile; }
};

// Issues the loads of the first Stages - 1 tiles: stage(i, slot) copies tile i into
// pipeline slot `slot`. The CTA may do other work (load its query) before pipeline_run.
template <int Stages, typename Stage>
__device__ __forceinline__ void pipeline_prologue(int tiles, Stage&& stage) {
#pragma unroll
  for (int i = 0; i < Stages - 1; ++i) {
    if (i < tiles) stage(i, i);
    async_copy_commit();
  }
}

// Who copies and who reads each part of a tile. kCta: any thread may read what another
// copied, so every tile waits on a CTA barrier. kWarp: each warp copies exactly the part
// it alone consumes, so a warp waits only for its own copies and streams at its own pace
// (no warp idles at a barrier while a slower one computes, and its next copies are
// issued as soon as its own slot is free).
enum class TileOwner { kCta, kWarp };

// consume(i, slot) for every tile in order, each once its copy has landed, while later
// tiles load. The whole CTA calls it; on return the pipeline's shared memory is free.
template <int Stages, TileOwner Owner = TileOwner::kCta, typename Stage, typename Consume>
__device__ __forceinline__ void pipeline_run(int tiles, Stage&& stage, Consume&& consume) {
  for (int i = 0; i < tiles; ++i) {
    async_copy_wait<Stages - 2>();
    // tile i is visible to its readers; the slot refilled below was consumed by them
    if constexpr (Owner == TileOwner::kCta) {
      __syncthreads();
    } else {
      __syncwarp();
    }
    const int ahead = i + Stages - 1;
    if (ahead < tiles) stage(ahead, ahead % Stages);
    async_copy_commit();
    consume(i, i % Stages);
  }
  async_copy_wait<0>();
  __syncthreads();
}

}  // namespace ekv
