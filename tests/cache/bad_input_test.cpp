// The bad-input matrix of the CPU backend's KVCache (issue 21): tests/cache/
// bad_input_cases.hpp's cases over HostKVCache, with host tensors. Each call fails with a
// message naming what was wrong, and the cache's dump is byte for byte as before.

#include <doctest/doctest.h>

#include <utility>
#include <vector>

#include "cache/bad_input_cases.hpp"
#include "ekv/cpu/host_kv_cache.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

TEST_CASE("bad input to every HostKVCache call: a clear error, and the cache unchanged") {
  using T = __half;
  using ekv::DeviceKind;
  using ekv::TensorView;
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::KVCacheConfig c = ekv::test::small_config(ekv::DType::kFloat16);  // 3 layers, 40 blocks of 16
  ekv::HostKVCache cache(c);
  const int kv = c.kv_head_num, d = c.head_dim;
  // three sequences of 50, 17 and 33 tokens in every layer (9 of the 40 blocks)
  for (int layer = 0; layer < c.layer_num; ++layer) {
    for (const auto& [batch, tokens] : {std::pair{3, 17}, std::pair{1, 33}, std::pair{3, 16}}) {
      const auto k = ekv::bench::random_uniform<T>(static_cast<std::size_t>(batch) * tokens * kv * d, -1, 1,
                                                   seed + 3 * layer + tokens);
      cache.append(layer, TensorView::of(k.data(), {batch, tokens, kv, d}, DeviceKind::kHost),
                   TensorView::of(k.data(), {batch, tokens, kv, d}, DeviceKind::kHost));
    }
  }
  const int cases = ekv::test::check_bad_inputs<ekv::HostKVCache, std::vector>(cache, DeviceKind::kHost);
  MESSAGE(cases << " bad-input cases over append, attn, the length and block calls, load and dump");
}
