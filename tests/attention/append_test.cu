// append_kv against reference_append (bit for bit, paged and contiguous, overflow), and a
// decode step (append + attention) captured in a CUDA Graph against direct launches.

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "ekv/attention/append.cuh"
#include "ekv/attention/decode.cuh"
#include "ekv/attention/reference.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/graph.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// A cache on host and device with the same random contents, lengths and block table.
struct Cache {
  int batch, kv_heads, head_dim, block_len, blocks_per_seq;
  bool paged;
  std::vector<__half> k, v;
  std::vector<std::int32_t> table, lengths;
  ekv::DeviceBuffer<__half> dk, dv;
  ekv::DeviceBuffer<std::int32_t> dtable, dlengths;

  Cache(int b, int h, int d, int bl, int blocks, bool is_paged, std::vector<std::int32_t> lens, std::uint64_t seed)
      : batch(b), kv_heads(h), head_dim(d), block_len(bl), blocks_per_seq(blocks), paged(is_paged),
        lengths(std::move(lens)) {
    const std::size_t pool = static_cast<std::size_t>(b) * blocks * h * bl * d;
    k = ekv::bench::random_uniform<__half>(pool, -1.0f, 1.0f, seed);
    v = ekv::bench::random_uniform<__half>(pool, -1.0f, 1.0f, seed + 1);
    table.resize(static_cast<std::size_t>(b) * blocks);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937(static_cast<unsigned>(seed)));
    dk = ekv::DeviceBuffer<__half>(pool);
    dv = ekv::DeviceBuffer<__half>(pool);
    dtable = ekv::DeviceBuffer<std::int32_t>(table.size());
    dlengths = ekv::DeviceBuffer<std::int32_t>(b);
    dk.copy_from(k);
    dv.copy_from(v);
    dtable.copy_from(table);
    dlengths.copy_from(lengths);
  }
  ekv::KVView<__half> view(__half* kp, __half* vp, const std::int32_t* tp, std::int32_t* lp) const {
    return paged ? ekv::paged_kv<__half>(kp, vp, tp, lp, batch, kv_heads, head_dim, block_len, blocks_per_seq)
                 : ekv::contiguous_nhd_kv<__half>(kp, vp, lp, batch, kv_heads, head_dim, block_len);
  }
  ekv::KVView<__half> host_view() { return view(k.data(), v.data(), table.data(), lengths.data()); }
  ekv::KVView<__half> device_view() { return view(dk.data(), dv.data(), dtable.data(), dlengths.data()); }
};

}  // namespace

TEST_CASE("append_kv writes what reference_append writes, paged and contiguous, overflow flagged") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  for (bool paged : {true, false}) {
    for (int new_tokens : {1, 5}) {
      INFO("paged=" << paged << " new_tokens=" << new_tokens);
      // capacity 4 blocks x 16 = 64 tokens (contiguous: one block of 64); the last sequence overflows
      Cache c(3, 2, 128, paged ? 16 : 64, paged ? 4 : 1, paged, {0, 31, 62}, seed);
      const std::size_t n = static_cast<std::size_t>(3) * new_tokens * 2 * 128;
      const auto k_new = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed + 7);
      const auto v_new = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed + 8);
      ekv::DeviceBuffer<__half> dk_new(n), dv_new(n);
      ekv::DeviceBuffer<int> overflow(1);
      dk_new.copy_from(k_new);
      dv_new.copy_from(v_new);
      ekv::Stream stream;
      overflow.fill_bytes(0, stream);
      ekv::append_kv<__half>(c.device_view(), dk_new.data(), dv_new.data(), new_tokens, stream, overflow.data());
      stream.synchronize();
      const bool all_fit = ekv::reference_append<__half>(c.host_view(), k_new.data(), v_new.data(), new_tokens);
      std::vector<__half> k(c.k.size()), v(c.v.size());
      std::vector<std::int32_t> lengths(3);
      std::vector<int> flag(1);
      c.dk.copy_to(k);
      c.dv.copy_to(v);
      c.dlengths.copy_to(lengths);
      overflow.copy_to(flag);
      CHECK(same_bits(k, c.k));
      CHECK(same_bits(v, c.v));
      CHECK(lengths == c.lengths);
      CHECK(lengths[2] == std::min(64, 62 + new_tokens));
      CHECK(flag[0] == (all_fit ? 0 : 1));
      CHECK(all_fit == (new_tokens <= 2));
    }
  }
}

TEST_CASE("append_kv rejects bad arguments") {
  Cache c(1, 2, 128, 16, 2, true, {0}, 1);
  ekv::DeviceBuffer<__half> nk(2 * 128);
  ekv::Stream stream;
  CHECK_THROWS_AS(ekv::append_kv<__half>(c.device_view(), nk.data(), nk.data(), -1, stream), ekv::Error);
  CHECK_THROWS_AS(ekv::append_kv<__half>(c.device_view(), nk.data() + 1, nk.data(), 1, stream), ekv::Error);
  CHECK_THROWS_AS(ekv::append_kv<__half>(c.device_view(), nullptr, nk.data(), 1, stream), ekv::Error);
}

TEST_CASE("a decode step (append + attention) captured in a graph replays like direct launches") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const int batch = 3, kv_heads = 2, q_heads = 8, d = 128, steps = 4;
  const std::vector<std::int32_t> start = {100, 1, 700};
  Cache graphed(batch, kv_heads, d, 16, 64, true, start, seed);
  Cache direct(batch, kv_heads, d, 16, 64, true, start, seed);
  const std::size_t n_new = static_cast<std::size_t>(batch) * kv_heads * d;
  const std::size_t n_q = static_cast<std::size_t>(batch) * q_heads * d;
  ekv::DeviceBuffer<__half> k_new(n_new), v_new(n_new), q(n_q), o_graph(n_q), o_direct(n_q);
  ekv::DeviceBuffer<float> lse_graph(batch * q_heads), lse_direct(batch * q_heads);
  ekv::DecodeProblem p;
  p.batch = batch;
  p.q_heads = q_heads;
  p.kv_heads = kv_heads;
  p.head_dim = d;
  p.max_seq_len = 16 * 64;
  const ekv::DecodePlan plan = ekv::plan_decode(p, ekv::DeviceInfo::current());
  ekv::Stream stream;
  ekv::DeviceBuffer<unsigned char> ws_graph = ekv::make_decode_workspace(plan, stream);
  ekv::DeviceBuffer<unsigned char> ws_direct = ekv::make_decode_workspace(plan, stream);
  auto step = [&](Cache& c, __half* o, float* lse, void* ws, const ekv::Stream& s) {
    ekv::append_kv<__half>(c.device_view(), k_new.data(), v_new.data(), 1, s);
    ekv::run_decode<__half>(plan, c.device_view(), q.data(), o, lse, ws, s);
  };
  ekv::Graph graph = ekv::Graph::capture(stream, [&](const ekv::Stream& s) {
    step(graphed, o_graph.data(), lse_graph.data(), ws_graph.data(), s);
  });
  for (int i = 0; i < steps; ++i) {
    INFO("step=" << i);
    k_new.copy_from(ekv::bench::random_uniform<__half>(n_new, -1.0f, 1.0f, seed + 10 * i + 1));
    v_new.copy_from(ekv::bench::random_uniform<__half>(n_new, -1.0f, 1.0f, seed + 10 * i + 2));
    q.copy_from(ekv::bench::random_uniform<__half>(n_q, -1.0f, 1.0f, seed + 10 * i + 3));
    graph.launch(stream);
    step(direct, o_direct.data(), lse_direct.data(), ws_direct.data(), stream);
    stream.synchronize();
    std::vector<__half> a(n_q), b(n_q);
    o_graph.copy_to(a);
    o_direct.copy_to(b);
    for (const __half& x : a) REQUIRE(std::isfinite(__half2float(x)));
    CHECK(same_bits(a, b));
    std::vector<std::int32_t> la(batch), lb(batch);
    graphed.dlengths.copy_to(la);
    direct.dlengths.copy_to(lb);
    CHECK(la == lb);
    CHECK(la[0] == start[0] + i + 1);
  }
}
