// TieredKVCache (GPU pool under a budget, every block at home in pinned host memory)
// against all-GPU elastic (ElasticDecode over one GPU pool holding the same blocks, with
// anchors built there): the same blocks attended (bit for bit), and the same output within
// tolerance, under KVHEAD (a GPU slot holds one kv head's block) and LAYER (a block with
// all its heads), for each way of attending the host's blocks (copy-in, CPU, auto), with
// in-step promotions (a block copied in for a step keeps its slot), and with a GPU tier of
// only the sinks and windows and a staging area small enough to spill to the CPU; then a
// decode loop of appends and steps under promotions and demotions, against a cache that
// never moved (all-GPU); exact attention over both tiers against all-GPU exact decode;
// outputs poisoned (NaN) before every step; appends all or nothing; the refusals (QHEAD,
// DYNAMIC, a capturing stream).
// Tolerances (relative L2 of each row of O, LSE absolute): half 2e-3 and 1e-4, bfloat16
// 1e-2 and 1e-4 (two partial states each rounded to T before the merge, where all-GPU
// decode rounds once).

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "ekv/cpu/tiered_cache.cuh"
#include "test_seed.hpp"

namespace {

using ekv::HostPath;

template <typename T>
double o_tolerance() {
  return std::is_same_v<T, __half> ? 2e-3 : 1e-2;
}

// Worst relative L2 error of a row of got against want, and the worst LSE difference.
template <typename T>
void check_close(const std::vector<T>& got, const std::vector<float>& got_lse, const std::vector<T>& want,
                 const std::vector<float>& want_lse, int head_dim) {
  double worst = 0, lse_err = 0;
  for (std::size_t r = 0; r < want_lse.size(); ++r) {
    double e2 = 0, w2 = 0;
    for (int d = 0; d < head_dim; ++d) {
      const double g = ekv::DTypeTraits<T>::to_float(got[r * head_dim + d]);
      const double w = ekv::DTypeTraits<T>::to_float(want[r * head_dim + d]);
      REQUIRE(std::isfinite(g));
      e2 += (g - w) * (g - w);
      w2 += w * w;
    }
    worst = std::max(worst, std::sqrt(e2 / std::max(w2, 1e-30)));
    REQUIRE(std::isfinite(got_lse[r]));
    lse_err = std::max(lse_err, static_cast<double>(std::abs(got_lse[r] - want_lse[r])));
  }
  CHECK(worst <= o_tolerance<T>());
  CHECK(lse_err <= 1e-4 * std::max(1.0, static_cast<double>(std::abs(want_lse[0]))) * 4);
}

template <typename T>
std::vector<T> random_values(std::size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<T> x(n);
  for (T& e : x) e = ekv::DTypeTraits<T>::from_float(u(rng));
  return x;
}

// The tiered cache and its all-GPU twin over the same data.
template <typename T>
struct Twins {
  ekv::TieredConfig config;
  ekv::CPUInfer pool{4};
  ekv::Stream stream;
  std::unique_ptr<ekv::TieredKVCache<T>> tiered;
  ekv::DeviceBuffer<T> k, v, anchors;
  ekv::DeviceBuffer<std::int32_t> table, lengths, from;
  std::unique_ptr<ekv::ElasticDecode<T>> elastic;
  ekv::DecodePlan exact;
  ekv::DeviceBuffer<unsigned char> exact_workspace;
  std::size_t block_elems = 0;

  Twins(const ekv::TieredConfig& c, const std::vector<std::int32_t>& lens, std::mt19937& rng) : config(c) {
    const ekv::DeviceInfo device = ekv::DeviceInfo::current();
    tiered = std::make_unique<ekv::TieredKVCache<T>>(c, pool, device, stream);
    const int mb = tiered->max_blocks_per_seq();
    const std::size_t unit = static_cast<std::size_t>(c.block_len) * c.head_dim;
    block_elems = unit * c.kv_heads;
    const std::size_t all = static_cast<std::size_t>(c.batch) * mb;
    // random data in every block (also past the lengths: never read)
    std::vector<T> hk = random_values<T>(all * block_elems, rng), hv = random_values<T>(all * block_elems, rng);
    for (int b = 0; b < c.batch; ++b) {
      for (int i = 0; i < mb; ++i) {
        for (int h = 0; h < c.kv_heads; ++h) {
          const std::size_t at = (static_cast<std::size_t>(b) * mb + i) * block_elems + h * unit;
          std::copy_n(hk.begin() + at, unit, tiered->host_k(b, i, h));
          std::copy_n(hv.begin() + at, unit, tiered->host_v(b, i, h));
        }
      }
    }
    tiered->place(lens, stream);
    k = ekv::DeviceBuffer<T>(hk.size());
    v = ekv::DeviceBuffer<T>(hv.size());
    k.copy_from(hk, stream);
    v.copy_from(hv, stream);
    std::vector<std::int32_t> ids(all);
    for (std::size_t i = 0; i < all; ++i) ids[i] = static_cast<std::int32_t>(i);
    table = ekv::DeviceBuffer<std::int32_t>(all);
    table.copy_from(ids, stream);
    lengths = ekv::DeviceBuffer<std::int32_t>(c.batch);
    lengths.copy_from(lens, stream);
    from = ekv::DeviceBuffer<std::int32_t>(c.batch);
    const ekv::DecodeProblem dense{ekv::kDTypeOf<T>, c.batch, c.q_heads, c.kv_heads, c.head_dim, c.max_seq_len};
    elastic = std::make_unique<ekv::ElasticDecode<T>>(
        ekv::ElasticProblem{dense, c.block_len, c.policy, 1, ekv::ExactFallback::kNever}, device, stream);
    anchors = ekv::DeviceBuffer<T>(elastic->anchor_elems(all));
    ekv::build_anchors<T>(view(), anchors.data(), c.policy.config(), stream);
    exact = ekv::plan_decode(dense, device);
    exact_workspace = ekv::make_decode_workspace(exact, stream);
    stream.synchronize();
  }
  ekv::KVView<T> view() const {
    return ekv::paged_kv<T>(k.data(), v.data(), table.data(), lengths.data(), config.batch, config.kv_heads,
                            config.head_dim, config.block_len, tiered->max_blocks_per_seq());
  }
  void append(const T* k_new, const T* v_new, std::int64_t step) {
    tiered->append(k_new, v_new, stream, step);
    EKV_CUDA_CHECK(cudaMemcpyAsync(from.data(), lengths.data(), lengths.size_bytes(), cudaMemcpyDeviceToDevice,
                                   stream.get()),
                   "test: lengths");
    ekv::append_kv<T>(view(), k_new, v_new, 1, stream);
    ekv::update_anchors<T>(view(), anchors.data(), config.policy.config(), from.data(), 1, stream);
  }
};

template <typename T>
std::vector<T> fetch(const ekv::DeviceBuffer<T>& b, const ekv::Stream& s) {
  std::vector<T> h(b.size());
  b.copy_to(h, s);
  s.synchronize();
  return h;
}

std::vector<std::int32_t> fetch_rows(const std::int32_t* rows, std::size_t n, const ekv::Stream& s) {
  std::vector<std::int32_t> h(n);
  EKV_CUDA_CHECK(cudaMemcpyAsync(h.data(), rows, n * sizeof(std::int32_t), cudaMemcpyDeviceToHost, s.get()), "test");
  s.synchronize();
  return h;
}

// gpu_share: of the cache's blocks; pinned_only: a GPU tier of just the sinks and windows.
ekv::TieredConfig make_config(int batch, int max_seq_len, HostPath path, int staging, double gpu_share,
                              ekv::RetrievalType retrieval = ekv::RetrievalType::kKvHead, bool pinned_only = false) {
  ekv::TieredConfig c;
  c.batch = batch;
  c.q_heads = 8;
  c.kv_heads = 2;
  c.head_dim = 128;
  c.block_len = 32;
  c.max_seq_len = max_seq_len;
  ekv::ElasticConfig e;
  e.init_block_num = 1;
  e.local_block_num = 2;
  e.retrieval = retrieval;
  c.policy = ekv::ElasticPolicy(e, ekv::ElasticBudget::ratio(4));
  c.tiers.sink_blocks = 1;
  c.tiers.window_blocks = 2;
  c.tiers.max_moves_per_step = 8;
  c.tiers.min_idle_steps = 2;
  c.path = path;
  c.staging_blocks = staging;
  const std::size_t block_bytes = 2 * sizeof(__half) * c.kv_heads * c.block_len * c.head_dim;
  const int blocks = batch * ekv::sequence_blocks(max_seq_len, c.block_len);
  c.gpu_budget_bytes = static_cast<std::size_t>(gpu_share * blocks) * block_bytes;
  if (pinned_only) c.gpu_budget_bytes = static_cast<std::size_t>(batch) * 3 * block_bytes;  // 1 sink, 2 window
  return c;
}

// One step of each and the comparison: same attended blocks, close outputs.
template <typename T>
ekv::TieredStepReport compare_step(Twins<T>& t, const ekv::DeviceBuffer<T>& q, std::int64_t step) {
  const ekv::TieredConfig& c = t.config;
  const std::size_t q_rows = static_cast<std::size_t>(c.batch) * c.q_heads;
  ekv::DeviceBuffer<T> o(q_rows * c.head_dim), o_ref(q_rows * c.head_dim);
  ekv::DeviceBuffer<float> lse(q_rows), lse_ref(q_rows);
  o.fill_bytes(0xff, t.stream);  // NaN
  lse.fill_bytes(0xff, t.stream);
  const ekv::TieredStepReport report = t.tiered->attn(q.data(), o.data(), lse.data(), t.stream, step);
  t.elastic->run(t.view(), q.data(), t.anchors.data(), o_ref.data(), lse_ref.data(), t.stream);
  const std::size_t rows = static_cast<std::size_t>(c.batch) * c.kv_heads;
  const int ma = t.elastic->max_attended();
  REQUIRE(t.tiered->elastic().max_attended() == ma);
  const std::vector<std::int32_t> got_n = fetch_rows(t.tiered->elastic().num_attended(), rows, t.stream);
  const std::vector<std::int32_t> want_n = fetch_rows(t.elastic->num_attended(), rows, t.stream);
  REQUIRE(got_n == want_n);
  const std::vector<std::int32_t> got = fetch_rows(t.tiered->elastic().attended(), rows * ma, t.stream);
  const std::vector<std::int32_t> want = fetch_rows(t.elastic->attended(), rows * ma, t.stream);
  for (std::size_t r = 0; r < rows; ++r) {
    for (int j = 0; j < want_n[r]; ++j) REQUIRE(got[r * ma + j] == want[r * ma + j]);
  }
  check_close(fetch(o, t.stream), fetch(lse, t.stream), fetch(o_ref, t.stream), fetch(lse_ref, t.stream),
              c.head_dim);
  t.pool.sync();
  CHECK(report.units > 0);
  CHECK(report.copied_units + report.cpu_units == report.host_units);
  CHECK(report.promoted_units <= report.copied_units);
  return report;
}

template <typename T>
void one_step_each_way(ekv::RetrievalType retrieval) {
  std::mt19937 rng(ekv::test::seed() + static_cast<int>(retrieval));
  const int rows = 2 * 2;  // batch x kv heads
  for (HostPath path : {HostPath::kCopyIn, HostPath::kCpu, HostPath::kAuto}) {
    for (int staging : {0, 3}) {
      for (bool pinned_only : {false, true}) {
        CAPTURE(std::string(ekv::to_string(path)));
        CAPTURE(staging);
        CAPTURE(pinned_only);
        const std::vector<std::int32_t> lens = {32 * 70 + 13, 32 * 41};
        Twins<T> t(make_config(2, 32 * 80, path, staging, 0.2, retrieval, pinned_only), lens, rng);
        t.tiered->tiers().check();
        ekv::DeviceBuffer<T> q(static_cast<std::size_t>(2) * 8 * 128);
        q.copy_from(random_values<T>(q.size(), rng), t.stream);
        int host_units = 0, first_host_units = 0, cpu_trials = 0;
        for (int s = 0; s < 3; ++s) {  // auto measures one way, then the other, then chooses
          // auto gets a fresh query each step: the same one again would find step 0's promotions resident
          if (path == HostPath::kAuto && s > 0) q.copy_from(random_values<T>(q.size(), rng), t.stream);
          const bool copy_measured = t.tiered->copy_rate() > 0, cpu_unmeasured = t.tiered->cpu_rate() <= 0;
          const ekv::TieredStepReport r = compare_step(t, q, s);
          // auto, the copy measured and the CPU not yet: this step's host units all go to the CPU
          if (path == HostPath::kAuto && copy_measured && cpu_unmeasured && r.host_units > 0) {
            CHECK(r.copied_units == 0);
            ++cpu_trials;
          }
          t.tiered->tiers().check();
          host_units += r.host_units;
          if (s == 0) first_host_units = r.host_units;
          // copy-in spills to the CPU only what a row can neither promote nor stage
          if (path == HostPath::kCopyIn) {
            CHECK(r.copied_units - r.promoted_units <= rows * t.tiered->staging_blocks());
            if (r.host_units > 0) CHECK(r.copied_units > 0);
            if (r.host_units - r.promoted_units <= t.tiered->staging_blocks()) CHECK(r.cpu_units == 0);
            if (r.host_units - r.promoted_units > rows * t.tiered->staging_blocks()) CHECK(r.cpu_units > 0);
          }
          if (path == HostPath::kCpu) CHECK(r.copied_units == 0);
          if (pinned_only) CHECK(r.promoted_units == 0);  // no slot to promote into
          // the same query again: what step 0 promoted is resident
          if (path == HostPath::kCopyIn && !pinned_only && s == 0) CHECK(r.promoted_units > 0);
          if (path == HostPath::kCopyIn && !pinned_only && s > 0) CHECK(r.host_units < first_host_units);
        }
        if (path == HostPath::kCopyIn && pinned_only && staging == 3) CHECK(first_host_units > rows * 3);
        CHECK(host_units > 0);  // a fifth of the blocks on the GPU at most: the host held some
        if (path == HostPath::kAuto) {
          CHECK(t.tiered->copy_rate() > 0);
          CHECK(t.tiered->cpu_rate() > 0);  // measured by a step's spill or by its trial
          CHECK(cpu_trials <= 1);
        }
      }
    }
  }
}

template <typename T>
void decode_loop(ekv::RetrievalType retrieval) {
  std::mt19937 rng(ekv::test::seed() + 1);
  const std::vector<std::int32_t> lens = {32 * 60 + 30, 32 * 35 + 1};
  Twins<T> t(make_config(2, 32 * 80, HostPath::kAuto, 0, 0.25, retrieval), lens, rng);
  const ekv::TieredConfig& c = t.config;
  std::vector<T> q_host = random_values<T>(static_cast<std::size_t>(c.batch) * c.q_heads * c.head_dim, rng);
  ekv::DeviceBuffer<T> q(q_host.size()), k_new(static_cast<std::size_t>(c.batch) * c.kv_heads * c.head_dim),
      v_new(k_new.size());
  std::normal_distribution<float> drift(0.0f, 0.05f);
  int started = 0, completed = 0, no_copy_steps = 0;
  for (std::int64_t step = 0; step < 40; ++step) {
    for (T& x : q_host) x = ekv::DTypeTraits<T>::from_float(ekv::DTypeTraits<T>::to_float(x) + drift(rng));
    q.copy_from(q_host, t.stream);
    k_new.copy_from(random_values<T>(k_new.size(), rng), t.stream);
    v_new.copy_from(random_values<T>(v_new.size(), rng), t.stream);
    t.append(k_new.data(), v_new.data(), step);
    const ekv::TieredStepReport r = compare_step(t, q, step);
    started += r.promotions_started;
    completed += r.promotions_completed;
    no_copy_steps += r.host_units == 0;
    if (step % 4 == 3) t.tiered->settle();
    t.tiered->tiers().check();
  }
  CHECK(t.tiered->length(0) == lens[0] + 40);
  CHECK(started > 0);
  CHECK(completed > 0);
  MESSAGE("promotions started " << started << ", completed " << completed << ", steps without host units "
                                << no_copy_steps << " of 40");
  // exact over both tiers against all-GPU exact
  const std::size_t q_rows = static_cast<std::size_t>(c.batch) * c.q_heads;
  ekv::DeviceBuffer<T> o(q_rows * c.head_dim), o_ref(o.size());
  ekv::DeviceBuffer<float> lse(q_rows), lse_ref(q_rows);
  o.fill_bytes(0xff, t.stream);
  t.tiered->attn_exact(q.data(), o.data(), lse.data(), t.stream);
  ekv::run_decode<T>(t.exact, t.view(), q.data(), o_ref.data(), lse_ref.data(), t.exact_workspace.data(), t.stream);
  check_close(fetch(o, t.stream), fetch(lse, t.stream), fetch(o_ref, t.stream), fetch(lse_ref, t.stream), c.head_dim);
}

}  // namespace

TEST_CASE("TieredKVCache attends what all-GPU elastic attends, each way (half)") {
  for (ekv::RetrievalType r : {ekv::RetrievalType::kKvHead, ekv::RetrievalType::kLayer}) {
    CAPTURE(std::string(ekv::to_string(r)));
    one_step_each_way<__half>(r);
  }
}
TEST_CASE("TieredKVCache attends what all-GPU elastic attends, each way (bfloat16)") {
  one_step_each_way<__nv_bfloat16>(ekv::RetrievalType::kKvHead);
}
TEST_CASE("TieredKVCache under appends, promotions and demotions matches a cache that never moved") {
  for (ekv::RetrievalType r : {ekv::RetrievalType::kKvHead, ekv::RetrievalType::kLayer}) {
    CAPTURE(std::string(ekv::to_string(r)));
    decode_loop<__half>(r);
  }
}

TEST_CASE("TieredKVCache appends all sequences or none") {
  for (ekv::RetrievalType r : {ekv::RetrievalType::kKvHead, ekv::RetrievalType::kLayer}) {
    CAPTURE(std::string(ekv::to_string(r)));
    std::mt19937 rng(ekv::test::seed() + 2);
    // sequence 0 has room in its last block, sequence 1 needs a new one; the GPU tier holds
    // only the sinks and windows, and the block leaving sequence 1's window was just selected
    const std::vector<std::int32_t> lens = {32 * 70 + 13, 32 * 41};
    Twins<__half> t(make_config(2, 32 * 80, HostPath::kAuto, 0, 0, r, true), lens, rng);
    ekv::DeviceBuffer<__half> q(static_cast<std::size_t>(2) * 8 * 128), o(q.size()), k_new(2 * 2 * 128),
        v_new(k_new.size());
    ekv::DeviceBuffer<float> lse(16);
    q.copy_from(random_values<__half>(q.size(), rng), t.stream);
    k_new.copy_from(random_values<__half>(k_new.size(), rng), t.stream);
    v_new.copy_from(random_values<__half>(v_new.size(), rng), t.stream);
    t.tiered->attn(q.data(), o.data(), lse.data(), t.stream, 0);
    t.stream.synchronize();
    t.pool.sync();
    CHECK_THROWS_WITH_AS(t.tiered->append(k_new.data(), v_new.data(), t.stream, 1),
                         doctest::Contains("no GPU slot"), ekv::Error);
    CHECK(t.tiered->length(0) == lens[0]);  // sequence 0 could have grown alone: it did not
    CHECK(t.tiered->length(1) == lens[1]);
    t.tiered->tiers().check();
    // two steps later the block is idle enough to leave: both grow
    t.tiered->append(k_new.data(), v_new.data(), t.stream, 2);
    CHECK(t.tiered->length(0) == lens[0] + 1);
    CHECK(t.tiered->length(1) == lens[1] + 1);
    t.tiered->tiers().check();
    CHECK_THROWS_WITH_AS(t.tiered->append(nullptr, v_new.data(), t.stream, 3), doctest::Contains("null k_new"),
                         ekv::Error);
  }
}

TEST_CASE("TieredKVCache refuses QHEAD, DYNAMIC and a capturing stream") {
  ekv::CPUInfer pool(2);
  const ekv::Stream stream;
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  ekv::TieredConfig c = make_config(1, 32 * 40, HostPath::kAuto, 0, 0.5);
  ekv::ElasticConfig e;
  e.retrieval = ekv::RetrievalType::kQHead;
  c.policy = ekv::ElasticPolicy(e, ekv::ElasticBudget::ratio(4));
  CHECK_THROWS_WITH_AS(ekv::TieredKVCache<__half>(c, pool, device, stream), doctest::Contains("QHEAD"), ekv::Error);
  e.retrieval = ekv::RetrievalType::kKvHead;
  e.anchor = ekv::AnchorKind::kDynamic;
  c.policy = ekv::ElasticPolicy(e, ekv::ElasticBudget::ratio(4));
  CHECK_THROWS_WITH_AS(ekv::TieredKVCache<__half>(c, pool, device, stream), doctest::Contains("DYNAMIC"), ekv::Error);
  c = make_config(1, 32 * 40, HostPath::kAuto, 0, 0.5);
  ekv::TieredKVCache<__half> cache(c, pool, device, stream);
  const std::vector<std::int32_t> lens = {32 * 40};
  cache.place(lens, stream);
  ekv::DeviceBuffer<__half> q(8 * 128), o(8 * 128);
  ekv::DeviceBuffer<float> lse(8);
  cudaGraph_t graph = nullptr;
  EKV_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal), "test: capture");
  CHECK_THROWS_WITH_AS(cache.attn(q.data(), o.data(), lse.data(), stream, 0), doctest::Contains("capturing a graph"),
                       ekv::Error);
  EKV_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &graph), "test: capture");
  if (graph != nullptr) cudaGraphDestroy(graph);
  CHECK_THROWS_WITH_AS(cache.attn(nullptr, o.data(), lse.data(), stream, 0), doctest::Contains("null q"), ekv::Error);
}
