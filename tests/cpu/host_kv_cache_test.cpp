// HostKVCache, the KVCache interface on the CPU backend: append and attend across layers
// and a batch of uneven sequences against the float64 reference (exact, and elastic over
// the blocks it read), layer_step sharing, block / importance / anchor round trips, a full
// pool that changes nothing, free_sequence reuse, arguments checked by name, dump then
// load bit-identical with identical outputs after, damaged files refused with the cache
// unchanged, and the older system's example shape.
// Tolerances: tests/cache/kv_cache_checks.hpp's.

#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "cache/kv_cache_checks.hpp"
#include "cache/seed_config.hpp"
#include "ekv/attention/reference.hpp"
#include "ekv/cpu/host_kv_cache.hpp"
#include "ekv/elastic/accuracy.hpp"
#include "ekv/elastic/block_sparse_view.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

using ekv::test::Shadow;
using ekv::test::small_config;

template <typename T>
void append_both(ekv::HostKVCache& cache, Shadow<T>& shadow, int layer, int batch, int tokens, std::uint64_t seed) {
  const ekv::KVCacheConfig& c = cache.config();
  const std::size_t n = static_cast<std::size_t>(batch) * tokens * c.kv_head_num * c.head_dim;
  const std::vector<T> k = ekv::bench::random_uniform<T>(n, -1.0f, 1.0f, seed);
  const std::vector<T> v = ekv::bench::random_uniform<T>(n, -1.0f, 1.0f, seed + 1);
  cache.append(layer, ekv::TensorView::of(k.data(), {batch, tokens, c.kv_head_num, c.head_dim}, ekv::DeviceKind::kHost),
               ekv::TensorView::of(v.data(), {batch, tokens, c.kv_head_num, c.head_dim}, ekv::DeviceKind::kHost));
  REQUIRE(ekv::cpu_append_kv<T>(shadow.view(layer, batch), k.data(), v.data(), tokens));
}

template <typename T>
struct Step {
  std::vector<T> q, o;
  std::vector<float> lse;
};

template <typename T>
Step<T> attend(ekv::HostKVCache& cache, int layer, int batch, int token, std::uint64_t seed, int pick = -1) {
  const ekv::KVCacheConfig& c = cache.config();
  Step<T> s{ekv::bench::random_uniform<T>(static_cast<std::size_t>(batch) * c.q_head_num * c.head_dim, -1.0f, 1.0f,
                                          seed),
            std::vector<T>(static_cast<std::size_t>(batch) * c.q_head_num * c.head_dim,
                           ekv::DTypeTraits<T>::from_float(std::numeric_limits<float>::quiet_NaN())),
            std::vector<float>(static_cast<std::size_t>(batch) * c.q_head_num, std::nanf(""))};
  cache.attn(ekv::TensorView::of(s.q.data(), {batch, c.q_head_num, c.head_dim}, ekv::DeviceKind::kHost),
             ekv::TensorView::of(s.o.data(), {batch, c.q_head_num, c.head_dim}, ekv::DeviceKind::kHost),
             ekv::TensorView::of(s.lse.data(), {batch, c.q_head_num}, ekv::DeviceKind::kHost), layer, token, pick);
  return s;
}

template <typename T>
void check_exact(Shadow<T>& shadow, int layer, int batch, const Step<T>& s) {
  ekv::test::check_exact(shadow, layer, batch, s.q.data(), s.o.data(), s.lse.data());
}

template <typename T>
void check_elastic(ekv::HostKVCache& cache, Shadow<T>& shadow, int layer, int batch, const Step<T>& s, int pick) {
  ekv::test::check_elastic(shadow, layer, batch, s.q.data(), s.o.data(), pick,
                           [&](int b, int h) { return cache.attended_blocks(layer, b, h); });
}

// a prefill of uneven lengths in every layer: 3 sequences of 20, 2 more of 13, 1 more of 300
template <typename T>
void prefill(ekv::HostKVCache& cache, Shadow<T>& shadow, std::uint64_t seed) {
  for (int layer = 0; layer < cache.config().layer_num; ++layer) {
    append_both(cache, shadow, layer, 3, 20, seed + 10 * layer);
    append_both(cache, shadow, layer, 2, 13, seed + 10 * layer + 2);
    append_both(cache, shadow, layer, 1, 300, seed + 10 * layer + 4);
  }
}

// A cache and its shadow after prefill()
template <typename T>
struct Prefilled {
  Prefilled(const ekv::KVCacheConfig& config, std::uint64_t seed)
      : c(config), cache(config), shadow(config, config.max_seq_block_num()) {
    prefill(cache, shadow, seed);
  }
  ekv::KVCacheConfig c;
  ekv::HostKVCache cache;
  Shadow<T> shadow;
};

std::vector<unsigned char> block_bytes(const ekv::HostKVCache& cache, int layer, int block) {
  const ekv::KVCacheConfig& c = cache.config();
  const std::size_t n = c.block_row_bytes();
  std::vector<unsigned char> k(n), v(n);
  const auto shape = {std::int64_t{c.kv_head_num}, std::int64_t{c.block_len}, std::int64_t{c.head_dim}};
  ekv::TensorView tk = ekv::TensorView::contiguous(k.data(), c.kv_type, shape, ekv::DeviceKind::kHost);
  ekv::TensorView tv = ekv::TensorView::contiguous(v.data(), c.kv_type, shape, ekv::DeviceKind::kHost);
  cache.get_kvcache_one_block(tk, tv, layer, block);
  k.insert(k.end(), v.begin(), v.end());
  return k;
}

// every block of every layer, K, V and anchors: equal caches have equal states
std::vector<unsigned char> state_of(const ekv::HostKVCache& cache) {
  const ekv::KVCacheConfig& c = cache.config();
  std::vector<unsigned char> out;
  const std::size_t anchor_bytes =
      std::size_t{1} * c.kv_head_num * c.anchor_values() * ekv::dtype_size(c.value_type());
  std::vector<unsigned char> anchors(anchor_bytes);
  for (int l = 0; l < c.layer_num; ++l) {
    for (int b = 0; b < c.max_block_num; ++b) {
      const auto bytes = block_bytes(cache, l, b);
      out.insert(out.end(), bytes.begin(), bytes.end());
      cache.get_anchor_one_block(ekv::TensorView::contiguous(anchors.data(), c.value_type(),
                                                             {c.kv_head_num, c.anchor_values()},
                                                             ekv::DeviceKind::kHost),
                                 l, b);
      out.insert(out.end(), anchors.begin(), anchors.end());
    }
  }
  for (int s = 0; s < c.max_batch_size; ++s) out.push_back(static_cast<unsigned char>(cache.get_cache_total_len(s)));
  return out;
}

}  // namespace

TEST_CASE_TEMPLATE("append and attend across layers and a batch, exact and elastic, against float64", T, float,
                   __half, __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  Prefilled<T> p(small_config(ekv::kDTypeOf<T>), seed);
  auto& [c, cache, shadow] = p;
  CHECK(cache.get_cache_total_len(0) == 333);
  CHECK(cache.get_cache_total_len(1) == 33);
  CHECK(cache.get_cache_total_len(2) == 20);
  CHECK(cache.memory().blocks_used == 21 + 3 + 2);
  for (int token = 0; token < 3; ++token) {
    for (int layer = 0; layer < 3; ++layer) {
      append_both(cache, shadow, layer, 3, 1, seed + 100 * token + layer);  // decode: one token each
      check_exact(shadow, layer, 3, attend<T>(cache, layer, 3, token, seed + 7 * token + layer));
      const Step<T> e = attend<T>(cache, layer, 3, token, seed + 9 * token + layer, 4);
      check_elastic(cache, shadow, layer, 3, e, 4);
    }
  }
}

// A quantized cache's appends (half tokens) and, in its float shadow, the values its
// storage decodes them to.
void append_quantized(ekv::HostKVCache& cache, Shadow<float>& shadow, int layer, int batch, int tokens,
                      std::uint64_t seed, std::vector<__half>* k_out = nullptr) {
  const ekv::KVCacheConfig& c = cache.config();
  const std::size_t n = static_cast<std::size_t>(batch) * tokens * c.kv_head_num * c.head_dim;
  const std::vector<__half> k = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed);
  const std::vector<__half> v = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed + 1);
  const auto shape = {std::int64_t{batch}, std::int64_t{tokens}, std::int64_t{c.kv_head_num}, std::int64_t{c.head_dim}};
  cache.append(layer, ekv::TensorView::of(k.data(), shape, ekv::DeviceKind::kHost),
               ekv::TensorView::of(v.data(), shape, ekv::DeviceKind::kHost));
  const std::vector<float> ks = ekv::test::stored_values(c.storage(), k, c.head_dim);
  const std::vector<float> vs = ekv::test::stored_values(c.storage(), v, c.head_dim);
  REQUIRE(ekv::cpu_append_kv<float>(shadow.view(layer, batch), ks.data(), vs.data(), tokens));
  if (k_out != nullptr) *k_out = k;
}

TEST_CASE("quantized kv types: append quantizes, attention (exact, elastic) reads the stored values; blocks, "
          "memory, dump and load") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  for (ekv::DType type : {ekv::DType::kFloat8E4M3, ekv::DType::kQ8_0, ekv::DType::kQ4_0}) {
    INFO("kv_type=" << ekv::to_string(type));
    const ekv::KVCacheConfig c = small_config(type);
    ekv::HostKVCache cache(c);
    Shadow<float> shadow(c, c.max_seq_block_num());
    std::vector<__half> first;  // sequence 0's first 20 tokens of layer 0
    for (int layer = 0; layer < c.layer_num; ++layer) {
      append_quantized(cache, shadow, layer, 3, 20, seed + 10 * layer, layer == 0 ? &first : nullptr);
      append_quantized(cache, shadow, layer, 1, 300, seed + 10 * layer + 2);
    }
    const ekv::KVCacheMemory m = cache.memory();
    CHECK(m.bytes_per_token == 2u * c.layer_num * c.kv_head_num * c.row_bytes());
    CHECK(m.bytes_per_layer == 2u * c.max_block_num * c.block_bytes() +
                                   std::size_t{1} * c.max_block_num * c.kv_head_num *
                                       (c.anchor_values() * sizeof(__half) + c.block_len * sizeof(float)));
    for (int token = 0; token < 2; ++token) {
      for (int layer = 0; layer < c.layer_num; ++layer) {
        append_quantized(cache, shadow, layer, 3, 1, seed + 100 * token + layer);
        const Step<__half> e = attend<__half>(cache, layer, 3, token, seed + 7 * token + layer);
        const std::vector<float> q = ekv::test::converted<float>(e.q);
        ekv::test::check_exact(shadow, layer, 3, q.data(), e.o.data(), e.lse.data());
        const Step<__half> s = attend<__half>(cache, layer, 3, token, seed + 9 * token + layer, 4);
        const std::vector<float> qs = ekv::test::converted<float>(s.q);
        ekv::test::check_elastic(shadow, layer, 3, qs.data(), s.o.data(), 4,
                                 [&](int b, int h) { return cache.attended_blocks(layer, b, h); });
      }
    }
    // the block accessors move a block's stored rows: codes [kv heads][block_len][code
    // bytes], then scales; sequence 0's first block holds its first tokens as quantized
    const std::int32_t block0 = cache.allocator().block_id(0, 0);
    const std::vector<unsigned char> bytes = block_bytes(cache, 0, block0);
    REQUIRE(bytes.size() == 2 * c.block_row_bytes());
    const std::size_t code_bytes = ekv::kv_code_bytes(c.storage(), c.head_dim);
    std::vector<unsigned char> codes(code_bytes);
    std::vector<__half> scales(c.head_dim / ekv::kQuantGroup);
    for (int h = 0; h < c.kv_head_num; ++h) {
      for (int t : {0, 5, c.block_len - 1}) {
        // token t of sequence 0, kv head h: new tokens are [batch][tokens][kv heads][head_dim]
        const __half* x = first.data() + (static_cast<std::size_t>(t) * c.kv_head_num + h) * c.head_dim;
        ekv::quantize_row_from<__half>(c.storage(), x, c.head_dim, codes.data(), scales.data());
        const std::size_t row = static_cast<std::size_t>(h) * c.block_len + t;
        CHECK(std::memcmp(bytes.data() + row * code_bytes, codes.data(), code_bytes) == 0);
        const std::size_t scale_bytes = ekv::kv_scale_bytes(c.storage(), c.head_dim);
        CHECK(std::memcmp(bytes.data() + c.block_code_bytes() + row * scale_bytes, scales.data(), scale_bytes) == 0);
      }
    }
    // dump then load: the same state, the same outputs bit for bit
    const std::string path = "host_kv_cache_quant_test.safetensors";
    cache.dump_kvcache(path);
    ekv::HostKVCache loaded(c);
    loaded.load_kvcache(path);
    CHECK(state_of(loaded) == state_of(cache));
    for (int pick : {-1, 3}) {
      const auto a = attend<__half>(cache, 1, 3, 0, seed + 5, pick);
      const auto b = attend<__half>(loaded, 1, 3, 0, seed + 5, pick);
      CHECK(std::memcmp(a.o.data(), b.o.data(), a.o.size() * sizeof(__half)) == 0);
    }
    // a block written back as read changes nothing; a float16 block is refused by name
    const Step<__half> before = attend<__half>(cache, 0, 3, 0, seed + 6);
    std::vector<unsigned char> k(bytes.begin(), bytes.begin() + c.block_row_bytes());
    std::vector<unsigned char> v(bytes.begin() + c.block_row_bytes(), bytes.end());
    const auto block_shape = {std::int64_t{c.kv_head_num}, std::int64_t{c.block_len}, std::int64_t{c.head_dim}};
    cache.update_kvcache_one_block(ekv::TensorView::contiguous(k.data(), type, block_shape, ekv::DeviceKind::kHost),
                                   ekv::TensorView::contiguous(v.data(), type, block_shape, ekv::DeviceKind::kHost), 0,
                                   block0);
    const Step<__half> after = attend<__half>(cache, 0, 3, 0, seed + 6);
    CHECK(std::memcmp(before.o.data(), after.o.data(), before.o.size() * sizeof(__half)) == 0);
    std::vector<__half> dense(static_cast<std::size_t>(c.block_elems()));
    const ekv::TensorView dense_view = ekv::TensorView::of(dense.data(), block_shape, ekv::DeviceKind::kHost);
    const std::string refused = std::string("k has dtype float16; needs ") + ekv::to_string(type);
    CHECK_THROWS_WITH_AS(cache.get_kvcache_one_block(dense_view, dense_view, 0, block0),
                         doctest::Contains(refused.c_str()), ekv::Error);
    std::remove(path.c_str());
  }
}

TEST_CASE("layers share a selection per layer_step, and token_step steps reuse it") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  ekv::KVCacheConfig c = small_config(ekv::DType::kFloat16);
  c.layer_step = 3;
  c.token_step = 2;
  {
    Prefilled<__half> fresh(c, seed);
    CHECK_THROWS_WITH_AS(attend<__half>(fresh.cache, 1, 3, 0, seed, 3), doctest::Contains("attend layer 0 first"),
                         ekv::Error);
  }
  Prefilled<__half> p(c, seed);
  auto& cache = p.cache;
  auto& shadow = p.shadow;
  (void)attend<__half>(cache, 0, 3, 0, seed + 1, 3);
  const Step<__half> s1 = attend<__half>(cache, 1, 3, 0, seed + 2, 3);
  for (int h = 0; h < c.kv_head_num; ++h) CHECK(cache.attended_blocks(1, 0, h) == cache.attended_blocks(0, 0, h));
  check_elastic(cache, shadow, 1, 3, s1, 3);
  const auto before = cache.attended_blocks(0, 0, 0);
  (void)attend<__half>(cache, 0, 3, 1, seed + 3, 3);  // step 1 of token_step 2: reuses step 0's selection
  CHECK(cache.attended_blocks(0, 0, 0) == before);
}

TEST_CASE("block, importance and anchor round trips; a block written anew changes attention") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  Prefilled<float> p(small_config(ekv::DType::kFloat32), seed);
  auto& [c, cache, shadow] = p;
  const int physical = cache.allocator().block_id(0, 5);
  const std::size_t n = static_cast<std::size_t>(c.block_elems());
  std::vector<float> k = ekv::bench::random_uniform<float>(n, -2.0f, 2.0f, seed + 50), v = k;
  for (float& x : v) x = -x;
  const auto shape = {std::int64_t{c.kv_head_num}, std::int64_t{c.block_len}, std::int64_t{c.head_dim}};
  cache.update_kvcache_one_block(ekv::TensorView::of(k.data(), shape, ekv::DeviceKind::kHost),
                                 ekv::TensorView::of(v.data(), shape, ekv::DeviceKind::kHost), 1, physical);
  std::vector<float> k2(n), v2(n);
  cache.get_kvcache_one_block(ekv::TensorView::of(k2.data(), shape, ekv::DeviceKind::kHost),
                              ekv::TensorView::of(v2.data(), shape, ekv::DeviceKind::kHost), 1, physical);
  CHECK(k2 == k);
  CHECK(v2 == v);
  // the shadow gets the same tokens: logical block 5 of sequence 0 in layer 1
  for (int h = 0; h < c.kv_head_num; ++h) {
    for (int t = 0; t < c.block_len; ++t) {
      const std::int64_t at = shadow.view(1, 3).offset(0, h, 5 * c.block_len + t);
      std::copy_n(k.begin() + (h * c.block_len + t) * c.head_dim, c.head_dim, shadow.k[1].begin() + at);
      std::copy_n(v.begin() + (h * c.block_len + t) * c.head_dim, c.head_dim, shadow.v[1].begin() + at);
    }
  }
  check_exact(shadow, 1, 3, attend<float>(cache, 1, 3, 0, seed + 51));
  check_elastic(cache, shadow, 1, 3, attend<float>(cache, 1, 3, 0, seed + 52, 2), 2);  // anchors follow the block

  std::vector<float> importance = ekv::bench::random_uniform<float>(std::size_t{1} * c.kv_head_num * c.block_len,
                                                                    0.0f, 1.0f, seed + 53);
  std::vector<float> importance2(importance.size());
  cache.update_importance_one_block(
      ekv::TensorView::of(importance.data(), {c.kv_head_num, c.block_len}, ekv::DeviceKind::kHost), 2, physical);
  cache.get_importance_one_block(
      ekv::TensorView::of(importance2.data(), {c.kv_head_num, c.block_len}, ekv::DeviceKind::kHost), 2, physical);
  CHECK(importance2 == importance);
  std::vector<float> anchor = ekv::bench::random_uniform<float>(std::size_t{1} * c.kv_head_num * c.anchor_values(),
                                                                -1.0f, 1.0f, seed + 54);
  std::vector<float> anchor2(anchor.size());
  cache.update_anchor_one_block(
      ekv::TensorView::of(anchor.data(), {c.kv_head_num, c.anchor_values()}, ekv::DeviceKind::kHost), 0, 7);
  cache.get_anchor_one_block(
      ekv::TensorView::of(anchor2.data(), {c.kv_head_num, c.anchor_values()}, ekv::DeviceKind::kHost), 0, 7);
  CHECK(anchor2 == anchor);
}

TEST_CASE("a full pool changes nothing; free_sequence gives its blocks to the next") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  ekv::KVCacheConfig c = small_config(ekv::DType::kFloat16);
  c.max_block_num = 6;
  ekv::HostKVCache cache(c);
  Shadow<__half> shadow(c, c.max_seq_block_num());
  for (int layer = 0; layer < 3; ++layer) append_both(cache, shadow, layer, 2, 40, seed + layer);  // 3 blocks each
  CHECK(cache.memory().blocks_free == 0);
  const auto before = state_of(cache);
  // 40 + 9 tokens need a fourth block of 16
  const std::vector<__half> k(std::size_t{1} * 9 * c.kv_head_num * c.head_dim);
  const auto t = ekv::TensorView::of(k.data(), {1, 9, c.kv_head_num, c.head_dim}, ekv::DeviceKind::kHost);
  CHECK_THROWS_WITH_AS(cache.append(0, t, t),
                       doctest::Contains("the pool is full: the batch needs 1 more blocks, 0 of 6"), ekv::Error);
  CHECK(state_of(cache) == before);  // nothing written, nothing lost
  check_exact(shadow, 0, 2, attend<__half>(cache, 0, 2, 0, seed + 5));
  cache.free_sequence(0);
  CHECK(cache.memory().blocks_free == 3);
  CHECK(cache.get_cache_total_len(0) == 0);
  cache.append(0, t, t);  // sequence 0 again, in freed blocks
  CHECK(cache.get_cache_total_len(0) == 9);
  CHECK(cache.get_cache_total_len(1) == 40);
  CHECK(cache.memory().blocks_free == 2);
}

// tests/fuzz's c_api_tensor appended keys of any bytes, NaN and infinities among them, as
// a C caller may: attention converted their NaN scores to int (undefined; UBSan stopped
// there). They attend: NaN outputs in the query heads of their sequence and kv head, every
// other output bit for bit as over the same cache without them.
TEST_CASE("keys holding NaN and infinities attend: NaN where they are read, nothing else changes (fuzz regression)") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::KVCacheConfig c = small_config(ekv::DType::kFloat16);
  const int batch = 2, tokens = 40, group = c.q_head_num / c.kv_head_num;
  const std::size_t n = static_cast<std::size_t>(batch) * tokens * c.kv_head_num * c.head_dim;
  const std::vector<__half> k = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed);
  const std::vector<__half> v = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed + 1);
  std::vector<__half> poisoned_k = k;
  // sequence 0, kv head 0: a NaN at token 5 (the sink block), +inf at token 17, -inf at 30
  const auto at = [&](int token, int dim) {
    return static_cast<std::size_t>(token) * c.kv_head_num * c.head_dim + dim;
  };
  poisoned_k[at(5, 3)] = __float2half(std::numeric_limits<float>::quiet_NaN());
  poisoned_k[at(17, 0)] = __float2half(std::numeric_limits<float>::infinity());
  poisoned_k[at(30, 9)] = __float2half(-std::numeric_limits<float>::infinity());
  ekv::HostKVCache clean(c), poisoned(c);
  const auto shape = {std::int64_t{batch}, std::int64_t{tokens}, std::int64_t{c.kv_head_num}, std::int64_t{c.head_dim}};
  clean.append(0, ekv::TensorView::of(k.data(), shape, ekv::DeviceKind::kHost),
               ekv::TensorView::of(v.data(), shape, ekv::DeviceKind::kHost));
  poisoned.append(0, ekv::TensorView::of(poisoned_k.data(), shape, ekv::DeviceKind::kHost),
                  ekv::TensorView::of(v.data(), shape, ekv::DeviceKind::kHost));
  for (int pick : {-1, 1}) {
    INFO("pick_block_num=" << pick);
    const Step<__half> want = attend<__half>(clean, 0, batch, 0, seed + 2, pick);
    const Step<__half> got = attend<__half>(poisoned, 0, batch, 0, seed + 2, pick);
    for (int b = 0; b < batch; ++b) {
      for (int h = 0; h < c.q_head_num; ++h) {
        INFO("sequence " << b << ", query head " << h);
        const std::size_t row = static_cast<std::size_t>(b) * c.q_head_num + h;
        if (b == 0 && h < group) {
          // the sum of weights is NaN: the output NaN, the LSE not finite (CPU attention
          // writes -inf for a sum it cannot take the log of)
          bool nan = false;
          for (int d = 0; d < c.head_dim; ++d) nan = nan || std::isnan(__half2float(got.o[row * c.head_dim + d]));
          CHECK(nan);
          CHECK_FALSE(std::isfinite(got.lse[row]));
          continue;
        }
        CHECK(got.lse[row] == want.lse[row]);
        for (int d = 0; d < c.head_dim; ++d) {
          CHECK(__half2float(got.o[row * c.head_dim + d]) == __half2float(want.o[row * c.head_dim + d]));
        }
      }
    }
  }
}

TEST_CASE("every argument is checked by name: shape, dtype, device, layer, block") {
  const ekv::KVCacheConfig c = small_config(ekv::DType::kFloat16);
  ekv::HostKVCache cache(c);
  std::vector<__half> q(std::size_t{1} * c.q_head_num * c.head_dim), o(q.size());
  std::vector<float> lse(c.q_head_num), wrong(q.size());
  const auto tq = ekv::TensorView::of(q.data(), {1, c.q_head_num, c.head_dim}, ekv::DeviceKind::kHost);
  const auto to = ekv::TensorView::of(o.data(), {1, c.q_head_num, c.head_dim}, ekv::DeviceKind::kHost);
  const auto tl = ekv::TensorView::of(lse.data(), {1, c.q_head_num}, ekv::DeviceKind::kHost);
  CHECK_THROWS_WITH_AS(cache.attn(tq, to, tl, 0, 0), doctest::Contains("holds no tokens; append before attending"),
                       ekv::Error);
  const auto bad_shape = ekv::TensorView::of(q.data(), {1, c.q_head_num / 2, 2 * c.head_dim}, ekv::DeviceKind::kHost);
  CHECK_THROWS_WITH_AS(cache.attn(bad_shape, to, tl, 0, 0),
                       doctest::Contains("HostKVCache::attn: q has shape [1, 4, 128]; needs [1, 8, 64] "
                                         "[batch, q_head_num, head_dim]"),
                       ekv::Error);
  const auto bad_dtype = ekv::TensorView::of(wrong.data(), {1, c.q_head_num, c.head_dim}, ekv::DeviceKind::kHost);
  CHECK_THROWS_WITH_AS(cache.attn(tq, bad_dtype, tl, 0, 0),
                       doctest::Contains("output has dtype float32; needs float16"), ekv::Error);
  const auto on_gpu = ekv::TensorView::of(lse.data(), {1, c.q_head_num}, ekv::DeviceKind::kCuda);
  CHECK_THROWS_WITH_AS(cache.attn(tq, to, on_gpu, 0, 0), doctest::Contains("attn_lse is in cuda memory"), ekv::Error);
  CHECK_THROWS_WITH_AS(cache.attn(tq, to, tl, 3, 0), doctest::Contains("layer 3 not supported; supported: 0 to"),
                       ekv::Error);
  CHECK_THROWS_WITH_AS(block_bytes(cache, 0, 40), doctest::Contains("block_idx 40 not supported"), ekv::Error);
  ekv::KVCacheConfig bad = c;
  bad.head_dim = 80;
  CHECK_THROWS_WITH_AS(ekv::HostKVCache{bad}, doctest::Contains("head_dim=80 not supported"), ekv::Error);
}

TEST_CASE("dump then load: bit-identical caches, identical outputs, and decode continues identically") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  Prefilled<__nv_bfloat16> p(small_config(ekv::DType::kBFloat16), seed);
  auto& [c, cache, shadow] = p;
  std::vector<float> importance(std::size_t{1} * c.kv_head_num * c.block_len, 0.25f);
  cache.update_importance_one_block(
      ekv::TensorView::of(importance.data(), {c.kv_head_num, c.block_len}, ekv::DeviceKind::kHost), 1, 3);
  const std::string path = "host_kv_cache_test.safetensors";
  cache.dump_kvcache(path);
  ekv::HostKVCache loaded(c);
  loaded.load_kvcache(path);
  CHECK(state_of(loaded) == state_of(cache));
  std::vector<float> importance2(importance.size());
  loaded.get_importance_one_block(
      ekv::TensorView::of(importance2.data(), {c.kv_head_num, c.block_len}, ekv::DeviceKind::kHost), 1, 3);
  CHECK(importance2 == importance);
  for (int layer = 0; layer < 3; ++layer) {
    for (int pick : {-1, 3}) {
      const auto a = attend<__nv_bfloat16>(cache, layer, 3, 0, seed + layer, pick);
      const auto b = attend<__nv_bfloat16>(loaded, layer, 3, 0, seed + layer, pick);
      CHECK(std::memcmp(a.o.data(), b.o.data(), a.o.size() * sizeof(__nv_bfloat16)) == 0);
    }
  }
  // both decode on with the same new token
  Shadow<__nv_bfloat16> other(c, c.max_seq_block_num());
  append_both(cache, shadow, 0, 3, 1, seed + 99);
  append_both(loaded, other, 0, 3, 1, seed + 99);
  const auto a = attend<__nv_bfloat16>(cache, 0, 3, 1, seed + 98, 3);
  const auto b = attend<__nv_bfloat16>(loaded, 0, 3, 1, seed + 98, 3);
  CHECK(std::memcmp(a.o.data(), b.o.data(), a.o.size() * sizeof(__nv_bfloat16)) == 0);
  CHECK(loaded.memory().blocks_used == cache.memory().blocks_used);
  std::remove(path.c_str());
}

TEST_CASE("load refuses damaged, foreign and mismatched files, and the cache stays as it was") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  ekv::KVCacheConfig c = small_config(ekv::DType::kFloat16);
  c.layer_num = 2;
  c.max_block_num = 12;
  ekv::HostKVCache source(c), target(c);
  Shadow<__half> s1(c, c.max_seq_block_num()), s2(c, c.max_seq_block_num());
  for (int layer = 0; layer < 2; ++layer) {
    append_both(source, s1, layer, 3, 50, seed + layer);
    append_both(target, s2, layer, 2, 17, seed + 10 + layer);
  }
  const std::string path = "host_kv_cache_damage.safetensors", bad = "host_kv_cache_damaged.safetensors";
  source.dump_kvcache(path);
  std::ifstream in(path, std::ios::binary);
  const std::vector<unsigned char> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  const auto write = [&](const std::vector<unsigned char>& b, std::size_t n) {
    std::ofstream out(bad, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(n));
  };
  const auto before = state_of(target);
  const auto refused = [&](const char* message) {
    try {
      target.load_kvcache(bad);
      FAIL("loaded");
    } catch (const ekv::Error& e) {
      CHECK_MESSAGE(std::string(e.what()).find(message) != std::string::npos, e.what());
    }
    CHECK(state_of(target) == before);
  };
  std::uint64_t header = 0;
  for (int i = 0; i < 8; ++i) header |= std::uint64_t{bytes[i]} << (8 * i);
  for (std::size_t n : {std::size_t{3}, std::size_t{8}, std::size_t{8 + header / 3}, std::size_t{8 + header},
                        bytes.size() / 2, bytes.size() - 1}) {
    INFO("truncated to " << n);
    write(bytes, n);
    refused("truncated");
  }
  std::mt19937_64 rng(seed);
  for (int i = 0; i < 8; ++i) {
    std::vector<unsigned char> flipped = bytes;
    flipped[8 + header + rng() % (bytes.size() - 8 - header)] ^= static_cast<unsigned char>(1u << (rng() % 8));
    write(flipped, flipped.size());
    refused("is corrupted");
  }
  // a file with a config of another shape
  ekv::KVCacheConfig wider = c;
  wider.max_block_num = 13;
  ekv::HostKVCache(wider).dump_kvcache(bad);
  refused("the file's config does not match this cache's");
  // a safetensors file that is not a KV cache, and one of a later format version
  const std::vector<float> x(4, 1.0f);
  ekv::write_safetensors(bad, {{"x", "F32", {4}, x.data(), 16}}, {});
  refused("not an ekv KV cache file");
  ekv::write_safetensors(bad, {{"x", "F32", {4}, x.data(), 16}},
                         {{"format", "ekv-kvcache"}, {"format_version", "2"}});
  refused("format version '2'; this ekv reads version 1");
  target.load_kvcache(path);  // and the good file loads
  CHECK(state_of(target) == state_of(source));
  std::remove(path.c_str());
  std::remove(bad.c_str());
}

TEST_CASE("the older system's example shape runs: 32 layers, 8/32 heads, dim 128, block_len 256, anchor_num 4") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::KVCacheConfig c = ekv::test::seed_example_config(4, 1, 2);
  ekv::HostKVCache cache(c);
  Shadow<__half> shadow(c, c.max_seq_block_num());
  for (int layer = 0; layer < c.layer_num; ++layer) {
    append_both(cache, shadow, layer, 1, 700, seed + layer);
    const auto s = attend<__half>(cache, layer, 1, 0, seed + 100 + layer, 1);
    if (layer % 8 == 0) check_elastic(cache, shadow, layer, 1, s, 1);
  }
  const ekv::KVCacheMemory m = cache.memory();
  CHECK(m.bytes_per_token == std::size_t{2} * 32 * 8 * 128 * 2);
  CHECK(m.blocks_used == 3);
  CHECK(m.blocks_free == 1);
}
