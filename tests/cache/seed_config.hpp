#pragma once
// The older system's example KV cache: 32 layers, 8/32 heads, dim 128, block_len 256,
// anchor_num 4 (FIXED anchors), with a pool, batch and threads of the test's choosing.

#include "ekv/cache/kv_cache_config.hpp"

namespace ekv::test {

inline KVCacheConfig seed_example_config(int max_block_num, int max_batch_size, int max_thread_num) {
  KVCacheConfig c;
  c.layer_num = 32;
  c.kv_head_num = 8;
  c.q_head_num = 32;
  c.head_dim = 128;
  c.block_len = 256;
  c.anchor_num = 4;
  c.anchor_type = AnchorType::kFixed;
  c.max_block_num = max_block_num;
  c.max_batch_size = max_batch_size;
  c.max_thread_num = max_thread_num;
  return c;
}

}  // namespace ekv::test
