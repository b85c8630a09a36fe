// merge_states against the float64 reference: states of the parts of a split sequence
// merge to the unsplit state, with empty parts, all parts empty, and more states than
// one shared-memory chunk holds.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "ekv/attention/merge_states.cuh"
#include "ekv/attention/reference.hpp"
#include "ekv/core/device_buffer.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

// Merges one row's states (float [parts][d] and their LSEs) on the GPU into poisoned
// outputs; returns {o, lse}.
std::pair<std::vector<float>, float> merge_on_device(const std::vector<float>& states_o,
                                                     const std::vector<float>& states_lse, int d) {
  const int parts = static_cast<int>(states_lse.size());
  ekv::DeviceBuffer<float> dso(states_o.size()), dsl(states_lse.size()), dout(d), dlse(1);
  dso.copy_from(states_o);
  dsl.copy_from(states_lse);
  ekv::Stream stream;
  dout.fill_bytes(0xFF, stream);
  dlse.fill_bytes(0xFF, stream);
  ekv::merge_states<float>(dso.data(), dsl.data(), 1, parts, d, dout.data(), dlse.data(), stream);
  stream.synchronize();
  std::vector<float> out(d), lse(1);
  dout.copy_to(out);
  dlse.copy_to(lse);
  return {out, lse[0]};
}

// Splits [0, len) at `cuts` (sorted, may repeat: empty parts), attends each part on the
// host, merges the parts on the GPU; returns {gpu o, gpu lse} for one row.
std::pair<std::vector<float>, float> merge_parts(const ekv::KVView<float>& kv, const float* q, int len,
                                                  std::vector<int> cuts, double scale) {
  cuts.insert(cuts.begin(), 0);
  cuts.push_back(len);
  const int parts = static_cast<int>(cuts.size()) - 1;
  const int d = kv.head_dim;
  std::vector<float> states_o(static_cast<std::size_t>(parts) * d), states_lse(parts);
  for (int i = 0; i < parts; ++i) {
    const ekv::RefState st = ekv::reference_attend(kv, q, 0, 0, cuts[i], cuts[i + 1], scale);
    for (int j = 0; j < d; ++j) states_o[static_cast<std::size_t>(i) * d + j] = static_cast<float>(st.o[j]);
    states_lse[i] = static_cast<float>(st.lse);
  }
  return merge_on_device(states_o, states_lse, d);
}

}  // namespace

TEST_CASE("merging the parts of a sequence gives the unsplit state") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  for (int d : {64, 128, 256}) {
    INFO("head_dim=" << d);
    const int len = 3001;
    auto k = ekv::bench::random_uniform<float>(static_cast<std::size_t>(len) * d, -1.0f, 1.0f, seed);
    auto v = ekv::bench::random_uniform<float>(static_cast<std::size_t>(len) * d, -1.0f, 1.0f, seed + 1);
    const auto q = ekv::bench::random_uniform<float>(d, -2.0f, 2.0f, seed + 2);
    std::int32_t length = len;
    const auto kv = ekv::contiguous_hnd_kv<float>(k.data(), v.data(), &length, 1, 1, d, len);
    const double scale = 1.0 / std::sqrt(double(d));
    const ekv::RefState whole = ekv::reference_attend(kv, q.data(), 0, 0, 0, len, scale);

    std::mt19937 rng(static_cast<unsigned>(seed));
    const std::vector<std::vector<int>> splits = {
        {},                      // one part
        {1500},                  // two
        {0},                     // an empty first part
        {3001},                  // an empty last part
        {700, 700, 700, 2000},   // empty parts in the middle
    };
    std::vector<std::vector<int>> all = splits;
    std::vector<int> many(299);  // 300 parts: more than one chunk of weights
    for (int& c : many) c = std::uniform_int_distribution<int>(0, len)(rng);
    std::sort(many.begin(), many.end());
    all.push_back(many);
    for (const auto& cuts : all) {
      INFO("parts=" << cuts.size() + 1);
      const auto [o, lse] = merge_parts(kv, q.data(), len, cuts, scale);
      double err2 = 0, ref2 = 0;
      for (int j = 0; j < d; ++j) {
        REQUIRE(std::isfinite(o[j]));
        err2 += (o[j] - whole.o[j]) * (o[j] - whole.o[j]);
        ref2 += whole.o[j] * whole.o[j];
      }
      CHECK(std::sqrt(err2 / ref2) <= 1e-5);  // float merge of float64 states
      CHECK(std::abs(lse - whole.lse) <= 1e-4);
    }
  }
}

TEST_CASE("all-empty states merge to zero output and -inf LSE, never NaN") {
  const int d = 64, parts = 5;
  const auto [out, lse] = merge_on_device(std::vector<float>(parts * d, 123.0f), std::vector<float>(parts, -INFINITY), d);
  for (float x : out) CHECK(x == 0.0f);
  CHECK(std::isinf(lse));
  CHECK(lse < 0);
  ekv::RefState empty;
  CHECK(ekv::reference_merge({empty, empty}, d).o == std::vector<double>(d, 0.0));
}

TEST_CASE("merge_states merges every row of a batch, with a partly filled last CTA") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const int rows = 5, parts = 3, d = 64;
  auto states_o = ekv::bench::random_uniform<float>(static_cast<std::size_t>(rows) * parts * d, -1.0f, 1.0f, seed);
  auto states_lse = ekv::bench::random_uniform<float>(static_cast<std::size_t>(rows) * parts, -3.0f, 3.0f, seed + 1);
  states_lse[1 * parts + 2] = -INFINITY;  // an empty part in row 1
  ekv::DeviceBuffer<float> dso(states_o.size()), dsl(states_lse.size()), dout(rows * d), dlse(rows);
  dso.copy_from(states_o);
  dsl.copy_from(states_lse);
  ekv::Stream stream;
  dout.fill_bytes(0xFF, stream);
  dlse.fill_bytes(0xFF, stream);
  ekv::merge_states<float>(dso.data(), dsl.data(), rows, parts, d, dout.data(), dlse.data(), stream);
  stream.synchronize();
  std::vector<float> out(rows * d), lse(rows);
  dout.copy_to(out);
  dlse.copy_to(lse);
  for (int r = 0; r < rows; ++r) {
    std::vector<ekv::RefState> states(parts);
    for (int s = 0; s < parts; ++s) {
      states[s].lse = states_lse[r * parts + s];
      states[s].o.assign(states_o.begin() + (r * parts + s) * d, states_o.begin() + (r * parts + s + 1) * d);
    }
    const ekv::RefState want = ekv::reference_merge(states, d);
    CHECK(std::abs(lse[r] - want.lse) <= 1e-5);
    for (int j = 0; j < d; ++j) CHECK(std::abs(out[r * d + j] - want.o[j]) <= 1e-5);
  }
}

TEST_CASE("merge_state_pair merges two decode outputs in their dtype, empty ones included") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const int rows = 7, d = 72;  // any head_dim: one thread per element
  const std::size_t n = static_cast<std::size_t>(rows) * d;
  const auto o_a = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed);
  const auto o_b = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed + 1);
  auto lse_a = ekv::bench::random_uniform<float>(rows, -3.0f, 3.0f, seed + 2);
  auto lse_b = ekv::bench::random_uniform<float>(rows, -3.0f, 3.0f, seed + 3);
  lse_b[1] = -INFINITY;                   // row 1: b empty
  lse_a[2] = -INFINITY;                   // row 2: a empty
  lse_a[3] = lse_b[3] = -INFINITY;        // row 3: both
  ekv::DeviceBuffer<__half> doa(n), dob(n), dout(n);
  ekv::DeviceBuffer<float> dla(rows), dlb(rows), dlse(rows);
  doa.copy_from(o_a);
  dob.copy_from(o_b);
  dla.copy_from(lse_a);
  dlb.copy_from(lse_b);
  ekv::Stream stream;
  dout.fill_bytes(0xFF, stream);
  dlse.fill_bytes(0xFF, stream);
  ekv::merge_state_pair<__half>(doa.data(), dla.data(), dob.data(), dlb.data(), rows, d, dout.data(), dlse.data(),
                                stream);
  stream.synchronize();
  std::vector<__half> out(n);
  std::vector<float> lse(rows);
  dout.copy_to(out);
  dlse.copy_to(lse);
  for (int r = 0; r < rows; ++r) {
    std::vector<ekv::RefState> states(2);
    states[0].lse = lse_a[r];
    states[1].lse = lse_b[r];
    for (int j = 0; j < d; ++j) {
      states[0].o.push_back(__half2float(o_a[static_cast<std::size_t>(r) * d + j]));
      states[1].o.push_back(__half2float(o_b[static_cast<std::size_t>(r) * d + j]));
    }
    const ekv::RefState want = ekv::reference_merge(states, d);
    if (r == 3) {
      CHECK(lse[r] == -INFINITY);
    } else {
      CHECK(std::abs(lse[r] - want.lse) <= 1e-5);
    }
    // one rounding to half of values in [-1, 1]
    for (int j = 0; j < d; ++j) {
      CHECK(std::abs(__half2float(out[static_cast<std::size_t>(r) * d + j]) - want.o[j]) <= 1e-3);
    }
  }
  CHECK_THROWS_WITH_AS(ekv::merge_state_pair<__half>(nullptr, nullptr, nullptr, nullptr, 1, d, nullptr, nullptr,
                                                     stream),
                       "merge_state_pair: null o_a, lse_a, o_b, lse_b, o or lse", ekv::Error);
}

TEST_CASE("merges of peaked, large and late-maximum states match the reference") {
  // LSEs spread over [-90, 90] (exp overflows float unless the maximum is subtracted),
  // outputs near the fp16 range, and in even rows the largest LSE in the last part, so
  // every earlier part is rescaled. Relative error per row: float 1e-6, half one rounding
  // (2^-11) plus the weights' float error.
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const int rows = 6, parts = 5, d = 64;
  const std::size_t n = static_cast<std::size_t>(rows) * parts * d;
  const auto states_o = ekv::bench::random_uniform<float>(n, -60000.0f, 60000.0f, seed);
  auto states_lse = ekv::bench::random_uniform<float>(static_cast<std::size_t>(rows) * parts, -90.0f, 90.0f, seed + 1);
  for (int r = 0; r < rows; r += 2) {
    states_lse[r * parts + parts - 1] = *std::max_element(states_lse.begin() + r * parts,
                                                          states_lse.begin() + (r + 1) * parts) + 30.0f;
  }
  ekv::DeviceBuffer<float> dso(n), dsl(states_lse.size()), dout(rows * d), dlse(rows);
  dso.copy_from(states_o);
  dsl.copy_from(states_lse);
  ekv::Stream stream;
  dout.fill_bytes(0xFF, stream);
  dlse.fill_bytes(0xFF, stream);
  ekv::merge_states<float>(dso.data(), dsl.data(), rows, parts, d, dout.data(), dlse.data(), stream);
  // the same states two at a time in half: part 0 with part 1, as a hybrid step merges
  const std::size_t pair = static_cast<std::size_t>(rows) * d;
  std::vector<__half> a(pair), b(pair);
  std::vector<float> lse_a(rows), lse_b(rows);
  for (int r = 0; r < rows; ++r) {
    lse_a[r] = states_lse[r * parts];
    lse_b[r] = states_lse[r * parts + parts - 1];
    for (int j = 0; j < d; ++j) {
      a[r * d + j] = __float2half(states_o[(static_cast<std::size_t>(r) * parts) * d + j]);
      b[r * d + j] = __float2half(states_o[(static_cast<std::size_t>(r) * parts + parts - 1) * d + j]);
    }
  }
  ekv::DeviceBuffer<__half> da(pair), db(pair), dpair(pair);
  ekv::DeviceBuffer<float> dla(rows), dlb(rows), dpair_lse(rows);
  da.copy_from(a);
  db.copy_from(b);
  dla.copy_from(lse_a);
  dlb.copy_from(lse_b);
  dpair.fill_bytes(0xFF, stream);
  ekv::merge_state_pair<__half>(da.data(), dla.data(), db.data(), dlb.data(), rows, d, dpair.data(), dpair_lse.data(),
                                stream);
  stream.synchronize();
  std::vector<float> out(rows * d), lse(rows), pair_lse(rows);
  std::vector<__half> pair_out(pair);
  dout.copy_to(out);
  dlse.copy_to(lse);
  dpair.copy_to(pair_out);
  dpair_lse.copy_to(pair_lse);
  const auto relative = [&](const auto& got, const std::vector<double>& want, int r) {
    double err2 = 0, ref2 = 0;
    for (int j = 0; j < d; ++j) {
      const double g = static_cast<double>(got[static_cast<std::size_t>(r) * d + j]);
      REQUIRE(std::isfinite(g));
      err2 += (g - want[j]) * (g - want[j]);
      ref2 += want[j] * want[j];
    }
    return std::sqrt(err2 / ref2);
  };
  for (int r = 0; r < rows; ++r) {
    INFO("row " << r);
    std::vector<ekv::RefState> states(parts);
    for (int s = 0; s < parts; ++s) {
      states[s].lse = states_lse[r * parts + s];
      states[s].o.assign(states_o.begin() + (r * parts + s) * d, states_o.begin() + (r * parts + s + 1) * d);
    }
    const ekv::RefState want = ekv::reference_merge(states, d);
    CHECK(std::abs(lse[r] - want.lse) <= 1e-5 * std::max(1.0, std::abs(want.lse)));
    CHECK(relative(out, want.o, r) <= 1e-6);
    std::vector<ekv::RefState> two(2);
    two[0].lse = lse_a[r];
    two[1].lse = lse_b[r];
    for (int j = 0; j < d; ++j) {
      two[0].o.push_back(__half2float(a[r * d + j]));
      two[1].o.push_back(__half2float(b[r * d + j]));
    }
    const ekv::RefState want_pair = ekv::reference_merge(two, d);
    std::vector<float> pair_row(pair_out.size());
    for (std::size_t i = 0; i < pair_out.size(); ++i) pair_row[i] = __half2float(pair_out[i]);
    CHECK(std::abs(pair_lse[r] - want_pair.lse) <= 1e-5 * std::max(1.0, std::abs(want_pair.lse)));
    CHECK(relative(pair_row, want_pair.o, r) <= 1e-3);
  }
}

TEST_CASE("merge_states rejects bad sizes") {
  ekv::Stream stream;
  CHECK_THROWS_WITH_AS(ekv::merge_states<float>(nullptr, nullptr, 1, 0, 64, nullptr, nullptr, stream),
                       "merge_states: needs rows >= 0, num_states >= 1 and head_dim a positive multiple of 4, got "
                       "rows=1, num_states=0, head_dim=64",
                       ekv::Error);
  CHECK_THROWS_WITH_AS(ekv::merge_states<float>(nullptr, nullptr, 1, 1, 64, nullptr, nullptr, stream),
                       "merge_states: null states_o, states_lse, o or lse", ekv::Error);
  CHECK_THROWS_AS(ekv::merge_states<float>(nullptr, nullptr, -1, 1, 64, nullptr, nullptr, stream), ekv::Error);
}
