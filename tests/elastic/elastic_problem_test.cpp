// ElasticProblem: what GPU elastic decode supports, said in one sentence that names the
// value and the supported ones, and the anchors a pool needs.

#include <doctest/doctest.h>

#include <string>

#include "ekv/elastic/elastic_problem.hpp"

namespace {

ekv::ElasticProblem llama_problem() {
  ekv::ElasticProblem p;
  p.decode.dtype = ekv::DType::kFloat16;
  p.decode.batch = 2;
  p.decode.q_heads = 32;
  p.decode.kv_heads = 8;
  p.decode.head_dim = 128;
  p.decode.max_seq_len = 32768;
  p.block_len = 64;
  p.policy = ekv::ElasticPolicy(ekv::ElasticConfig{}, ekv::ElasticBudget::ratio(4));
  return p;
}

std::string why(void (*change)(ekv::ElasticProblem&)) {
  ekv::ElasticProblem p = llama_problem();
  change(p);
  const ekv::Support s = ekv::supports(p);
  CHECK_FALSE(s.ok);
  return s.why;
}

}  // namespace

TEST_CASE("supports accepts a Llama-shaped problem and names the first unsupported value") {
  CHECK(ekv::supports(llama_problem()).ok);
  CHECK(why([](auto& p) { p.decode.head_dim = 96; }) == "head_dim=96 not supported by decode; supported: [64, 128, 256]");
  CHECK(why([](auto& p) { p.block_len = 0; }) == "block_len=0 not supported by elastic decode; supported: 1 or more");
  CHECK(why([](auto& p) { p.max_new_tokens = 0; }) ==
        "max_new_tokens=0 not supported by elastic decode; supported: 1 or more");
  // 2^20 + 1 blocks of one token: one past what GPU selection holds
  CHECK(why([](auto& p) {
          p.block_len = 1;
          p.decode.max_seq_len = (1 << 20) + 1;
        }) == "blocks per sequence 1048577 not supported by GPU selection; supported: up to 1048576 "
              "(use longer blocks)");
  CHECK(why([](auto& p) {
          ekv::ElasticConfig c;
          c.anchor = ekv::AnchorKind::kDynamic;
          c.anchor_num = 17;
          p.policy = ekv::ElasticPolicy(c, ekv::ElasticBudget::ratio(4));
        }) == "anchor_num=17 not supported by dynamic anchors; supported: 1 to 16");
  CHECK(why([](auto& p) {
          ekv::ElasticConfig c;
          c.anchor = ekv::AnchorKind::kDynamic;
          p.policy = ekv::ElasticPolicy(c, ekv::ElasticBudget::ratio(4));
          p.block_len = 512;
        }) == "block_len=512 not supported by dynamic anchors; supported: 1 to 256");
  // FIXED anchors: anchor_num x head_dim values per block must be an int (issue 21's review)
  CHECK(why([](auto& p) {
          ekv::ElasticConfig c;
          c.anchor = ekv::AnchorKind::kFixed;
          c.anchor_num = 16777216;  // 2^24 x 128 = 2^31
          p.policy = ekv::ElasticPolicy(c, ekv::ElasticBudget::ratio(4));
        }) == "anchor_num=16777216 not supported with head_dim=128; supported: 1 to 16777215 "
              "(anchor_num x head_dim anchor values per block must fit an int)");
  {
    ekv::ElasticProblem most = llama_problem();
    ekv::ElasticConfig c;
    c.anchor = ekv::AnchorKind::kFixed;
    c.anchor_num = 16777215;
    most.policy = ekv::ElasticPolicy(c, ekv::ElasticBudget::ratio(4));
    CHECK(ekv::supports(most).ok);
    CHECK(most.anchor_values_per_block() == 16777215 * 128);
  }
  // selection runs in tiles of 4,096 blocks: 1M tokens (16K blocks of 64) and 8M (128K blocks)
  ekv::ElasticProblem longest = llama_problem();
  longest.decode.max_seq_len = 1 << 20;
  CHECK(ekv::supports(longest).ok);
  longest.decode.max_seq_len = 1 << 23;
  CHECK(ekv::supports(longest).ok);
}

TEST_CASE("supports never throws: a bad scale or batch is an answer, not an exception") {
  ekv::ElasticProblem p = llama_problem();
  p.decode.scale = -1.0f;
  ekv::Support s;
  CHECK_NOTHROW(s = ekv::supports(p));
  CHECK_FALSE(s.ok);
  CHECK(s.why.find("scale=") == 0);
  p = llama_problem();
  p.decode.batch = 0;
  CHECK_NOTHROW(s = ekv::supports(p));
  CHECK(s.why == "batch=0 not supported by decode; supported: 1 to 65535");
}

TEST_CASE("the problem owns the anchors contract: values per block and the pool's elements") {
  ekv::ElasticProblem p = llama_problem();
  // QUEST keeps min and max of each channel: 2 x 128 values per block and kv head
  CHECK(p.anchor_values_per_block() == 256);
  CHECK(p.anchor_elems(1000) == 1000u * 8 * 256);
  CHECK(p.anchor_bytes(1000) == 1000u * 8 * 256 * 2);  // in the cache's dtype, fp16
  ekv::ElasticConfig fixed;
  fixed.anchor = ekv::AnchorKind::kFixed;
  fixed.anchor_num = 3;
  p.policy = ekv::ElasticPolicy(fixed, ekv::ElasticBudget::ratio(8));
  p.decode.dtype = ekv::DType::kFloat32;
  CHECK(p.anchor_values_per_block() == 3 * 128);
  CHECK(p.anchor_bytes(10) == 10u * 8 * 3 * 128 * 4);
  CHECK(p.max_blocks() == 512);
}

TEST_CASE("attends_exactly: where the budget covers most blocks or skips fewer bytes than selection costs") {
  ekv::ElasticProblem p = llama_problem();
  p.decode.batch = 1;
  p.policy = ekv::ElasticPolicy(ekv::ElasticConfig{}, ekv::ElasticBudget::ratio(4));
  p.decode.max_seq_len = 4096;  // 8 kv heads skip 3/4 of 16.8 MB: 12.6 MB
  CHECK(p.skipped_bytes() == doctest::Approx(48.0 * 64 * 8 * 128 * 2 * 2));
  CHECK(p.attends_exactly());
  p.decode.max_seq_len = 32768;  // 101 MB skipped
  CHECK_FALSE(p.attends_exactly());
  p.decode.max_seq_len = 4096;
  p.decode.batch = 16;  // a batch skips 16 x as much
  CHECK_FALSE(p.attends_exactly());
  p.policy = ekv::ElasticPolicy(ekv::ElasticConfig{}, ekv::ElasticBudget::ratio(1.25));  // 80% of the blocks
  CHECK(p.attends_exactly());
  p.exact_fallback = ekv::ExactFallback::kNever;
  CHECK_FALSE(p.attends_exactly());
}

TEST_CASE("quantized kv storage: what elastic decode supports, and the bytes it skips") {
  CHECK(why([](auto& p) {
          p.decode.dtype = ekv::DType::kFloat32;
          p.kv_storage = ekv::KVStorage::kQ8_0;
        }) == "dtype=float32 not supported with kv storage q8_0; supported: float16, bfloat16");
  CHECK(why([](auto& p) { p.kv_storage = ekv::KVStorage::kBFloat16; }) ==
        "kv storage=bf16 not supported with dtype=float16 queries; supported: the queries' own type, fp8, q8_0, q4_0");
  CHECK(why([](auto& p) {
          ekv::ElasticConfig c;
          c.retrieval = ekv::RetrievalType::kQHead;
          p.policy = ekv::ElasticPolicy(c, ekv::ElasticBudget::ratio(4));
          p.kv_storage = ekv::KVStorage::kFp8E4M3;
        }) == "retrieval_type=QHEAD not supported with kv storage fp8; supported: LAYER, KVHEAD");
  ekv::ElasticProblem p = llama_problem();
  p.kv_storage = ekv::KVStorage::kFloat16;  // the queries' own type: dense
  CHECK(ekv::supports(p).ok);
  CHECK(p.storage() == ekv::KVStorage::kFloat16);
  for (ekv::KVStorage s : {ekv::KVStorage::kFp8E4M3, ekv::KVStorage::kQ8_0, ekv::KVStorage::kQ4_0}) {
    p.kv_storage = s;
    CHECK(ekv::supports(p).ok);
  }
  // the bytes skipped are the stored rows' (codes and scales): Q4_0 at dim 128 is 64 + 8
  // bytes a row against fp16's 256, so a shape where fp16's elastic step pays can fall
  // back to exact over Q4_0 (1 x 16K at C = 4: 50 MB skipped in fp16, 14 MB in Q4_0)
  p.decode.batch = 1;
  p.decode.max_seq_len = 16384;
  p.kv_storage.reset();
  const double fp16 = p.skipped_bytes();
  CHECK(fp16 == doctest::Approx(192.0 * 64 * 8 * 128 * 2 * 2));
  CHECK_FALSE(p.attends_exactly());
  p.kv_storage = ekv::KVStorage::kQ4_0;
  CHECK(p.skipped_bytes() == doctest::Approx(fp16 * 72.0 / 256.0));
  CHECK(p.attends_exactly());
}
