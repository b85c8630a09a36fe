// Block-sparse decode (exact decode over a view of the selected blocks) against the
// float64 reference of each selected block's tokens, merged through LSE.

#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include "device_cache.cuh"
#include "ekv/attention/decode.cuh"
#include "ekv/core/device_buffer.hpp"
#include "ekv/elastic/block_sparse.cuh"
#include "test_seed.hpp"

namespace {

// Ascending logical blocks per (seq, kv head): the last block always (the local window),
// the others at random; sequence 0 head 0 takes every block.
std::vector<std::vector<int>> random_selection(const ekv::test::CacheShape& shape, int block_len, std::uint64_t seed) {
  std::mt19937 rng(static_cast<unsigned>(seed));
  std::vector<std::vector<int>> rows;
  for (int b = 0; b < shape.batch(); ++b) {
    const int blocks = (shape.lengths[b] + block_len - 1) / block_len;
    for (int h = 0; h < shape.kv_heads; ++h) {
      std::vector<int> row;
      for (int i = 0; i < blocks; ++i) {
        if (i == blocks - 1 || (b == 0 && h == 0) || std::bernoulli_distribution(0.3)(rng)) row.push_back(i);
      }
      rows.push_back(row);
    }
  }
  return rows;
}

template <typename T>
void check_block_sparse(const ekv::test::CacheShape& shape, std::uint64_t seed,
                        ekv::test::Inputs inputs = ekv::test::Inputs::kUniform) {
  ekv::test::HostCache<T> cache(shape, seed, inputs);
  INFO("inputs=" << ekv::test::name(inputs));
  const auto rows = random_selection(shape, cache.block_len, seed + 3);
  int max_selected = 1;
  for (const auto& r : rows) max_selected = std::max<int>(max_selected, static_cast<int>(r.size()));
  std::vector<std::int32_t> selected(rows.size() * max_selected, -1), counts(rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    counts[i] = static_cast<std::int32_t>(rows[i].size());
    std::copy(rows[i].begin(), rows[i].end(), selected.begin() + static_cast<std::ptrdiff_t>(i * max_selected));
  }

  ekv::Stream stream;
  ekv::test::DeviceCache<T> dev(cache);
  ekv::DeviceBuffer<T> dout(cache.q.size());
  ekv::DeviceBuffer<std::int32_t> dselected(selected.size()), dcounts(counts.size());
  ekv::DeviceBuffer<std::int32_t> dsparse_tables(selected.size()), dsparse_lengths(counts.size());
  ekv::DeviceBuffer<float> dlse(static_cast<std::size_t>(shape.batch()) * shape.q_heads());
  dselected.copy_from(selected);
  dcounts.copy_from(counts);
  const ekv::KVView<T> base = dev.view(cache);
  ekv::gather_selected_blocks<T>(base, dselected.data(), dcounts.data(), max_selected, dsparse_tables.data(),
                                 dsparse_lengths.data(), stream);
  const ekv::KVView<T> sparse =
      ekv::block_sparse_view<T>(base, dsparse_tables.data(), dsparse_lengths.data(), max_selected);

  ekv::DecodeProblem problem = ekv::test::decode_problem(shape, ekv::kDTypeOf<T>);
  problem.max_seq_len = max_selected * cache.block_len;
  const ekv::DecodePlan plan = ekv::plan_decode(problem, ekv::DeviceInfo::current());
  ekv::DeviceBuffer<unsigned char> workspace = ekv::make_decode_workspace(plan, stream);
  dout.fill_bytes(0xFF, stream);
  dlse.fill_bytes(0xFF, stream);
  ekv::run_decode<T>(plan, sparse, dev.q.data(), dout.data(), dlse.data(), workspace.data(), stream);
  stream.synchronize();
  std::vector<T> out(dout.size());
  std::vector<float> lse(dlse.size());
  dout.copy_to(out);
  dlse.copy_to(lse);

  const ekv::KVView<T> host = cache.host_view();
  const double scale = 1.0 / std::sqrt(static_cast<double>(shape.head_dim));  // the reference's own
  std::vector<ekv::RefState> ref;
  for (int b = 0; b < shape.batch(); ++b) {
    for (int qh = 0; qh < shape.q_heads(); ++qh) {
      const int h = qh / shape.group;
      std::vector<ekv::RefState> parts;
      for (int block : rows[static_cast<std::size_t>(b) * shape.kv_heads + h]) {
        const int begin = block * cache.block_len, end = std::min(shape.lengths[b], begin + cache.block_len);
        parts.push_back(ekv::reference_attend(host, cache.q.data() + (static_cast<std::size_t>(b) * shape.q_heads() + qh) * shape.head_dim,
                                              b, h, begin, end, scale));
      }
      ref.push_back(ekv::reference_merge(parts, shape.head_dim));
    }
  }
  ekv::test::check_against_reference<T>(ref, out, lse, shape.head_dim, inputs);
}

}  // namespace

TEST_CASE_TEMPLATE("block-sparse decode equals attention over exactly the selected blocks", T, __half,
                   __nv_bfloat16, float) {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  using ekv::test::Layout;
  for (int block_len : {16, 64}) {
    const ekv::test::CacheShape shape{2, 4, 128, block_len, {1000, 37, 2049, 0}, Layout::kPaged};
    INFO(ekv::test::describe(shape));
    for (ekv::test::Inputs inputs : ekv::test::kAllInputs) check_block_sparse<T>(shape, seed + block_len, inputs);
  }
}
