// The layouts engines hold, as views: vLLM's paged blocks (paged_nhd_kv) and FlashInfer's
// page index (page_index_kv, NHD and HND pages, separate or one K/V tensor). Each view's
// addresses and lengths are checked against the layout's own definition, written out here
// without KVView; then cpu_decode over FlashInfer's single K/V tensor must give exactly
// what it gives over the same pages as two tensors, and what a page-index view cannot do
// (append) is refused by name.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "decode_check.hpp"
#include "ekv/attention/kv_view.hpp"
#include "ekv/cpu/cpu_append.hpp"
#include "ekv/cpu/cpu_attention.hpp"
#include "ekv/cpu/thread_pool.hpp"
#include "test_seed.hpp"

namespace {

using ekv::test::CacheShape;
using ekv::test::HostCache;
using ekv::test::Layout;

// Element index of token t of (sequence b, kv head h) in a pool of pages, from the layouts'
// definitions: vLLM [block][token][head][dim]; FlashInfer NHD [page][token][head][dim] and
// HND [page][head][token][dim], a page `page_elems` apart.
std::int64_t element(int page, int h, int t, int kv_heads, int d, int page_len, bool nhd, std::int64_t page_elems) {
  const std::int64_t within = nhd ? (static_cast<std::int64_t>(t) * kv_heads + h) * d
                                  : (static_cast<std::int64_t>(h) * page_len + t) * d;
  return page * page_elems + within;
}

}  // namespace

TEST_CASE("vLLM's paged blocks: every token's address and each sequence's length") {
  const int batch = 3, kv_heads = 4, d = 64, block_len = 16, max_blocks = 5;
  std::vector<std::int32_t> table(batch * max_blocks), lengths = {80, 1, 33};
  for (int i = 0; i < batch * max_blocks; ++i) table[i] = (i * 7) % (batch * max_blocks);  // a permutation
  const ekv::KVView<float> kv = ekv::paged_nhd_kv<float>(nullptr, nullptr, table.data(), lengths.data(), batch,
                                                         kv_heads, d, block_len, max_blocks);
  for (int b = 0; b < batch; ++b) {
    CHECK(kv.length(b, 0) == lengths[b]);
    for (int h = 0; h < kv_heads; ++h) {
      for (int t = 0; t < lengths[b]; ++t) {
        const int page = table[b * max_blocks + t / block_len];
        REQUIRE(kv.offset(b, h, t) ==
                element(page, h, t % block_len, kv_heads, d, block_len, true, std::int64_t{block_len} * kv_heads * d));
      }
    }
  }
}

TEST_CASE("FlashInfer's page index: addresses and lengths for NHD and HND pages, separate or one K/V tensor") {
  const int batch = 4, kv_heads = 2, d = 128, page = 16, max_pages = 6;
  // sequences of 5, 0, 3 and 1 pages; the last page 7, -, 16 and 1 tokens full
  const std::vector<std::int32_t> indptr = {0, 5, 5, 8, 9}, indices = {8, 2, 0, 7, 4, 1, 6, 3, 5};
  const std::vector<std::int32_t> last = {7, 1, 16, 1};
  const std::vector<int> want_len = {4 * page + 7, 0, 2 * page + 16, 1};
  for (ekv::PageLayout layout : {ekv::PageLayout::kNHD, ekv::PageLayout::kHND}) {
    for (bool single : {false, true}) {
      INFO("layout " << (layout == ekv::PageLayout::kNHD ? "NHD" : "HND") << (single ? ", one K/V tensor" : ""));
      const std::int64_t page_elems = std::int64_t{page} * kv_heads * d;
      const ekv::KVView<float> kv =
          ekv::page_index_kv<float>(nullptr, nullptr, {indptr.data(), indices.data(), last.data()}, batch, kv_heads, d,
                                    page, max_pages, layout, single ? 2 * page_elems : 0);
      CHECK(kv.has_lengths());
      for (int b = 0; b < batch; ++b) {
        CHECK(kv.length(b, 1) == want_len[b]);
        for (int h = 0; h < kv_heads; ++h) {
          for (int t = 0; t < want_len[b]; ++t) {
            const bool nhd = layout == ekv::PageLayout::kNHD;
            REQUIRE(kv.offset(b, h, t) == element(indices[indptr[b] + t / page], h, t % page, kv_heads, d, page, nhd,
                                                  single ? 2 * page_elems : page_elems));
          }
        }
      }
    }
  }
}

TEST_CASE("cpu_decode over FlashInfer's single K/V tensor gives exactly its result over two tensors") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const CacheShape shape{2, 4, 128, 16, {300, 17, 0, 64}, Layout::kPageIndex};
  HostCache<float> cache(shape, seed);
  const std::size_t page_elems = static_cast<std::size_t>(cache.block_len) * shape.kv_heads * shape.head_dim;
  const std::size_t pages = cache.k.size() / page_elems;
  std::vector<float> kv_pool(2 * cache.k.size());  // [page][K, V][page_len][kv_heads][head_dim]
  for (std::size_t p = 0; p < pages; ++p) {
    std::copy_n(cache.k.begin() + p * page_elems, page_elems, kv_pool.begin() + 2 * p * page_elems);
    std::copy_n(cache.v.begin() + p * page_elems, page_elems, kv_pool.begin() + (2 * p + 1) * page_elems);
  }
  const int batch = shape.batch();
  const std::int32_t* index = cache.table.data();
  const ekv::KVView<float> single = ekv::page_index_kv<float>(
      kv_pool.data(), kv_pool.data() + page_elems, {index, index + 2 * batch + 1, index + batch + 1}, batch,
      shape.kv_heads, shape.head_dim, cache.block_len, cache.blocks_per_seq, ekv::PageLayout::kNHD,
      static_cast<std::int64_t>(2 * page_elems));
  ekv::CPUInfer pool(2);
  const std::size_t rows = static_cast<std::size_t>(batch) * shape.q_heads();
  std::vector<float> o1(rows * shape.head_dim, -1.0f), o2(o1.size(), -2.0f), lse1(rows, -1.0f), lse2(rows, -2.0f);
  ekv::cpu_decode<float>(pool, cache.host_view(), cache.q.data(), shape.q_heads(), o1.data(), lse1.data());
  ekv::cpu_decode<float>(pool, single, cache.q.data(), shape.q_heads(), o2.data(), lse2.data());
  CHECK(o1 == o2);
  for (std::size_t r = 0; r < rows; ++r) CHECK((lse1[r] == lse2[r] || (std::isinf(lse1[r]) && std::isinf(lse2[r]))));
  const auto ref = ekv::reference_decode<float>(cache.host_view(), cache.q.data(), shape.q_heads(),
                                                1.0 / std::sqrt(static_cast<double>(shape.head_dim)));
  ekv::test::check_against_reference<float>(ref, o2, lse2, shape.head_dim);
}

TEST_CASE("a page-index view refuses what it cannot do, by name") {
  const std::vector<std::int32_t> indptr = {0, 1}, indices = {0}, last = {3};
  std::vector<float> k(16 * 64), v(16 * 64), k_new(64), v_new(64);
  CHECK_THROWS_WITH_AS(ekv::page_index_kv<float>(k.data(), v.data(), {indptr.data(), nullptr, last.data()}, 1, 1, 64,
                                                 16, 1),
                       doctest::Contains("needs indptr, indices and last_page_len"), ekv::Error);
  CHECK_THROWS_WITH_AS(ekv::page_index_kv<float>(k.data(), v.data(), {indptr.data(), indices.data(), last.data()}, 1,
                                                 1, 64, 16, 1, ekv::PageLayout::kNHD, -1),
                       doctest::Contains("page_stride"), ekv::Error);
  const ekv::KVView<float> kv =
      ekv::page_index_kv<float>(k.data(), v.data(), {indptr.data(), indices.data(), last.data()}, 1, 1, 64, 16, 1);
  CHECK(kv.length(0, 0) == 3);
  CHECK_THROWS_WITH_AS(ekv::cpu_append_kv<float>(kv, k_new.data(), v_new.data(), 1),
                       doctest::Contains("append through paged_kv or paged_nhd_kv"), ekv::Error);
}
