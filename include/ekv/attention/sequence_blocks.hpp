#pragma once
// Block arithmetic of one sequence: how many logical blocks its tokens fill and how many
// valid tokens each holds (only the last may be partial). Host and device share it.

#include "ekv/core/host_device.hpp"

namespace ekv {

EKV_HOST_DEVICE constexpr int sequence_blocks(int tokens, int block_len) {
  return (tokens + block_len - 1) / block_len;
}

// 0 for a block past the end.
EKV_HOST_DEVICE constexpr int block_valid_tokens(int tokens, int block_len, int block) {
  const int left = tokens - block * block_len;
  return left < 0 ? 0 : left < block_len ? left : block_len;
}

}  // namespace ekv
