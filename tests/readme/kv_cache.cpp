// README's KVCache snippet, as written, on the host backend: a 1000-token prompt and four
// decode steps in two layers, then the last step's elastic output against the float64
// reference over the blocks it read (tests/cache/kv_cache_checks.hpp, fp16: 2e-3 per
// head), and the dump loaded into a fresh cache giving the same attention bit for bit.
// @README-INCLUDES@

#include <doctest/doctest.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "cache/kv_cache_checks.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

TEST_CASE("README: the KV cache object, prefill, elastic decode and a dump") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const int prompt_len = 1000, token = 8 * 128;
  std::vector<std::vector<__half>> tokens;  // the prompt's K and V per layer, then each step's
  const auto random = [&](std::size_t n) {
    tokens.push_back(ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed + tokens.size()));
    return static_cast<const __half*>(tokens.back().data());
  };
  tokens.reserve(4 + 16 + 1);
  std::vector<const __half*> k_prompt, v_prompt;
  for (int layer = 0; layer < 2; ++layer) {
    k_prompt.push_back(random(std::size_t{1} * prompt_len * token));
    v_prompt.push_back(random(std::size_t{1} * prompt_len * token));
  }
  std::vector<std::vector<const __half*>> k_new(4), v_new(4);
  for (int step = 0; step < 4; ++step) {
    for (int layer = 0; layer < 2; ++layer) {
      k_new[step].push_back(random(token));
      v_new[step].push_back(random(token));
    }
  }
  const __half* q = random(32 * 128);
  std::vector<__half> o_buffer(32 * 128);
  std::vector<float> lse_buffer(32);
  __half* o = o_buffer.data();
  float* lse = lse_buffer.data();

  // @README kv_cache@

  // the same tokens in the shadow, for the reference over layer 1's last step
  ekv::test::Shadow<__half> shadow(config, config.max_seq_block_num());
  for (int layer = 0; layer < 2; ++layer) {
    REQUIRE(ekv::cpu_append_kv<__half>(shadow.view(layer, 1), k_prompt[layer], v_prompt[layer], prompt_len));
    for (int step = 0; step < 4; ++step) {
      REQUIRE(ekv::cpu_append_kv<__half>(shadow.view(layer, 1), k_new[step][layer], v_new[step][layer], 1));
    }
  }
  CHECK(cache.get_cache_total_len() == prompt_len + 4);
  ekv::test::check_elastic(
      shadow, 1, 1, q, o, 8, [&](int b, int h) { return cache.attended_blocks(1, b, h); }, 1, 2);

  ekv::HostKVCache loaded(config);
  loaded.load_kvcache("cache.safetensors");
  std::remove("cache.safetensors");
  std::vector<__half> again(o_buffer.size());
  std::vector<float> lse_again(lse_buffer.size());
  for (ekv::HostKVCache* c : {&cache, &loaded}) {
    c->attn(host(q, {1, 32, 128}), host(c == &cache ? o : again.data(), {1, 32, 128}),
            host(c == &cache ? lse : lse_again.data(), {1, 32}), 0, 4, -1);
  }
  CHECK(std::memcmp(o, again.data(), again.size() * sizeof(__half)) == 0);
}
