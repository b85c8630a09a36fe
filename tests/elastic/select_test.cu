// GPU anchors, block scores and selection against the float64 references of
// elastic/reference_anchors.hpp and elastic/reference_select.hpp.

#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "device_cache.cuh"
#include "ekv/attention/append.cuh"
#include "ekv/core/device_buffer.hpp"
#include "ekv/elastic/anchors.cuh"
#include "ekv/elastic/elastic_decode.cuh"
#include "ekv/elastic/importance.cuh"
#include "ekv/elastic/reference_select.hpp"
#include "ekv/elastic/select.cuh"
#include "test_seed.hpp"

namespace {

using T = __half;

// Sequence b's GPU anchors of kv head h, block `block`, as doubles.
std::vector<double> gpu_anchors(const ekv::test::HostCache<T>& host, const std::vector<T>& anchors,
                                const ekv::ElasticConfig& config, int b, int h, int block) {
  const auto& s = host.shape;
  const int values = ekv::anchor_values(config.anchor, config.anchor_num, s.head_dim);
  const std::int64_t physical = host.table[static_cast<std::size_t>(b) * host.blocks_per_seq + block];
  const T* got = anchors.data() + (physical * s.kv_heads + h) * values;
  std::vector<double> out(values);
  for (int i = 0; i < values; ++i) out[i] = __half2float(got[i]);
  return out;
}

// Every valid block's GPU anchors against reference_block_anchors: min, max and copied
// keys exactly; means, stored in half precision, within one rounding to half (2^-11
// relative) plus float32 summation.
void check_anchors(ekv::test::HostCache<T>& host, const std::vector<T>& anchors, const ekv::ElasticConfig& config) {
  const auto& s = host.shape;
  const ekv::KVView<T> view = host.host_view();
  const double tolerance = config.anchor == ekv::AnchorKind::kBlockMean ? 1.0 / 2048 + 1e-6 : 0.0;
  for (int b = 0; b < s.batch(); ++b) {
    for (int h = 0; h < s.kv_heads; ++h) {
      for (int block = 0; block < ekv::sequence_blocks(host.lengths[b], host.block_len); ++block) {
        const auto want = ekv::reference_block_anchors(view, b, h, block, config.anchor, config.anchor_num);
        const auto got = gpu_anchors(host, anchors, config, b, h, block);
        for (std::size_t i = 0; i < want.size(); ++i) {
          REQUIRE(std::abs(got[i] - want[i]) <= tolerance * std::abs(want[i]) + 1e-7);
        }
      }
    }
  }
}

// Sequence b's granule scores from the GPU's own anchors (reference_granule_scores'
// scoring over what the GPU stored): the GPU's scores must match these to float rounding.
std::vector<std::vector<double>> scores_from_gpu_anchors(ekv::test::HostCache<T>& host, const std::vector<T>& anchors,
                                                         const ekv::ElasticConfig& config, int b) {
  const auto& s = host.shape;
  const int blocks = ekv::sequence_blocks(host.lengths[b], host.block_len);
  std::vector<std::vector<double>> out(ekv::num_granules(config.retrieval, s.q_heads(), s.kv_heads),
                                       std::vector<double>(blocks, -INFINITY));
  for (int h = 0; h < s.kv_heads; ++h) {
    for (int block = 0; block < blocks; ++block) {
      const auto a = gpu_anchors(host, anchors, config, b, h, block);
      for (int qh = h * s.group; qh < (h + 1) * s.group; ++qh) {
        const T* q = host.q.data() + (static_cast<std::size_t>(b) * s.q_heads() + qh) * s.head_dim;
        double& score = out[ekv::granule_of(config.retrieval, qh, s.group)][block];
        score = std::max(score, ekv::reference_anchor_score(q, a, config.anchor, s.head_dim));
      }
    }
  }
  return out;
}

}  // namespace

TEST_CASE("GPU anchors, scores and selection match the references") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::AnchorKind kinds[] = {ekv::AnchorKind::kQuest, ekv::AnchorKind::kBlockMean, ekv::AnchorKind::kBlockMax,
                                   ekv::AnchorKind::kFixed};
  int i = 0;
  for (ekv::AnchorKind kind : kinds) {
    for (ekv::RetrievalType retrieval :
         {ekv::RetrievalType::kKvHead, ekv::RetrievalType::kLayer, ekv::RetrievalType::kQHead}) {
      const int block_len = i % 2 ? 64 : 16;
      // kv heads, group and head_dim vary with the case: both scoring kernels (tensor cores
      // for QUEST up to head_dim 128, MEAN and MAX; CUDA cores for FIXED and QUEST at 256) at
      // groups 1 to 16
      const int heads[4][3] = {{2, 4, 128}, {1, 16, 64}, {3, 1, 256}, {2, 8, 128}};
      const int* dims = heads[i % 4];
      const ekv::test::CacheShape shape{dims[0], dims[1], dims[2], block_len, {1000, 37, 5000, 0},
                                        ekv::test::Layout::kPaged};
      INFO(ekv::test::describe(shape) << " anchor=" << ekv::to_string(kind) << " retrieval=" << ekv::to_string(retrieval));
      ekv::test::HostCache<T> cache(shape, seed + i++);
      ekv::ElasticConfig config;
      config.anchor = kind;
      config.anchor_num = 3;
      config.retrieval = retrieval;
      config.init_block_num = 1;
      config.local_block_num = 2;
      config.pick_block_num = 5;
      // a fixed budget of 8 blocks, or a quarter of each sequence's blocks (counted per sequence)
      const ekv::ElasticPolicy policy = retrieval == ekv::RetrievalType::kLayer
                                            ? ekv::ElasticPolicy(config, ekv::ElasticBudget::ratio(4.0))
                                            : ekv::ElasticPolicy(config);
      ekv::test::DeviceCache<T> dev(cache);
      ekv::Stream stream;
      const ekv::KVView<T> view = dev.view(cache);
      const int values = ekv::anchor_values(kind, config.anchor_num, shape.head_dim);
      ekv::DeviceBuffer<T> anchors(cache.table.size() * shape.kv_heads * values);
      anchors.fill_bytes(0xFF, stream);
      ekv::build_anchors<T>(view, anchors.data(), config, stream);

      // five more tokens per sequence, then only the blocks they touched are recomputed
      const int new_tokens = 5;
      const auto k_new = ekv::bench::random_uniform<T>(static_cast<std::size_t>(shape.batch()) * shape.kv_heads * new_tokens * shape.head_dim, -1, 1, seed + 100);
      const auto v_new = ekv::bench::random_uniform<T>(k_new.size(), -1, 1, seed + 101);
      ekv::DeviceBuffer<T> dk_new(k_new.size()), dv_new(v_new.size());
      dk_new.copy_from(k_new);
      dv_new.copy_from(v_new);
      ekv::DeviceBuffer<std::int32_t> before(cache.lengths.size());
      before.copy_from(cache.lengths);
      ekv::append_kv<T>(view, dk_new.data(), dv_new.data(), new_tokens, stream);
      ekv::update_anchors<T>(view, anchors.data(), config, before.data(), new_tokens, stream);

      // score and selection rows per sequence: a query head's own under QHEAD, else a kv head's
      const int rows = retrieval == ekv::RetrievalType::kQHead ? shape.q_heads() : shape.kv_heads;
      ekv::DeviceBuffer<float> scores(static_cast<std::size_t>(shape.batch()) * rows * cache.blocks_per_seq);
      const int max_selected = policy.counts(cache.blocks_per_seq).total();
      ekv::DeviceBuffer<std::int32_t> selected(static_cast<std::size_t>(shape.batch()) * rows * max_selected);
      ekv::DeviceBuffer<std::int32_t> num_selected(static_cast<std::size_t>(shape.batch()) * rows);
      // poisoned: a score or slot the kernels leave unwritten reads NaN or -1 (slots past a
      // row's count stay so, and are not compared)
      scores.fill_bytes(0xFF, stream);
      selected.fill_bytes(0xFF, stream);
      num_selected.fill_bytes(0xFF, stream);
      ekv::score_blocks<T>(view, dev.q.data(), shape.q_heads(), anchors.data(), config, scores.data(),
                           ekv::DeviceInfo::current(), stream);
      ekv::select_blocks<T>(view, shape.q_heads(), scores.data(), policy, selected.data(), num_selected.data(),
                            max_selected, stream);
      stream.synchronize();

      ekv::test::HostCache<T> host = cache;  // the cache after the append, read back
      dev.k.copy_to(host.k);
      dev.lengths.copy_to(host.lengths);
      for (int b = 0; b < shape.batch(); ++b) CHECK(host.lengths[b] == std::min(cache.lengths[b] + new_tokens, cache.block_len * cache.blocks_per_seq));
      std::vector<T> got_anchors(anchors.size());
      std::vector<float> got_scores(scores.size());
      std::vector<std::int32_t> got_selected(selected.size()), got_counts(num_selected.size());
      anchors.copy_to(got_anchors);
      scores.copy_to(got_scores);
      selected.copy_to(got_selected);
      num_selected.copy_to(got_counts);
      check_anchors(host, got_anchors, config);

      for (int b = 0; b < shape.batch(); ++b) {
        const int blocks = ekv::sequence_blocks(host.lengths[b], cache.block_len);
        const auto ref_scores = scores_from_gpu_anchors(host, got_anchors, config, b);
        std::vector<double> layer_scores(blocks, -INFINITY);
        for (int h = 0; h < rows; ++h) {
          std::vector<double> gpu(blocks);
          for (int block = 0; block < blocks; ++block) {
            gpu[block] = got_scores[(static_cast<std::size_t>(b) * rows + h) * cache.blocks_per_seq + block];
            layer_scores[block] = std::max(layer_scores[block], gpu[block]);
            if (retrieval != ekv::RetrievalType::kLayer) {
              REQUIRE(std::abs(gpu[block] - ref_scores[h][block]) <= 1e-4 * (1 + std::abs(ref_scores[h][block])));
            }
          }
          if (retrieval != ekv::RetrievalType::kLayer) {
            // the selection logic on the GPU's own scores: exact, ties included
            const auto want = ekv::reference_select_blocks(gpu, policy.counts(blocks));
            const std::size_t row = static_cast<std::size_t>(b) * rows + h;
            REQUIRE(got_counts[row] == static_cast<int>(want.size()));
            for (std::size_t j = 0; j < want.size(); ++j) CHECK(got_selected[row * max_selected + j] == want[j]);
          }
        }
        if (retrieval == ekv::RetrievalType::kLayer) {
          for (int block = 0; block < blocks; ++block) {
            REQUIRE(std::abs(layer_scores[block] - ref_scores[0][block]) <= 1e-4 * (1 + std::abs(ref_scores[0][block])));
          }
          const auto want = ekv::reference_select_blocks(layer_scores, policy.counts(blocks));
          for (int h = 0; h < shape.kv_heads; ++h) {
            const std::size_t row = static_cast<std::size_t>(b) * shape.kv_heads + h;
            REQUIRE(got_counts[row] == static_cast<int>(want.size()));
            for (std::size_t j = 0; j < want.size(); ++j) CHECK(got_selected[row * max_selected + j] == want[j]);
          }
        }
      }
    }
  }
}

TEST_CASE("GPU selection breaks exact ties toward the lower block, like the reference") {
  ekv::test::HostCache<T> cache({1, 1, 128, 16, {16 * 40}, ekv::test::Layout::kPaged}, 7);
  ekv::test::DeviceCache<T> dev(cache);
  ekv::Stream stream;
  const ekv::KVView<T> view = dev.view(cache);
  std::vector<float> scores(40);
  for (int b = 0; b < 40; ++b) scores[b] = static_cast<float>(b % 4);  // blocks 3, 7, 11, ... tie at 3
  scores[20] = -0.0f;
  ekv::DeviceBuffer<float> dscores(scores.size());
  dscores.copy_from(scores);
  ekv::ElasticConfig config;
  config.init_block_num = 2;
  config.local_block_num = 3;
  config.pick_block_num = 6;
  const ekv::ElasticPolicy policy(config);
  const ekv::BlockCounts counts = policy.counts(40);
  ekv::DeviceBuffer<std::int32_t> selected(counts.total()), num_selected(1);
  ekv::select_blocks<T>(view, 1, dscores.data(), policy, selected.data(), num_selected.data(), counts.total(), stream);
  stream.synchronize();
  std::vector<std::int32_t> got(counts.total());
  selected.copy_to(got);
  const auto want = ekv::reference_select_blocks(std::vector<double>(scores.begin(), scores.end()), counts);
  REQUIRE(want.size() == got.size());
  for (std::size_t j = 0; j < want.size(); ++j) CHECK(got[j] == want[j]);
}

TEST_CASE("GPU selection rejects what it does not support") {
  CHECK(ekv::select_supported(ekv::kSelectMaxBlocks, 128));
  CHECK_FALSE(ekv::select_supported(ekv::kSelectMaxBlocks + 1, 128));
  CHECK_FALSE(ekv::select_supported(100, 96));
  ekv::ElasticConfig config;
  config.anchor = ekv::AnchorKind::kDynamic;
  CHECK_FALSE(ekv::anchors_supported(config, false));
  CHECK(ekv::anchors_supported(config, true));
}

namespace {

// Whether f throws ekv::Error whose message contains `part`.
template <typename F>
bool throws_containing(F&& f, const std::string& part) {
  try {
    f();
  } catch (const ekv::Error& e) {
    return std::string(e.what()).find(part) != std::string::npos;
  }
  return false;
}

}  // namespace

TEST_CASE("the elastic GPU functions reject bad input before launching anything") {
  ekv::test::HostCache<T> cache({2, 1, 128, 16, {40}, ekv::test::Layout::kPaged}, 3);
  ekv::test::DeviceCache<T> dev(cache);
  ekv::Stream stream;
  const ekv::KVView<T> view = dev.view(cache);
  ekv::DeviceBuffer<std::int32_t> list(8), counts(1), then(1), out(8), out_counts(1);
  ekv::DeviceBuffer<float> scores(8);
  ekv::DeviceBuffer<T> anchors(cache.table.size() * 2 * 2 * 128);
  ekv::ElasticConfig config;
  const ekv::ElasticPolicy policy(config);

  const auto contiguous = ekv::contiguous_hnd_kv<T>(dev.k.data(), dev.v.data(), dev.lengths.data(), 1, 2, 128, 40);
  CHECK(throws_containing([&] { ekv::block_sparse_view<T>(contiguous, list.data(), counts.data(), 8); }, "paged"));
  CHECK(throws_containing(
      [&] { ekv::gather_selected_blocks<T>(view, nullptr, counts.data(), 8, out.data(), out_counts.data(), stream); },
      "null selection"));
  CHECK(throws_containing([&] {
    ekv::gather_selection<T>(view, {list.data(), counts.data(), 8, 2, then.data()}, {out.data(), out_counts.data(), 4},
                             stream);
  }, "at least as long"));
  CHECK(throws_containing([&] {
    ekv::gather_selection<T>(view, {list.data(), counts.data(), 8, 3}, {out.data(), out_counts.data(), 8}, stream);
  }, "multiple of kv_heads"));
  CHECK(throws_containing([&] { ekv::qhead_sparse_view<T>(view, 3, list.data(), counts.data(), 8); },
                          "multiple of kv_heads"));
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  CHECK(throws_containing(
      [&] { ekv::score_blocks<T>(view, dev.q.data(), 3, anchors.data(), config, scores.data(), device, stream); },
      "multiple of kv_heads"));
  CHECK(throws_containing(
      [&] { ekv::select_blocks<T>(view, 2, scores.data(), policy, list.data(), counts.data(), 0, stream); },
      "max_selected"));
  CHECK(throws_containing(
      [&] { ekv::select_blocks<T>(view, 3, scores.data(), policy, list.data(), counts.data(), 8, stream); },
      "multiple of kv_heads"));
  CHECK(throws_containing([&] { ekv::update_anchors<T>(view, anchors.data(), config, nullptr, 1, stream); },
                          "needs from"));
  config.anchor = ekv::AnchorKind::kDynamic;
  CHECK(throws_containing([&] { ekv::build_anchors<T>(view, anchors.data(), config, stream); }, "record_importance"));
  CHECK(throws_containing(
      [&] { ekv::record_importance<T>(view, dev.q.data(), nullptr, 2, 0.1f, scores.data(), stream); }, "lse"));

  // ElasticDecode: nothing to attend before a selection, and only the planned view
  const ekv::ElasticPolicy quest(ekv::ElasticConfig{});
  ekv::ElasticDecode<T> step(ekv::test::decode_problem(cache.shape, ekv::DType::kFloat16), 16, quest,
                             ekv::DeviceInfo::current(), stream, 1, ekv::ExactFallback::kNever);
  ekv::DeviceBuffer<T> o(cache.q.size());
  ekv::DeviceBuffer<float> lse(cache.shape.q_heads());
  CHECK(throws_containing([&] { step.attend(view, dev.q.data(), o.data(), lse.data(), stream); }, "no selection"));
  // what ElasticDecode is built from: a problem that supports() accepts, in its own dtype
  ekv::ElasticProblem bad;
  bad.decode = ekv::test::decode_problem(cache.shape, ekv::DType::kFloat16);
  bad.block_len = 0;
  CHECK(throws_containing([&] { ekv::ElasticDecode<T>(bad, ekv::DeviceInfo::current(), stream); },
                          "ElasticDecode: block_len=0 not supported by elastic decode; supported: 1 or more"));
  bad.block_len = 16;
  bad.decode.dtype = ekv::DType::kBFloat16;
  CHECK(throws_containing([&] { ekv::ElasticDecode<T>(bad, ekv::DeviceInfo::current(), stream); },
                          "the problem is for bfloat16"));
  CHECK(step.workspace_bytes() > 0);
  CHECK(step.anchor_elems(10) == 10u * cache.shape.kv_heads * 2 * cache.shape.head_dim);  // QUEST: min and max
  CHECK(throws_containing(
      [&] { ekv::score_blocks<T>(view, dev.q.data(), 2, anchors.data() + 1, config, scores.data(), device, stream); },
      "aligned"));

  // layer_step 2 from layer 1: layers 1 and 2 share layer 1's selection, layer 0 has its own
  ekv::ElasticConfig shared;
  shared.layer_step = 2;
  shared.layer_offset = 1;
  ekv::ElasticDecode<T> layers(ekv::test::decode_problem(cache.shape, ekv::DType::kFloat16), 16,
                               ekv::ElasticPolicy(shared), ekv::DeviceInfo::current(), stream, 1,
                               ekv::ExactFallback::kNever);
  CHECK(throws_containing(
      [&] { layers.run_layer(view, dev.q.data(), anchors.data(), o.data(), lse.data(), stream, 0, 2); }, "no selection"));
  ekv::build_anchors<T>(view, anchors.data(), shared, stream);  // what the steps score: never memory unwritten
  layers.run_layer(view, dev.q.data(), anchors.data(), o.data(), lse.data(), stream, 0, 1);
  layers.run_layer(view, dev.q.data(), anchors.data(), o.data(), lse.data(), stream, 0, 2);
  stream.synchronize();
  ekv::KVView<T> other = view;
  other.head_dim = 64;
  CHECK(throws_containing([&] { step.select(other, dev.q.data(), anchors.data(), stream); }, "differ"));

  // a plan that splits needs a workspace to clear
  ekv::DecodeProblem problem = ekv::test::decode_problem(cache.shape, ekv::DType::kFloat16);
  problem.max_seq_len = 4096;
  const ekv::DecodePlan plan = ekv::plan_decode(problem, ekv::DeviceInfo::current(), 4);
  REQUIRE(plan.workspace_bytes() > 0);
  CHECK(throws_containing([&] { ekv::clear_decode_workspace(plan, nullptr, stream); }, "null workspace"));
}
