#pragma once
// The bad-input matrix of a KVCache (issue 21), for either backend: every public call with
// each kind of invalid argument (out-of-range layer, sequence and block ids, wrong dtype,
// rank, shape or memory, null data, batch past max_batch_size, lengths past capacity, a
// full pool, bad elastic counts, a missing or unwritable file) throws ekv::Error whose
// message names what was wrong, and leaves the cache's contents as they were: its dump
// before and after each call is byte for byte the same.
//
// Cache: HostKVCache, or an adapter giving the GPU's KVCache the same calls on a stream
// (cache/bad_input_gpu_test.cu); Buf: std::vector or ekv::DeviceBuffer, the memory the
// calls' tensors are in (`memory`). The cache holds three sequences of 50, 17 and 33 tokens
// in every layer of tests/cache/kv_cache_checks.hpp's small_config (half).

#include <doctest/doctest.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "cache/kv_cache_checks.hpp"
#include "cache/reliability.hpp"
#include "ekv/cache/tensor_view.hpp"

namespace ekv::test {

template <typename Cache>
struct BadInputCase {
  std::string what;
  std::function<void(Cache&)> call;
  std::string says;  // a part of the message
};

// Runs the matrix; returns its number of cases.
template <typename Cache, template <typename...> class Buf>
int check_bad_inputs(Cache& cache, DeviceKind memory) {
  using T = __half;
  using ekv::TensorView;
  const ekv::KVCacheConfig& c = cache.config();
  REQUIRE(c.layer_num == 3);
  REQUIRE(cache.get_cache_total_len(0) == 66);
  const int kv = c.kv_head_num, d = c.head_dim, qh = c.q_head_num;
  const DeviceKind other = memory == DeviceKind::kHost ? DeviceKind::kCuda : DeviceKind::kHost;
  const auto name = [](DeviceKind k) { return std::string(k == DeviceKind::kHost ? "host" : "cuda"); };

  // buffers of every shape the calls take, and wrong ones
  const auto tokens = [&](int batch, int n) { return Buf<T>(static_cast<std::size_t>(batch) * n * kv * d); };
  Buf<T> one = tokens(1, 1), three = tokens(3, 1), four = tokens(4, 1), many = tokens(1, 600),
                 fill_pool = tokens(1, 32 * c.block_len);
  Buf<float> one_float(one.size());
  Buf<T> q(3 * qh * d), o(q.size()), block(static_cast<std::size_t>(kv) * c.block_len * d),
      anchor(static_cast<std::size_t>(kv) * c.anchor_values());
  Buf<float> lse(3 * qh), importance(static_cast<std::size_t>(kv) * c.block_len);
  const auto k4 = [&](Buf<T>& x, int batch, int n) {
    return TensorView::of(x.data(), {batch, n, kv, d}, memory);
  };
  const auto q3 = [&](Buf<T>& x, int batch) {
    return TensorView::of(x.data(), {batch, qh, d}, memory);
  };
  const auto l2 = [&](int batch) { return TensorView::of(lse.data(), {batch, qh}, memory); };
  const auto kb = [&](Buf<T>& x) { return TensorView::of(x.data(), {kv, c.block_len, d}, memory); };
  const auto null_t = static_cast<const T*>(nullptr);

  const std::vector<BadInputCase<Cache>> cases = {
      // append
      {"append layer -1", [&](auto& x) { x.append(-1, k4(one, 1, 1), k4(one, 1, 1)); }, "layer -1"},
      {"append layer = layer_num", [&](auto& x) { x.append(3, k4(one, 1, 1), k4(one, 1, 1)); }, "layer 3"},
      {"append float K into a half cache",
       [&](auto& x) {
         x.append(0, TensorView::of(one_float.data(), {1, 1, kv, d}, memory), k4(one, 1, 1));
       },
       "k_new has dtype float32; needs float16"},
      {"append K of rank 3",
       [&](auto& x) { x.append(0, TensorView::of(one.data(), {1, kv, d}, memory), k4(one, 1, 1)); },
       "k_new has shape"},
      {"append K with a kv head too many",
       [&](auto& x) {
         x.append(0, TensorView::of(three.data(), {1, 1, kv + 1, d}, memory), k4(one, 1, 1));
       },
       "k_new has shape [1, 1, 3, 64]"},
      {"append K of another head_dim",
       [&](auto& x) { x.append(0, TensorView::of(one.data(), {1, 1, kv, d / 2}, memory), k4(one, 1, 1)); },
       "k_new has shape [1, 1, 2, 32]"},
      {"append V of another batch than K", [&](auto& x) { x.append(0, k4(three, 3, 1), k4(one, 1, 1)); },
       "v_new has shape [1, 1, 2, 64]; needs [3, 1, 2, 64]"},
      {"append a batch past max_batch_size", [&](auto& x) { x.append(0, k4(four, 4, 1), k4(four, 4, 1)); },
       "max_batch_size=3"},
      {"append zero tokens",
       [&](auto& x) { x.append(0, TensorView::of(one.data(), {1, 0, kv, d}, memory), k4(one, 1, 1)); },
       "new_tokens 1 to"},
      {"append past a sequence's capacity", [&](auto& x) { x.append(0, k4(many, 1, 600), k4(many, 1, 600)); },
       "cannot take 600 more"},
      {"append into a full pool",
       [&](auto& x) { x.append(0, k4(fill_pool, 1, 32 * c.block_len), k4(fill_pool, 1, 32 * c.block_len)); },
       "the pool is full"},
      {"append null K",
       [&](auto& x) { x.append(0, TensorView::of(null_t, {1, 1, kv, d}, memory), k4(one, 1, 1)); },
       "k_new is null"},
      {"append K in the other memory",
       [&](auto& x) { x.append(0, TensorView::of(one.data(), {1, 1, kv, d}, other), k4(one, 1, 1)); },
       "k_new is in " + name(other) + " memory; this cache needs " + name(memory)},
      // attn
      {"attn layer 3", [&](auto& x) { x.attn(q3(q, 3), q3(o, 3), l2(3), 3, 0); }, "layer 3"},
      {"attn a batch past max_batch_size",
       [&](auto& x) {
         Buf<T> q4(4 * qh * d);
         x.attn(q3(q4, 4), q3(q4, 4), TensorView::of(q4.data(), {4, qh}, memory), 0, 0);
       },
       "max_batch_size=3"},
      {"attn q with a head too few",
       [&](auto& x) { x.attn(TensorView::of(q.data(), {3, qh - 1, d}, memory), q3(o, 3), l2(3), 0, 0); },
       "q has shape [3, 7, 64]"},
      {"attn output of another batch than q", [&](auto& x) { x.attn(q3(q, 3), q3(o, 2), l2(3), 0, 0); },
       "output has shape [2, 8, 64]"},
      {"attn lse in half precision",
       [&](auto& x) { x.attn(q3(q, 3), q3(o, 3), TensorView::of(o.data(), {3, qh}, memory), 0, 0); },
       "attn_lse has dtype float16; needs float32"},
      {"attn generate_token_idx -1", [&](auto& x) { x.attn(q3(q, 3), q3(o, 3), l2(3), 0, -1); },
       "generate_token_idx=-1"},
      {"attn init_block_num -1", [&](auto& x) { x.attn(q3(q, 3), q3(o, 3), l2(3), 0, 0, 2, -1, 1); },
       "init_block_num=-1 must not be negative"},
      {"attn local_block_num -1", [&](auto& x) { x.attn(q3(q, 3), q3(o, 3), l2(3), 0, 0, 2, 1, -1); },
       "local_block_num=-1 must not be negative"},
      {"attn null q",
       [&](auto& x) { x.attn(TensorView::of(null_t, {3, qh, d}, memory), q3(o, 3), l2(3), 0, 0); },
       "q is null"},
      // lengths and sequences
      {"update_cache_total_len of sequence -1", [&](auto& x) { x.update_cache_total_len(10, -1); }, "sequence -1"},
      {"update_cache_total_len of sequence 3", [&](auto& x) { x.update_cache_total_len(10, 3); }, "sequence 3"},
      {"update_cache_total_len -1", [&](auto& x) { x.update_cache_total_len(-1, 0); }, "cache_total_len=-1"},
      {"update_cache_total_len past capacity", [&](auto& x) { x.update_cache_total_len(c.max_seq_len() + 1, 0); },
       "cache_total_len=641 not supported; supported: 0 to 640"},
      {"update_cache_total_len into a full pool", [&](auto& x) { x.update_cache_total_len(36 * c.block_len, 1); },
       "the pool is full"},
      {"free_sequence 3", [&](auto& x) { x.free_sequence(3); }, "sequence 3"},
      {"get_cache_total_len of sequence -1", [&](auto& x) { static_cast<void>(x.get_cache_total_len(-1)); },
       "sequence -1"},
      // blocks
      {"update_kvcache_one_block block -1", [&](auto& x) { x.update_kvcache_one_block(kb(block), kb(block), 0, -1); },
       "block_idx -1"},
      {"update_kvcache_one_block block = max_block_num",
       [&](auto& x) { x.update_kvcache_one_block(kb(block), kb(block), 0, c.max_block_num); }, "block_idx 40"},
      {"update_kvcache_one_block layer 3", [&](auto& x) { x.update_kvcache_one_block(kb(block), kb(block), 3, 0); },
       "layer 3"},
      {"update_kvcache_one_block K of another shape",
       [&](auto& x) {
         x.update_kvcache_one_block(TensorView::of(block.data(), {kv, c.block_len / 2, d}, memory),
                                    kb(block), 0, 0);
       },
       "k has shape [2, 8, 64]; needs [2, 16, 64]"},
      {"get_kvcache_one_block block 40", [&](auto& x) { x.get_kvcache_one_block(kb(block), kb(block), 0, 40); },
       "block_idx 40"},
      {"update_importance_one_block block 40",
       [&](auto& x) {
         x.update_importance_one_block(TensorView::of(importance.data(), {kv, c.block_len}, memory), 0, 40);
       },
       "block_idx 40"},
      {"update_importance_one_block of another shape",
       [&](auto& x) {
         x.update_importance_one_block(TensorView::of(importance.data(), {kv, c.block_len - 1}, memory), 0,
                                       0);
       },
       "importance has shape [2, 15]; needs [2, 16]"},
      {"update_anchor_one_block layer -1",
       [&](auto& x) {
         x.update_anchor_one_block(TensorView::of(anchor.data(), {kv, c.anchor_values()}, memory), -1, 0);
       },
       "layer -1"},
      {"update_anchor_one_block of another shape",
       [&](auto& x) {
         x.update_anchor_one_block(TensorView::of(anchor.data(), {kv, c.anchor_values() - 1}, memory), 0,
                                   0);
       },
       "anchor has shape [2, 127]; needs [2, 128]"},
      // files
      {"load_kvcache of a missing file", [&](auto& x) { x.load_kvcache("no_such_dir/no_such.safetensors"); },
       "cannot open no_such_dir/no_such.safetensors"},
      {"dump_kvcache into a missing directory", [&](auto& x) { x.dump_kvcache("no_such_dir/cache.safetensors"); },
       "cannot create no_such_dir/cache.safetensors.tmp"},
  };

  const std::string path = ekv::test::scratch_path("bad_input_state_" + name(memory));
  const auto dump_of = [&] {
    cache.dump_kvcache(path);
    return file_bytes(path);
  };
  const std::vector<char> before = dump_of();
  for (const BadInputCase<Cache>& k : cases) {
    INFO(k.what);
    std::string message;
    try {
      k.call(cache);
    } catch (const ekv::Error& e) {
      message = e.what();
    }
    CHECK_MESSAGE(message.find(k.says) != std::string::npos, "message: '" << message << "'");
    CHECK(dump_of() == before);
  }
  std::remove(path.c_str());
  return static_cast<int>(cases.size());
}

}  // namespace ekv::test
