#pragma once
// Token importance for DYNAMIC anchors: after an exact decode step, each token's softmax
// weight, summed over the query heads of its GQA group, is added to its importance
// (elastic/reference.hpp's reference_update_importance). It reads every key once more,
// so it belongs to the steps that attend exactly (a refresh, or a periodic exact step).

#include <cstdint>
#include <string>

#include "ekv/attention/decode_support.hpp"
#include "ekv/attention/kv_view.hpp"
#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/launch.hpp"
#include "ekv/core/stream.hpp"

namespace ekv {
namespace detail {

// CTA (block, kv head, seq); warp w takes the block's tokens w, w + warps, ...
template <typename T>
__global__ void record_importance_kernel(const KVView<T> kv, const T* q, const float* lse, int q_heads, float scale,
                                         float* importance) {
  const int seq = blockIdx.z, head = blockIdx.y, block = blockIdx.x;
  const int len = min(kv.length(seq, head), kv.capacity());
  const int valid = block_valid_tokens(len, kv.block_len, block);
  if (valid == 0) return;
  const int group = q_heads / kv.kv_heads, d = kv.head_dim;
  extern __shared__ float q_group[];  // [group][head_dim] then the group's lse
  const std::int64_t first_row = static_cast<std::int64_t>(seq) * q_heads + head * group;
  for (int i = threadIdx.x; i < group * d; i += blockDim.x) q_group[i] = DTypeTraits<T>::to_float(q[first_row * d + i]);
  for (int g = threadIdx.x; g < group; g += blockDim.x) q_group[group * d + g] = lse[first_row + g];
  __syncthreads();
  const std::int64_t physical = kv.block_id(seq, head, block);
  float* weight = importance + (physical * kv.kv_heads + head) * kv.block_len;
  const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int t = threadIdx.x / 32; t < valid; t += warps) {
    const T* k = kv.k + kv.offset(seq, head, block * kv.block_len + t);
    float sum = 0.0f;
    for (int g = 0; g < group; ++g) {
      float dot = 0.0f;
      for (int c = lane; c < d; c += 32) dot += q_group[g * d + c] * DTypeTraits<T>::to_float(k[c]);
#pragma unroll
      for (int off = 16; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
      sum += __expf(scale * dot - q_group[group * d + g]);
    }
    if (lane == 0) weight[t] += sum;
  }
}

}  // namespace detail

// Adds each token's softmax weight (summed over its GQA group) to importance, float
// [num_blocks][kv_heads][block_len] by physical block. q [batch][q_heads][head_dim] and
// lse [batch][q_heads] (natural log) are an exact decode step's (run_decode) over this
// cache; scale its softmax scale (DecodePlan::scale). Paged views only.
template <typename T>
void record_importance(const KVView<T>& kv, const T* q, const float* lse, int q_heads, float scale, float* importance,
                       const Stream& stream) {
  if (kv.block_table == nullptr || q == nullptr || lse == nullptr || importance == nullptr || kv.kv_heads < 1 ||
      q_heads % kv.kv_heads != 0 || q_heads / kv.kv_heads > kDecodeMaxGroup) {
    throw Error("record_importance: needs a paged view, q, lse, importance, and q_heads a multiple of kv_heads "
                "with a group of at most " + std::to_string(kDecodeMaxGroup));
  }
  const int group = q_heads / kv.kv_heads;
  const std::size_t smem = static_cast<std::size_t>(group) * (kv.head_dim + 1) * sizeof(float);
  detail::record_importance_kernel<T><<<dim3(kv.max_blocks_per_seq, kv.kv_heads, kv.batch), 128, smem, stream.get()>>>(
      kv, q, lse, q_heads, scale, importance);
  check_launch("record_importance", stream.get());
}

}  // namespace ekv
