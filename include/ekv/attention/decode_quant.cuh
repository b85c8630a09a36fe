#pragma once
// Decode attention over quantized storage (QuantKVView: FP8 E4M3, Q8_0, Q4_0) on tensor
// cores, for half and bfloat16 queries: plan_quant_decode and run_decode's QuantKVView
// overload, with run_decode's semantics (split KV, merge in the last CTA, graphs).
//
// Where the conversion happens, and why there: K and V are staged in shared memory as
// stored, codes and scales (the fewer bytes are what the step reads from DRAM, and the
// cp.async pipeline keeps them in flight, four stages deep as they are smaller); once a
// warp's copies of a tile land, the warp dequantizes its own 16 tokens (quant.hpp's
// functions, the CPU backend's arithmetic) into a tile of T in the padded layout the
// dense kernel's consume reads, and then runs that consume unchanged: the MMAs, the
// online softmax and the merges are the dense kernel's. Rounding the dequantized values
// to T adds at most half an ulp of T to the format's own error.

#include <cstdint>
#include <string>

#include "ekv/attention/decode.cuh"
#include "ekv/attention/decode_kernel.cuh"
#include "ekv/attention/decode_tc_block.cuh"
#include "ekv/attention/quant_kv_view.hpp"
#include "ekv/core/dispatch.hpp"
#include "ekv/core/quant.hpp"
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
  // per warp and stage: K's then V's codes [16][kCodeBytes], then K's then V's scales
  static constexpr int kWarpStageBytes = 2 * kWarpTokens * (kCodeBytes + kScaleBytes);
  static constexpr int kPipelineBytes = kStages * kWarps * kWarpStageBytes;
  // each warp's dequantized K then V [16][Dense::kRowElems], after the pipeline
  static constexpr int kWarpTileElems = 2 * kWarpTokens * Dense::kRowElems;
  static constexpr int kSmemBytes = kPipelineBytes + kWarps * kWarpTileElems * static_cast<int>(sizeof(T));
  static_assert(kCodeBytes % 16 == 0, "code rows are whole 16-byte copies");
  static_assert(kScaleBytes % 4 == 0, "scale rows are whole 4-byte copies");
  static_assert(kWarpStageBytes % 16 == 0, "every stage starts 16-byte aligned");
  static_assert(sizeof(DecodeWarpStates<kWarps, Dense::kHeads, HeadDim>) <= kSmemBytes,
                "the merge fits in the kernel's shared memory");
};

// 32 values of one group of a stored row, dequantized and rounded to T into out [32]
// (16-byte aligned): codes at the group's first byte, d its scale (Q8_0, Q4_0), s the
// head's scale (FP8).
template <typename T, KVStorage S>
__device__ __forceinline__ void dequantize_group_to(const std::uint8_t* codes, __half d, float s, T* out) {
  alignas(16) T v[kQuantGroup];  // read back as 16-byte vectors
#pragma unroll
  for (int j = 0; j < kQuantGroup; ++j) {
    float x;
    if constexpr (S == KVStorage::kQ8_0) {
      x = dequantize_q8_0(static_cast<std::int8_t>(codes[j]), d);
    } else if constexpr (S == KVStorage::kQ4_0) {
      x = dequantize_q4_0(codes, j, d);
    } else {
      x = dequantize_fp8(*reinterpret_cast<const __nv_fp8_e4m3*>(codes + j), s);
    }
    v[j] = DTypeTraits<T>::from_float(x);
  }
#pragma unroll
  for (int c = 0; c < kQuantGroup * static_cast<int>(sizeof(T)) / 16; ++c) {
    reinterpret_cast<uint4*>(out)[c] = reinterpret_cast<const uint4*>(v)[c];
  }
}

// decode_tc_tiles over a quantized view: each warp stages its 16 tokens' codes and scales
// (zeros past `end`, which dequantize to 0), dequantizes them into its own T tile, and
// consumes that as dense decode does. `smem` is Traits::kSmemBytes, 16-byte aligned.
template <typename T, int HeadDim, KVStorage S>
__device__ __forceinline__ void decode_tc_quant_tiles(const QuantKVView& kv, int seq, int kv_head,
                                                      const TokenTiles& tiles, const T* q_rows, int heads,
                                                      float scale_log2, DecodeTcState<T, HeadDim>& state,
                                                      unsigned char* smem) {
  using Traits = DecodeQuantTraits<T, HeadDim, S>;
  using Dense = typename Traits::Dense;
  constexpr int kRows = Traits::kWarpTokens;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  std::uint32_t qa[HeadDim / 16][4];
  auto stage_bytes = [&](int slot) { return smem + (slot * Traits::kWarps + warp) * Traits::kWarpStageBytes; };
  T* k_tile = reinterpret_cast<T*>(smem + Traits::kPipelineBytes) + warp * Traits::kWarpTileElems;
  T* v_tile = k_tile + kRows * Dense::kRowElems;
  const float k_s = kv.head_scale(false, kv_head), v_s = kv.head_scale(true, kv_head);
  auto warp_first = [&](int i) { return tiles.first(i) + warp * kRows; };

  auto stage = [&](int i, int slot) {
    const int first = warp_first(i);
    if (first >= tiles.end) return;
    std::uint8_t* codes = stage_bytes(slot);
    constexpr int kChunks = Traits::kCodeBytes / 16;
    for (int c = lane; c < 2 * kRows * kChunks; c += 32) {
      const int tensor = c / (kRows * kChunks), row = c / kChunks % kRows, chunk = c % kChunks;
      const bool valid = first + row < tiles.end;
      const std::int64_t off = valid ? kv.codes.offset(seq, kv_head, first + row) + chunk * 16 : 0;
      async_copy_16_zfill(codes + (tensor * kRows + row) * Traits::kCodeBytes + chunk * 16,
                          (tensor == 0 ? kv.codes.k : kv.codes.v) + off, valid ? 16 : 0);
    }
    if constexpr (Traits::kScaleBytes > 0) {
      std::uint8_t* scales = codes + 2 * kRows * Traits::kCodeBytes;
      constexpr int kPieces = Traits::kScaleBytes / 4;
      for (int c = lane; c < 2 * kRows * kPieces; c += 32) {
        const int tensor = c / (kRows * kPieces), row = c / kPieces % kRows, piece = c % kPieces;
        const bool valid = first + row < tiles.end;
        const std::int64_t off = valid ? kv.scales.offset(seq, kv_head, first + row) : 0;
        const auto* src = reinterpret_cast<const std::uint8_t*>((tensor == 0 ? kv.scales.k : kv.scales.v) + off);
        async_copy_4_zfill(scales + (tensor * kRows + row) * Traits::kScaleBytes + piece * 4, src + piece * 4,
                           valid ? 4 : 0);
      }
    }
  };
  auto consume = [&](int i, int slot) {
    const int first = warp_first(i);
    if (first >= tiles.end) return;
    const std::uint8_t* codes = stage_bytes(slot);
    const auto* scales = reinterpret_cast<const __half*>(codes + 2 * kRows * Traits::kCodeBytes);
    constexpr int kRowGroups = HeadDim / kQuantGroup;
    constexpr int kGroupCodeBytes = Traits::kCodeBytes / kRowGroups;
    for (int task = lane; task < 2 * kRows * kRowGroups; task += 32) {
      const int tensor = task / (kRows * kRowGroups), row = task / kRowGroups % kRows, g = task % kRowGroups;
      const __half d = Traits::kGroups > 0 ? scales[(tensor * kRows + row) * Traits::kGroups + g] : __half{};
      dequantize_group_to<T, S>(codes + (tensor * kRows + row) * Traits::kCodeBytes + g * kGroupCodeBytes, d,
                                tensor == 0 ? k_s : v_s,
                                (tensor == 0 ? k_tile : v_tile) + row * Dense::kRowElems + g * kQuantGroup);
    }
    __syncwarp();  // the warp's tile is whole before ldmatrix reads it
    decode_tc_warp_tile<T, HeadDim>(k_tile, v_tile, first, tiles.end, qa, scale_log2, state);
    __syncwarp();  // and read by every lane before the next tile overwrites it
  };
  pipeline_prologue<Traits::kStages>(tiles.count, stage);
  load_q_fragments<T, HeadDim>(q_rows, heads, qa);
  pipeline_run<Traits::kStages, TileOwner::kWarp>(tiles.count, stage, consume);
}

template <typename T, int HeadDim, KVStorage S>
__global__ void __launch_bounds__(DecodeTcTraits<T, HeadDim>::kCtaThreads)
    decode_tc_quant_kernel(const __grid_constant__ DecodeParams<T, QuantKVView> p) {
  using Traits = DecodeTcTraits<T, HeadDim>;
  extern __shared__ __align__(16) unsigned char smem[];
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
      kernel<<<grid, threads, smem, stream.get()>>>(params);
    });
  });
  check_launch("quantized decode", stream.get());
}

}  // namespace ekv
