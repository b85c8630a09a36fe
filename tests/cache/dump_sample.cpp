// Writes a small KV cache dump for tests/python/test_cache_file.py, which reads it with
// numpy and the safetensors package, without ekv: 2 layers, 2 kv heads, head_dim 64,
// block_len 16, fp16, 3 sequences of 40, 17 and 5 tokens whose values follow a pattern
// the Python test recomputes: k = ((7 layer + 5 seq + 3 token + 2 head + dim) mod 64) / 64,
// v = the same minus 0.5. Usage: ekv_dump_sample FILE

#include <cstdio>
#include <vector>

#include <ekv/ekv.hpp>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: ekv_dump_sample FILE\n");
    return 2;
  }
  ekv::KVCacheConfig c;
  c.layer_num = 2;
  c.kv_head_num = 2;
  c.q_head_num = 4;
  c.head_dim = 64;
  c.block_len = 16;
  c.max_block_num = 12;
  c.max_batch_size = 3;
  ekv::HostKVCache cache(c);
  const int lengths[] = {40, 17, 5};
  for (int layer = 0; layer < c.layer_num; ++layer) {
    for (int seq = 0; seq < 3; ++seq) {
      // one sequence at a time: append to the first seq + 1 sequences, the others' tokens unused
      const int tokens = seq == 0 ? lengths[2] : seq == 1 ? lengths[1] - lengths[2] : lengths[0] - lengths[1];
      const int batch = 3 - seq, start = seq == 0 ? 0 : seq == 1 ? lengths[2] : lengths[1];
      std::vector<__half> k(static_cast<std::size_t>(batch) * tokens * c.kv_head_num * c.head_dim), v(k.size());
      std::size_t i = 0;
      for (int s = 0; s < batch; ++s) {
        for (int t = start; t < start + tokens; ++t) {
          for (int h = 0; h < c.kv_head_num; ++h) {
            for (int d = 0; d < c.head_dim; ++d, ++i) {
              const float x = static_cast<float>((7 * layer + 5 * s + 3 * t + 2 * h + d) % 64) / 64.0f;
              k[i] = __float2half(x);
              v[i] = __float2half(x - 0.5f);
            }
          }
        }
      }
      cache.append(layer, ekv::TensorView::of(k.data(), {batch, tokens, c.kv_head_num, c.head_dim},
                                              ekv::DeviceKind::kHost),
                   ekv::TensorView::of(v.data(), {batch, tokens, c.kv_head_num, c.head_dim}, ekv::DeviceKind::kHost));
    }
  }
  cache.dump_kvcache(argv[1]);
  std::printf("ekv_dump_sample: wrote %s (%d blocks used)\n", argv[1], cache.memory().blocks_used);
  return 0;
}
