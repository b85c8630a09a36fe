// The C API's cache handle on the CPU backend, on any machine: configs (defaults, text
// form both ways, validation), every call's argument checks with the message that names
// the argument, and a handle end to end against the float64 reference (exact) and against
// HostKVCache called from C++ with the same inputs (elastic, bit for bit), then dump and
// load into a fresh handle with identical outputs. A GPU cache where there is no GPU is
// EKV_ERROR_NO_DEVICE. Tolerances: tests/cache/kv_cache_checks.hpp's.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "c_api/descriptor.hpp"
#include "cache/kv_cache_checks.hpp"
#include "ekv/c_api.h"
#include "ekv/core/device.hpp"
#include "ekv/cpu/cpu_append.hpp"
#include "ekv/cpu/host_kv_cache.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

std::string last_error() { return ekv_last_error(); }

void check_rejected(ekv_status status, const std::string& expected) {
  CHECK(status == EKV_ERROR_INVALID_ARGUMENT);
  CHECK(last_error() == expected);
}

using Host = ekv::test::Descriptor;  // host memory unless said

// The handle, destroyed at scope exit.
struct Handle {
  explicit Handle(const ekv_cache_config& c) { REQUIRE(ekv_cache_create(&c, EKV_DEVICE_CPU, 0, &cache) == 0); }
  Handle(const Handle&) = delete;  // one destroy per handle
  Handle& operator=(const Handle&) = delete;
  ~Handle() { ekv_cache_destroy(cache); }
  ekv_cache* cache = nullptr;
};

// small_config's shape as a C config: 3 layers, 2 kv heads, 8 q heads, head_dim 64,
// block_len 16, float32, 40 blocks, batch 3, 2 threads.
ekv_cache_config small_c_config() {
  ekv_cache_config c;
  REQUIRE(ekv_cache_config_parse("layer_num=3 kv_head_num=2 q_head_num=8 head_dim=64 block_len=16 kv_type=fp32 "
                                 "max_block_num=40 max_batch_size=3 max_thread_num=2",
                                 &c) == EKV_SUCCESS);
  return c;
}

}  // namespace

TEST_CASE("configs: defaults, text both ways, validation naming the field") {
  ekv_cache_config c;
  CHECK(ekv_cache_config_default(&c) == EKV_SUCCESS);
  const ekv::KVCacheConfig defaults;
  CHECK(c.layer_num == defaults.layer_num);
  CHECK(c.head_dim == defaults.head_dim);
  CHECK(c.kv_type == EKV_DTYPE_FLOAT16);
  CHECK(c.anchor_type == EKV_ANCHOR_QUEST);
  CHECK(c.retrieval_type == EKV_RETRIEVAL_KVHEAD);
  CHECK(ekv_cache_config_validate(&c) == EKV_SUCCESS);

  CHECK(ekv_cache_config_parse("layer_num=2, anchor_type=FIXED anchor_num=4 kv_type=BF16 retrieval_type=LAYER", &c) ==
        EKV_SUCCESS);
  CHECK(c.layer_num == 2);
  CHECK(c.anchor_type == EKV_ANCHOR_FIXED);
  CHECK(c.anchor_num == 4);
  CHECK(c.kv_type == EKV_DTYPE_BFLOAT16);
  CHECK(c.retrieval_type == EKV_RETRIEVAL_LAYER);
  CHECK(c.head_dim == defaults.head_dim);  // not given: the default
  char text[512];
  CHECK(ekv_cache_config_to_string(&c, text, sizeof text) == EKV_SUCCESS);
  const std::string expected = "layer_num=2 kv_head_num=8 q_head_num=32 head_dim=128 block_len=64 anchor_num=4 "
                               "anchor_type=fixed kv_type=bfloat16 retrieval_type=layer layer_step=1 token_step=1 "
                               "layer_offset=0 max_block_num=1024 max_batch_size=1 max_thread_num=1";
  CHECK(std::string(text) == expected);
  ekv_cache_config back;
  CHECK(ekv_cache_config_parse(text, &back) == EKV_SUCCESS);
  CHECK(ekv_cache_config_to_string(&back, text, sizeof text) == EKV_SUCCESS);
  CHECK(std::string(text) == expected);
  check_rejected(ekv_cache_config_to_string(&c, text, 10),
                 "ekv_cache_config_to_string: capacity=10 not supported for this config; supported: >= " +
                     std::to_string(expected.size() + 1) + " (its text and the NUL)");

  check_rejected(ekv_cache_config_parse("head_dims=64", &c),
                 "ekv_cache_config_parse: KVCacheConfig: unknown field 'head_dims'; fields: " +
                     std::string(ekv::kKVCacheConfigFields));
  check_rejected(ekv_cache_config_parse(nullptr, &c),
                 "ekv_cache_config_parse: text is NULL; it must point to a NUL-terminated config text");
  check_rejected(ekv_cache_config_default(nullptr),
                 "ekv_cache_config_default: config is NULL; it must point to an ekv_cache_config");

  CHECK(ekv_cache_config_default(&c) == EKV_SUCCESS);
  c.head_dim = 96;
  check_rejected(ekv_cache_config_validate(&c),
                 "ekv_cache_config_validate: KVCacheConfig: head_dim=96 not supported by KVCache; supported: "
                 "[64, 128, 256]");
  c.head_dim = 128;
  c.anchor_type = 9;
  check_rejected(ekv_cache_config_validate(&c),
                 "ekv_cache_config_validate: config.anchor_type=9 not supported; supported: EKV_ANCHOR_QUEST (0), "
                 "EKV_ANCHOR_BLOCK_MEAN (1), EKV_ANCHOR_BLOCK_MAX (2), EKV_ANCHOR_FIXED (3), EKV_ANCHOR_DYNAMIC (4)");
  c.anchor_type = EKV_ANCHOR_QUEST;
  c.kv_type = -1;
  check_rejected(ekv_cache_config_validate(&c),
                 "ekv_cache_config_validate: config.kv_type=-1 not supported; supported: EKV_DTYPE_FLOAT32 (0), "
                 "EKV_DTYPE_FLOAT16 (1), EKV_DTYPE_BFLOAT16 (2), EKV_DTYPE_FLOAT8_E4M3 (3), EKV_DTYPE_Q8_0 (4), "
                 "EKV_DTYPE_Q4_0 (5)");
  c.kv_type = EKV_DTYPE_Q4_0;  // quantized storage: supported, with a selection per layer or kv head
  CHECK(ekv_cache_config_validate(&c) == EKV_SUCCESS);
  c.retrieval_type = EKV_RETRIEVAL_QHEAD;
  check_rejected(ekv_cache_config_validate(&c),
                 "ekv_cache_config_validate: KVCacheConfig: retrieval_type=QHEAD not supported with kv storage q4_0; "
                 "supported: LAYER, KVHEAD");
}

TEST_CASE("creating and destroying a handle checks its arguments") {
  ekv_cache_config c = small_c_config();
  ekv_cache* cache = reinterpret_cast<ekv_cache*>(&c);  // any value: a failed create sets NULL
  c.q_head_num = 7;
  check_rejected(ekv_cache_create(&c, EKV_DEVICE_CPU, 0, &cache),
                 "ekv_cache_create: KVCacheConfig: q_head_num=7 not supported with kv_head_num=2; supported: a "
                 "multiple of kv_head_num");
  CHECK(cache == nullptr);
  c.q_head_num = 8;
  check_rejected(ekv_cache_create(&c, 7, 0, &cache),
                 "ekv_cache_create: device_type=7 not supported; supported: EKV_DEVICE_CPU (1), EKV_DEVICE_CUDA (2)");
  check_rejected(ekv_cache_create(&c, EKV_DEVICE_CPU, 0, nullptr),
                 "ekv_cache_create: cache is NULL; it must point to an ekv_cache* to receive the handle");
  check_rejected(ekv_cache_create(nullptr, EKV_DEVICE_CPU, 0, &cache),
                 "ekv_cache_create: config is NULL; it must point to an ekv_cache_config");
  check_rejected(ekv_cache_create_from_text("layer_num=x", EKV_DEVICE_CPU, 0, &cache),
                 "ekv_cache_create_from_text: KVCacheConfig: layer_num=x is not a whole number");
  if (ekv::device_count() == 0) {
    CHECK(ekv_cache_create(&c, EKV_DEVICE_CUDA, 0, &cache) == EKV_ERROR_NO_DEVICE);
    CHECK(last_error().rfind("ekv_cache_create: no CUDA device", 0) == 0);
    CHECK(cache == nullptr);
  }
  CHECK(ekv_cache_create_from_text("head_dim=64 kv_type=fp32 max_block_num=8", EKV_DEVICE_CPU, 0, &cache) ==
        EKV_SUCCESS);
  REQUIRE(cache != nullptr);
  ekv_cache_config back;
  int device_type = 0, device_id = -1;
  CHECK(ekv_cache_get_config(cache, &back, &device_type, &device_id) == EKV_SUCCESS);
  CHECK(back.head_dim == 64);
  CHECK(back.max_block_num == 8);
  CHECK(device_type == EKV_DEVICE_CPU);
  CHECK(device_id == 0);
  CHECK(ekv_cache_destroy(cache) == EKV_SUCCESS);
  CHECK(ekv_cache_destroy(nullptr) == EKV_SUCCESS);
}

TEST_CASE("the handle's calls name the argument they reject") {
  const ekv_cache_config c = small_c_config();
  Handle h(c);
  std::vector<float> q(8 * 64), o(8 * 64), lse(8), k(2 * 64), v(2 * 64);
  Host qd(q.data(), {1, 8, 64}, EKV_DTYPE_FLOAT32), od(o.data(), {1, 8, 64}, EKV_DTYPE_FLOAT32);
  Host ld(lse.data(), {1, 8}, EKV_DTYPE_FLOAT32);
  Host kd(k.data(), {1, 1, 2, 64}, EKV_DTYPE_FLOAT32), vd(v.data(), {1, 1, 2, 64}, EKV_DTYPE_FLOAT32);

  check_rejected(ekv_cache_attn(nullptr, &qd.t, &od.t, &ld.t, 0, 0, -1, 1, 1, nullptr),
                 "ekv_cache_attn: cache is NULL; it must point to an ekv_cache from ekv_cache_create");
  check_rejected(ekv_cache_attn(h.cache, &qd.t, &od.t, &ld.t, 0, 0, -1, 1, 1, nullptr),
                 "ekv_cache_attn: HostKVCache::attn: sequence 0 of layer 0 holds no tokens; append before attending");
  check_rejected(ekv_cache_attn(h.cache, nullptr, &od.t, &ld.t, 0, 0, -1, 1, 1, nullptr),
                 "ekv_cache_attn: q is NULL; it must point to an ekv_tensor");
  // the _on_stream calls: a CPU cache takes a NULL stream only, and then checks as the others do
  int not_a_stream = 0;
  check_rejected(ekv_cache_append_on_stream(h.cache, 0, &kd.t, &vd.t, &not_a_stream),
                 "ekv_cache_append_on_stream: stream is not NULL; supported: NULL for a CPU cache (EKV_DEVICE_CPU: "
                 "no streams)");
  check_rejected(ekv_cache_attn_on_stream(h.cache, &qd.t, &od.t, &ld.t, 0, 0, -1, 1, 1, nullptr, nullptr),
                 "ekv_cache_attn_on_stream: HostKVCache::attn: sequence 0 of layer 0 holds no tokens; append before "
                 "attending");  // the rejected append above wrote nothing
  check_rejected(ekv_cache_attn_on_stream(nullptr, &qd.t, &od.t, &ld.t, 0, 0, -1, 1, 1, nullptr, nullptr),
                 "ekv_cache_attn_on_stream: cache is NULL; it must point to an ekv_cache from ekv_cache_create");
  check_rejected(ekv_cache_append(h.cache, 3, &kd.t, &vd.t),
                 "ekv_cache_append: HostKVCache::append: layer 3 not supported; supported: 0 to layer_num - 1 = 2");
  Host half_k(k.data(), {1, 1, 2, 64}, EKV_DTYPE_FLOAT16);
  check_rejected(ekv_cache_append(h.cache, 0, &half_k.t, &vd.t),
                 "ekv_cache_append: HostKVCache::append: k_new has dtype float16; needs float32");
  Host wide_v(v.data(), {1, 1, 1, 128}, EKV_DTYPE_FLOAT32);
  check_rejected(ekv_cache_append(h.cache, 0, &kd.t, &wide_v.t),
                 "ekv_cache_append: HostKVCache::append: v_new has shape [1, 1, 1, 128]; needs [1, 1, 2, 64] "
                 "[batch, new_tokens, kv_head_num, head_dim]");
  Host bad(k.data(), {1, 1, 2, 64}, EKV_DTYPE_FLOAT32);
  bad.t.dtype = 6;
  check_rejected(ekv_cache_append(h.cache, 0, &bad.t, &vd.t),
                 "ekv_cache_append: k_new.dtype=6 not supported; supported: EKV_DTYPE_FLOAT32 (0), "
                 "EKV_DTYPE_FLOAT16 (1), EKV_DTYPE_BFLOAT16 (2), EKV_DTYPE_FLOAT8_E4M3 (3), EKV_DTYPE_Q8_0 (4), "
                 "EKV_DTYPE_Q4_0 (5)");
  bad.t.dtype = EKV_DTYPE_Q4_0;  // a storage type: block accessors of a Q4_0 cache take it, append does not
  check_rejected(ekv_cache_append(h.cache, 0, &bad.t, &vd.t),
                 "ekv_cache_append: HostKVCache::append: k_new has dtype q4_0; needs float32");
  bad.t.dtype = EKV_DTYPE_FLOAT32;
  bad.t.device_type = 8;
  check_rejected(ekv_cache_append(h.cache, 0, &bad.t, &vd.t),
                 "ekv_cache_append: k_new.device_type=8 not supported; supported: EKV_DEVICE_CPU (1), "
                 "EKV_DEVICE_CUDA (2), EKV_DEVICE_CUDA_HOST (3)");
  bad.t.device_type = EKV_DEVICE_CUDA;  // a descriptor of device memory, to the CPU backend
  check_rejected(ekv_cache_append(h.cache, 0, &bad.t, &vd.t),
                 "ekv_cache_append: HostKVCache::append: k_new is in cuda memory; this cache needs host");
  bad.t.device_type = EKV_DEVICE_CPU;
  bad.t.ndim = 5;
  check_rejected(ekv_cache_append(h.cache, 0, &bad.t, &vd.t),
                 "ekv_cache_append: k_new.ndim=5 not supported; supported: 1 to 4");
  bad.t.ndim = 4;
  bad.t.shape = nullptr;
  check_rejected(ekv_cache_append(h.cache, 0, &bad.t, &vd.t),
                 "ekv_cache_append: k_new.shape is NULL; it must point to ndim int64_t");
  const std::int64_t negative[] = {1, -1, 2, 64};
  bad.t.shape = negative;
  check_rejected(ekv_cache_append(h.cache, 0, &bad.t, &vd.t),
                 "ekv_cache_append: k_new.shape[1]=-1 not supported; supported: >= 0");
  const std::int64_t strides[] = {128, 128, 1, 2};  // heads and channels swapped
  bad.t.shape = kd.shape.data();
  bad.t.strides = strides;
  check_rejected(ekv_cache_append(h.cache, 0, &bad.t, &vd.t),
                 "ekv_cache_append: HostKVCache::append: k_new is strided; needs a contiguous (row-major) tensor");
  bad.t.strides = nullptr;
  bad.t.data = nullptr;
  check_rejected(ekv_cache_append(h.cache, 0, &bad.t, &vd.t), "ekv_cache_append: HostKVCache::append: k_new is null");

  int len = -1;
  check_rejected(ekv_cache_get_cache_total_len(h.cache, 3, &len),
                 "ekv_cache_get_cache_total_len: HostKVCache::get_cache_total_len: sequence 3 not supported; "
                 "supported: 0 to max_batch_size - 1 = 2");
  check_rejected(ekv_cache_get_cache_total_len(h.cache, 0, nullptr),
                 "ekv_cache_get_cache_total_len: cache_total_len is NULL; it must point to an int");
  check_rejected(ekv_cache_update_cache_total_len(h.cache, 40 * 16 + 1, 0),
                 "ekv_cache_update_cache_total_len: HostKVCache::update_cache_total_len: cache_total_len=641 not "
                 "supported; supported: 0 to 640");
  int width = 0;
  std::vector<std::int32_t> table(3 * 40);
  check_rejected(ekv_cache_get_block_table(h.cache, table.data(), 100, &width),
                 "ekv_cache_get_block_table: capacity=100 not supported; supported: >= max_batch_size * "
                 "max_seq_block_num = 120");
  Host block(k.data(), {2, 16, 64}, EKV_DTYPE_FLOAT32);
  check_rejected(ekv_cache_get_kvcache_one_block(h.cache, &block.t, &block.t, 0, 40),
                 "ekv_cache_get_kvcache_one_block: HostKVCache::get_kvcache_one_block: block_idx 40 not supported; "
                 "supported: 0 to max_block_num - 1 = 39");
  check_rejected(ekv_cache_update_importance_one_block(h.cache, &block.t, 0, 0),
                 "ekv_cache_update_importance_one_block: HostKVCache::update_importance_one_block: importance has "
                 "shape [2, 16, 64]; needs [2, 16] [kv_head_num, block_len]");
  check_rejected(ekv_cache_get_anchor_one_block(h.cache, nullptr, 0, 0),
                 "ekv_cache_get_anchor_one_block: anchor is NULL; it must point to an ekv_tensor");
  check_rejected(ekv_cache_get_memory(h.cache, nullptr),
                 "ekv_cache_get_memory: memory is NULL; it must point to an ekv_cache_memory");
  check_rejected(ekv_cache_dump_kvcache(h.cache, nullptr),
                 "ekv_cache_dump_kvcache: tensor_file_path is NULL; it must point to a NUL-terminated path");
  CHECK(ekv_cache_load_kvcache(h.cache, "/nonexistent/ekv/cache.safetensors") == EKV_ERROR_INVALID_ARGUMENT);
  CHECK(last_error().rfind("ekv_cache_load_kvcache: ", 0) == 0);
  CHECK(last_error().find("/nonexistent/ekv/cache.safetensors") != std::string::npos);
}

TEST_CASE("a CPU handle end to end: append, exact and elastic attention, memory, dump and load") {
  const std::uint64_t seed = ekv::test::seed();
  INFO("seed " << seed);
  const ekv_cache_config cc = small_c_config();
  const ekv::KVCacheConfig c = ekv::test::small_config(ekv::DType::kFloat32);
  Handle h(cc);
  ekv::HostKVCache direct(c);  // the C++ call the handle wraps, given the same inputs
  ekv::test::Shadow<float> shadow(c, 40);
  const int batch = 2, prompt = 37;  // 3 blocks of 16, the last one partial
  const auto kv_elems = [&](int tokens) { return static_cast<std::size_t>(batch) * tokens * c.kv_head_num * 64; };
  for (int layer = 0; layer < c.layer_num; ++layer) {
    const std::vector<float> k = ekv::bench::random_uniform<float>(kv_elems(prompt), -1.0f, 1.0f, seed + layer);
    const std::vector<float> v = ekv::bench::random_uniform<float>(kv_elems(prompt), -1.0f, 1.0f, seed + 10 + layer);
    Host kd(k.data(), {batch, prompt, 2, 64}, EKV_DTYPE_FLOAT32);
    Host vd(v.data(), {batch, prompt, 2, 64}, EKV_DTYPE_FLOAT32);
    REQUIRE(ekv_cache_append(h.cache, layer, &kd.t, &vd.t) == EKV_SUCCESS);
    direct.append(layer, ekv::TensorView::of(k.data(), {batch, prompt, 2, 64}, ekv::DeviceKind::kHost),
                  ekv::TensorView::of(v.data(), {batch, prompt, 2, 64}, ekv::DeviceKind::kHost));
    REQUIRE(ekv::cpu_append_kv<float>(shadow.view(layer, batch), k.data(), v.data(), prompt));
  }
  int len = 0;
  CHECK(ekv_cache_get_cache_total_len(h.cache, 1, &len) == EKV_SUCCESS);
  CHECK(len == prompt);
  ekv_cache_memory m{};
  CHECK(ekv_cache_get_memory(h.cache, &m) == EKV_SUCCESS);
  const ekv::KVCacheMemory want = direct.memory();
  CHECK(m.total_bytes == want.total_bytes);
  CHECK(m.bytes_per_token == 2 * 3 * 2 * 64 * sizeof(float));
  CHECK(m.blocks_used == 2 * 3);
  CHECK(m.blocks_free == 40 - 6);
  int width = 0;
  std::vector<std::int32_t> table(3 * 40);
  CHECK(ekv_cache_get_block_table(h.cache, table.data(), static_cast<std::int64_t>(table.size()), &width) == 0);
  CHECK(width == 40);
  CHECK(table == direct.allocator().tables());

  const std::size_t rows = static_cast<std::size_t>(batch) * c.q_head_num;
  const std::vector<float> q = ekv::bench::random_uniform<float>(rows * 64, -1.0f, 1.0f, seed + 99);
  const auto attend = [&](ekv_cache* cache, int layer, int pick) {
    std::vector<float> o(rows * 64, std::nanf("")), lse(rows, std::nanf(""));
    std::vector<float> query = q;
    Host qd(query.data(), {batch, 8, 64}, EKV_DTYPE_FLOAT32), od(o.data(), {batch, 8, 64}, EKV_DTYPE_FLOAT32);
    Host ld(lse.data(), {batch, 8}, EKV_DTYPE_FLOAT32);
    int exact = -1;
    REQUIRE(ekv_cache_attn(cache, &qd.t, &od.t, &ld.t, layer, 0, pick, 1, 1, &exact) == EKV_SUCCESS);
    CHECK(exact == (pick < 0 ? 1 : 0));
    o.insert(o.end(), lse.begin(), lse.end());  // one vector: output, then LSE
    return o;
  };
  for (int layer = 0; layer < c.layer_num; ++layer) {
    const std::vector<float> got = attend(h.cache, layer, -1);
    ekv::test::check_exact(shadow, layer, batch, q.data(), got.data(), got.data() + rows * 64);
    // elastic, 1 sink + 1 window + 1 picked of 3 blocks: the C++ cache's output, bit for bit
    const std::vector<float> elastic = attend(h.cache, layer, 1);
    std::vector<float> o(rows * 64), lse(rows);
    direct.attn(ekv::TensorView::of(q.data(), {batch, 8, 64}, ekv::DeviceKind::kHost),
                ekv::TensorView::of(o.data(), {batch, 8, 64}, ekv::DeviceKind::kHost),
                ekv::TensorView::of(lse.data(), {batch, 8}, ekv::DeviceKind::kHost), layer, 0, 1, 1, 1);
    o.insert(o.end(), lse.begin(), lse.end());
    CHECK(elastic == o);
  }

  const std::string path = "c_api_cache_test.safetensors";
  REQUIRE(ekv_cache_dump_kvcache(h.cache, path.c_str()) == EKV_SUCCESS);
  Handle loaded(cc);
  REQUIRE(ekv_cache_load_kvcache(loaded.cache, path.c_str()) == EKV_SUCCESS);
  CHECK(ekv_cache_get_cache_total_len(loaded.cache, 0, &len) == EKV_SUCCESS);
  CHECK(len == prompt);
  for (int layer = 0; layer < c.layer_num; ++layer) {
    CHECK(attend(loaded.cache, layer, -1) == attend(h.cache, layer, -1));
    CHECK(attend(loaded.cache, layer, 1) == attend(h.cache, layer, 1));
  }
  // a file of another config is refused, the cache unchanged
  ekv_cache_config other = cc;
  other.max_block_num = 41;
  Handle different(other);
  CHECK(ekv_cache_load_kvcache(different.cache, path.c_str()) == EKV_ERROR_INVALID_ARGUMENT);
  CHECK(last_error().find("config") != std::string::npos);
  CHECK(ekv_cache_get_cache_total_len(different.cache, 0, &len) == EKV_SUCCESS);
  CHECK(len == 0);

  // block accessors: a block read out and written back leaves the outputs as they were
  std::vector<float> kb(2 * 16 * 64), vb(kb.size()), anchors(2 * 128), importance(2 * 16);
  Host kd(kb.data(), {2, 16, 64}, EKV_DTYPE_FLOAT32), vd(vb.data(), {2, 16, 64}, EKV_DTYPE_FLOAT32);
  Host ad(anchors.data(), {2, 128}, EKV_DTYPE_FLOAT32), id(importance.data(), {2, 16}, EKV_DTYPE_FLOAT32);
  const int physical = table[0];
  CHECK(ekv_cache_get_kvcache_one_block(h.cache, &kd.t, &vd.t, 1, physical) == EKV_SUCCESS);
  CHECK(ekv_cache_get_anchor_one_block(h.cache, &ad.t, 1, physical) == EKV_SUCCESS);
  CHECK(ekv_cache_get_importance_one_block(h.cache, &id.t, 1, physical) == EKV_SUCCESS);
  const std::vector<float>& first = shadow.k[1];
  CHECK(std::equal(kb.begin(), kb.begin() + 16 * 64, first.begin()));  // kv head 0 of sequence 0's block 0
  CHECK(ekv_cache_update_kvcache_one_block(h.cache, &kd.t, &vd.t, 1, physical) == EKV_SUCCESS);
  CHECK(ekv_cache_update_anchor_one_block(h.cache, &ad.t, 1, physical) == EKV_SUCCESS);
  CHECK(ekv_cache_update_importance_one_block(h.cache, &id.t, 1, physical) == EKV_SUCCESS);
  CHECK(attend(loaded.cache, 1, 1) == attend(h.cache, 1, 1));

  CHECK(ekv_cache_free_sequence(h.cache, 0) == EKV_SUCCESS);
  CHECK(ekv_cache_get_cache_total_len(h.cache, 0, &len) == EKV_SUCCESS);
  CHECK(len == 0);
  CHECK(ekv_cache_get_memory(h.cache, &m) == EKV_SUCCESS);
  CHECK(m.blocks_used == 3);
  std::remove(path.c_str());
}
