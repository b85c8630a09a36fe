// Exact decode as an engine runs it: a batch of sequences of different lengths in a
// paged pool whose blocks are handed out in no particular order, one plan for the
// longest, the step captured once in a CUDA Graph and replayed, checked against ekv's
// float64 reference.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include <ekv/ekv.cuh>

int main() {
  if (ekv::device_count() == 0) {
    std::printf("exact_decode: no CUDA GPU found; this example runs on a GPU (sm_80 or newer)\n");
    return 0;
  }
  using T = __half;
  constexpr int kBatch = 4, kQHeads = 32, kKvHeads = 8, kDim = 128, kBlockLen = 16, kMaxLen = 8192;
  constexpr int kMaxBlocks = kMaxLen / kBlockLen, kPoolBlocks = kBatch * kMaxBlocks, kRows = kBatch * kQHeads;
  const std::vector<std::int32_t> lengths = {8192, 1, 3000, 4097};
  const ekv::Stream stream;
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  const auto random = [&](std::size_t n) {
    std::vector<T> x(n);
    for (T& e : x) e = __float2half(uniform(rng));
    return x;
  };

  // K and V [pool blocks][kv_heads][block_len][head_dim]; the table maps each sequence's
  // logical blocks to pool blocks, shuffled as an allocator's free list leaves them
  const std::size_t pool = std::size_t{kPoolBlocks} * kKvHeads * kBlockLen * kDim;
  std::vector<T> k_host = random(pool), v_host = random(pool), q_host = random(kRows * kDim);
  std::vector<std::int32_t> table(kPoolBlocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  ekv::DeviceBuffer<T> k(pool), v(pool), q(kRows * kDim), o(kRows * kDim);
  ekv::DeviceBuffer<float> lse(kRows);
  ekv::DeviceBuffer<std::int32_t> table_dev(table.size()), lengths_dev(kBatch);
  k.copy_from(k_host);
  v.copy_from(v_host);
  q.copy_from(q_host);
  table_dev.copy_from(table);
  lengths_dev.copy_from(lengths);
  const ekv::KVView<T> kv = ekv::paged_kv<T>(k.data(), v.data(), table_dev.data(), lengths_dev.data(), kBatch,
                                             kKvHeads, kDim, kBlockLen, kMaxBlocks);

  const ekv::DecodeProblem problem{ekv::DType::kFloat16, kBatch, kQHeads, kKvHeads, kDim, kMaxLen};
  const ekv::DecodePlan plan = ekv::plan_decode(problem, ekv::DeviceInfo::current());  // throws if unsupported
  const auto workspace = ekv::make_decode_workspace(plan, stream);
  // lengths and the table are read on the device: the graph replays for any lengths up to the plan's
  const ekv::Graph step = ekv::Graph::capture(stream, [&](const ekv::Stream& s) {
    ekv::run_decode<T>(plan, kv, q.data(), o.data(), lse.data(), workspace.data(), s);
  });
  step.launch(stream);
  std::vector<T> got(kRows * kDim);
  o.copy_to(got, stream);
  stream.synchronize();

  // the same cache in host memory, attended in float64
  std::vector<std::int32_t> lengths_host = lengths;
  const ekv::KVView<T> host = ekv::paged_kv<T>(k_host.data(), v_host.data(), table.data(), lengths_host.data(),
                                               kBatch, kKvHeads, kDim, kBlockLen, kMaxBlocks);
  const auto reference = ekv::reference_decode(host, q_host.data(), kQHeads, 1.0 / std::sqrt(double{kDim}));
  const ekv::L2Error error = ekv::relative_l2_error(got.data(), reference, kDim);
  std::printf("exact_decode: batch %d, lengths 8192/1/3000/4097, %d split(s) per sequence; relative error "
              "against float64 %.2e (worst head %.2e; fp16 outputs round at about 5e-4)\n",
              kBatch, plan.num_splits, error.pooled, error.worst);
  return error.worst < 2e-3 ? 0 : 1;
}
