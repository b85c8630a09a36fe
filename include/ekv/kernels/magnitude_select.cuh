#pragma once
// magnitude_select: keeps the elements whose magnitude exceeds a threshold, in their
// order, with their positions. One pass that reads the input once and writes only what it
// keeps: a CTA per tile, each warp a contiguous part of it held in registers; ballots
// rank the kept elements within the warp, the warp totals within the tile, and CUB's
// decoupled look-back (TilePrefixCallbackOp over a ScanTileState, what its DeviceSelect
// runs) the tiles before it; each warp packs what it keeps in shared memory and writes it
// out coalesced, values and positions from the same ranks, so the positions cost no
// second pass (CUB's DeviceSelect::If takes one pass for the values and another for the
// positions, over a counting iterator).
//
// Three other designs were measured slower on the H200 and left out (benchmarks/
// RESULTS.md, "ekv_compress"): a persistent CTA with a ring of bulk-copied tiles, a
// look-back by the whole CTA over 1,024 predecessors per round, and one warp's look-back
// spinning without CUB's sleeps.

#include <cub/agent/single_pass_scan_operators.cuh>
#include <cuda/std/functional>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "ekv/core/error.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/span.hpp"
#include "ekv/core/stream.hpp"

namespace ekv {

// Positions are int32: kMagnitudeSelectMaxItems elements at most.
inline constexpr std::size_t kMagnitudeSelectMaxItems = INT32_MAX;

// |x| > threshold. NaN is never kept (every comparison with it is false); built without
// fast math, denormals are compared as they are, not flushed to zero.
struct AboveMagnitude {
  float threshold;
  __host__ __device__ bool operator()(float x) const { return fabsf(x) > threshold; }
};

// The launch shape: a CTA of kWarps warps, each lane issuing kLoads loads of kVec floats
// (16 bytes for kVec = 4, which needs a 16-byte-aligned input; 1 takes any alignment).
template <int kWarps, int kLoads, int kVec>
struct MagnitudeSelectTile {
  static_assert(kWarps >= 1 && kWarps <= 32, "magnitude_select: 1 to 32 warps per CTA");
  static_assert(kVec == 1 || kVec == 4, "magnitude_select: loads of 1 or 4 floats");
  static_assert(32 * kLoads * kVec <= 65536, "magnitude_select: a warp's part has 16-bit positions");
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kWarpItems = 32 * kLoads * kVec;
  static constexpr int kItems = kWarps * kWarpItems;
};

namespace detail {

// The tiles' states (a count or an inclusive prefix, and a flag, in one word per tile)
// and the look-back's waits: CUB's defaults for an int (350 ns between reads, 450 ns
// after a tile publishes its count, once a grid has 500 CTAs).
using MagnitudeTileState = cub::ScanTileState<int>;
using MagnitudeSelectDelay = cub::detail::default_delay_constructor_t<int>;

inline std::size_t magnitude_select_workspace_for(int tiles) {
  std::size_t bytes = 0;
  EKV_CUDA_CHECK(MagnitudeTileState::AllocationSize(tiles, bytes), "magnitude_select: the tile states' size");
  return bytes;
}

template <class State>
__global__ void magnitude_select_init_kernel(State state, int tiles) {
  state.InitializeStatus(tiles);
}

// Shared memory of the offsets step.
template <int kWarps, class Delay>
struct TileOffsetsStorage {
  using Prefix = cub::TilePrefixCallbackOp<int, cuda::std::plus<int>, MagnitudeTileState, Delay>;
  int warp_kept[kWarps];
  typename Prefix::TempStorage prefix;
};

// Every thread of the CTA, with this warp's count: publishes the tile's count, looks back
// (warp 0) for the tile's offset, publishes its inclusive prefix (the last tile: the
// total, to *num_selected) and returns this warp's offset in the output.
template <int kWarps, class Delay>
__device__ __forceinline__ int tile_offsets(int tile, int tiles, int warp_kept, MagnitudeTileState& state,
                                            std::int32_t* num_selected, TileOffsetsStorage<kWarps, Delay>& storage) {
  using Prefix = typename TileOffsetsStorage<kWarps, Delay>::Prefix;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  if (threadIdx.x % 32 == 0) storage.warp_kept[warp] = warp_kept;
  __syncthreads();
  int before_warp = 0, tile_kept = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const int v = storage.warp_kept[w];
    before_warp += w < warp ? v : 0;
    tile_kept += v;
  }
  if (tile == 0) {
    if (threadIdx.x == 0) state.SetInclusive(0, tile_kept);
  } else if (warp == 0) {
    Prefix prefix(state, storage.prefix, cuda::std::plus<int>{}, tile);
    prefix(tile_kept);
  }
  __syncthreads();
  const int before = tile == 0 ? 0 : storage.prefix.Alias().exclusive_prefix;
  if (threadIdx.x == 0 && tile == tiles - 1) *num_selected = before + tile_kept;
  return before + before_warp;
}

inline void check_magnitude_select_items(std::size_t n) {
  if (n > kMagnitudeSelectMaxItems) {
    throw Error("magnitude_select: " + std::to_string(n) + " elements; supported: at most " +
                std::to_string(kMagnitudeSelectMaxItems) + " (positions are int32)");
  }
}

inline int magnitude_select_tiles(std::size_t n, int tile_items) {
  return static_cast<int>((n + static_cast<std::size_t>(tile_items) - 1) / static_cast<std::size_t>(tile_items));
}

// Each kept element's rank within its warp's part (-1: not kept): the kept ones of earlier
// loads, of lower lanes in this load, and of this lane's earlier elements in it; returns
// the warp's count. x[j][e] is the element at (32 j + lane) kVec + e of the part.
template <int kLoads, int kVec>
__device__ __forceinline__ int rank_in_warp(const float (&x)[kLoads][kVec], AboveMagnitude keep, int lane,
                                            int (&rank)[kLoads][kVec]) {
  const unsigned lower_lanes = (1u << lane) - 1u;
  int warp_kept = 0;
#pragma unroll
  for (int j = 0; j < kLoads; ++j) {
    unsigned ballot[kVec];
    int before = warp_kept;
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      ballot[e] = __ballot_sync(0xffffffffu, keep(x[j][e]));
      before += __popc(ballot[e] & lower_lanes);
      warp_kept += __popc(ballot[e]);
    }
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      const bool kept = (ballot[e] >> lane) & 1u;
      rank[j][e] = kept ? before : -1;
      before += kept ? 1 : 0;
    }
  }
  return warp_kept;
}

// One warp: packs its kept elements into packed[0, warp_kept) (and their positions in the
// part into packed_at), then writes them to out[base, base + warp_kept) (and warp_begin +
// position to indices) with consecutive lanes at consecutive addresses; stored from the
// registers directly, each store of a warp would spread over kVec times the sectors.
// packed may be the part the warp read x from: every lane holds its x by now.
template <int kLoads, int kVec>
__device__ __forceinline__ void write_kept(const float (&x)[kLoads][kVec], const int (&rank)[kLoads][kVec],
                                           int warp_kept, int lane, float* packed, std::uint16_t* packed_at,
                                           int base, std::int64_t warp_begin, float* __restrict__ out,
                                           std::int32_t* __restrict__ indices) {
  __syncwarp();
#pragma unroll
  for (int j = 0; j < kLoads; ++j) {
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      if (rank[j][e] < 0) continue;
      packed[rank[j][e]] = x[j][e];
      if (indices != nullptr) packed_at[rank[j][e]] = static_cast<std::uint16_t>((32 * j + lane) * kVec + e);
    }
  }
  __syncwarp();
  for (int i = lane; i < warp_kept; i += 32) out[base + i] = packed[i];
  if (indices != nullptr) {
    for (int i = lane; i < warp_kept; i += 32) {
      indices[base + i] = static_cast<std::int32_t>(warp_begin + packed_at[i]);
    }
  }
}

// The warp's part of a tile from global memory: 16-byte loads (kVec = 4, aligned input)
// where the part is whole, guarded single loads at the input's end (past it, NaN, which
// is never kept).
template <int kLoads, int kVec>
__device__ __forceinline__ void load_part(const float* __restrict__ in, std::int64_t n, std::int64_t warp_begin,
                                          int lane, float (&x)[kLoads][kVec]) {
  if (warp_begin + 32 * kLoads * kVec <= n) {
#pragma unroll
    for (int j = 0; j < kLoads; ++j) {
      const float* p = in + warp_begin + (32 * j + lane) * kVec;
      if constexpr (kVec == 4) {
        const float4 v = __ldcs(reinterpret_cast<const float4*>(p));
        x[j][0] = v.x, x[j][1] = v.y, x[j][2] = v.z, x[j][3] = v.w;
      } else {
        x[j][0] = __ldcs(p);
      }
    }
  } else {
#pragma unroll
    for (int j = 0; j < kLoads; ++j) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const std::int64_t i = warp_begin + (32 * j + lane) * kVec + e;
        x[j][e] = i < n ? in[i] : __int_as_float(0x7fc00000);
      }
    }
  }
}

// Dynamic shared memory of the kernel: the warps' packed values, then their positions.
template <int kWarps, int kLoads, int kVec>
constexpr int magnitude_select_smem_bytes() {
  return MagnitudeSelectTile<kWarps, kLoads, kVec>::kItems * 6;
}

// The kernel: a CTA per tile, tile = blockIdx.x.
template <int kWarps, int kLoads, int kVec, class Delay>
__global__ void __launch_bounds__(kWarps * 32) magnitude_select_kernel(const float* __restrict__ in, std::int64_t n,
                                                                       AboveMagnitude keep, float* __restrict__ out,
                                                                       std::int32_t* __restrict__ indices,
                                                                       std::int32_t* __restrict__ num_selected,
                                                                       MagnitudeTileState state) {
  using Tile = MagnitudeSelectTile<kWarps, kLoads, kVec>;
  extern __shared__ __align__(16) unsigned char packed_bytes[];
  auto* packed_values = reinterpret_cast<float*>(packed_bytes);
  auto* packed_positions = reinterpret_cast<std::uint16_t*>(packed_values + Tile::kItems);
  __shared__ TileOffsetsStorage<kWarps, Delay> offsets;

  const int tile = static_cast<int>(blockIdx.x);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t warp_begin = static_cast<std::int64_t>(tile) * Tile::kItems + warp * Tile::kWarpItems;
  float x[kLoads][kVec];
  load_part(in, n, warp_begin, lane, x);
  int rank[kLoads][kVec];
  const int warp_kept = rank_in_warp(x, keep, lane, rank);
  const int base = tile_offsets(tile, static_cast<int>(gridDim.x), warp_kept, state, num_selected, offsets);
  write_kept(x, rank, warp_kept, lane, packed_values + warp * Tile::kWarpItems,
             packed_positions + warp * Tile::kWarpItems, base, warp_begin, out, indices);
}

template <int kWarps, int kLoads, int kVec, class Delay>
void launch_magnitude_select(int tiles, const float* in, std::int64_t n, AboveMagnitude keep, float* out,
                             std::int32_t* indices, std::int32_t* num_selected, MagnitudeTileState state,
                             cudaStream_t stream) {
  const auto kernel = magnitude_select_kernel<kWarps, kLoads, kVec, Delay>;
  constexpr int kSmem = magnitude_select_smem_bytes<kWarps, kLoads, kVec>();
  if constexpr (kSmem + sizeof(TileOffsetsStorage<kWarps, Delay>) > 48 * 1024) {
    // once per device and kernel instance, not on every call (a driver call each time)
    static std::mutex mutex;
    static std::vector<bool> opted_in;  // by device ordinal
    int device = 0;
    EKV_CUDA_CHECK(cudaGetDevice(&device), "magnitude_select: no usable CUDA device");
    const std::lock_guard<std::mutex> lock(mutex);
    if (static_cast<std::size_t>(device) >= opted_in.size()) opted_in.resize(device + 1, false);
    if (!opted_in[device]) {
      EKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem),
                     "magnitude_select: the kernel's shared memory");
      opted_in[device] = true;
    }
  }
  kernel<<<tiles, kWarps * 32, kSmem, stream>>>(in, n, keep, out, indices, num_selected, state);
  check_launch("magnitude_select", stream);
}

// magnitude_select with the look-back's waits as a parameter (Delay: one of CUB's delay
// constructors); benchmarks/kernels_bench.cu compares a few.
template <int kWarps, int kLoads, class Delay>
void magnitude_select_with(Span<const float> in, float threshold, float* out, std::int32_t* indices,
                           std::int32_t* num_selected, Span<std::byte> workspace, const Stream& stream);

}  // namespace detail

// Device workspace bytes that magnitude_select<kWarps, kLoads> needs for `n` elements (the
// tiles' states), with or without positions (the same). Throws ekv::Error for more than
// kMagnitudeSelectMaxItems elements.
template <int kWarps = 4, int kLoads = 16>
std::size_t magnitude_select_workspace_bytes(std::size_t n, [[maybe_unused]] bool with_indices) {
  detail::check_magnitude_select_items(n);
  return detail::magnitude_select_workspace_for(
      detail::magnitude_select_tiles(n, MagnitudeSelectTile<kWarps, kLoads, 4>::kItems));
}

template <int kWarps, int kLoads, class Delay>
void detail::magnitude_select_with(Span<const float> in, float threshold, float* out, std::int32_t* indices,
                                   std::int32_t* num_selected, Span<std::byte> workspace, const Stream& stream) {
  check_magnitude_select_items(in.size());
  if ((in.data() == nullptr && !in.empty()) || (out == nullptr && !in.empty()) || num_selected == nullptr) {
    throw Error("magnitude_select: in, out and num_selected must not be null");
  }
  const std::size_t bytes = magnitude_select_workspace_bytes<kWarps, kLoads>(in.size(), indices != nullptr);
  if (workspace.size() < bytes || workspace.data() == nullptr) {
    throw Error("magnitude_select: the workspace holds " + std::to_string(workspace.size()) + " bytes, it needs " +
                std::to_string(bytes));
  }
  if (reinterpret_cast<std::uintptr_t>(workspace.data()) % 16 != 0) {
    throw Error("magnitude_select: the workspace must be 16-byte aligned (as a DeviceBuffer is)");
  }
  if (in.empty()) {
    EKV_CUDA_CHECK(cudaMemsetAsync(num_selected, 0, sizeof(std::int32_t), stream.get()),
                   "magnitude_select: clearing the count");
    return;
  }
  const int tiles = magnitude_select_tiles(in.size(), MagnitudeSelectTile<kWarps, kLoads, 4>::kItems);
  MagnitudeTileState state;
  EKV_CUDA_CHECK(state.Init(tiles, workspace.data(), bytes), "magnitude_select: the tile states");
  magnitude_select_init_kernel<<<(tiles + 255) / 256, 256, 0, stream.get()>>>(state, tiles);
  check_launch("magnitude_select: the tile states", stream.get());
  const auto n = static_cast<std::int64_t>(in.size());
  const AboveMagnitude keep{threshold};
  if (reinterpret_cast<std::uintptr_t>(in.data()) % 16 == 0) {
    launch_magnitude_select<kWarps, kLoads, 4, Delay>(tiles, in.data(), n, keep, out, indices, num_selected, state,
                                                      stream.get());
  } else {  // the same tiles, of single floats
    launch_magnitude_select<kWarps, 4 * kLoads, 1, Delay>(tiles, in.data(), n, keep, out, indices, num_selected,
                                                          state, stream.get());
  }
}

// Writes the k elements x of `in` with |x| > threshold to out[0, k), in their order and
// bit for bit, their positions in `in` to indices[0, k) unless indices is nullptr, and k
// to *num_selected (device memory). All pointers are device memory; out and indices hold
// in.size() elements, none overlaps another; workspace holds
// magnitude_select_workspace_bytes<kWarps, kLoads>(in.size(), indices != nullptr) bytes.
// A CTA of kWarps warps takes a tile of 32 kWarps kLoads 4-float groups (the default 4 x 16,
// 8,192 floats, measured the fastest of eight shapes on the H200): 16-byte loads
// where the input is 16-byte aligned, 4 kLoads single floats per lane where not. Throws
// ekv::Error for null pointers, a short workspace or more than kMagnitudeSelectMaxItems
// elements. Two launches (the tiles' states, then the select); stream-ordered,
// graph-capturable.
template <int kWarps = 4, int kLoads = 16>
void magnitude_select(Span<const float> in, float threshold, float* out, std::int32_t* indices,
                      std::int32_t* num_selected, Span<std::byte> workspace, const Stream& stream) {
  detail::magnitude_select_with<kWarps, kLoads, detail::MagnitudeSelectDelay>(in, threshold, out, indices,
                                                                              num_selected, workspace, stream);
}

}  // namespace ekv
