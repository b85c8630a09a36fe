// README's engine-layouts snippet, as written: one logical cache of three uneven sequences
// written into vLLM's blocks and FlashInfer's single K/V page tensor by each layout's own
// index arithmetic (written out here), then cpu_decode over both views against the
// float64 reference over ekv's own paged pool of the same tokens. Tolerance: fp16 outputs
// round at about 5e-4 relative; 2e-3 per head.
// @README-INCLUDES@

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "ekv/attention/reference.hpp"
#include "ekv/cpu/cpu_attention.hpp"
#include "ekv/elastic/accuracy.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

constexpr int kBatch = 3, kQHeads = 8, kKvHeads = 2, kHeadDim = 128, kBlock = 16, kMaxBlocks = 20;
constexpr int kPool = kBatch * kMaxBlocks, kRows = kBatch * kQHeads;
constexpr std::size_t kBlockElems = std::size_t{kBlock} * kKvHeads * kHeadDim;
constexpr double kTolerance = 2e-3;

}  // namespace

TEST_CASE("README: attention over vLLM's blocks and FlashInfer's page index") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  std::vector<std::int32_t> lengths = {kMaxBlocks * kBlock, 1, 250};
  // the logical tokens, [batch][capacity][kv_heads][head_dim], K and V
  const std::size_t tokens = std::size_t{kBatch} * kMaxBlocks * kBlock * kKvHeads * kHeadDim;
  const std::vector<__half> k_tok = ekv::bench::random_uniform<__half>(tokens, -1.0f, 1.0f, seed);
  const std::vector<__half> v_tok = ekv::bench::random_uniform<__half>(tokens, -1.0f, 1.0f, seed + 1);
  std::vector<std::int32_t> ids(kPool);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937_64(seed + 2));

  // ekv's pool [block][head][token][dim] and vLLM's [block][token][head][dim] share a block table;
  // FlashInfer's [page][K, V][token][head][dim] takes each sequence's pages in table order
  std::vector<__half> ekv_k(kPool * kBlockElems), ekv_v(ekv_k.size()), vllm_k(ekv_k.size()), vllm_v(ekv_k.size());
  std::vector<__half> flash(2 * kPool * kBlockElems);
  std::vector<std::int32_t> table(ids), indptr{0}, indices, last_page_len;
  for (int b = 0; b < kBatch; ++b) {
    const int pages = (lengths[b] + kBlock - 1) / kBlock;
    for (int p = 0; p < pages; ++p) indices.push_back(table[b * kMaxBlocks + p]);
    indptr.push_back(static_cast<std::int32_t>(indices.size()));
    last_page_len.push_back(lengths[b] - (pages - 1) * kBlock);
    for (int t = 0; t < lengths[b]; ++t) {
      const std::size_t id = table[b * kMaxBlocks + t / kBlock], within = static_cast<std::size_t>(t % kBlock);
      for (int h = 0; h < kKvHeads; ++h) {
        for (int d = 0; d < kHeadDim; ++d) {
          const std::size_t token = static_cast<std::size_t>(b) * kMaxBlocks * kBlock + t;
          const std::size_t logical = (token * kKvHeads + h) * kHeadDim + d;
          const std::size_t hnd = id * kBlockElems + (h * kBlock + within) * kHeadDim + d;
          const std::size_t nhd = id * kBlockElems + (within * kKvHeads + h) * kHeadDim + d;
          ekv_k[hnd] = k_tok[logical], ekv_v[hnd] = v_tok[logical];
          vllm_k[nhd] = k_tok[logical], vllm_v[nhd] = v_tok[logical];
          flash[2 * id * kBlockElems + (nhd - id * kBlockElems)] = k_tok[logical];
          flash[(2 * id + 1) * kBlockElems + (nhd - id * kBlockElems)] = v_tok[logical];
        }
      }
    }
  }
  const std::vector<__half> q_host = ekv::bench::random_uniform<__half>(kRows * kHeadDim, -1.0f, 1.0f, seed + 3);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<__half> o_host(kRows * kHeadDim, ekv::DTypeTraits<__half>::from_float(nan)), o2(o_host);
  std::vector<float> lse_host(kRows, nan), lse2(lse_host);

  const int batch = kBatch, kv_heads = kKvHeads, head_dim = kHeadDim, q_heads = kQHeads;
  const int block_size = kBlock, page_size = kBlock, max_blocks_per_seq = kMaxBlocks, max_pages_per_seq = kMaxBlocks;
  __half* paged_kv_cache = flash.data();
  const std::int32_t* paged_kv_indptr = indptr.data();
  const std::int32_t* paged_kv_indices = indices.data();
  const std::int32_t* paged_kv_last_page_len = last_page_len.data();
  std::int32_t* seq_lens = lengths.data();
  const __half* q = q_host.data();
  __half* o = o_host.data();
  float* lse = lse_host.data();
  ekv::CPUInfer pool(2);
  __half* key_cache = vllm_k.data();
  __half* value_cache = vllm_v.data();
  const std::int32_t* block_tables = table.data();
  // @README engine_layouts@
  ekv::cpu_decode<__half>(pool, flashinfer, q, q_heads, o2.data(), lse2.data());

  const auto ekv_view = ekv::paged_kv<__half>(ekv_k.data(), ekv_v.data(), table.data(), lengths.data(), kBatch,
                                              kKvHeads, kHeadDim, kBlock, kMaxBlocks);
  const auto reference = ekv::reference_decode(ekv_view, q, q_heads, 1.0 / std::sqrt(double{kHeadDim}));
  for (const std::vector<__half>* out : {&o_host, &o2}) {
    const ekv::L2Error error = ekv::relative_l2_error(out->data(), reference, kHeadDim);
    INFO((out == &o_host ? "vLLM" : "FlashInfer") << ": pooled " << error.pooled << ", worst head " << error.worst);
    CHECK(error.worst < kTolerance);  // NaN fails too: every poisoned output was written
  }
  for (int r = 0; r < kRows; ++r) {
    CHECK(std::abs(lse_host[r] - reference[r].lse) <= 1e-3);
    CHECK(std::abs(lse2[r] - reference[r].lse) <= 1e-3);
  }
}
