// The fused elastic step: score_and_select_blocks (scoring and selection in one launch,
// writing the block-sparse rows) against the two-launch path (score_blocks, select_blocks,
// gather_selection) and against reference_select_blocks on the GPU's own scores, within
// one selection tile (4096 blocks: the register-resident selection writing the rows) and
// past it up to 1M tokens; then ElasticDecode at 1M tokens against the unfused selection
// and the float64 reference over its blocks.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "device_cache.cuh"
#include "ekv/core/device_buffer.hpp"
#include "ekv/elastic/anchors.cuh"
#include "ekv/elastic/block_sparse.cuh"
#include "ekv/elastic/elastic_decode.cuh"
#include "ekv/elastic/reference.hpp"
#include "ekv/elastic/reference_select.hpp"
#include "ekv/elastic/select.cuh"
#include "elastic/attended_check.cuh"
#include "test_seed.hpp"

namespace {

using T = __half;

// One selection's outputs on the device, poisoned before use.
struct SelectionBuffers {
  ekv::DeviceBuffer<std::int32_t> selected, counts, then, tables, lengths, attended, num_attended;
  int max_selected = 0;

  SelectionBuffers(std::size_t rows, int max, const ekv::Stream& stream)
      : selected(rows * max), counts(rows), then(rows), tables(rows * max), lengths(rows), attended(rows * max),
        num_attended(rows), max_selected(max) {
    for (auto* b : {&selected, &counts, &then, &tables, &lengths, &attended, &num_attended}) {
      b->fill_bytes(0xA5, stream);
    }
  }
  ekv::SelectionOut out(bool head_units) {
    ekv::SelectionOut o;
    o.selected = selected.data();
    o.num_selected = counts.data();
    o.max_selected = max_selected;
    o.blocks_then = then.data();
    o.sparse = {tables.data(), lengths.data(), max_selected, head_units, attended.data(), num_attended.data()};
    return o;
  }
  struct Host {
    std::vector<std::int32_t> selected, counts, then, tables, lengths, attended, num_attended;
  };
  Host fetch() const {
    Host h;
    const auto get = [](const ekv::DeviceBuffer<std::int32_t>& d, std::vector<std::int32_t>& to) {
      to.resize(d.size());
      d.copy_to(to);
    };
    get(selected, h.selected);
    get(counts, h.counts);
    get(then, h.then);
    get(tables, h.tables);
    get(lengths, h.lengths);
    get(attended, h.attended);
    get(num_attended, h.num_attended);
    return h;
  }
};

void check_selection(ekv::RetrievalType retrieval, const ekv::test::CacheShape& shape, std::uint64_t seed) {
  INFO(ekv::test::describe(shape) << " retrieval=" << ekv::to_string(retrieval) << " seed=" << seed);
  ekv::test::HostCache<T> cache(shape, seed);
  ekv::test::DeviceCache<T> dev(cache);
  ekv::Stream stream;
  const ekv::KVView<T> view = dev.view(cache);
  ekv::ElasticConfig config;
  config.retrieval = retrieval;
  config.init_block_num = 2;
  config.local_block_num = 3;
  const ekv::ElasticPolicy policy(config, ekv::ElasticBudget::ratio(16.0));
  const bool qhead = retrieval == ekv::RetrievalType::kQHead;
  const int rows = qhead ? shape.q_heads() : shape.kv_heads;
  const std::size_t all_rows = static_cast<std::size_t>(shape.batch()) * rows;
  const int max_blocks = cache.blocks_per_seq;
  const int max_selected = policy.counts(max_blocks).total();
  const int values = ekv::anchor_values(config.anchor, 1, shape.head_dim);
  ekv::DeviceBuffer<T> anchors(cache.table.size() * shape.kv_heads * values);
  ekv::build_anchors<T>(view, anchors.data(), config, stream);
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();

  // two launches: scores, then the selection with its sparse rows
  ekv::DeviceBuffer<float> scores(all_rows * max_blocks);
  scores.fill_bytes(0xFF, stream);
  SelectionBuffers two(all_rows, max_selected, stream);
  ekv::score_blocks<T>(view, dev.q.data(), shape.q_heads(), anchors.data(), config, scores.data(), device, stream);
  ekv::select_blocks<T>(view, shape.q_heads(), scores.data(), policy, two.out(qhead), stream);
  // the gather of the two-launch lists: what the sparse rows must equal
  ekv::DeviceBuffer<std::int32_t> g_tables(all_rows * max_selected), g_lengths(all_rows),
      g_att(all_rows * max_selected), g_num(all_rows);
  for (auto* b : {&g_tables, &g_lengths, &g_att, &g_num}) b->fill_bytes(0xA5, stream);  // poisoned, as above
  ekv::gather_selection<T>(view, {two.selected.data(), two.counts.data(), max_selected, rows, two.then.data()},
                           {g_tables.data(), g_lengths.data(), max_selected, qhead, g_att.data(), g_num.data()},
                           stream);
  // one launch, twice (the counters must be left at zero for the next call)
  SelectionBuffers fused(all_rows, max_selected, stream);
  ekv::DeviceBuffer<float> fused_scores(all_rows * max_blocks);
  ekv::DeviceBuffer<int> arrivals(static_cast<std::size_t>(shape.batch()) * shape.kv_heads);
  arrivals.fill_bytes(0, stream);
  if (!qhead) {
    for (int call = 0; call < 2; ++call) {
      ekv::score_and_select_blocks<T>(view, dev.q.data(), shape.q_heads(), anchors.data(), policy, fused_scores.data(),
                                      arrivals.data(), fused.out(false), device, stream);
    }
  }
  stream.synchronize();

  std::vector<float> got_scores(scores.size());
  scores.copy_to(got_scores);
  const auto a = two.fetch();
  std::vector<std::int32_t> gt(g_tables.size()), gl(g_lengths.size()), ga(g_att.size()), gn(g_num.size());
  g_tables.copy_to(gt);
  g_lengths.copy_to(gl);
  g_att.copy_to(ga);
  g_num.copy_to(gn);
  for (int b = 0; b < shape.batch(); ++b) {
    const int n = ekv::sequence_blocks(cache.lengths[b], cache.block_len);
    // the reference's choice on the GPU's own scores (max over kv heads for LAYER)
    std::vector<std::vector<int>> want(rows);
    std::vector<double> layer(n, -INFINITY);
    for (int r = 0; r < rows; ++r) {
      std::vector<double> row_scores(n);
      for (int k = 0; k < n; ++k) {
        row_scores[k] = got_scores[(static_cast<std::size_t>(b) * rows + r) * max_blocks + k];
        layer[k] = std::max(layer[k], row_scores[k]);
      }
      want[r] = ekv::reference_select_blocks(row_scores, policy.counts(n));
    }
    if (retrieval == ekv::RetrievalType::kLayer) {
      for (auto& w : want) w = ekv::reference_select_blocks(layer, policy.counts(n));
    }
    for (int r = 0; r < rows; ++r) {
      INFO("sequence " << b << " row " << r << " of " << n << " blocks");
      const std::size_t row = static_cast<std::size_t>(b) * rows + r;
      const int count = static_cast<int>(want[r].size());
      REQUIRE(a.counts[row] == count);
      CHECK(a.then[row] == n);
      REQUIRE(a.num_attended[row] == count);
      REQUIRE(gn[row] == count);
      CHECK(a.lengths[row] == gl[row]);
      for (int j = 0; j < count; ++j) {
        const std::size_t at = row * max_selected + j;
        REQUIRE(a.selected[at] == want[r][j]);
        CHECK(a.attended[at] == want[r][j]);
        CHECK(a.tables[at] == gt[at]);
        CHECK(ga[at] == want[r][j]);
      }
    }
  }
  if (qhead) return;
  const auto f = fused.fetch();
  std::vector<int> left(arrivals.size());
  arrivals.copy_to(left);
  CHECK(std::all_of(left.begin(), left.end(), [](int x) { return x == 0; }));
  for (std::size_t row = 0; row < all_rows; ++row) {
    INFO("row " << row);
    REQUIRE(f.counts[row] == a.counts[row]);
    CHECK(f.then[row] == a.then[row]);
    CHECK(f.lengths[row] == a.lengths[row]);
    CHECK(f.num_attended[row] == a.num_attended[row]);
    for (int j = 0; j < a.counts[row]; ++j) {
      const std::size_t at = row * max_selected + j;
      REQUIRE(f.selected[at] == a.selected[at]);
      CHECK(f.tables[at] == a.tables[at]);
      CHECK(f.attended[at] == a.attended[at]);
    }
  }
}

}  // namespace

TEST_CASE("fused scoring and selection equal the two-launch path and the reference, past one tile of blocks") {
  const auto seed = ekv::test::seed();
  // 1 to 4376 blocks per sequence (two tiles), three sequences of different lengths, one empty
  const ekv::test::CacheShape shape{2, 4, 128, 16, {70001, 300, 0, 4096 * 16}, ekv::test::Layout::kPaged};
  for (ekv::RetrievalType retrieval :
       {ekv::RetrievalType::kKvHead, ekv::RetrievalType::kLayer, ekv::RetrievalType::kQHead}) {
    check_selection(retrieval, shape, seed);
  }
}

TEST_CASE("the register-resident selection writes the gather's sparse rows, up to one tile of blocks") {
  const auto seed = ekv::test::seed();
  // 4096 blocks (one tile, 16 per thread) and 313 blocks (2 per thread), one sequence empty
  for (const ekv::test::CacheShape& shape :
       {ekv::test::CacheShape{2, 4, 128, 16, {30001, 300, 0, 4096 * 16}, ekv::test::Layout::kPaged},
        ekv::test::CacheShape{1, 2, 64, 16, {1000, 70, 0, 5000}, ekv::test::Layout::kPaged}}) {
    for (ekv::RetrievalType retrieval :
         {ekv::RetrievalType::kKvHead, ekv::RetrievalType::kLayer, ekv::RetrievalType::kQHead}) {
      check_selection(retrieval, shape, seed);
    }
  }
}

TEST_CASE("selection at 1M tokens (16384 blocks), fused and unfused, and ElasticDecode against the reference") {
  const auto seed = ekv::test::seed();
  const ekv::test::CacheShape shape{1, 4, 128, 64, {1 << 20}, ekv::test::Layout::kPaged};
  check_selection(ekv::RetrievalType::kKvHead, shape, seed);

  INFO("ElasticDecode at 1M tokens, C=16, seed=" << seed);
  ekv::test::HostCache<T> cache(shape, seed + 1);
  ekv::test::DeviceCache<T> dev(cache);
  ekv::Stream stream;
  const ekv::KVView<T> view = dev.view(cache);
  const ekv::ElasticConfig config;
  const ekv::ElasticPolicy policy(config, ekv::ElasticBudget::ratio(16.0));
  ekv::ElasticDecode<T> step(ekv::test::decode_problem(shape, ekv::kDTypeOf<T>), cache.block_len, policy,
                             ekv::DeviceInfo::current(), stream, 1, ekv::ExactFallback::kNever);
  REQUIRE_FALSE(step.attends_exactly());
  ekv::DeviceBuffer<T> anchors(step.anchor_elems(cache.table.size()));
  ekv::build_anchors<T>(view, anchors.data(), config, stream);
  ekv::DeviceBuffer<T> o(cache.q.size());
  ekv::DeviceBuffer<float> lse(shape.q_heads());
  o.fill_bytes(0xFF, stream);
  lse.fill_bytes(0xFF, stream);
  step.run(view, dev.q.data(), anchors.data(), o.data(), lse.data(), stream, 0);
  // the unfused selection of the same inputs
  const int max_blocks = cache.blocks_per_seq, max_selected = policy.counts(max_blocks).total();
  ekv::DeviceBuffer<float> scores(static_cast<std::size_t>(shape.kv_heads) * max_blocks);
  ekv::DeviceBuffer<std::int32_t> selected(static_cast<std::size_t>(shape.kv_heads) * max_selected),
      counts(shape.kv_heads);
  ekv::score_blocks<T>(view, dev.q.data(), shape.q_heads(), anchors.data(), config, scores.data(),
                       ekv::DeviceInfo::current(), stream);
  ekv::select_blocks<T>(view, shape.q_heads(), scores.data(), policy, selected.data(), counts.data(), max_selected,
                        stream);
  stream.synchronize();
  std::vector<std::int32_t> sel(selected.size()), cnt(counts.size());
  selected.copy_to(sel);
  counts.copy_to(cnt);
  std::vector<std::vector<std::vector<int>>> expected(1);
  for (int h = 0; h < shape.kv_heads; ++h) {
    const auto first = sel.begin() + static_cast<std::ptrdiff_t>(h) * max_selected;
    expected[0].emplace_back(first, first + cnt[h]);
    CHECK(cnt[h] == policy.counts(max_blocks).total());
  }
  ekv::test::check_attended(step, expected, 1, shape.kv_heads, config.retrieval);
  std::vector<T> got_o(o.size());
  std::vector<float> got_lse(lse.size());
  o.copy_to(got_o);
  lse.copy_to(got_lse);
  const double scale = 1.0 / std::sqrt(static_cast<double>(shape.head_dim));
  const auto ref = ekv::reference_elastic_decode(cache.host_view(), cache.q.data(), shape.q_heads(), expected,
                                                 config.retrieval, scale);
  // half: decode's tolerance (decode_check.hpp)
  ekv::test::check_against_reference<T>(ref, got_o, got_lse, shape.head_dim, ekv::test::Inputs::kUniform);
}

TEST_CASE("ElasticDecode attends exactly where its budget cannot pay, and says so") {
  ekv::test::HostCache<T> cache({2, 4, 128, 64, {4096}, ekv::test::Layout::kPaged}, 11);
  ekv::test::DeviceCache<T> dev(cache);
  ekv::Stream stream;
  const ekv::KVView<T> view = dev.view(cache);
  const ekv::ElasticConfig config;
  const ekv::ElasticPolicy policy(config, ekv::ElasticBudget::ratio(4.0));
  const ekv::DecodeProblem problem = ekv::test::decode_problem(cache.shape, ekv::kDTypeOf<T>);
  // 4K tokens of 2 kv heads skip 3 MB at C=4: far below the break-even
  ekv::ElasticProblem p{problem, 64, policy};
  CHECK(p.skipped_bytes() < ekv::kElasticBreakEvenBytes);
  CHECK(p.attends_exactly());
  p.exact_fallback = ekv::ExactFallback::kNever;
  CHECK_FALSE(p.attends_exactly());
  ekv::ElasticDecode<T> step(problem, 64, policy, ekv::DeviceInfo::current(), stream);
  REQUIRE(step.attends_exactly());
  CHECK(step.attended() == nullptr);
  CHECK(step.bytes_read(4096).kv == 2u * 4096 * 2 * 128 * sizeof(T));
  ekv::DeviceBuffer<T> anchors(step.anchor_elems(cache.table.size()));
  ekv::build_anchors<T>(view, anchors.data(), config, stream);
  ekv::DeviceBuffer<T> o(cache.q.size());
  ekv::DeviceBuffer<float> lse(cache.shape.q_heads());
  o.fill_bytes(0xFF, stream);
  lse.fill_bytes(0xFF, stream);
  step.run(view, dev.q.data(), anchors.data(), o.data(), lse.data(), stream, 0);
  stream.synchronize();
  std::vector<T> got_o(o.size());
  std::vector<float> got_lse(lse.size());
  o.copy_to(got_o);
  lse.copy_to(got_lse);
  std::vector<std::vector<std::vector<int>>> every(1, std::vector<std::vector<int>>(2));
  for (auto& row : every[0]) {
    for (int b = 0; b < 64; ++b) row.push_back(b);
  }
  const auto ref = ekv::reference_elastic_decode(cache.host_view(), cache.q.data(), cache.shape.q_heads(), every,
                                                 ekv::RetrievalType::kKvHead, 1.0 / std::sqrt(128.0));
  ekv::test::check_against_reference<T>(ref, got_o, got_lse, 128, ekv::test::Inputs::kUniform);
  // a long budget-limited shape selects
  ekv::ElasticProblem big{problem, 64, policy};
  big.decode.max_seq_len = 1 << 17;
  CHECK_FALSE(big.attends_exactly());
  ekv::ElasticProblem broad = big;
  broad.policy = ekv::ElasticPolicy(config, ekv::ElasticBudget::ratio(1.2));  // covers 83% of the blocks
  CHECK(broad.attends_exactly());
}

TEST_CASE("the fused and row-writing selections reject bad input before launching anything") {
  ekv::test::HostCache<T> cache({2, 2, 128, 16, {100}, ekv::test::Layout::kPaged}, 5);
  ekv::test::DeviceCache<T> dev(cache);
  ekv::Stream stream;
  const ekv::KVView<T> view = dev.view(cache);
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  ekv::ElasticConfig config;
  config.pick_block_num = 1;
  const ekv::ElasticPolicy policy(config);  // a sink, the window and one pick: 3 blocks
  SelectionBuffers buffers(2, 3, stream);
  ekv::DeviceBuffer<float> scores(2 * cache.blocks_per_seq);
  ekv::DeviceBuffer<T> anchors(cache.table.size() * 2 * 2 * 128);
  ekv::DeviceBuffer<int> arrivals(2);
  const auto fused = [&](const ekv::ElasticPolicy& p, int* counters, const ekv::SelectionOut& out) {
    ekv::score_and_select_blocks<T>(view, dev.q.data(), 4, anchors.data(), p, scores.data(), counters, out, device,
                                    stream);
  };
  CHECK_THROWS_WITH_AS(fused(policy, nullptr, buffers.out(false)), doctest::Contains("needs arrivals"), ekv::Error);
  ekv::ElasticConfig qhead = config;
  qhead.retrieval = ekv::RetrievalType::kQHead;
  CHECK_THROWS_WITH_AS(fused(ekv::ElasticPolicy(qhead), arrivals.data(), buffers.out(false)),
                       doctest::Contains("supported: layer, kvhead"), ekv::Error);
  ekv::SelectionOut short_rows = buffers.out(false);
  short_rows.sparse.max_per_row = 2;  // shorter than max_selected
  CHECK_THROWS_WITH_AS(ekv::select_blocks<T>(view, 4, scores.data(), policy, short_rows, stream),
                       doctest::Contains("max_per_row >= max_selected"), ekv::Error);
  ekv::SelectionOut too_few = buffers.out(false);
  too_few.max_selected = 2;
  CHECK_THROWS_WITH_AS(fused(policy, arrivals.data(), too_few), doctest::Contains("max_selected >="), ekv::Error);
}
