// The bad-input matrix of the GPU's KVCache (issue 21): tests/cache/bad_input_cases.hpp's
// cases, with device tensors, over an adapter that gives KVCache's calls HostKVCache's
// shape on one stream. Each call fails with a message naming what was wrong, and the
// cache's dump is byte for byte as before.

#include <doctest/doctest.h>

#include <string>
#include <utility>

#include <ekv/ekv.cuh>

#include "cache/bad_input_cases.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

using ekv::TensorView;

struct OnStream {
  ekv::KVCache& cache;
  const ekv::Stream& stream;

  const ekv::KVCacheConfig& config() const { return cache.config(); }
  void append(int layer, const TensorView& k, const TensorView& v) { cache.append(layer, k, v, stream); }
  void attn(const TensorView& q, const TensorView& o, const TensorView& lse, int layer, int token, int pick = -1,
            int init = 1, int local = 1) {
    cache.attn(q, o, lse, layer, token, stream, pick, init, local);
  }
  void update_cache_total_len(int length, int seq = 0) { cache.update_cache_total_len(length, stream, seq); }
  void free_sequence(int seq) { cache.free_sequence(seq, stream); }
  int get_cache_total_len(int seq = 0) const { return cache.get_cache_total_len(seq); }
  void update_kvcache_one_block(const TensorView& k, const TensorView& v, int layer, int block) {
    cache.update_kvcache_one_block(k, v, layer, block, stream);
  }
  void get_kvcache_one_block(const TensorView& k, const TensorView& v, int layer, int block) {
    cache.get_kvcache_one_block(k, v, layer, block, stream);
  }
  void update_importance_one_block(const TensorView& importance, int layer, int block) {
    cache.update_importance_one_block(importance, layer, block, stream);
  }
  void update_anchor_one_block(const TensorView& anchor, int layer, int block) {
    cache.update_anchor_one_block(anchor, layer, block, stream);
  }
  void load_kvcache(const std::string& path) { cache.load_kvcache(path, stream); }
  void dump_kvcache(const std::string& path) const { cache.dump_kvcache(path, stream); }
};

}  // namespace

TEST_CASE("bad input to every KVCache call on the GPU: a clear error, and the cache unchanged") {
  using T = __half;
  using ekv::DeviceKind;
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::Stream stream;
  const ekv::KVCacheConfig c = ekv::test::small_config(ekv::DType::kFloat16);  // 3 layers, 40 blocks of 16
  ekv::KVCache cache(c, ekv::DeviceInfo::current(), stream);
  const int kv = c.kv_head_num, d = c.head_dim;
  // three sequences of 50, 17 and 33 tokens in every layer (9 of the 40 blocks)
  for (int layer = 0; layer < c.layer_num; ++layer) {
    for (const auto& [batch, tokens] : {std::pair{3, 17}, std::pair{1, 33}, std::pair{3, 16}}) {
      const auto k = ekv::bench::random_uniform<T>(static_cast<std::size_t>(batch) * tokens * kv * d, -1, 1,
                                                   seed + 3 * layer + tokens);
      ekv::DeviceBuffer<T> kd(k.size());
      kd.copy_from(k);
      cache.append(layer, TensorView::of(kd.data(), {batch, tokens, kv, d}, DeviceKind::kCuda),
                   TensorView::of(kd.data(), {batch, tokens, kv, d}, DeviceKind::kCuda), stream);
      stream.synchronize();
    }
  }
  OnStream calls{cache, stream};
  const int cases = ekv::test::check_bad_inputs<OnStream, ekv::DeviceBuffer>(calls, DeviceKind::kCuda);
  MESSAGE(cases << " bad-input cases over the GPU KVCache's append, attn, length and block calls, load and dump");
}
