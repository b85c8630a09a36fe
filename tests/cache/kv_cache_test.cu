// KVCache on the GPU: append and attend across layers and a batch of uneven sequences
// against the float64 reference (exact, and elastic over the blocks it read), layer_step
// sharing, block / importance / anchor round trips, a full pool that changes nothing,
// free_sequence reuse, dump then load bit-identical (and read by HostKVCache, the other
// backend), damaged files refused with the cache unchanged, attn captured in a CUDA Graph
// after a warm-up call, and the older system's example shape. Quantized kv types: the
// GPU's appends store the bytes HostKVCache's do, its anchors equal the host's, attention
// (exact, elastic, graph-replayed) against float64 over the stored values, and the file
// read by the host backend. Out of memory: each allocation of the construction, of attn,
// dump and load failed in turn (core/allocation.hpp's hook), a full GPU and an impossible
// pinned buffer, the cache's contents intact after each. Four caches on four threads at
// once. Tolerances: tests/cache/kv_cache_checks.hpp's.

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <ekv/ekv.cuh>

#include "cache/kv_cache_checks.hpp"
#include "cache/reliability.hpp"
#include "cache/seed_config.hpp"
#include "device_memory.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

using ekv::test::Shadow;
using ekv::test::small_config;

template <typename T>
void append_both(ekv::KVCache& cache, Shadow<T>& shadow, int layer, int batch, int tokens, std::uint64_t seed,
                 const ekv::Stream& stream) {
  const ekv::KVCacheConfig& c = cache.config();
  const std::size_t n = static_cast<std::size_t>(batch) * tokens * c.kv_head_num * c.head_dim;
  const std::vector<T> k = ekv::bench::random_uniform<T>(n, -1.0f, 1.0f, seed);
  const std::vector<T> v = ekv::bench::random_uniform<T>(n, -1.0f, 1.0f, seed + 1);
  ekv::DeviceBuffer<T> kd(n), vd(n);
  kd.copy_from(k);
  vd.copy_from(v);
  const auto shape = {std::int64_t{batch}, std::int64_t{tokens}, std::int64_t{c.kv_head_num}, std::int64_t{c.head_dim}};
  cache.append(layer, ekv::TensorView::contiguous(kd.data(), c.kv_type, shape, ekv::DeviceKind::kCuda),
               ekv::TensorView::contiguous(vd.data(), c.kv_type, shape, ekv::DeviceKind::kCuda), stream);
  stream.synchronize();
  REQUIRE(ekv::cpu_append_kv<T>(shadow.view(layer, batch), k.data(), v.data(), tokens));
}

// Device arguments of one attn call, outputs poisoned, and their host copies after.
template <typename T>
struct Step {
  Step(const ekv::KVCacheConfig& c, int batch, std::uint64_t seed)
      : batch(batch), c(c),
        q(ekv::bench::random_uniform<T>(std::size_t{1} * batch * c.q_head_num * c.head_dim, -1.0f, 1.0f, seed)),
        o(q.size()), lse(std::size_t{1} * batch * c.q_head_num), qd(q.size()), od(q.size()), lsed(lse.size()) {
    qd.copy_from(q);
    od.copy_from(std::vector<T>(q.size(), ekv::DTypeTraits<T>::from_float(std::nanf(""))));
    lsed.copy_from(std::vector<float>(lse.size(), std::nanf("")));
  }
  void run(ekv::KVCache& cache, int layer, int token, int pick, const ekv::Stream& stream) {
    cache.attn(ekv::TensorView::of(qd.data(), {batch, c.q_head_num, c.head_dim}, ekv::DeviceKind::kCuda),
               ekv::TensorView::of(od.data(), {batch, c.q_head_num, c.head_dim}, ekv::DeviceKind::kCuda),
               ekv::TensorView::of(lsed.data(), {batch, c.q_head_num}, ekv::DeviceKind::kCuda), layer, token, stream,
               pick);
  }
  void fetch(const ekv::Stream& stream) {
    od.copy_to(o, stream);
    lsed.copy_to(lse, stream);
    stream.synchronize();
  }
  int batch;
  ekv::KVCacheConfig c;
  std::vector<T> q, o;
  std::vector<float> lse;
  ekv::DeviceBuffer<T> qd, od;
  ekv::DeviceBuffer<float> lsed;
};

template <typename T>
Step<T> attend(ekv::KVCache& cache, int layer, int batch, int token, std::uint64_t seed, int pick,
               const ekv::Stream& stream) {
  Step<T> s(cache.config(), batch, seed);
  s.run(cache, layer, token, pick, stream);
  s.fetch(stream);
  return s;
}

template <typename T>
void check_elastic(ekv::KVCache& cache, Shadow<T>& shadow, int layer, int batch, const Step<T>& s, int pick,
                   const ekv::Stream& stream) {
  ekv::test::check_elastic(shadow, layer, batch, s.q.data(), s.o.data(), pick,
                           [&](int b, int h) { return cache.attended_blocks(b, h, stream); });
}

template <typename T>
void prefill(ekv::KVCache& cache, Shadow<T>& shadow, std::uint64_t seed, const ekv::Stream& stream) {
  for (int layer = 0; layer < cache.config().layer_num; ++layer) {
    append_both(cache, shadow, layer, 3, 20, seed + 10 * layer, stream);
    append_both(cache, shadow, layer, 2, 13, seed + 10 * layer + 2, stream);
    append_both(cache, shadow, layer, 1, 300, seed + 10 * layer + 4, stream);
  }
}

// every block of every layer, K, V and anchors, and the lengths
std::vector<unsigned char> state_of(const ekv::KVCache& cache, const ekv::Stream& stream) {
  const ekv::KVCacheConfig& c = cache.config();
  const std::size_t n = c.block_row_bytes();
  const std::size_t na = std::size_t{1} * c.kv_head_num * c.anchor_values() * ekv::dtype_size(c.value_type());
  std::vector<unsigned char> k(n), v(n), a(na), out;
  const auto shape = {std::int64_t{c.kv_head_num}, std::int64_t{c.block_len}, std::int64_t{c.head_dim}};
  for (int l = 0; l < c.layer_num; ++l) {
    for (int b = 0; b < c.max_block_num; ++b) {
      cache.get_kvcache_one_block(ekv::TensorView::contiguous(k.data(), c.kv_type, shape, ekv::DeviceKind::kHost),
                                  ekv::TensorView::contiguous(v.data(), c.kv_type, shape, ekv::DeviceKind::kHost), l,
                                  b, stream);
      cache.get_anchor_one_block(
          ekv::TensorView::contiguous(a.data(), c.value_type(), {c.kv_head_num, c.anchor_values()},
                                      ekv::DeviceKind::kHost),
          l, b, stream);
      for (const auto* x : {&k, &v, &a}) out.insert(out.end(), x->begin(), x->end());
    }
  }
  for (int s = 0; s < c.max_batch_size; ++s) out.push_back(static_cast<unsigned char>(cache.get_cache_total_len(s)));
  return out;
}

// attn of layer 0 (exact, then elastic with 3 picked) replayed from a CUDA Graph captured
// after a warm-up call gives the direct call's output, bit for bit.
void check_graph_replay(ekv::KVCache& cache, std::uint64_t seed, const ekv::Stream& stream) {
  for (int pick : {-1, 3}) {
    INFO("pick_block_num " << pick);
    Step<__half> s(cache.config(), 3, seed + 1);
    s.run(cache, 0, 0, pick, stream);  // warm-up: plans and allocates
    s.fetch(stream);
    const std::vector<__half> direct = s.o;
    s.od.fill_bytes(0xFF, stream);
    const ekv::Graph graph =
        ekv::Graph::capture(stream, [&](const ekv::Stream& g) { s.run(cache, 0, 0, pick, g); });
    graph.launch(stream);
    s.fetch(stream);
    CHECK(std::memcmp(direct.data(), s.o.data(), direct.size() * sizeof(__half)) == 0);
  }
}

// The same state from the host backend's accessors.
std::vector<unsigned char> state_of(const ekv::HostKVCache& cache) {
  const ekv::KVCacheConfig& c = cache.config();
  const std::size_t na = std::size_t{1} * c.kv_head_num * c.anchor_values() * ekv::dtype_size(c.value_type());
  std::vector<unsigned char> k(c.block_row_bytes()), v(k.size()), a(na), out;
  const auto shape = {std::int64_t{c.kv_head_num}, std::int64_t{c.block_len}, std::int64_t{c.head_dim}};
  for (int l = 0; l < c.layer_num; ++l) {
    for (int b = 0; b < c.max_block_num; ++b) {
      cache.get_kvcache_one_block(ekv::TensorView::contiguous(k.data(), c.kv_type, shape, ekv::DeviceKind::kHost),
                                  ekv::TensorView::contiguous(v.data(), c.kv_type, shape, ekv::DeviceKind::kHost), l,
                                  b);
      cache.get_anchor_one_block(ekv::TensorView::contiguous(a.data(), c.value_type(),
                                                             {c.kv_head_num, c.anchor_values()},
                                                             ekv::DeviceKind::kHost),
                                 l, b);
      for (const auto* x : {&k, &v, &a}) out.insert(out.end(), x->begin(), x->end());
    }
  }
  for (int s = 0; s < c.max_batch_size; ++s) out.push_back(static_cast<unsigned char>(cache.get_cache_total_len(s)));
  return out;
}

// Where two states (state_of) first differ: "" where they are equal, else the layer, block,
// part (k, v, anchors) and byte, or the lengths.
std::string first_difference(const ekv::KVCacheConfig& c, const std::vector<unsigned char>& a,
                             const std::vector<unsigned char>& b) {
  if (a == b) return "";
  if (a.size() != b.size()) return "sizes differ";
  const std::size_t na = std::size_t{1} * c.kv_head_num * c.anchor_values() * ekv::dtype_size(c.value_type());
  const std::size_t per_block = 2 * c.block_row_bytes() + na;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i] == b[i]) continue;
    const std::size_t at = i % per_block, block = i / per_block;
    if (block >= std::size_t{1} * c.layer_num * c.max_block_num) return "the lengths differ";
    const std::size_t row = c.block_row_bytes();
    const char* part = at < row ? "k" : at < 2 * row ? "v" : "anchors";
    return "layer " + std::to_string(block / c.max_block_num) + " block " + std::to_string(block % c.max_block_num) +
           " " + part + " byte " + std::to_string(at < 2 * row ? at % row : at - 2 * row) + ": " +
           std::to_string(a[i]) + " vs " + std::to_string(b[i]);
  }
  return "";
}

// The same half tokens appended to a quantized GPU cache, its host twin, and (as the
// values the storage decodes them to) a float shadow.
void append_quantized(ekv::KVCache& cache, ekv::HostKVCache& host, Shadow<float>& shadow, int layer, int batch,
                      int tokens, std::uint64_t seed, const ekv::Stream& stream) {
  const ekv::KVCacheConfig& c = cache.config();
  const std::size_t n = static_cast<std::size_t>(batch) * tokens * c.kv_head_num * c.head_dim;
  const std::vector<__half> k = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed);
  const std::vector<__half> v = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed + 1);
  ekv::DeviceBuffer<__half> kd(n), vd(n);
  kd.copy_from(k);
  vd.copy_from(v);
  const auto shape = {std::int64_t{batch}, std::int64_t{tokens}, std::int64_t{c.kv_head_num}, std::int64_t{c.head_dim}};
  cache.append(layer, ekv::TensorView::of(kd.data(), shape, ekv::DeviceKind::kCuda),
               ekv::TensorView::of(vd.data(), shape, ekv::DeviceKind::kCuda), stream);
  stream.synchronize();
  host.append(layer, ekv::TensorView::of(k.data(), shape, ekv::DeviceKind::kHost),
              ekv::TensorView::of(v.data(), shape, ekv::DeviceKind::kHost));
  const std::vector<float> ks = ekv::test::stored_values(c.storage(), k, c.head_dim);
  const std::vector<float> vs = ekv::test::stored_values(c.storage(), v, c.head_dim);
  REQUIRE(ekv::cpu_append_kv<float>(shadow.view(layer, batch), ks.data(), vs.data(), tokens));
}

}  // namespace

TEST_CASE("quantized kv types: the GPU stores the host's bytes and anchors; exact, elastic and graph-replayed "
          "attention over the stored values; the host backend reads the GPU's file") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::Stream stream;
  for (ekv::DType type : {ekv::DType::kFloat8E4M3, ekv::DType::kQ8_0, ekv::DType::kQ4_0}) {
    for (ekv::AnchorType anchor : {ekv::AnchorType::kQuest, ekv::AnchorType::kBlockMax, ekv::AnchorType::kFixed}) {
      INFO("kv_type=" << std::string(ekv::to_string(type)) << " anchor_type=" << std::string(ekv::to_string(anchor)));
      ekv::KVCacheConfig c = small_config(type);
      c.anchor_type = anchor;
      c.anchor_num = 2;
      ekv::KVCache cache(c, ekv::DeviceInfo::current(), stream);
      cache.set_exact_fallback(ekv::ExactFallback::kNever);  // these tests check the elastic path
      ekv::HostKVCache host(c);
      Shadow<float> shadow(c, c.max_seq_block_num());
      for (int layer = 0; layer < c.layer_num; ++layer) {
        append_quantized(cache, host, shadow, layer, 3, 20, seed + 10 * layer, stream);
        append_quantized(cache, host, shadow, layer, 1, 300, seed + 10 * layer + 2, stream);
      }
      // quantized on the GPU as on the host, bit for bit; anchors from the same values
      CHECK_MESSAGE(first_difference(c, state_of(cache, stream), state_of(host)).empty(),
                    first_difference(c, state_of(cache, stream), state_of(host)));
      CHECK(cache.memory().bytes_per_token == 2u * c.layer_num * c.kv_head_num * c.row_bytes());
      for (int token = 0; token < 2; ++token) {
        for (int layer = 0; layer < c.layer_num; ++layer) {
          append_quantized(cache, host, shadow, layer, 3, 1, seed + 100 * token + layer, stream);
          const Step<__half> e = attend<__half>(cache, layer, 3, token, seed + 7 * token + layer, -1, stream);
          const std::vector<float> q = ekv::test::converted<float>(e.q);
          ekv::test::check_exact(shadow, layer, 3, q.data(), e.o.data(), e.lse.data());
          const Step<__half> s = attend<__half>(cache, layer, 3, token, seed + 9 * token + layer, 4, stream);
          const std::vector<float> qs = ekv::test::converted<float>(s.q);
          ekv::test::check_elastic(shadow, layer, 3, qs.data(), s.o.data(), 4,
                                   [&](int b, int h) { return cache.attended_blocks(b, h, stream); });
        }
      }
      CHECK_MESSAGE(first_difference(c, state_of(cache, stream), state_of(host)).empty(),
                    first_difference(c, state_of(cache, stream), state_of(host)));
      if (anchor != ekv::AnchorType::kQuest) continue;
      // a graph replays the direct call
      check_graph_replay(cache, seed, stream);
      // the GPU's file, read by the host backend: the same state
      const std::string path = ekv::test::scratch_path("kv_cache_quant_test");
      cache.dump_kvcache(path, stream);
      ekv::HostKVCache loaded(c);
      loaded.load_kvcache(path);
      CHECK_MESSAGE(first_difference(c, state_of(loaded), state_of(cache, stream)).empty(),
                    first_difference(c, state_of(loaded), state_of(cache, stream)));
      ekv::KVCache reloaded(c, ekv::DeviceInfo::current(), stream);
      reloaded.load_kvcache(path, stream);
      CHECK_MESSAGE(first_difference(c, state_of(reloaded, stream), state_of(cache, stream)).empty(),
                    first_difference(c, state_of(reloaded, stream), state_of(cache, stream)));
      std::remove(path.c_str());
    }
  }
}

TEST_CASE("DYNAMIC anchors follow the importance a caller gives, which appends and recomputed anchors keep") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::Stream stream;
  ekv::KVCacheConfig c = small_config(ekv::DType::kFloat16);  // 2 kv heads, head_dim 64, blocks of 16
  c.anchor_type = ekv::AnchorType::kDynamic;
  c.anchor_num = 1;
  c.max_batch_size = 1;
  ekv::KVCache cache(c, ekv::DeviceInfo::current(), stream);
  ekv::HostKVCache host(c);
  const int tokens = 40, d = c.head_dim, heads = c.kv_head_num, len = c.block_len;
  const std::size_t n = std::size_t{1} * tokens * heads * d;
  const std::vector<__half> k = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed);
  const std::vector<__half> v = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed + 1);
  ekv::DeviceBuffer<__half> kd(n), vd(n);
  kd.copy_from(k);
  vd.copy_from(v);
  const auto shape = {std::int64_t{1}, std::int64_t{tokens}, std::int64_t{heads}, std::int64_t{d}};
  cache.append(0, ekv::TensorView::of(kd.data(), shape, ekv::DeviceKind::kCuda),
               ekv::TensorView::of(vd.data(), shape, ekv::DeviceKind::kCuda), stream);
  host.append(0, ekv::TensorView::of(k.data(), shape, ekv::DeviceKind::kHost),
              ekv::TensorView::of(v.data(), shape, ekv::DeviceKind::kHost));
  // block 1 (tokens 16 to 31): head 0's most important token is its 5th, head 1's its 9th
  const std::int32_t block = cache.allocator().block_id(0, 1);
  REQUIRE(block == host.allocator().block_id(0, 1));
  std::vector<float> importance(std::size_t{1} * heads * len, 0.0f);
  importance[5] = 1.0f;
  importance[len + 9] = 2.0f;
  const auto ti = ekv::TensorView::of(importance.data(), {heads, len}, ekv::DeviceKind::kHost);
  cache.update_importance_one_block(ti, 0, block, stream);
  host.update_importance_one_block(ti, 0, block);
  const auto anchor_of = [&](const auto& read) {
    std::vector<__half> a(std::size_t{1} * heads * c.anchor_values());
    read(ekv::TensorView::of(a.data(), {heads, c.anchor_values()}, ekv::DeviceKind::kHost));
    return a;
  };
  const auto gpu_anchor = [&] {
    return anchor_of([&](const ekv::TensorView& t) { cache.get_anchor_one_block(t, 0, block, stream); });
  };
  const auto host_anchor = [&] {
    return anchor_of([&](const ekv::TensorView& t) { host.get_anchor_one_block(t, 0, block); });
  };
  const auto expected = [&] {  // new tokens are [batch][tokens][kv heads][head_dim]
    std::vector<__half> a;
    for (int h = 0; h < heads; ++h) {
      const int t = len + (h == 0 ? 5 : 9);
      const __half* row = k.data() + (static_cast<std::size_t>(t) * heads + h) * d;
      a.insert(a.end(), row, row + d);
    }
    return a;
  }();
  const auto bits = [](const std::vector<__half>& x) {
    std::vector<std::uint16_t> out(x.size());
    std::memcpy(out.data(), x.data(), x.size() * sizeof(__half));
    return out;
  };
  std::vector<float> back(importance.size(), -1.0f);
  cache.get_importance_one_block(ekv::TensorView::of(back.data(), {heads, len}, ekv::DeviceKind::kHost), 0, block,
                                 stream);
  CHECK(back == importance);  // kept as given, not zeroed by the anchors' refresh
  CHECK(bits(gpu_anchor()) == bits(expected));
  CHECK(bits(host_anchor()) == bits(expected));
  // an append into the next block keeps block 1's importance and anchors
  const std::vector<__half> k1 = ekv::bench::random_uniform<__half>(std::size_t{1} * heads * d, -1.0f, 1.0f, seed + 2);
  ekv::DeviceBuffer<__half> k1d(k1.size());
  k1d.copy_from(k1);
  const auto one = {std::int64_t{1}, std::int64_t{1}, std::int64_t{heads}, std::int64_t{d}};
  cache.append(0, ekv::TensorView::of(k1d.data(), one, ekv::DeviceKind::kCuda),
               ekv::TensorView::of(k1d.data(), one, ekv::DeviceKind::kCuda), stream);
  CHECK(bits(gpu_anchor()) == bits(expected));
}

TEST_CASE_TEMPLATE("append and attend across layers and a batch, exact and elastic, against float64", T, float,
                   __half, __nv_bfloat16) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::Stream stream;
  const ekv::KVCacheConfig c = small_config(ekv::kDTypeOf<T>);
  ekv::KVCache cache(c, ekv::DeviceInfo::current(), stream);
  cache.set_exact_fallback(ekv::ExactFallback::kNever);  // these tests check the elastic path
  Shadow<T> shadow(c, c.max_seq_block_num());
  prefill(cache, shadow, seed, stream);
  CHECK(cache.get_cache_total_len(0) == 333);
  CHECK(cache.memory().blocks_used == 21 + 3 + 2);
  for (int token = 0; token < 3; ++token) {
    for (int layer = 0; layer < 3; ++layer) {
      append_both(cache, shadow, layer, 3, 1, seed + 100 * token + layer, stream);
      const Step<T> exact = attend<T>(cache, layer, 3, token, seed + 7 * token + layer, -1, stream);
      ekv::test::check_exact(shadow, layer, 3, exact.q.data(), exact.o.data(), exact.lse.data());
      const Step<T> e = attend<T>(cache, layer, 3, token, seed + 9 * token + layer, 4, stream);
      check_elastic(cache, shadow, layer, 3, e, 4, stream);
    }
  }
  // a smaller batch: the first sequence alone
  const Step<T> one = attend<T>(cache, 2, 1, 0, seed + 77, -1, stream);
  ekv::test::check_exact(shadow, 2, 1, one.q.data(), one.o.data(), one.lse.data());
}

TEST_CASE("layers share a selection per layer_step; a sharing layer before its owner is refused") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::Stream stream;
  ekv::KVCacheConfig c = small_config(ekv::DType::kFloat16);
  c.layer_step = 3;
  ekv::KVCache cache(c, ekv::DeviceInfo::current(), stream);
  cache.set_exact_fallback(ekv::ExactFallback::kNever);  // these tests check the elastic path
  Shadow<__half> shadow(c, c.max_seq_block_num());
  prefill(cache, shadow, seed, stream);
  CHECK_THROWS_WITH_AS(attend<__half>(cache, 1, 3, 0, seed, 3, stream), doctest::Contains("attend layer 0 first"),
                       ekv::Error);
  (void)attend<__half>(cache, 0, 3, 0, seed + 1, 3, stream);
  const auto owner = cache.attended_blocks(0, 1, stream);
  const Step<__half> s = attend<__half>(cache, 1, 3, 0, seed + 2, 3, stream);
  CHECK(cache.attended_blocks(0, 1, stream) == owner);
  check_elastic(cache, shadow, 1, 3, s, 3, stream);
}

TEST_CASE("block, importance and anchor round trips; a block written anew changes attention") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::Stream stream;
  const ekv::KVCacheConfig c = small_config(ekv::DType::kFloat32);
  ekv::KVCache cache(c, ekv::DeviceInfo::current(), stream);
  cache.set_exact_fallback(ekv::ExactFallback::kNever);  // these tests check the elastic path
  Shadow<float> shadow(c, c.max_seq_block_num());
  prefill(cache, shadow, seed, stream);
  const int physical = cache.allocator().block_id(0, 5);
  const std::size_t n = static_cast<std::size_t>(c.block_elems());
  std::vector<float> k = ekv::bench::random_uniform<float>(n, -2.0f, 2.0f, seed + 50), v = k, k2(n), v2(n);
  for (float& x : v) x = -x;
  const auto shape = {std::int64_t{c.kv_head_num}, std::int64_t{c.block_len}, std::int64_t{c.head_dim}};
  cache.update_kvcache_one_block(ekv::TensorView::of(k.data(), shape, ekv::DeviceKind::kHost),
                                 ekv::TensorView::of(v.data(), shape, ekv::DeviceKind::kHost), 1, physical, stream);
  cache.get_kvcache_one_block(ekv::TensorView::of(k2.data(), shape, ekv::DeviceKind::kHost),
                              ekv::TensorView::of(v2.data(), shape, ekv::DeviceKind::kHost), 1, physical, stream);
  CHECK(k2 == k);
  CHECK(v2 == v);
  for (int h = 0; h < c.kv_head_num; ++h) {
    for (int t = 0; t < c.block_len; ++t) {
      const std::int64_t at = shadow.view(1, 3).offset(0, h, 5 * c.block_len + t);
      std::copy_n(k.begin() + (h * c.block_len + t) * c.head_dim, c.head_dim, shadow.k[1].begin() + at);
      std::copy_n(v.begin() + (h * c.block_len + t) * c.head_dim, c.head_dim, shadow.v[1].begin() + at);
    }
  }
  const Step<float> exact = attend<float>(cache, 1, 3, 0, seed + 51, -1, stream);
  ekv::test::check_exact(shadow, 1, 3, exact.q.data(), exact.o.data(), exact.lse.data());
  check_elastic(cache, shadow, 1, 3, attend<float>(cache, 1, 3, 0, seed + 52, 2, stream), 2, stream);

  std::vector<float> importance = ekv::bench::random_uniform<float>(std::size_t{1} * c.kv_head_num * c.block_len,
                                                                    0.0f, 1.0f, seed + 53);
  std::vector<float> back(importance.size());
  ekv::DeviceBuffer<float> on_device(importance.size());  // device tensors serve too
  on_device.copy_from(importance);
  cache.update_importance_one_block(
      ekv::TensorView::of(on_device.data(), {c.kv_head_num, c.block_len}, ekv::DeviceKind::kCuda), 2, physical, stream);
  cache.get_importance_one_block(
      ekv::TensorView::of(back.data(), {c.kv_head_num, c.block_len}, ekv::DeviceKind::kHost), 2, physical, stream);
  CHECK(back == importance);
  std::vector<float> anchor = ekv::bench::random_uniform<float>(std::size_t{1} * c.kv_head_num * c.anchor_values(),
                                                                -1.0f, 1.0f, seed + 54);
  std::vector<float> anchor2(anchor.size());
  cache.update_anchor_one_block(
      ekv::TensorView::of(anchor.data(), {c.kv_head_num, c.anchor_values()}, ekv::DeviceKind::kHost), 0, 7, stream);
  cache.get_anchor_one_block(
      ekv::TensorView::of(anchor2.data(), {c.kv_head_num, c.anchor_values()}, ekv::DeviceKind::kHost), 0, 7, stream);
  CHECK(anchor2 == anchor);
}

TEST_CASE("a full pool changes nothing; free_sequence gives its blocks to the next") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::Stream stream;
  ekv::KVCacheConfig c = small_config(ekv::DType::kFloat16);
  c.max_block_num = 6;
  ekv::KVCache cache(c, ekv::DeviceInfo::current(), stream);
  cache.set_exact_fallback(ekv::ExactFallback::kNever);  // these tests check the elastic path
  Shadow<__half> shadow(c, c.max_seq_block_num());
  for (int layer = 0; layer < 3; ++layer) append_both(cache, shadow, layer, 2, 40, seed + layer, stream);
  CHECK(cache.memory().blocks_free == 0);
  const auto before = state_of(cache, stream);
  ekv::DeviceBuffer<__half> k(std::size_t{1} * 9 * c.kv_head_num * c.head_dim);  // 40 + 9 needs a fourth block
  const auto t = ekv::TensorView::of(k.data(), {1, 9, c.kv_head_num, c.head_dim}, ekv::DeviceKind::kCuda);
  CHECK_THROWS_WITH_AS(cache.append(0, t, t, stream),
                       doctest::Contains("the pool is full: the batch needs 1 more blocks, 0 of 6"), ekv::Error);
  CHECK(state_of(cache, stream) == before);
  const Step<__half> s = attend<__half>(cache, 0, 2, 0, seed + 5, -1, stream);
  ekv::test::check_exact(shadow, 0, 2, s.q.data(), s.o.data(), s.lse.data());
  cache.free_sequence(0, stream);
  CHECK(cache.memory().blocks_free == 3);
  k.fill_bytes(0, stream);
  cache.append(0, t, t, stream);
  CHECK(cache.get_cache_total_len(0) == 9);
  CHECK(cache.memory().blocks_free == 2);
  const std::vector<__half> q(std::size_t{1} * c.q_head_num * c.head_dim);
  const auto host_q = ekv::TensorView::of(q.data(), {1, c.q_head_num, c.head_dim}, ekv::DeviceKind::kHost);
  CHECK_THROWS_WITH_AS(cache.attn(host_q, host_q, host_q, 0, 0, stream),
                       doctest::Contains("KVCache::attn: q is in host memory; this cache needs cuda"), ekv::Error);
}

TEST_CASE("dump then load: bit-identical, identical outputs; the host backend reads the same file") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::Stream stream;
  const ekv::KVCacheConfig c = small_config(ekv::DType::kFloat16);
  ekv::KVCache cache(c, ekv::DeviceInfo::current(), stream);
  cache.set_exact_fallback(ekv::ExactFallback::kNever);  // these tests check the elastic path
  Shadow<__half> shadow(c, c.max_seq_block_num());
  prefill(cache, shadow, seed, stream);
  const std::string path = ekv::test::scratch_path("kv_cache_test");
  cache.dump_kvcache(path, stream);
  ekv::KVCache loaded(c, ekv::DeviceInfo::current(), stream);
  loaded.set_exact_fallback(ekv::ExactFallback::kNever);
  loaded.load_kvcache(path, stream);
  CHECK(state_of(loaded, stream) == state_of(cache, stream));
  for (int layer = 0; layer < 3; ++layer) {
    for (int pick : {-1, 3}) {
      const auto a = attend<__half>(cache, layer, 3, 0, seed + layer, pick, stream);
      const auto b = attend<__half>(loaded, layer, 3, 0, seed + layer, pick, stream);
      CHECK(std::memcmp(a.o.data(), b.o.data(), a.o.size() * sizeof(__half)) == 0);
    }
  }
  // the other backend: the same tokens, attention within the reference's tolerance
  ekv::HostKVCache host(c);
  host.load_kvcache(path);
  CHECK(host.get_cache_total_len(0) == 333);
  Step<__half> s(c, 3, seed + 9);
  std::vector<__half> o(s.q.size());
  std::vector<float> lse(s.lse.size());
  host.attn(ekv::TensorView::of(s.q.data(), {3, c.q_head_num, c.head_dim}, ekv::DeviceKind::kHost),
            ekv::TensorView::of(o.data(), {3, c.q_head_num, c.head_dim}, ekv::DeviceKind::kHost),
            ekv::TensorView::of(lse.data(), {3, c.q_head_num}, ekv::DeviceKind::kHost), 1, 0);
  ekv::test::check_exact(shadow, 1, 3, s.q.data(), o.data(), lse.data());

  // a damaged file leaves the cache as it was
  std::ifstream in(path, std::ios::binary);
  std::vector<unsigned char> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  bytes[bytes.size() - 100] ^= 4;
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  ekv::KVCache other(c, ekv::DeviceInfo::current(), stream);
  other.set_exact_fallback(ekv::ExactFallback::kNever);  // these tests check the elastic path
  Shadow<__half> other_shadow(c, c.max_seq_block_num());
  append_both(other, other_shadow, 0, 1, 5, seed + 3, stream);
  const auto before = state_of(other, stream);
  CHECK_THROWS_WITH_AS(other.load_kvcache(path, stream), doctest::Contains("is corrupted"), ekv::Error);
  CHECK(state_of(other, stream) == before);
  std::remove(path.c_str());
}

TEST_CASE("attn replays in a CUDA Graph after a warm-up call, with the direct call's output") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::Stream stream;
  const ekv::KVCacheConfig c = small_config(ekv::DType::kFloat16);
  ekv::KVCache cache(c, ekv::DeviceInfo::current(), stream);
  cache.set_exact_fallback(ekv::ExactFallback::kNever);  // these tests check the elastic path
  Shadow<__half> shadow(c, c.max_seq_block_num());
  prefill(cache, shadow, seed, stream);
  check_graph_replay(cache, seed, stream);
}

TEST_CASE("the older system's example shape runs: 32 layers, 8/32 heads, dim 128, block_len 256, anchor_num 4") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::Stream stream;
  const ekv::KVCacheConfig c = ekv::test::seed_example_config(20, 1, 2);
  ekv::KVCache cache(c, ekv::DeviceInfo::current(), stream);
  cache.set_exact_fallback(ekv::ExactFallback::kNever);  // these tests check the elastic path
  Shadow<__half> shadow(c, c.max_seq_block_num());
  for (int layer = 0; layer < c.layer_num; ++layer) {
    append_both(cache, shadow, layer, 1, 4000, seed + layer, stream);
    const Step<__half> s = attend<__half>(cache, layer, 1, 0, seed + 100 + layer, 4, stream);
    if (layer % 8 == 0) check_elastic(cache, shadow, layer, 1, s, 4, stream);
  }
  CHECK(cache.memory().blocks_used == 16);
}

// Out of memory (issue 21): core/allocation.hpp's hook fails each allocation in turn.
namespace {

using ekv::test::fail_each_allocation;
using ekv::test::file_bytes;

}  // namespace

TEST_CASE("every allocation of a KVCache's construction, failed in turn, is a clear error; no GPU memory stays") {
  const ekv::test::DisarmAllocationFaults disarm;
  const ekv::Stream stream;
  const ekv::KVCacheConfig c = small_config(ekv::DType::kFloat16);
  const ekv::test::DeviceMemory before = ekv::test::device_memory();
  const long long made = fail_each_allocation(
      [&] { ekv::KVCache cache(c, ekv::DeviceInfo::current(), stream); }, "cannot allocate",
      // cudaFree gives the memory back at once; 8 MiB of slack for the driver's own pages
      [&] { return ekv::test::device_memory_back(before, std::size_t{8} << 20); });
  CHECK(made >= 5 * c.layer_num);  // K, V, anchors, importance and lengths of every layer, at least
}

TEST_CASE("a failed allocation in attn, dump or load leaves the cache's contents intact, and it works after") {
  const ekv::test::DisarmAllocationFaults disarm;
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::Stream stream;
  const ekv::KVCacheConfig c = small_config(ekv::DType::kFloat16);
  ekv::KVCache cache(c, ekv::DeviceInfo::current(), stream);
  cache.set_exact_fallback(ekv::ExactFallback::kNever);
  Shadow<__half> shadow(c, c.max_seq_block_num());
  prefill(cache, shadow, seed, stream);
  const auto state = state_of(cache, stream);
  const auto same = [&] { return state_of(cache, stream) == state; };

  // the first exact and elastic calls plan and allocate their workspaces
  for (int pick : {-1, 3}) {
    INFO("pick_block_num " << pick);
    Step<__half> s(c, 3, seed + 5 + pick);  // the test's own buffers first
    fail_each_allocation([&] { s.run(cache, 1, 0, pick, stream); }, "cannot allocate", same);
    s.fetch(stream);
    if (pick < 0) {
      ekv::test::check_exact(shadow, 1, 3, s.q.data(), s.o.data(), s.lse.data());
    } else {
      check_elastic(cache, shadow, 1, 3, s, pick, stream);
    }
  }
  // a dump through pinned staging: the file at the path stays as it was, no temporary beside it
  const std::string path = ekv::test::scratch_path("kv_cache_oom_test");
  cache.dump_kvcache(path, stream);
  const std::vector<char> dumped = file_bytes(path);
  CHECK(fail_each_allocation([&] { cache.dump_kvcache(path, stream); }, "cannot allocate",
                             [&] { return file_bytes(path) == dumped && !std::ifstream(path + ".tmp").good(); }) >= 1);
  // a load of another cache's file: nothing of it taken
  ekv::KVCache other(c, ekv::DeviceInfo::current(), stream);
  Shadow<__half> other_shadow(c, c.max_seq_block_num());
  append_both(other, other_shadow, 0, 2, 40, seed + 1000, stream);
  const std::string other_path = ekv::test::scratch_path("kv_cache_oom_test_other");
  other.dump_kvcache(other_path, stream);
  CHECK(fail_each_allocation([&] { cache.load_kvcache(other_path, stream); }, "cannot allocate", same) >= 1);
  cache.load_kvcache(path, stream);  // back to its own (the last call above loaded the other)
  CHECK(same());
  const Step<__half> after = attend<__half>(cache, 2, 3, 0, seed + 77, -1, stream);
  ekv::test::check_exact(shadow, 2, 3, after.q.data(), after.o.data(), after.lse.data());
  std::remove(path.c_str());
  std::remove(other_path.c_str());
}

TEST_CASE("real exhaustion: a full GPU and an impossible pinned buffer give clear errors; the cache carries on") {
  if (std::getenv("EKV_TEST_NO_EXHAUSTION") != nullptr) {
    // .ci/sanitize-gpu sets it: the tools need device memory of their own while the test holds it all
    MESSAGE("left out (EKV_TEST_NO_EXHAUSTION)");
    return;
  }
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::Stream stream;
  const ekv::KVCacheConfig c = small_config(ekv::DType::kFloat16);
  ekv::KVCache cache(c, ekv::DeviceInfo::current(), stream);
  Shadow<__half> shadow(c, c.max_seq_block_num());
  prefill(cache, shadow, seed, stream);
  const auto state = state_of(cache, stream);
  const std::string path = ekv::test::scratch_path("kv_cache_exhaustion_test");
  cache.dump_kvcache(path, stream);
  Step<__half> two(c, 2, seed + 3);  // a batch not planned yet: its first attn allocates
  {
    // hold every byte the device gives, in ever smaller pieces
    std::vector<ekv::DeviceBuffer<unsigned char>> hog;
    for (std::size_t piece : {std::size_t{1} << 30, std::size_t{64} << 20, std::size_t{1} << 20}) {
      for (;;) {
        try {
          hog.emplace_back(piece);
        } catch (const ekv::Error& e) {
          CHECK_MESSAGE(std::string(e.what()).find("bytes of GPU memory") != std::string::npos, e.what());
          break;
        }
      }
    }
    MESSAGE("held " << hog.size() << " pieces; " << ekv::test::free_device_bytes() << " bytes left free");
    CHECK_THROWS_WITH_AS(ekv::KVCache(c, ekv::DeviceInfo::current(), stream), doctest::Contains("GPU memory"),
                         ekv::Error);
    try {
      two.run(cache, 0, 0, -1, stream);  // its workspace may still fit
      two.fetch(stream);
      ekv::test::check_exact(shadow, 0, 2, two.q.data(), two.o.data(), two.lse.data());
    } catch (const ekv::Error& e) {  // a workspace that did not fit, or a launch without room for its stacks
      CHECK_MESSAGE(std::string(e.what()).find("memory") != std::string::npos, e.what());
    }
    // no room for device staging: the load reads through host memory
    cache.load_kvcache(path, stream);
    CHECK(state_of(cache, stream) == state);
  }
  // pinned: more than any address space holds
  CHECK_THROWS_WITH_AS(ekv::PinnedBuffer<unsigned char>(std::size_t{1} << 48),
                       doctest::Contains("bytes of pinned host memory"), ekv::Error);
  CHECK(cudaGetLastError() == cudaSuccess);  // none of the failures is sticky
  CHECK(state_of(cache, stream) == state);
  two.run(cache, 0, 0, -1, stream);
  two.fetch(stream);
  ekv::test::check_exact(shadow, 0, 2, two.q.data(), two.o.data(), two.lse.data());
  std::remove(path.c_str());
}

// Concurrency (issue 21): caches on threads and streams of their own, at once, give what
// they give one at a time, bit for bit (and under compute-sanitizer's racecheck in
// .ci/sanitize-gpu).
TEST_CASE("four caches on four threads and streams at once attend as they do one at a time") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::KVCacheConfig c = small_config(ekv::DType::kFloat16);
  // EKV_TEST_CONCURRENT_CACHES: how many (4 unless set), for narrowing a tool's report
  const char* set = std::getenv("EKV_TEST_CONCURRENT_CACHES");
  const int caches = set ? std::max(1, std::atoi(set)) : 4;
  INFO("caches=" << caches);
  // one cache's life: prefill, then three tokens of appends and exact and elastic attention in
  // every layer; what it attended, in order
  const auto life = [&](int which) {
    const ekv::Stream stream;
    ekv::KVCache cache(c, ekv::DeviceInfo::current(), stream);
    cache.set_exact_fallback(ekv::ExactFallback::kNever);
    Shadow<__half> shadow(c, c.max_seq_block_num());
    prefill(cache, shadow, seed + 1000 * which, stream);
    std::vector<__half> out;
    for (int token = 0; token < 3; ++token) {
      for (int layer = 0; layer < c.layer_num; ++layer) {
        append_both(cache, shadow, layer, 3, 1, seed + 1000 * which + 100 * token + layer, stream);
        for (int pick : {-1, 4}) {
          const Step<__half> s = attend<__half>(cache, layer, 3, token, seed + 7 * token + layer + pick, pick, stream);
          out.insert(out.end(), s.o.begin(), s.o.end());
        }
      }
    }
    return out;
  };
  std::vector<std::vector<__half>> alone(caches), together(caches);
  for (int i = 0; i < caches; ++i) alone[i] = life(i);
  ekv::test::at_once(caches, [&](int i) { together[i] = life(i); });
  for (int i = 0; i < caches; ++i) {
    INFO("cache " << i);
    REQUIRE(together[i].size() == alone[i].size());
    CHECK(std::memcmp(together[i].data(), alone[i].data(), alone[i].size() * sizeof(__half)) == 0);
  }
}
