// The bad-input matrix of the C API's cache handle on the CPU backend (issue 21): every
// ekv_cache_* call with each kind of invalid argument (NULL handles, tensors, shapes and
// paths, unknown dtype and device codes, strided tensors, out-of-range layer, sequence and
// block ids, lengths past capacity, a full pool, a stream for a CPU cache, short output
// buffers, missing files) returns EKV_ERROR_INVALID_ARGUMENT with ekv_last_error() naming
// what was wrong, and leaves the cache's contents as they were: its dump before and after
// each call is byte for byte the same.

#include <doctest/doctest.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "c_api/descriptor.hpp"
#include "ekv/c_api.h"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

using Host = ekv::test::Descriptor;

struct Case {
  const char* what;
  std::function<ekv_status()> call;
  const char* says;  // a part of ekv_last_error()
};

std::vector<char> dump_of(const ekv_cache* cache, const std::string& path) {
  REQUIRE(ekv_cache_dump_kvcache(cache, path.c_str()) == EKV_SUCCESS);
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_CASE("bad input to every ekv_cache call: EKV_ERROR_INVALID_ARGUMENT naming it, and the cache unchanged") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  // 3 layers, 2 kv heads of 64, 8 query heads, 40 blocks of 16 tokens, 3 sequences, float32
  ekv_cache* cache = nullptr;
  REQUIRE(ekv_cache_create_from_text("layer_num=3 kv_head_num=2 q_head_num=8 head_dim=64 block_len=16 kv_type=fp32 "
                                     "max_block_num=40 max_batch_size=3 max_thread_num=2",
                                     EKV_DEVICE_CPU, 0, &cache) == EKV_SUCCESS);
  const std::int64_t kv = 2, d = 64, qh = 8, block_len = 16;
  const int f32 = EKV_DTYPE_FLOAT32;
  // sequences of 50, 17 and 33 tokens in every layer (9 of the 40 blocks)
  for (int layer = 0; layer < 3; ++layer) {
    for (const auto& [batch, n] : {std::pair<std::int64_t, std::int64_t>{3, 17}, {1, 33}, {3, 16}}) {
      const auto k = ekv::bench::random_uniform<float>(static_cast<std::size_t>(batch * n * kv * d), -1, 1,
                                                       seed + 3 * layer + n);
      Host tk(k.data(), {batch, n, kv, d}, f32), tv(k.data(), {batch, n, kv, d}, f32);
      REQUIRE(ekv_cache_append(cache, layer, &tk.t, &tv.t) == EKV_SUCCESS);
    }
  }

  std::vector<float> one(kv * d), three(3 * kv * d), many(600 * kv * d), pool(32 * block_len * kv * d);
  std::vector<float> q(3 * qh * d), o(q.size()), lse(3 * qh), block(kv * block_len * d), anchor(kv * 2 * d),
      importance(kv * block_len);
  std::vector<std::int32_t> table(8);
  Host k1(one.data(), {1, 1, kv, d}, f32), k3(three.data(), {3, 1, kv, d}, f32);
  Host k_many(many.data(), {1, 600, kv, d}, f32), k_pool(pool.data(), {1, 32 * block_len, kv, d}, f32);
  Host k_rank3(one.data(), {1, kv, d}, f32), k_heads(three.data(), {1, 1, kv + 1, d}, f32);
  Host k_dtype(one.data(), {1, 1, kv, d}, 99), k_device(one.data(), {1, 1, kv, d}, f32, 7);
  Host k_cuda(one.data(), {1, 1, kv, d}, f32, EKV_DEVICE_CUDA);
  Host k_null(static_cast<float*>(nullptr), {1, 1, kv, d}, f32);
  Host k_strided(many.data(), {1, 1, kv, d}, f32);
  const std::int64_t strides[] = {kv * d, kv * d, 2 * d, 2};  // every other float of a row
  k_strided.t.strides = strides;
  Host k_no_shape(one.data(), {1, 1, kv, d}, f32);
  k_no_shape.t.shape = nullptr;
  Host tq(q.data(), {3, qh, d}, f32), to(o.data(), {3, qh, d}, f32), tl(lse.data(), {3, qh}, f32);
  Host q_heads(q.data(), {3, qh - 1, d}, f32), o_batch(o.data(), {2, qh, d}, f32);
  Host l_half(lse.data(), {3, qh}, EKV_DTYPE_FLOAT16);
  Host tb(block.data(), {kv, block_len, d}, f32), tb_short(block.data(), {kv, block_len / 2, d}, f32);
  Host ta(anchor.data(), {kv, 2 * d}, f32), ta_short(anchor.data(), {kv, 2 * d - 1}, f32);
  Host ti(importance.data(), {kv, block_len}, f32), ti_half(importance.data(), {kv, block_len}, EKV_DTYPE_FLOAT16);
  int stream_dummy = 0;
  int width = 0;

  const std::vector<Case> cases = {
      // append
      {"append to a NULL cache", [&] { return ekv_cache_append(nullptr, 0, &k1.t, &k1.t); }, "cache is NULL"},
      {"append NULL k_new", [&] { return ekv_cache_append(cache, 0, nullptr, &k1.t); }, "k_new is NULL"},
      {"append layer 3", [&] { return ekv_cache_append(cache, 3, &k1.t, &k1.t); }, "layer 3"},
      {"append layer -1", [&] { return ekv_cache_append(cache, -1, &k1.t, &k1.t); }, "layer -1"},
      {"append an unknown dtype code", [&] { return ekv_cache_append(cache, 0, &k_dtype.t, &k1.t); },
       "k_new.dtype=99 not supported"},
      {"append an unknown device code", [&] { return ekv_cache_append(cache, 0, &k_device.t, &k1.t); },
       "k_new.device_type=7 not supported"},
      {"append device memory to a CPU cache", [&] { return ekv_cache_append(cache, 0, &k_cuda.t, &k1.t); },
       "k_new is in cuda memory"},
      {"append NULL data", [&] { return ekv_cache_append(cache, 0, &k_null.t, &k1.t); }, "k_new is null"},
      {"append a NULL shape", [&] { return ekv_cache_append(cache, 0, &k_no_shape.t, &k1.t); },
       "k_new.shape is NULL"},
      {"append a strided K", [&] { return ekv_cache_append(cache, 0, &k_strided.t, &k1.t); },
       "k_new is strided"},
      {"append K of rank 3", [&] { return ekv_cache_append(cache, 0, &k_rank3.t, &k1.t); }, "k_new has shape"},
      {"append K with a kv head too many", [&] { return ekv_cache_append(cache, 0, &k_heads.t, &k1.t); },
       "k_new has shape [1, 1, 3, 64]"},
      {"append V of another batch", [&] { return ekv_cache_append(cache, 0, &k3.t, &k1.t); }, "v_new has shape"},
      {"append past a sequence's capacity", [&] { return ekv_cache_append(cache, 0, &k_many.t, &k_many.t); },
       "cannot take 600 more"},
      {"append into a full pool", [&] { return ekv_cache_append(cache, 0, &k_pool.t, &k_pool.t); },
       "the pool is full"},
      {"append_on_stream with a stream for a CPU cache",
       [&] { return ekv_cache_append_on_stream(cache, 0, &k1.t, &k1.t, &stream_dummy); }, "stream is not NULL"},
      // attn
      {"attn on a NULL cache", [&] { return ekv_cache_attn(nullptr, &tq.t, &to.t, &tl.t, 0, 0, -1, 1, 1, nullptr); },
       "cache is NULL"},
      {"attn NULL output", [&] { return ekv_cache_attn(cache, &tq.t, nullptr, &tl.t, 0, 0, -1, 1, 1, nullptr); },
       "output is NULL"},
      {"attn layer 3", [&] { return ekv_cache_attn(cache, &tq.t, &to.t, &tl.t, 3, 0, -1, 1, 1, nullptr); },
       "layer 3"},
      {"attn q with a head too few",
       [&] { return ekv_cache_attn(cache, &q_heads.t, &to.t, &tl.t, 0, 0, -1, 1, 1, nullptr); },
       "q has shape [3, 7, 64]"},
      {"attn output of another batch",
       [&] { return ekv_cache_attn(cache, &tq.t, &o_batch.t, &tl.t, 0, 0, -1, 1, 1, nullptr); },
       "output has shape [2, 8, 64]"},
      {"attn lse in half precision",
       [&] { return ekv_cache_attn(cache, &tq.t, &to.t, &l_half.t, 0, 0, -1, 1, 1, nullptr); },
       "attn_lse has dtype float16"},
      {"attn generate_token_idx -1",
       [&] { return ekv_cache_attn(cache, &tq.t, &to.t, &tl.t, 0, -1, -1, 1, 1, nullptr); },
       "generate_token_idx=-1"},
      {"attn init_block_num -1", [&] { return ekv_cache_attn(cache, &tq.t, &to.t, &tl.t, 0, 0, 2, -1, 1, nullptr); },
       "init_block_num=-1"},
      {"attn_on_stream with a stream for a CPU cache",
       [&] { return ekv_cache_attn_on_stream(cache, &tq.t, &to.t, &tl.t, 0, 0, -1, 1, 1, nullptr, &stream_dummy); },
       "stream is not NULL"},
      // lengths, sequences, tables
      {"get_cache_total_len NULL out", [&] { return ekv_cache_get_cache_total_len(cache, 0, nullptr); },
       "cache_total_len is NULL"},
      {"get_cache_total_len of sequence 3",
       [&] {
         int len = 0;
         return ekv_cache_get_cache_total_len(cache, 3, &len);
       },
       "sequence 3"},
      {"update_cache_total_len -1", [&] { return ekv_cache_update_cache_total_len(cache, -1, 0); },
       "cache_total_len=-1"},
      {"update_cache_total_len past capacity", [&] { return ekv_cache_update_cache_total_len(cache, 641, 0); },
       "cache_total_len=641"},
      {"update_cache_total_len into a full pool", [&] { return ekv_cache_update_cache_total_len(cache, 576, 1); },
       "the pool is full"},
      {"update_cache_total_len of sequence -1", [&] { return ekv_cache_update_cache_total_len(cache, 10, -1); },
       "sequence -1"},
      {"free_sequence 3", [&] { return ekv_cache_free_sequence(cache, 3); }, "sequence 3"},
      {"free_sequence on a NULL cache", [&] { return ekv_cache_free_sequence(nullptr, 0); }, "cache is NULL"},
      {"get_block_table into too small a buffer",
       [&] { return ekv_cache_get_block_table(cache, table.data(), static_cast<std::int64_t>(table.size()), &width); },
       "capacity=8"},
      // blocks
      {"update_kvcache_one_block block 40",
       [&] { return ekv_cache_update_kvcache_one_block(cache, &tb.t, &tb.t, 0, 40); },
       "block_idx 40"},
      {"update_kvcache_one_block block -1",
       [&] { return ekv_cache_update_kvcache_one_block(cache, &tb.t, &tb.t, 0, -1); },
       "block_idx -1"},
      {"update_kvcache_one_block layer 3",
       [&] { return ekv_cache_update_kvcache_one_block(cache, &tb.t, &tb.t, 3, 0); },
       "layer 3"},
      {"update_kvcache_one_block K of another shape",
       [&] { return ekv_cache_update_kvcache_one_block(cache, &tb_short.t, &tb.t, 0, 0); }, "k has shape"},
      {"update_kvcache_one_block NULL v",
       [&] { return ekv_cache_update_kvcache_one_block(cache, &tb.t, nullptr, 0, 0); }, "v is NULL"},
      {"get_kvcache_one_block block 40", [&] { return ekv_cache_get_kvcache_one_block(cache, &tb.t, &tb.t, 0, 40); },
       "block_idx 40"},
      {"update_importance_one_block in half precision",
       [&] { return ekv_cache_update_importance_one_block(cache, &ti_half.t, 0, 0); },
       "importance has dtype float16"},
      {"update_importance_one_block block 40",
       [&] { return ekv_cache_update_importance_one_block(cache, &ti.t, 0, 40); }, "block_idx 40"},
      {"update_anchor_one_block of another shape",
       [&] { return ekv_cache_update_anchor_one_block(cache, &ta_short.t, 0, 0); }, "anchor has shape"},
      {"update_anchor_one_block layer -1", [&] { return ekv_cache_update_anchor_one_block(cache, &ta.t, -1, 0); },
       "layer -1"},
      // files and the handle's other calls
      {"load_kvcache NULL path", [&] { return ekv_cache_load_kvcache(cache, nullptr); }, "tensor_file_path is NULL"},
      {"load_kvcache of a missing file", [&] { return ekv_cache_load_kvcache(cache, "no_such_dir/x.safetensors"); },
       "cannot open no_such_dir/x.safetensors"},
      {"dump_kvcache into a missing directory",
       [&] { return ekv_cache_dump_kvcache(cache, "no_such_dir/x.safetensors"); }, "cannot create no_such_dir"},
      {"get_memory NULL out", [&] { return ekv_cache_get_memory(cache, nullptr); }, "memory is NULL"},
      {"get_config NULL cache",
       [&] {
         ekv_cache_config c;
         return ekv_cache_get_config(nullptr, &c, nullptr, nullptr);
       },
       "cache is NULL"},
  };

  const std::string path = "c_api_bad_input_state.safetensors";
  const std::vector<char> before = dump_of(cache, path);
  for (const Case& k : cases) {
    INFO(k.what);
    const ekv_status status = k.call();
    CHECK(status == EKV_ERROR_INVALID_ARGUMENT);
    const std::string message = ekv_last_error();
    CHECK_MESSAGE(message.find(k.says) != std::string::npos, "message: '" << message << "'");
    CHECK(dump_of(cache, path) == before);
  }
  MESSAGE(cases.size() << " bad-input cases over the ekv_cache calls");
  CHECK(ekv_cache_destroy(cache) == EKV_SUCCESS);
  std::remove(path.c_str());
}

TEST_CASE("a cache too large for the host: EKV_ERROR_OUT_OF_MEMORY naming its bytes; the cache beside it unchanged") {
  ekv_cache* cache = nullptr;
  REQUIRE(ekv_cache_create_from_text("layer_num=1 kv_head_num=2 q_head_num=8 head_dim=64 block_len=16 kv_type=fp32 "
                                     "max_block_num=8 max_batch_size=1 max_thread_num=1",
                                     EKV_DEVICE_CPU, 0, &cache) == EKV_SUCCESS);
  std::vector<float> k(5 * 2 * 64, 0.25f);
  Host tk(k.data(), {1, 5, 2, 64}, EKV_DTYPE_FLOAT32);
  REQUIRE(ekv_cache_append(cache, 0, &tk.t, &tk.t) == EKV_SUCCESS);
  const std::string path = "c_api_out_of_memory_state.safetensors";
  const std::vector<char> before = dump_of(cache, path);
  // 2^48 bytes of K a layer (1,024 kv heads of 128, 2^26 blocks of 16): past any x86-64 address space
  ekv_cache* huge = nullptr;
  CHECK(ekv_cache_create_from_text("layer_num=1 kv_head_num=1024 q_head_num=1024 head_dim=128 block_len=16 "
                                   "kv_type=fp16 max_block_num=67108864 max_batch_size=1 max_thread_num=1",
                                   EKV_DEVICE_CPU, 0, &huge) == EKV_ERROR_OUT_OF_MEMORY);
  CHECK(huge == nullptr);
  const std::string message = ekv_last_error();
  CHECK_MESSAGE(message.find("bytes of host memory") != std::string::npos, "message: '" << message << "'");
  CHECK(dump_of(cache, path) == before);
  int length = 0;
  CHECK(ekv_cache_get_cache_total_len(cache, 0, &length) == EKV_SUCCESS);
  CHECK(length == 5);
  CHECK(ekv_cache_destroy(cache) == EKV_SUCCESS);
  std::remove(path.c_str());
}
