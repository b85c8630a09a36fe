// kvcache::KVCache, the KTransformers spelling over HostKVCache: attn with the cache's own
// block_table and cache_seqlens gives exactly HostKVCache::attn's output, exact and
// elastic; a table or length that differs is refused naming the entry; dump_kvcache with
// sequence 0's row and length writes a file a fresh compat cache loads; the _fp16 block
// accessors round-trip a block and refuse a cache of another kv_type.

#include <doctest/doctest.h>

#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "cache/kv_cache_checks.hpp"
#include "ekv/cpu/kvcache.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

ekv::TensorView host(__half* p, std::initializer_list<std::int64_t> shape) {
  return ekv::TensorView::of(p, shape, ekv::DeviceKind::kHost);
}
ekv::TensorView host(float* p, std::initializer_list<std::int64_t> shape) {
  return ekv::TensorView::of(p, shape, ekv::DeviceKind::kHost);
}

// Two sequences of uneven lengths in every layer of `cache`.
void fill(kvcache::KVCache& cache, std::uint64_t seed) {
  const ekv::KVCacheConfig& c = cache.cache().config();
  for (int layer = 0; layer < c.layer_num; ++layer) {
    for (int tokens : {100, 37}) {  // sequence 0 then both: lengths 137 and 37
      const int batch = tokens == 100 ? 1 : 2;
      const std::size_t n = static_cast<std::size_t>(batch) * tokens * c.kv_head_num * c.head_dim;
      std::vector<__half> k = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed + layer * 7 + tokens);
      std::vector<__half> v = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed + layer * 7 + tokens + 1);
      cache.cache().append(layer, host(k.data(), {batch, tokens, c.kv_head_num, c.head_dim}),
                           host(v.data(), {batch, tokens, c.kv_head_num, c.head_dim}));
    }
  }
}

}  // namespace

TEST_CASE("kvcache::KVCache: attn with the cache's own table and lengths is HostKVCache::attn") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::KVCacheConfig c = ekv::test::small_config(ekv::DType::kFloat16);
  kvcache::KVCache cache(c);
  fill(cache, seed);
  const int batch = 2, rows = batch * c.q_head_num;
  std::vector<__half> q = ekv::bench::random_uniform<__half>(static_cast<std::size_t>(rows) * c.head_dim, -1.0f, 1.0f,
                                                             seed + 100);
  const __half nan = ekv::DTypeTraits<__half>::from_float(std::numeric_limits<float>::quiet_NaN());
  std::vector<__half> o1(q.size(), nan), o2(q.size(), nan);
  std::vector<float> l1(rows, std::nanf("")), l2(rows, std::nanf(""));
  const int row_len = cache.cache().allocator().max_blocks_per_seq();
  const std::vector<std::int32_t> table(cache.block_table().begin(), cache.block_table().begin() + batch * row_len);
  const std::vector<std::int32_t> seqlens = {137, 37};
  for (int pick : {-1, 3}) {  // exact, then elastic with 3 picked blocks
    INFO("pick_block_num " << pick);
    const ekv::TensorView tq = host(q.data(), {batch, c.q_head_num, c.head_dim});
    const ekv::TensorView to = host(o1.data(), {batch, c.q_head_num, c.head_dim});
    const ekv::TensorView tl = host(l1.data(), {batch, c.q_head_num});
    if (pick < 0) {
      cache.attn(tq, to, tl, 1, 0, table, seqlens);  // no counts: exact
    } else {
      cache.attn(tq, to, tl, 1, 0, table, seqlens, pick, 1, 2);
    }
    cache.cache().attn(host(q.data(), {batch, c.q_head_num, c.head_dim}),
                       host(o2.data(), {batch, c.q_head_num, c.head_dim}), host(l2.data(), {batch, c.q_head_num}), 1,
                       0, pick, 1, 2);
    for (std::size_t i = 0; i < o1.size(); ++i) REQUIRE(__half2float(o1[i]) == __half2float(o2[i]));
    for (int r = 0; r < rows; ++r) REQUIRE(l1[r] == l2[r]);
  }
  // a length or a block that is not the cache's: refused, naming the entry
  const auto attn_with = [&](const std::vector<std::int32_t>& t, const std::vector<std::int32_t>& lens) {
    cache.attn(host(q.data(), {batch, c.q_head_num, c.head_dim}), host(o1.data(), {batch, c.q_head_num, c.head_dim}),
               host(l1.data(), {batch, c.q_head_num}), 0, 0, t, lens);
  };
  CHECK_THROWS_WITH_AS(attn_with(table, {137, 36}),
                       doctest::Contains("cache_seqlens[1]=36, but sequence 1 holds 37 tokens"), ekv::Error);
  CHECK_THROWS_WITH_AS(attn_with(table, {137}), doctest::Contains("cache_seqlens holds 1 lengths for a batch of 2"),
                       ekv::Error);
  std::vector<std::int32_t> wrong = table;
  wrong[row_len + 1] = wrong[row_len + 1] + 1;
  CHECK_THROWS_WITH_AS(attn_with(wrong, seqlens), doctest::Contains("block_table[1][1]="), ekv::Error);
  CHECK_THROWS_WITH_AS(attn_with(std::vector<std::int32_t>(table.begin(), table.begin() + 3), seqlens),
                       doctest::Contains("not 2 rows of one width"), ekv::Error);
  // rows narrower than the blocks a sequence holds (137 tokens: 9 blocks of 16)
  std::vector<std::int32_t> narrow;
  for (int s = 0; s < batch; ++s) {
    narrow.insert(narrow.end(), table.begin() + s * row_len, table.begin() + s * row_len + 4);
  }
  CHECK_THROWS_WITH_AS(attn_with(narrow, seqlens), doctest::Contains("rows hold 4 blocks; sequence 0 has 9"),
                       ekv::Error);
}

TEST_CASE("kvcache::KVCache: dump_kvcache(block_table, cache_total_len, path) and load_kvcache; _fp16 accessors") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::KVCacheConfig c = ekv::test::small_config(ekv::DType::kFloat16);
  kvcache::KVCache cache(c);
  fill(cache, seed);
  const std::string path = "kvcache_compat_test.safetensors";
  const std::vector<std::int32_t> row(cache.block_table().begin(), cache.block_table().begin() + 9);
  CHECK(cache.get_cache_total_len() == 137);
  CHECK_THROWS_WITH_AS(cache.dump_kvcache(row, 136, path), doctest::Contains("cache_total_len=136"), ekv::Error);
  cache.dump_kvcache(row, 137, path);
  kvcache::KVCache loaded(c);
  loaded.load_kvcache(path);
  CHECK(loaded.get_cache_total_len() == 137);
  CHECK(loaded.block_table() == cache.block_table());

  const std::size_t block = static_cast<std::size_t>(c.kv_head_num) * c.block_len * c.head_dim;
  std::vector<__half> k = ekv::bench::random_uniform<__half>(block, -1.0f, 1.0f, seed + 5), v(k), k2(block), v2(block);
  const auto shaped = [&](std::vector<__half>& x) { return host(x.data(), {c.kv_head_num, c.block_len, c.head_dim}); };
  loaded.update_kvcache_one_block_fp16(shaped(k), shaped(v), 2, row[3]);
  loaded.get_kvcache_one_block_fp16(shaped(k2), shaped(v2), 2, row[3]);
  for (std::size_t i = 0; i < block; ++i) REQUIRE(__half2float(k2[i]) == __half2float(k[i]));
  std::vector<float> importance(static_cast<std::size_t>(c.kv_head_num) * c.block_len, 0.25f), back(importance.size());
  loaded.update_importance_one_block(host(importance.data(), {c.kv_head_num, c.block_len}), 0, row[0]);
  loaded.get_importance_one_block(host(back.data(), {c.kv_head_num, c.block_len}), 0, row[0]);
  CHECK(back == importance);
  std::remove(path.c_str());

  kvcache::KVCache bf16(ekv::test::small_config(ekv::DType::kBFloat16));
  CHECK_THROWS_WITH_AS(bf16.get_kvcache_one_block_fp16(shaped(k2), shaped(v2), 0, 0),
                       doctest::Contains("the _fp16 accessors need float16"), ekv::Error);
}
