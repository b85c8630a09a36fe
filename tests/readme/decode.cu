// README's decode and elastic snippets, as written, one after the other on a paged batch
// of three uneven sequences: decode against the float64 reference; then elastic, which at
// this small shape attends exactly (its budget cannot pay), against the same reference;
// then the same problem made to select, with as many blocks read as the policy's counts at
// each length, and its output against the float64 reference over the blocks it read. Tolerance: fp16 outputs round at
// about 5e-4 relative; 2e-3 per head.
// @README-INCLUDES@

#include <doctest/doctest.h>

#include "readme/paged_cache.cuh"
#include "test_seed.hpp"

namespace {

// o against the float64 reference over `view`; lse too where asked
void check_outputs(ekv::readme::PagedCache<__half>& cache, const ekv::KVView<__half>& view, const ekv::Stream& stream,
                   bool check_lse) {
  using Cache = ekv::readme::PagedCache<__half>;
  const std::vector<__half> got = cache.output(stream);
  const auto reference =
      ekv::reference_decode(view, cache.q_host.data(), Cache::kQHeads, 1.0 / std::sqrt(double{Cache::kHeadDim}));
  const ekv::L2Error error = ekv::relative_l2_error(got.data(), reference, Cache::kHeadDim);
  INFO("pooled " << error.pooled << ", worst head " << error.worst);
  CHECK(error.worst < 2e-3);  // NaN fails too: every poisoned output was written
  if (!check_lse) return;
  std::vector<float> lse(cache.lse.size());
  cache.lse.copy_to(lse, stream);
  stream.synchronize();
  for (std::size_t r = 0; r < lse.size(); ++r) CHECK(std::abs(lse[r] - reference[r].lse) <= 1e-3);
}

// The blocks each (sequence, kv head) read, as a host block-sparse view: as many as the
// policy's counts at each length, and the outputs against the reference over them.
void check_selection(ekv::readme::PagedCache<__half>& cache, const ekv::ElasticDecode<__half>& step,
                     const ekv::ElasticPolicy& policy, const ekv::Stream& stream) {
  using Cache = ekv::readme::PagedCache<__half>;
  const int batch = Cache::kBatch, kv_heads = Cache::kKvHeads, block_len = Cache::kBlockLen;
  const int rows = batch * kv_heads, max_attended = step.max_attended();
  std::vector<std::int32_t> attended(static_cast<std::size_t>(rows) * max_attended), counts(rows);
  EKV_CUDA_CHECK(cudaMemcpyAsync(attended.data(), step.attended(), attended.size() * sizeof(std::int32_t),
                                 cudaMemcpyDeviceToHost, stream.get()), "copy attended");
  EKV_CUDA_CHECK(cudaMemcpyAsync(counts.data(), step.num_attended(), counts.size() * sizeof(std::int32_t),
                                 cudaMemcpyDeviceToHost, stream.get()), "copy counts");
  stream.synchronize();
  const ekv::KVView<__half> host = cache.host_view();
  std::vector<std::int32_t> tables(attended.size()), sparse_lengths(rows);
  for (int b = 0; b < batch; ++b) {
    const int blocks = ekv::sequence_blocks(cache.lengths_host[b], block_len);
    for (int h = 0; h < kv_heads; ++h) {
      const int row = b * kv_heads + h;
      INFO("sequence " << b << " kv head " << h);
      CHECK(counts[row] == policy.counts(blocks).total());  // sinks + window + top-k at its length
      sparse_lengths[row] = 0;
      for (int i = 0; i < counts[row]; ++i) {
        const int block = attended[static_cast<std::size_t>(row) * max_attended + i];
        REQUIRE(block >= 0);
        REQUIRE(block < blocks);
        tables[static_cast<std::size_t>(row) * max_attended + i] = static_cast<std::int32_t>(host.block_id(b, h, block));
        sparse_lengths[row] += ekv::block_valid_tokens(cache.lengths_host[b], block_len, block);
      }
    }
  }
  check_outputs(cache, ekv::block_sparse_view<__half>(host, tables.data(), sparse_lengths.data(), max_attended),
                stream, false);
}

}  // namespace

TEST_CASE("README: decode, then elastic decode, over a paged cache") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  using Cache = ekv::readme::PagedCache<__half>;
  Cache cache(seed);
  const ekv::Stream stream;
  __half *k = cache.k.data(), *v = cache.v.data();
  const __half* q = cache.q.data();
  const std::int32_t* block_table = cache.table.data();
  std::int32_t* lengths = cache.lengths.data();
  __half* o = cache.o.data();
  float* lse = cache.lse.data();
  const int batch = Cache::kBatch, q_heads = Cache::kQHeads, kv_heads = Cache::kKvHeads, head_dim = Cache::kHeadDim;
  const int block_len = Cache::kBlockLen, max_blocks = Cache::kMaxBlocks, max_seq_len = max_blocks * block_len;
  const int num_blocks = Cache::kPoolBlocks, decode_step = 0;

  // @README decode@
  check_outputs(cache, cache.host_view(), stream, true);

  cache.poison_outputs();
  // @README elastic@

  // this small cache skips far fewer bytes than selection costs: the snippet's step
  // attends exactly (ElasticProblem::attends_exactly), and its outputs are exact decode's
  REQUIRE(step.attends_exactly());
  CHECK(elastic.skipped_bytes() < ekv::kElasticBreakEvenBytes);
  check_outputs(cache, cache.host_view(), stream, true);
  // the same problem made to select: its blocks and its outputs over them
  cache.poison_outputs();
  elastic.exact_fallback = ekv::ExactFallback::kNever;
  ekv::ElasticDecode<__half> selecting(elastic, ekv::DeviceInfo::current(), stream);
  REQUIRE_FALSE(selecting.attends_exactly());
  selecting.run(kv, q, anchors.data(), o, lse, stream, decode_step);
  check_selection(cache, selecting, elastic.policy, stream);
}
