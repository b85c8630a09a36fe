// KVCacheConfig: validate() names the field, its value and what is supported; the text
// form round-trips every field and accepts the older spellings; bad text names the field.

#include <doctest/doctest.h>

#include <string>

#include "cache/seed_config.hpp"
#include "ekv/cache/kv_cache_config.hpp"

namespace {

ekv::KVCacheConfig seed_example() { return ekv::test::seed_example_config(512, 4, 8); }

}  // namespace

TEST_CASE("the seed's config is valid, and every bad field is named with its value and what is supported") {
  CHECK(seed_example().validate().ok);
  struct Case {
    const char* name;
    void (*change)(ekv::KVCacheConfig&);
    const char* message;  // a part of validate()'s message
  };
  const Case cases[] = {
      {"layers", [](ekv::KVCacheConfig& c) { c.layer_num = 0; }, "layer_num=0 not supported; supported: 1 or more"},
      {"kv heads", [](ekv::KVCacheConfig& c) { c.kv_head_num = -1; }, "kv_head_num=-1"},
      {"group", [](ekv::KVCacheConfig& c) { c.q_head_num = 12; },
       "q_head_num=12 not supported with kv_head_num=8; supported: a multiple of kv_head_num"},
      {"head_dim", [](ekv::KVCacheConfig& c) { c.head_dim = 96; },
       "head_dim=96 not supported by KVCache; supported: [64, 128, 256]"},
      {"quantized QHEAD", [](ekv::KVCacheConfig& c) {
         c.kv_type = ekv::DType::kQ4_0;
         c.retrieval_type = ekv::RetrievalType::kQHead;
       },
       "retrieval_type=QHEAD not supported with kv storage q4_0; supported: LAYER, KVHEAD"},
      {"block_len", [](ekv::KVCacheConfig& c) { c.block_len = 0; }, "block_len=0"},
      {"layer_offset", [](ekv::KVCacheConfig& c) { c.layer_offset = 2; },
       "layer_offset=2 not supported; supported: 0 to layer_step - 1 = 0"},
      {"token_step", [](ekv::KVCacheConfig& c) { c.token_step = 0; }, "token_step=0"},
      {"pool", [](ekv::KVCacheConfig& c) { c.max_block_num = 1 << 24; }, "tokens per layer not supported"},
      {"batch", [](ekv::KVCacheConfig& c) { c.max_batch_size = 0; }, "max_batch_size=0"},
      {"threads", [](ekv::KVCacheConfig& c) { c.max_thread_num = 0; }, "max_thread_num=0"},
      {"dynamic anchors", [](ekv::KVCacheConfig& c) { c.anchor_type = ekv::AnchorType::kDynamic; c.anchor_num = 17; },
       "anchor_num=17 not supported by dynamic anchors; supported: 1 to 16"},
      {"fixed anchors past an int", [](ekv::KVCacheConfig& c) { c.anchor_num = 20000000; },
       "anchor_num=20000000 not supported with head_dim=128; supported: 1 to 16777215"},
      {"a layer past 2^62 bytes", [](ekv::KVCacheConfig& c) {
         c.anchor_num = 1000000;
         c.block_len = 1;
         c.max_block_num = 2147483647;
         c.kv_head_num = c.q_head_num = 4096;
       },
       "bytes per layer (K, V, anchors, importance) not supported; supported: up to 2^62 bytes"},
  };
  for (const Case& k : cases) {
    INFO(k.name);
    ekv::KVCacheConfig c = seed_example();
    k.change(c);
    const ekv::Support s = c.validate();
    CHECK_FALSE(s.ok);
    CHECK(s.why.find("KVCacheConfig: ") == 0);
    CHECK_MESSAGE(s.why.find(k.message) != std::string::npos, s.why);
  }
}

TEST_CASE("a sequence holds the pool, up to GPU selection's blocks") {
  ekv::KVCacheConfig c = seed_example();
  CHECK(c.max_seq_block_num() == 512);
  CHECK(c.max_seq_len() == 512 * 256);
  c.max_block_num = 20000;  // past one selection tile (4096 blocks): a sequence may hold the whole pool
  CHECK(c.max_seq_block_num() == 20000);
  c.max_block_num = ekv::kSelectMaxBlocks + 1;
  CHECK(c.max_seq_block_num() == ekv::kSelectMaxBlocks);
  CHECK(c.group() == 4);
  CHECK(c.anchor_values() == 4 * 128);
}

TEST_CASE("quantized kv types: fp16 queries and anchors, and a block's rows, codes first, padded to 16 bytes") {
  ekv::KVCacheConfig c = seed_example();  // 8 kv heads, head_dim 128, 256-token blocks
  CHECK(c.block_bytes() == 8u * 256 * 128 * 2);
  CHECK(c.block_row_bytes() == c.block_bytes());
  struct Case {
    ekv::DType type;
    std::size_t codes, scales;  // per row
  };
  for (const Case& k : {Case{ekv::DType::kFloat8E4M3, 128, 0}, Case{ekv::DType::kQ8_0, 128, 8},
                        Case{ekv::DType::kQ4_0, 64, 8}}) {
    INFO(ekv::to_string(k.type));
    c.kv_type = k.type;
    CHECK(c.validate().ok);
    CHECK(c.quantized());
    CHECK(c.value_type() == ekv::DType::kFloat16);
    CHECK(c.decode_problem(1).dtype == ekv::DType::kFloat16);
    CHECK(c.row_bytes() == k.codes + k.scales);
    CHECK(c.block_code_bytes() == 8u * 256 * k.codes);
    CHECK(c.block_row_bytes() == 8u * 256 * (k.codes + k.scales));
    CHECK(c.block_bytes() == c.block_row_bytes());  // a multiple of 16 already
    CHECK(ekv::parse_kv_cache_config(ekv::to_string(c)) == c);
  }
  c.kv_type = ekv::DType::kQ8_0;
  c.kv_head_num = 1;
  c.q_head_num = 4;
  c.block_len = 3;  // 3 x 136 = 408 bytes of rows, padded to 416
  CHECK(c.block_row_bytes() == 408);
  CHECK(c.block_bytes() == 416);
  CHECK(ekv::parse_kv_cache_config("kv_type=Q4_0", c).kv_type == ekv::DType::kQ4_0);  // KTransformers' spelling
  CHECK(ekv::parse_kv_cache_config("kv_type=fp8", c).kv_type == ekv::DType::kFloat8E4M3);
}

TEST_CASE("the text form round-trips every field and reads the older spellings") {
  const ekv::KVCacheConfig c = seed_example();
  const std::string text = ekv::to_string(c);
  CHECK(text == "layer_num=32 kv_head_num=8 q_head_num=32 head_dim=128 block_len=256 anchor_num=4 anchor_type=fixed "
                "kv_type=float16 retrieval_type=kvhead layer_step=1 token_step=1 layer_offset=0 max_block_num=512 "
                "max_batch_size=4 max_thread_num=8");
  CHECK(ekv::parse_kv_cache_config(text) == c);
  const ekv::KVCacheConfig old = ekv::parse_kv_cache_config(
      "anchor_type=QUEST, kv_type=BF16, retrieval_type=QHEAD, layer_step=2, layer_offset=1", c);
  CHECK(old.anchor_type == ekv::AnchorType::kQuest);
  CHECK(old.kv_type == ekv::DType::kBFloat16);
  CHECK(old.retrieval_type == ekv::RetrievalType::kQHead);
  CHECK(old.layer_step == 2);
  CHECK(old.layer_offset == 1);
  CHECK(old.layer_num == 32);  // fields not given keep the base's
}

TEST_CASE("bad text names the field") {
  const std::pair<const char*, const char*> cases[] = {
      {"layers=3", "unknown field 'layers'; fields: layer_num, "},
      {"layer_num=3x", "layer_num=3x is not a whole number"},
      {"layer_num=99999999999", "is not a whole number"},
      {"head_dim", "'head_dim' is not field=value"},
      {"anchor_type=topk", "unknown anchor kind 'topk'; supported: quest, block_mean, block_max, fixed, dynamic"},
      {"kv_type=int4", "unknown dtype 'int4'"},
  };
  for (const auto& [text, message] : cases) {
    INFO(text);
    try {
      (void)ekv::parse_kv_cache_config(text);
      FAIL("parsed");
    } catch (const ekv::Error& e) {
      CHECK_MESSAGE(std::string(e.what()).find(message) != std::string::npos, e.what());
    }
  }
}

// tests/fuzz's kv_cache_config: FIXED anchors of a count that validate() let through made
// anchor_values() overflow an int (undefined; UBSan stops there), and the byte counts of a
// layer's pools could wrap std::size_t, so that a cache would allocate less than it indexes.
TEST_CASE("a config's anchor values and pool bytes are countable, or it is invalid (fuzz regression)") {
  for (const char* text : {"anchor_type=fixed anchor_num=20000000",
                           "anchor_type=fixed anchor_num=16000000 max_block_num=2000000000 block_len=1 "
                           "kv_head_num=65535 q_head_num=65535"}) {
    INFO(text);
    const ekv::Support s = ekv::parse_kv_cache_config(text).validate();
    CHECK_FALSE(s.ok);
    CHECK_MESSAGE(s.why.find("KVCacheConfig: ") == 0, s.why);
  }
  // the most FIXED anchors at head_dim 128: valid, their count an int
  const ekv::KVCacheConfig most = ekv::parse_kv_cache_config("anchor_type=fixed anchor_num=16777215 max_block_num=8");
  REQUIRE(most.validate().ok);
  CHECK(most.anchor_values() == 16777215 * 128);
}
